//! The `specrun batch` command: a prompt file through one loaded pair to JSON Lines.
//!
//! Models load once; each record gets a fresh sequence (the caches are cleared per record).
//! Every output record is written with one `write_all` and flushed, so a crash can only cut
//! off the last line, which `--resume` detects and redoes. Ctrl-C finishes the current record,
//! flushes, and says how to resume. Exit codes: 0 all records ok, 1 some failed, 2 fatal.

use super::{EXIT_INTERRUPTED, EXIT_NEGATIVE};
use crate::cli::BatchArgs;
use crate::formats::records::{
    id_key, parse_input, scan_output, BadRecord, ErrorRecord, InputFormat, Job, OkRecord, OutputRecord, PromptInput,
};
use crate::infer::{generate, make_drafter, plan, with_backend, Plan};
use crate::io::read_text;
use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use specrun_core::draft::Drafter;
use specrun_core::engine::Engine;
use specrun_core::model::{Model, TextCodec};
use specrun_core::stats::{Clock, GenStats};
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An input file larger than this is refused.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;

/// The input format `--input-format` names, else by extension (`.txt`: one prompt per line).
pub fn input_format(path: &std::path::Path, flag: Option<InputFormat>) -> InputFormat {
    flag.unwrap_or(if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) { InputFormat::Txt } else { InputFormat::Jsonl })
}

/// `specrun batch`. Fatal errors are returned (one line, exit 2).
pub fn batch(args: &BatchArgs) -> Result<ExitCode> {
    let text = read_text(&args.input, MAX_INPUT_BYTES)?;
    let records = parse_input(&text, input_format(&args.input, args.input_format));
    if records.is_empty() {
        bail!("{}: no records (the file is empty)", args.input.display());
    }
    let plan = plan(&args.models.selection(), &args.gen.overrides())?;
    let done = prepare_output(args)?;
    let todo: Vec<_> = records.into_iter().filter(|r| !done.contains(&id_key(&record_id(r)))).collect();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // a second handler cannot be installed (tests run several batches in one process)
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    with_backend(&plan, args.models.mock, &mut |target, draft, codec, clock| {
        let drafter = make_drafter(plan.drafter, plan.ngram, draft);
        run_records(target, drafter, codec, clock, &plan, args, &todo, done.len(), &interrupted)
    })
}

fn record_id(r: &Result<Job, BadRecord>) -> serde_json::Value {
    match r {
        Ok(j) => j.id.clone(),
        Err(b) => b.id.clone(),
    }
}

/// Create, replace or repair the output file; return the ids it already holds.
fn prepare_output(args: &BatchArgs) -> Result<std::collections::HashSet<String>> {
    let out = &args.output;
    if !out.exists() {
        return Ok(Default::default());
    }
    if args.overwrite {
        std::fs::write(out, b"").with_context(|| format!("{}: cannot write", out.display()))?;
        return Ok(Default::default());
    }
    if !args.resume {
        bail!("{} exists: pass --resume to continue it or --overwrite to replace it", out.display());
    }
    let text = std::fs::read(out).with_context(|| format!("{}: cannot read", out.display()))?;
    let text = String::from_utf8_lossy(&text);
    let state = scan_output(&text);
    if state.valid_len < text.len() {
        crate::io::note(format!(
            "note: {}: dropping a cut-off record after {} whole records; it will be redone",
            out.display(),
            state.n_records
        ));
        let f = OpenOptions::new().write(true).open(out).with_context(|| format!("{}: cannot write", out.display()))?;
        f.set_len(state.valid_len as u64)?;
    }
    Ok(state.done)
}

struct Totals {
    ok: usize,
    failed: usize,
    stats: GenStats,
}

