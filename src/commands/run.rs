//! `specrun run`: one prompt, speculative, target-only (`--no-draft`) or both (`--compare`).
//! Text streams to stdout as it is accepted; the stats block goes to stderr, or one JSON object
//! to stdout with `--json`.

use crate::cli::RunArgs;
use crate::constraint::Vocabulary;
use crate::formats::report::CompareReport;
use crate::infer::{generate, generate_traced, make_drafter, plan, token_texts, with_backend, Plan};
use crate::io::{install_interrupt_handler, interrupted, out, read_text};
use anyhow::{anyhow, bail, Result};
use specrun_core::clock::Clock;
use specrun_core::draft::{Drafter, NoDraft};
use specrun_core::engine::Engine;
use specrun_core::model::{Model, TextCodec};
use std::io::Write;
use std::process::ExitCode;

/// A prompt file larger than this is refused.
pub const MAX_PROMPT_BYTES: u64 = 64 << 20;

fn read_prompt(args: &RunArgs) -> Result<String> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => Ok(read_text(f, MAX_PROMPT_BYTES).map_err(|e| anyhow!("--prompt-file {e}"))?),
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    if let Some(trace) = &args.trace_rounds {
        let c = &args.constraint;
        let inputs: Vec<(&str, &std::path::Path)> = [
            ("--prompt-file", &args.prompt_file),
            ("--config", &args.models.config),
            ("--json-schema-file", &c.json_schema_file),
            ("--grammar-file", &c.grammar_file),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect();
        crate::io::refuse_output_onto_input(&[("--trace-rounds", trace)], &inputs)?;
    }
    let mut plan = plan(&args.models.selection(), &args.gen.overrides())?;
    crate::infer::calibration::attach(&mut plan, args.models.mock);
    let prompt = read_prompt(args)?;
    let grammar = args.constraint.grammar()?;
    install_interrupt_handler();
    with_backend(&plan, args.models.mock, &mut |target, draft, codec, clock| {
        let mut plan = plan.clone();
        if let Some(g) = &grammar {
            let vocab = Vocabulary::of(codec, target.n_vocab(), &|t| target.is_eog(t))?;
            plan.gen.constraint = Some(vocab.compile(g)?);
        }
        let texts = token_texts(codec, target.n_vocab());
        execute(target, make_drafter(plan.drafter, plan.ngram, draft, &texts), codec, clock, &prompt, args, &plan)
    })
}

fn execute(
    target: &mut dyn Model,
    drafter: Box<dyn Drafter + '_>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    prompt: &str,
    args: &RunArgs,
    plan: &Plan,
) -> Result<ExitCode> {
    crate::infer::check_prompt_bytes(codec, prompt.len(), target.n_ctx()).map_err(|e| anyhow!(e))?;
    let messages = [("user".to_string(), prompt.to_string())];
    if args.print_prompt {
        out(&if args.chat { codec.chat(&messages).map_err(|e| anyhow!(e))? } else { prompt.to_string() })?;
        return Ok(ExitCode::SUCCESS);
    }
    // --chat: the prompt is a message's content, text inside the template's markers
    let tokens = if args.chat { codec.chat_tokens(&messages).map_err(|e| anyhow!(e))? } else { codec.tokenize(prompt) };
    let mut stdout = std::io::stdout();
    let stream: Option<&mut dyn Write> = if args.json { None } else { Some(&mut stdout) };
    let mut trace_file = args.trace_rounds.as_deref().map(crate::io::trace_rounds_file).transpose()?;
    let trace = trace_file.as_mut().map(|w| w as &mut dyn Write);
    if args.compare {
        let mut baseline = Engine::new(&mut *target, NoDraft, plan.gen.clone());
        let base = generate(&mut baseline, codec, &tokens, clock, None, &[], &interrupted)?;
        let mut engine = Engine::new(&mut *target, drafter, plan.gen.clone());
        let mut spec = generate_traced(&mut engine, codec, &tokens, clock, stream, &[], &interrupted, trace)?;
        spec.report.placement = Some(placement(plan));
        let cmp = CompareReport::new(base.report, spec.report);
        if args.json {
            out(&(serde_json::to_string(&cmp)? + "\n"))?;
        } else {
            out("\n")?;
            crate::io::note(format!("{}{}", cmp.speculative.stats_block(), cmp.summary()).trim_end());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut engine = Engine::new(&mut *target, drafter, plan.gen.clone());
    let mut generated = generate_traced(&mut engine, codec, &tokens, clock, stream, &[], &interrupted, trace)?;
    generated.report.placement = Some(placement(plan));
    if args.json {
        out(&(serde_json::to_string(&generated.report)? + "\n"))?;
    } else {
        out("\n")?;
        crate::io::note(generated.report.stats_block().trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the plan puts each model (what the backend was asked for).
pub fn placement(plan: &Plan) -> crate::formats::report::Placement {
    crate::formats::report::Placement { target: plan.target.placement_fields(), draft: plan.draft.as_ref().map(|d| d.placement_fields()) }
}
