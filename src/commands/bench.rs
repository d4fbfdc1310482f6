//! The `specrun bench` command: for every pair × drafter × policy × draft length ×
//! temperature, run target-only and speculative generation on the same prompts in one process,
//! interleaved (A B A B …) so machine drift cancels, and summarise with [`crate::formats::bench`].
//!
//! Exports are rewritten after every configuration, so an interrupted sweep loses nothing.

use crate::cli::BenchArgs;
use crate::formats::bench::{BenchConfig, BenchResult, RepeatSample};
use crate::formats::export::{csv, json, markdown, markdown_prompts, parse_json, prompt_table, svg_plot, table};
use crate::formats::models_toml::{write_best, ConfigSource};
use crate::formats::records::{parse_input, PromptInput};
use crate::infer::plan::config_source;
use crate::infer::{generate, make_drafter, plan, token_texts, with_backend, Plan};
use crate::io::{is_stdout, out, read_text};
use crate::settings::{self, Origin, Overrides, Setting};
use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use specrun_core::batching::{run_continuous, BatchEnd, BatchJob, RunSink, SharedPolicy};
use specrun_core::clock::Clock;
use specrun_core::draft::{DrafterKind, NoDraft};
use specrun_core::engine::{Engine, EngineError, GenConfig, Sequence};
use specrun_core::model::{Model, TextCodec, Token};
use specrun_core::stats::GenStats;
use std::io::IsTerminal;
use std::process::ExitCode;

struct Prompt {
    /// The record's id (a string as it is, anything else as JSON), for per-prompt results.
    id: String,
    tokens_of: PromptInput,
    max_tokens: Option<usize>,
}

/// A saved `--from-json` file larger than this is refused.
const MAX_JSON_BYTES: u64 = 256 << 20;
/// Largest `--repeat`.
const MAX_REPEAT: usize = 1000;

/// Check every swept value before anything is loaded or measured, through the one settings
/// path (a bad `--temp` is refused, not measured).
fn validate_sweep(args: &BenchArgs) -> Result<()> {
    if !(1..=MAX_REPEAT).contains(&args.repeat) {
        bail!("--repeat must be in [1, {MAX_REPEAT}], got {}", args.repeat);
    }
    if args.draft_max.is_empty() || args.temp.is_empty() || args.parallel.is_empty() {
        bail!("--draft-max, --temp and --parallel need at least one value");
    }
    for &n in &args.parallel {
        if !(1..=settings::MAX_PARALLEL).contains(&n) {
            bail!("--parallel must be in [1, {}], got {n}", settings::MAX_PARALLEL);
        }
    }
    for &temp in &args.temp {
        settings::validate(&Overrides { temp: Some(Setting::new(temp, Origin::Flag("--temp"))), ..Overrides::default() })?;
    }
    for &k in &args.draft_max {
        settings::validate(&Overrides { draft_max: Some(Setting::new(k, Origin::Flag("--draft-max"))), ..Overrides::default() })?;
    }
    settings::validate(&Overrides {
        max_tokens: Some(Setting::new(args.max_tokens, Origin::Flag("--max-tokens"))),
        ..Overrides::default()
    })?;
    Ok(())
}