#[allow(clippy::too_many_arguments)]
fn run_records(
    target: &mut dyn Model,
    drafter: Box<dyn Drafter + '_>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    plan: &Plan,
    args: &BatchArgs,
    todo: &[Result<Job, BadRecord>],
    n_skipped: usize,
    interrupted: &AtomicBool,
) -> Result<ExitCode> {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .with_context(|| format!("{}: cannot write", args.output.display()))?;
    let t0 = clock.now();
    let bar = progress_bar(args, todo.len());
    let mut engine = Engine::new(target, drafter, plan.gen.clone());
    let mut totals = Totals { ok: 0, failed: 0, stats: GenStats::default() };
    for (i, rec) in todo.iter().enumerate() {
        if interrupted.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            crate::io::note(format!(
                "interrupted after {} of {} records; resume with the same command and --resume",
                n_skipped + i,
                n_skipped + todo.len()
            ));
            out.flush()?;
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        if args.debug_crash_after == Some(i) {
            out.write_all(b"{\"id\": \"half a rec")?;
            out.flush()?;
            std::process::abort();
        }
        let record = match rec {
            Ok(job) => run_job(&mut engine, codec, plan, args, job, clock),
            Err(bad) => OutputRecord::Error(ErrorRecord { id: bad.id.clone(), error: bad.error.clone() }),
        };
        match &record {
            OutputRecord::Ok(_) => totals.ok += 1,
            OutputRecord::Error(_) => totals.failed += 1,
        }
        let line = serde_json::to_string(&record)? + "\n";
        out.write_all(line.as_bytes()).and_then(|_| out.flush()).with_context(|| format!("{}: cannot write", args.output.display()))?;
        if let OutputRecord::Ok(r) = &record {
            totals.stats.n_generated += r.n_generated;
            totals.stats.n_drafted += r.n_drafted;
            totals.stats.n_accepted += r.n_accepted;
        }
        let secs = (clock.now() - t0).as_secs_f64();
        bar.set_message(format!(
            "{:.1} tok/s, acceptance {:.0}%",
            totals.stats.n_generated as f64 / secs.max(1e-9),
            100.0 * totals.stats.acceptance_rate()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !args.quiet {
        let wall = (clock.now() - t0).as_secs_f64();
        crate::io::note(format!("records   ok {}  failed {}  skipped (resumed) {}", totals.ok, totals.failed, n_skipped));
        crate::io::note(format!(
            "tokens    {} generated  acceptance {:.1}%  {:.2} tok/s overall  wall {:.1} s",
            totals.stats.n_generated,
            100.0 * totals.stats.acceptance_rate(),
            totals.stats.n_generated as f64 / wall.max(1e-9),
            wall
        ));
    }
    Ok(if totals.failed > 0 { ExitCode::from(EXIT_NEGATIVE) } else { ExitCode::SUCCESS })
}

fn progress_bar(args: &BatchArgs, n: usize) -> ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} records  {msg}  [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One record: its own sampling overrides over the plan, a fresh sequence, stop strings.
fn run_job<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    plan: &Plan,
    args: &BatchArgs,
    job: &Job,
    clock: &dyn Clock,
) -> OutputRecord {
    let fail = |e: String| OutputRecord::Error(ErrorRecord { id: job.id.clone(), error: e });
    match plan.resolve_with(&job.overrides) {
        Ok(r) => engine.config = r.gen,
        Err(e) => return fail(e.to_string()),
    }
    let prompt = match &job.input {
        PromptInput::Text(t) if args.chat => codec.chat(&[("user".into(), t.clone())]),
        PromptInput::Text(t) => Ok(t.clone()),
        PromptInput::Chat(m) => codec.chat(m),
    };
    let prompt = match prompt {
        Ok(p) => p,
        Err(e) => return fail(format!("line {}: {e}", job.line)),
    };
    let tokens = codec.tokenize(&prompt);
    match generate(engine, codec, &tokens, clock, None, &job.stop) {
        Ok(g) => {
            let r = g.report;
            OutputRecord::Ok(OkRecord {
                id: job.id.clone(),
                text: r.text,
                finish_reason: r.finish_reason,
                n_prompt: r.n_prompt,
                n_generated: r.n_generated,
                n_drafted: r.n_drafted,
                n_accepted: r.n_accepted,
                acceptance_rate: r.acceptance_rate,
                tokens_per_round: r.tokens_per_round,
                t_draft_s: r.t_draft_s,
                t_verify_s: r.t_verify_s,
                decode_tok_per_s: r.decode_tok_per_s,
            })
        }
        Err(e) => fail(format!("line {}: {}", job.line, anyhow!(e))),
    }
}
