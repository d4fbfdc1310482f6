//! The `specrun bench` command: for every pair × drafter × policy × draft length ×
//! temperature, run target-only and speculative generation on the same prompts in one process,
//! interleaved (A B A B …) so machine drift cancels, and summarise with [`crate::bench`].
//!
//! Exports are rewritten after every configuration, so an interrupted sweep loses nothing.

use crate::app::{generate, make_drafter, plan, with_backend, Plan};
use crate::batch::{parse_input, InputFormat, PromptInput};
use crate::bench::{csv, markdown, svg_plot, table, write_best, BenchConfig, BenchResult, RepeatSample};
use crate::cli::{BenchArgs, DrafterKind, GenArgs};
use crate::draft::NoDraft;
use crate::engine::{Engine, GenConfig};
use crate::model::{Model, TextCodec, Token};
use crate::stats::Clock;
use crate::verify::VerifyMode;
use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

struct Prompt {
    tokens_of: PromptInput,
    max_tokens: Option<usize>,
}

pub fn bench_command(args: &BenchArgs) -> Result<ExitCode> {
    if let Some(saved) = &args.from_json {
        let text = std::fs::read_to_string(saved).with_context(|| format!("--from-json {}: cannot read", saved.display()))?;
        let results: Vec<BenchResult> = serde_json::from_str(&text).with_context(|| format!("--from-json {}", saved.display()))?;
        export(args, &results)?;
        print!("{}", table(&results));
        return Ok(ExitCode::SUCCESS);
    }
    if args.repeat == 0 || args.draft_max.is_empty() || args.temp.is_empty() {
        bail!("--repeat, --draft-max and --temp need at least one value");
    }
    let prompts_path = args.prompts.as_deref().ok_or_else(|| anyhow!("--prompts is required"))?;
    let text = std::fs::read_to_string(prompts_path).with_context(|| format!("--prompts {}: cannot read", prompts_path.display()))?;
    let format = if prompts_path.extension().is_some_and(|e| e == "txt") { InputFormat::Txt } else { InputFormat::Jsonl };
    let prompts = parse_input(&text, format)
        .into_iter()
        .map(|r| r.map(|j| Prompt { tokens_of: j.input, max_tokens: j.max_tokens }).map_err(|b| anyhow!("--prompts {}: {}", prompts_path.display(), b.error)))
        .collect::<Result<Vec<_>>>()?;
    if prompts.is_empty() {
        bail!("--prompts {}: no prompts", prompts_path.display());
    }
    let pairs: Vec<Option<String>> =
        if args.pairs.is_empty() { vec![args.models.pair.clone()] } else { args.pairs.iter().cloned().map(Some).collect() };
    let n_configs = pairs.len() * args.drafter.len() * args.adaptive.len() * args.draft_max.len() * args.temp.len();
    let bar = if args.quiet || !std::io::stderr().is_terminal() { ProgressBar::hidden() } else { ProgressBar::new(n_configs as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} configurations  {msg}  [{elapsed_precise}]").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let mut results: Vec<BenchResult> = Vec::new();
    for pair in &pairs {
        let mut models = args.models.clone();
        models.pair = pair.clone();
        // load the draft model when any swept drafter needs it
        let needs_model = args.drafter.iter().any(|d| d.needs_model());
        let gen = GenArgs {
            max_tokens: Some(args.max_tokens),
            drafter: Some(if needs_model { DrafterKind::Hybrid } else { DrafterKind::Ngram }),
            seed: Some(args.seed),
            ..GenArgs::default()
        };
        let plan = plan(&models, &gen)?;
        let pair_name = pair.clone().unwrap_or_else(|| plan.target.name.clone());
        let pair_name = if pair.is_none() { default_pair_name(&args.models).unwrap_or(pair_name) } else { pair_name };
        with_backend(&plan, args.models.mock, &mut |target, mut draft, codec, clock| {
            let prompts: Vec<(Vec<Token>, usize)> = prompts
                .iter()
                .map(|p| {
                    let text = match &p.tokens_of {
                        PromptInput::Text(t) => Ok(t.clone()),
                        PromptInput::Chat(m) => codec.chat(m).map_err(|e| anyhow!(e)),
                    }?;
                    Ok((codec.tokenize(&text), p.max_tokens.unwrap_or(args.max_tokens)))
                })
                .collect::<Result<_>>()?;
            for &drafter in &args.drafter {
                for &adaptive in &args.adaptive {
                    for &temp in &args.temp {
                        for &k in &args.draft_max {
                            let config = BenchConfig {
                                pair: pair_name.clone(),
                                drafter: drafter.as_str().into(),
                                adaptive: format!("{adaptive:?}").to_lowercase(),
                                draft_max: k,
                                temp,
                            };
                            bar.set_message(config.label());
                            let mut gen = plan.gen.clone();
                            gen.draft_max = k;
                            gen.adaptive = adaptive;
                            gen.params.temp = temp;
                            gen.verify = if temp > 0.0 { VerifyMode::Rejection } else { VerifyMode::Greedy };
                            let mut samples = Vec::with_capacity(args.repeat);
                            for _ in 0..args.repeat {
                                samples.push(measure(target, draft.as_mut().map(|d| &mut **d as &mut dyn Model), codec, clock, &plan, drafter, &gen, &prompts)?);
                            }
                            results.push(BenchResult::summarise(config, &samples));
                            export(args, &results)?;
                            bar.inc(1);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        })?;
    }
    bar.finish_and_clear();
    print!("{}", table(&results));
    for (path, render) in [
        (&args.export_json, json as fn(&[BenchResult]) -> Result<String>),
        (&args.export_csv, |r: &[BenchResult]| Ok(csv(r))),
        (&args.export_markdown, |r: &[BenchResult]| Ok(markdown(r))),
    ] {
        if path.as_deref() == Some(Path::new("-")) {
            print!("{}", render(&results)?);
        }
    }
    if args.write_best {
        let text = std::fs::read_to_string(&args.models.config).with_context(|| format!("{}: cannot read", args.models.config.display()))?;
        let note = format!("{}, {} cores", today(), std::thread::available_parallelism().map_or(0, |n| n.get()));
        let out = write_best(&text, &results, &note).map_err(|e| anyhow!("{}: {e}", args.models.config.display()))?;
        std::fs::write(&args.models.config, out).with_context(|| format!("{}: cannot write", args.models.config.display()))?;
        eprintln!("wrote the best settings of each pair into {}", args.models.config.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn default_pair_name(models: &crate::cli::ModelArgs) -> Option<String> {
    if models.model.is_some() {
        return None;
    }
    crate::config::Config::load(&models.config).ok()?.models.default_pair
}

/// One repeat: every prompt target-only, then speculative, in turn.
#[allow(clippy::too_many_arguments)]
fn measure(
    target: &mut dyn Model,
    mut draft: Option<&mut dyn Model>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    plan: &Plan,
    drafter: DrafterKind,
    gen: &GenConfig,
    prompts: &[(Vec<Token>, usize)],
) -> Result<RepeatSample> {
    let mut s = RepeatSample::default();
    for (tokens, max_tokens) in prompts {
        let gen = GenConfig { max_tokens: *max_tokens, ..gen.clone() };
        let base = generate(&mut Engine::new(&mut *target, NoDraft, gen.clone()), codec, tokens, clock, None, &[])?;
        let d = make_drafter(Some(drafter), plan.ngram, draft.as_mut().map(|m| &mut **m as &mut dyn Model));
        let spec = generate(&mut Engine::new(&mut *target, d, gen), codec, tokens, clock, None, &[])?;
        s.add(&base.stats, &spec.stats);
    }
    Ok(s)
}

fn json(results: &[BenchResult]) -> Result<String> {
    Ok(serde_json::to_string_pretty(results)? + "\n")
}

/// Rewrite every export file (not `-`, which is printed once at the end).
fn export(args: &BenchArgs, results: &[BenchResult]) -> Result<()> {
    let write = |path: &Option<std::path::PathBuf>, text: String| -> Result<()> {
        match path {
            Some(p) if p.as_os_str() != "-" => std::fs::write(p, text).with_context(|| format!("{}: cannot write", p.display())),
            _ => Ok(()),
        }
    };
    write(&args.export_json, json(results)?)?;
    write(&args.export_csv, csv(results))?;
    write(&args.export_markdown, markdown(results))?;
    if args.plot.is_some() {
        let repeats = results.iter().map(|r| r.repeats).max().unwrap_or(0);
        let title = format!("specrun bench: speed-up vs draft length (repeat {repeats})");
        write(&args.plot, svg_plot(results, &title))?;
    }
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock (civil-from-days).
fn today() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