pub fn bench(args: &BenchArgs) -> Result<ExitCode> {
    refuse_exports_onto_inputs(args)?;
    if let Some(saved) = &args.from_json {
        let text = read_text(saved, MAX_JSON_BYTES).map_err(|e| anyhow!("--from-json {e}"))?;
        let results = parse_json(&text).with_context(|| format!("--from-json {}", saved.display()))?;
        out(&table(&results))?;
        if args.per_prompt {
            out(&format!("\n{}", prompt_table(&results)))?;
        }
        export(args, &results, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    validate_sweep(args)?;
    crate::io::install_interrupt_handler();
    let write_best_to = if args.write_best { Some(write_best_target(args)?) } else { None };
    let prompts_path = args.prompts.as_deref().ok_or_else(|| anyhow!("--prompts is required"))?;
    let text = read_text(prompts_path, super::batch::MAX_INPUT_BYTES).map_err(|e| anyhow!("--prompts {e}"))?;
    let format = super::batch::input_format(prompts_path, None, &text);
    let prompts = parse_input(&text, format)
        .into_iter()
        .map(|r| {
            r.map_err(|b| anyhow!("--prompts {}: {}", prompts_path.display(), b.error())).and_then(|j| {
                settings::validate(&j.overrides).map_err(|e| anyhow!("--prompts {}: {e}", prompts_path.display()))?;
                let id = match &j.id {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok(Prompt { id, tokens_of: j.input, max_tokens: j.overrides.max_tokens.map(|s| s.value) })
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if prompts.is_empty() {
        bail!("--prompts {}: no prompts", prompts_path.display());
    }
    let pairs: Vec<Option<String>> =
        if args.pairs.is_empty() { vec![args.models.pair.clone()] } else { args.pairs.iter().cloned().map(Some).collect() };
    let n_configs = pairs.len() * args.drafter.len() * args.adaptive.len() * args.draft_max.len() * args.temp.len() * args.parallel.len();
    let bar = if args.quiet || !std::io::stderr().is_terminal() { ProgressBar::hidden() } else { ProgressBar::new(n_configs as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} configurations  {msg}  [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ids: Vec<String> = prompts.iter().map(|p| p.id.clone()).collect();
    let mut results: Vec<BenchResult> = Vec::new();
    for pair in &pairs {
        let mut models = args.models.clone();
        models.pair = pair.clone();
        // load the draft model when any swept drafter needs it
        let needs_model = args.drafter.iter().any(|d| d.needs_model());
        let flag = |v, name| Some(Setting::new(v, Origin::Flag(name)));
        let flags = Overrides {
            max_tokens: flag(args.max_tokens, "--max-tokens"),
            drafter: Some(Setting::new(if needs_model { DrafterKind::Hybrid } else { DrafterKind::Ngram }, Origin::Flag("--drafter"))),
            seed: Some(Setting::new(args.seed, Origin::Flag("--seed"))),
            ignore_eos: args.ignore_eos.then(|| Setting::new(true, Origin::Flag("--ignore-eos"))),
            ..Overrides::default()
        };
        let mut plan = plan(&models.selection(), &flags)?;
        crate::infer::calibration::attach(&mut plan, args.models.mock);
        let n_seq = args.parallel.iter().copied().max().unwrap_or(1) as u32;
        plan.target.n_seq = n_seq;
        if let Some(d) = &mut plan.draft {
            d.n_seq = n_seq;
        }
        let pair_name = plan.pair.clone().unwrap_or_else(|| plan.target.name.clone());
        with_backend(&plan, args.models.mock, &mut |target, mut draft, codec, clock| {
            let prompts: Vec<(Vec<Token>, usize)> = prompts
                .iter()
                .map(|p| {
                    let tokens = match &p.tokens_of {
                        PromptInput::Text(t) => codec.tokenize(t),
                        PromptInput::Chat(m) => codec.chat_tokens(m).map_err(|e| anyhow!(e))?,
                        PromptInput::Template(c) => crate::formats::chat_template::template_tokens(codec, c).map_err(|e| anyhow!(e))?,
                    };
                    Ok((tokens, p.max_tokens.unwrap_or(args.max_tokens)))
                })
                .collect::<Result<_>>()?;
            for &drafter in &args.drafter {
                for &adaptive in &args.adaptive {
                    for &temp in &args.temp {
                        for (&k, &n_parallel) in args.draft_max.iter().flat_map(|k| args.parallel.iter().map(move |n| (k, n))) {
                            let config = BenchConfig {
                                pair: pair_name.clone(),
                                drafter: drafter.as_str().into(),
                                adaptive: format!("{adaptive:?}").to_lowercase(),
                                draft_max: k,
                                temp,
                                parallel: n_parallel,
                            };
                            bar.set_message(config.label());
                            // the pair's own settings (verify, sampling), then the swept values
                            let sweep = Overrides {
                                draft_max: Some(Setting::new(k, Origin::Flag("--draft-max"))),
                                adaptive: Some(Setting::new(adaptive, Origin::Flag("--adaptive"))),
                                temp: Some(Setting::new(temp, Origin::Flag("--temp"))),
                                ..Overrides::default()
                            };
                            let gen = plan.resolve_with(&sweep)?.gen;
                            let mut samples = Vec::with_capacity(args.repeat);
                            for repeat in 0..args.repeat {
                                let draft = draft.as_mut().map(|d| &mut **d as &mut dyn Model);
                                samples.push(if n_parallel > 1 {
                                    let spec_first = repeat % 2 == 1;
                                    measure_parallel(target, draft, codec, clock, &plan, drafter, &gen, &prompts, n_parallel, spec_first)?
                                } else {
                                    measure(target, draft, codec, clock, &plan, drafter, &gen, &prompts)?
                                });
                            }
                            let mut result = BenchResult::summarise(config, &samples, &ids);
                            result.cost_curve = plan.gen.cost_curve.as_deref().cloned();
                            result.placement = Some(super::run::placement(&plan));
                            results.push(result);
                            export(args, &results, false)?;
                            bar.inc(1);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        })?;
    }
    bar.finish_and_clear();
    out(&table(&results))?;
    if args.per_prompt {
        out(&format!("\n{}", prompt_table(&results)))?;
    }
    export(args, &results, true)?;
    if let Some(path) = write_best_to {
        let text = read_text(&path, crate::formats::models_toml::MAX_CONFIG_BYTES)?;
        let note = format!("{}, {} cores", today(), std::thread::available_parallelism().map_or(0, |n| n.get()));
        let written = write_best(&text, &results, &note).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        std::fs::write(&path, written).with_context(|| format!("{}: cannot write", path.display()))?;
        crate::io::note(format!("wrote the best settings of each pair into {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The models file `--write-best` will change, checked before anything is measured: it must be
/// a file (not the built-in defaults) and hold every swept pair.
fn write_best_target(args: &BenchArgs) -> Result<std::path::PathBuf> {
    if args.models.model.is_some() {
        bail!("--write-best needs pairs from a models file, not -m/--model");
    }
    let sel = args.models.selection();
    let path = match config_source(&sel) {
        ConfigSource::File { path, .. } => path,
        ConfigSource::Builtin => bail!("--write-best: no models file to write (create one with `specrun config init`)"),
    };
    let config = crate::formats::models_toml::Config::load(&path)?;
    let names: Vec<String> = if args.pairs.is_empty() {
        vec![args
            .models
            .pair
            .clone()
            .or(config.models.default_pair.clone())
            .ok_or_else(|| anyhow!("{}: no default_pair; name one with --pair", path.display()))?]
    } else {
        args.pairs.clone()
    };
    for n in &names {
        config.pair(n)?;
    }
    Ok(path)
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
    let texts = token_texts(codec, target.n_vocab());
    for (tokens, max_tokens) in prompts {
        let gen = GenConfig { max_tokens: *max_tokens, ..gen.clone() };
        let base =
            generate(&mut Engine::new(&mut *target, NoDraft, gen.clone()), codec, tokens, clock, None, &[], &crate::io::interrupted)?;
        let d = make_drafter(Some(drafter), plan.ngram, draft.as_mut().map(|m| &mut **m as &mut dyn Model), &texts);
        let spec = generate(&mut Engine::new(&mut *target, d, gen), codec, tokens, clock, None, &[], &crate::io::interrupted)?;
        s.add_prompt(&base.stats, &spec.stats);
    }
    Ok(s)
}

/// One repeat with `n_parallel` sequences in flight: all prompts target-only through
/// continuous batching, then all speculative (the other way round with `spec_first`: repeats
/// alternate, so that a machine drifting during a minute-long run favours neither). Each side's stats are its sequences' stats
/// merged, with the decode time replaced by the wall time of the shared rounds, so that tok/s
/// is the aggregate rate (prefill excluded, as for one sequence).
#[allow(clippy::too_many_arguments)]
fn measure_parallel(
    target: &mut dyn Model,
    mut draft: Option<&mut dyn Model>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    plan: &Plan,
    drafter: DrafterKind,
    gen: &GenConfig,
    prompts: &[(Vec<Token>, usize)],
    n_parallel: usize,
    spec_first: bool,
) -> Result<RepeatSample> {
    let jobs = || {
        prompts
            .iter()
            .enumerate()
            .map(|(i, (tokens, max_tokens))| BatchJob {
                tag: i,
                config: GenConfig { max_tokens: *max_tokens, ..gen.clone() },
                prompt: tokens.clone(),
            })
            .collect::<Vec<_>>()
    };
    fn one_run<D: specrun_core::draft::Drafter>(
        engine: &mut Engine<&mut dyn Model, D>,
        jobs: Vec<BatchJob<usize>>,
        n_parallel: usize,
        gen: &GenConfig,
        clock: &dyn Clock,
    ) -> Result<GenStats> {
        /// The bench's run sink: every job's statistics merged, the first failure kept.
        struct Merge {
            merged: GenStats,
            failed: Option<EngineError>,
        }
        impl RunSink<usize> for Merge {
            fn finished(&mut self, _: usize, result: Result<Sequence, EngineError>) {
                match result {
                    Ok(seq) => self.merged.merge(&seq.stats),
                    Err(e) => self.failed = Some(e),
                }
            }
            fn cancel(&mut self) -> bool {
                crate::io::interrupted()
            }
        }
        let mut sink = Merge { merged: GenStats::default(), failed: None };
        let mut policy = SharedPolicy::new(gen.cost_curve.clone());
        let outcome = run_continuous(engine, jobs, n_parallel, &mut policy, clock, &mut sink)
            .map_err(|e| anyhow!(e).context("a shared decode failed"))?;
        if outcome.end == BatchEnd::Cancelled {
            bail!("interrupted");
        }
        if let Some(e) = sink.failed {
            bail!("a prompt failed: {e}");
        }
        let (mut merged, bstats) = (sink.merged, outcome.stats);
        merged.t_decode = bstats.t_decode;
        merged.plan_check = bstats.plan_check;
        Ok(merged)
    }
    let plain = |target: &mut dyn Model| one_run(&mut Engine::new(target, NoDraft, gen.clone()), jobs(), n_parallel, gen, clock);
    let base_first = if spec_first { None } else { Some(plain(&mut *target)?) };
    let d =
        make_drafter(Some(drafter), plan.ngram, draft.as_mut().map(|m| &mut **m as &mut dyn Model), &token_texts(codec, target.n_vocab()));
    let spec = one_run(&mut Engine::new(&mut *target, d, gen.clone()), jobs(), n_parallel, gen, clock)?;
    let base = match base_first {
        Some(b) => b,
        None => plain(&mut *target)?,
    };
    let mut s = RepeatSample::default();
    s.add(&base, &spec);
    Ok(s)
}

fn markdown_with_prompts(results: &[BenchResult]) -> Result<String> {
    Ok(format!("{}\n{}", markdown(results), markdown_prompts(results)))
}

fn render_json(results: &[BenchResult]) -> Result<String> {
    Ok(json(results)?)
}

/// The one writer of exports: every export file rewritten whole (written beside and renamed,
/// so a file is never half written), and with `to_stdout` (once, at the end) the ones named
/// `-` printed.
fn export(args: &BenchArgs, results: &[BenchResult], to_stdout: bool) -> Result<()> {
    let write = |path: &Option<std::path::PathBuf>, render: &dyn Fn() -> Result<String>| -> Result<()> {
        match path {
            Some(p) if is_stdout(p) => {
                if to_stdout {
                    out(&render()?)?;
                }
                Ok(())
            }
            Some(p) => crate::io::write_whole(p, &render()?).with_context(|| format!("{}: cannot write", p.display())),
            None => Ok(()),
        }
    };
    write(&args.export_json, &|| render_json(results))?;
    write(&args.export_csv, &|| Ok(csv(results)))?;
    write(&args.export_markdown, &|| if args.per_prompt { markdown_with_prompts(results) } else { Ok(markdown(results)) })?;
    let repeats = results.iter().map(|r| r.repeats).max().unwrap_or(0);
    write(&args.plot, &|| Ok(svg_plot(results, &format!("specrun bench: speed-up vs draft length (repeat {repeats})"))))?;
    Ok(())
}

/// No export may be written over a file this run reads.
fn refuse_exports_onto_inputs(args: &BenchArgs) -> Result<()> {
    let outputs: Vec<(&str, &std::path::Path)> = [
        ("--export-json", &args.export_json),
        ("--export-csv", &args.export_csv),
        ("--export-markdown", &args.export_markdown),
        ("--plot", &args.plot),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
    .collect();
    let inputs: Vec<(&str, &std::path::Path)> =
        [("--prompts", &args.prompts), ("--from-json", &args.from_json), ("--config", &args.models.config)]
            .into_iter()
            .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
            .collect();
    crate::io::refuse_output_onto_input(&outputs, &inputs)
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
