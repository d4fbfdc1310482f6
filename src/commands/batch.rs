//! The `specrun batch` command: a prompt file through one loaded pair to JSON Lines.
//!
//! Models load once; each record gets a fresh sequence (the caches are cleared per record).
//! The input is read as a stream (`batch_input`): a scan, then one record at a time.
//! The output starts with a header naming the input's sha256 and the settings that change
//! results; every record is written with one `write_all` and flushed, so a crash can only cut
//! off the last line, which `--resume` detects and redoes. The output file is locked while a
//! batch writes it, is never the input, and must be a regular file (or `-`, stdout).
//! Ctrl-C stops at the next round without writing the unfinished record; a second Ctrl-C exits
//! at once. Exit codes: 0 all records ok, 1 some failed, 2 fatal, 130 interrupted.

use super::batch_input::Input;
use super::{EXIT_INTERRUPTED, EXIT_NEGATIVE};
use crate::cli::BatchArgs;
use crate::constraint::LazyVocabulary;
use crate::formats::openai::{self, ApiError, ChoiceOut, Endpoint, Meta, Usage};
use crate::formats::records::{
    detect_format, read_output, sidecar_path, ErrorRecord, Header, InputFormat, Job, OkRecord, OutputRecord, PromptInput, Record,
};
use crate::formats::tools::{split_calls, ToolRequest};
use crate::infer::{generate_cached, make_drafter_with_cache, plan, token_texts, with_backend, Interrupted, Plan, RoundTrace};
use crate::io::{install_interrupt_handler, interrupted, is_stdout, read_text};
use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use specrun_core::batching::{BatchJob, JobSource, NextJob, RunSink};
use specrun_core::clock::Clock;
use specrun_core::detok::TextStream;
use specrun_core::draft::Drafter;
use specrun_core::engine::{Engine, EngineError, GenConfig, Sequence};
use specrun_core::model::{Model, TextCodec};
use specrun_core::prefix_cache::PrefixCache;
use specrun_core::stats::GenStats;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;

/// A prompt file read whole (`bench --prompts`, `shards`) larger than this is refused.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;
/// An output file larger than this is not resumed.
pub const MAX_OUTPUT_BYTES: u64 = 4 << 30;

/// The input format `--input-format` names, else by extension (`.txt`: one prompt per line),
/// else by the first record (OpenAI batch lines have a `custom_id`).
pub fn input_format(path: &Path, flag: Option<InputFormat>, text: &str) -> InputFormat {
    named_format(path, flag).unwrap_or_else(|| detect_format(text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default()))
}

/// The input format `--input-format` or the extension names, if any.
fn named_format(path: &Path, flag: Option<InputFormat>) -> Option<InputFormat> {
    flag.or_else(|| path.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")).then_some(InputFormat::Txt))
}

/// Where records go, and in which format.
struct Sink {
    out: Out,
    /// For an OpenAI batch input: its output lines instead of specrun's records.
    openai: Option<OpenAiLines>,
}

enum Out {
    File(File),
    Stdout,
}

impl Sink {
    fn new(out: Out) -> Self {
        Self { out, openai: None }
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match &mut self.out {
            Out::File(f) => f.write_all(line.as_bytes()).and_then(|_| f.flush()),
            Out::Stdout => crate::io::out(line),
        }
    }

    /// One record, written whole; `asked` says what the OpenAI batch line asked, when it could
    /// be read.
    fn write_record(&mut self, rec: &OutputRecord, asked: &LineAsked) -> std::io::Result<()> {
        let line = match &mut self.openai {
            None => serde_json::to_string(rec).expect("records serialise"),
            Some(o) => o.line(rec, asked).to_string(),
        };
        self.write_line(&(line + "\n"))
    }
}

/// OpenAI Batch API output lines: `{"id", "custom_id", "response": {"status_code",
/// "request_id", "body"}, "error"}`, the body the endpoint's response object.
struct OpenAiLines {
    model: String,
    drafter: &'static str,
    created: u64,
    /// Prefix of request ids (the input's sha256, shortened).
    run: String,
    n: usize,
}

/// What an OpenAI batch line asked that shapes its output line: the endpoint, and the tools
/// its answer is read for calls of.
#[derive(Default)]
struct LineAsked {
    endpoint: Option<Endpoint>,
    tools: Option<Box<ToolRequest>>,
}

impl LineAsked {
    fn of(job: &mut Job) -> Self {
        Self { endpoint: job.openai, tools: job.tools.take() }
    }
}

impl OpenAiLines {
    fn line(&mut self, rec: &OutputRecord, asked: &LineAsked) -> Value {
        self.n += 1;
        let request_id = format!("req_{}_{}", self.run, self.n);
        let response = match rec {
            OutputRecord::Ok(r) => {
                let usage = Usage {
                    prompt_tokens: r.n_prompt,
                    cached_tokens: r.n_prompt_cached,
                    completion_tokens: r.n_generated,
                    drafter: self.drafter.to_string(),
                    n_drafted: r.n_drafted,
                    n_accepted: r.n_accepted,
                    n_rounds: if r.tokens_per_round > 0.0 { (r.n_generated as f64 / r.tokens_per_round).round() as usize } else { 0 },
                };
                // specrun's "context" (the context filled) is a length cut to OpenAI
                let finish = if r.finish_reason == "context" { "length" } else { r.finish_reason.as_str() };
                let meta = Meta { id: request_id.clone(), created: self.created, model: self.model.clone() };
                let (text, calls) = match asked.tools.as_deref().and_then(|t| split_calls(&r.text, &t.tools).map(|c| (t, c))) {
                    Some((t, (content, calls))) => {
                        let allowed = if t.parallel { calls.len() } else { 1 };
                        let ids = calls.into_iter().take(allowed).enumerate().map(|(k, c)| (format!("call_{request_id}_{k}"), c));
                        (content, ids.collect())
                    }
                    None => (r.text.clone(), Vec::new()),
                };
                let choice = ChoiceOut { text: &text, finish, logprobs: None, tool_calls: &calls };
                let body = openai::response_choices(asked.endpoint.unwrap_or(Endpoint::Chat), &meta, &[choice], &usage);
                serde_json::json!({"status_code": 200, "request_id": request_id, "body": body})
            }
            OutputRecord::Error(e) => {
                let body = ApiError::new(400, "invalid_request_error", None, e.error.clone()).body();
                serde_json::json!({"status_code": 400, "request_id": request_id, "body": body})
            }
        };
        serde_json::json!({"id": format!("batch_{request_id}"), "custom_id": rec.id(), "response": response, "error": null})
    }
}

/// `specrun batch`. Fatal errors are returned (one line, exit 2).
pub fn batch(args: &BatchArgs) -> Result<ExitCode> {
    let mut input = Input::scan(&args.input, named_format(&args.input, args.input_format), args.shard)?;
    let format = input.format;
    let mut plan = plan(&args.models.selection(), &args.gen.overrides())?;
    crate::infer::calibration::attach(&mut plan, args.models.mock);
    let n_parallel = parallelism(args, &plan);
    check_trace(args, n_parallel)?;
    let header = Header::new(input.sha256.clone(), fingerprint(&plan, args, format));
    let (mut sink, done) = prepare_output(args, &header)?;
    // created once the output is
    let mut trace = args.trace_rounds.as_deref().map(crate::io::trace_rounds_file).transpose()?;
    if format == InputFormat::Openai {
        sink.openai = Some(OpenAiLines {
            model: plan.pair.clone().unwrap_or_else(|| plan.target.name.clone()),
            drafter: plan.drafter.map_or("none", |d| d.as_str()),
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            run: header.specrun_batch.input_sha256[..12].to_string(),
            n: done.len(),
        });
    }
    // an output whose header matches holds only this input's ids, unless it was edited
    if let Some(stranger) = done.iter().find(|d| !input.holds(d)) {
        bail!("{}: holds id {stranger}, which is not in the input; refusing to resume", args.output.display());
    }
    let todo = Todo { n: input.n_records - done.len(), n_skipped: done.len() };
    let mut records = input.records(&done)?;
    install_interrupt_handler();
    if n_parallel > 1 {
        plan.target.n_seq = n_parallel as u32;
        if let Some(d) = &mut plan.draft {
            d.n_seq = n_parallel as u32;
        }
        if !args.quiet {
            crate::io::note(format!("{n_parallel} records in flight"));
        }
    }
    with_backend(&plan, args.models.mock, &mut |target, draft, codec, clock| {
        let texts = token_texts(codec, target.n_vocab());
        let drafter = make_drafter_with_cache(plan.drafter, plan.ngram, draft, &texts, args.draft_cache);
        let run = Run { codec, clock, plan: &plan, args, todo };
        if n_parallel > 1 {
            return run_parallel(target, drafter, &run, &mut records, &mut sink, n_parallel);
        }
        run_records(target, drafter, &run, &mut records, &mut sink, trace.as_mut().map(|w| &mut **w as &mut dyn Write))
    })
}

/// `--trace-rounds` traces one record at a time, and never onto the run's input, output or
/// models file.
fn check_trace(args: &BatchArgs, n_parallel: usize) -> Result<()> {
    let Some(path) = &args.trace_rounds else { return Ok(()) };
    if n_parallel > 1 {
        bail!("--trace-rounds traces one record at a time: use it with --parallel 1 ({n_parallel} records in flight here)");
    }
    if path.as_os_str() == "-" {
        return Ok(()); // stderr
    }
    let sidecar = sidecar_path(&args.output);
    let mut files: Vec<(&str, &std::path::Path)> = vec![("input", &args.input), ("-o", &args.output), ("-o settings", &sidecar)];
    if let Some(config) = &args.models.config {
        files.push(("--config", config));
    }
    if let Some((flag, _)) = files.iter().find(|(_, p)| *p == path.as_path()) {
        bail!("--trace-rounds {} is the {flag} file of this run; refusing to overwrite it", path.display());
    }
    crate::io::refuse_output_onto_input(&[("--trace-rounds", path)], &files)
}

/// What every record of a run shares.
struct Run<'a> {
    codec: &'a dyn TextCodec,
    clock: &'a dyn Clock,
    plan: &'a Plan,
    args: &'a BatchArgs,
    todo: Todo,
}

/// The records this run writes, and those an earlier run wrote (resumed).
#[derive(Debug, Clone, Copy)]
struct Todo {
    n: usize,
    n_skipped: usize,
}

/// The input's records as the run takes them: `(i, record)`, `i` counting from 0; an error
/// when the input cannot be read on.
type RecordStream<'r> = dyn Iterator<Item = Result<(usize, Record)>> + 'r;

fn interrupted_note(todo: Todo, n_written: usize) {
    crate::io::note(format!(
        "interrupted after {} of {} records; nothing partial was written; resume with the same command and --resume",
        todo.n_skipped + n_written,
        todo.n_skipped + todo.n
    ));
}

/// The prefix cache's budget: `--cache-ram`, none with `--no-prefix-cache`.
fn prefix_cache_bytes(args: &BatchArgs) -> usize {
    if args.no_prefix_cache {
        0
    } else {
        crate::backend::prefix_cache_bytes(args.cache_ram)
    }
}

/// Records in flight: `--parallel`, else the pair's `parallel`, else 1.
fn parallelism(args: &BatchArgs, plan: &Plan) -> usize {
    crate::infer::plan::sequences_in_flight(args.parallel.or(plan.parallel), plan, 1)
}

/// `--parallel N`: continuous batching over N slots ([`specrun_core::batching`]); records are
/// read as slots free and written in input order (a finished record waits for those before
/// it), so the output is the same file as with one record at a time.
fn run_parallel(
    target: &mut dyn Model,
    drafter: Box<dyn Drafter + '_>,
    run: &Run<'_>,
    records: &mut RecordStream<'_>,
    sink: &mut Sink,
    n_parallel: usize,
) -> Result<ExitCode> {
    use specrun_core::batching::{run_continuous_from, BatchEnd, SharedPolicy, Slots};
    let (args, codec, clock) = (run.args, run.codec, run.clock);
    let t0 = clock.now();
    let vocab = LazyVocabulary::new(codec, &*target);
    let mut engine = Engine::new(target, drafter, run.plan.gen.clone());
    let output = Rc::new(RefCell::new(Ordered {
        ready: BTreeMap::new(),
        next: 0,
        totals: Totals { ok: 0, failed: 0, stats: GenStats::default() },
        write_error: None,
        out: sink,
        out_name: args.output.display().to_string(),
        bar: progress_bar(args, run.todo.n),
    }));
    let mut source =
        RecordJobs { records, ahead: VecDeque::new(), output: output.clone(), run, vocab: &vocab, read_error: None, read_all: false };
    let mut finished = RecordSink {
        output: output.clone(),
        codec,
        texts: BTreeMap::new(),
        drafter_name: engine.drafter.name(),
        active: engine.drafter.is_active(),
    };
    let slots = Slots {
        n_parallel,
        prefill: crate::infer::plan::prefill(args.prefill_chunk),
        prompt_cache: args.prompt_cache,
        prefix_cache_bytes: prefix_cache_bytes(args),
    };
    let mut policy = SharedPolicy::new(run.plan.gen.cost_curve.clone());
    let outcome = run_continuous_from(&mut engine, &mut source, slots, &mut policy, clock, &mut finished);
    let read_error = source.read_error.take();
    drop((source, finished));
    let mut output = output.borrow_mut();
    output.write_ready();
    if let Some(e) = output.write_error.take() {
        return Err(e);
    }
    output.bar.finish_and_clear();
    let outcome = outcome.map_err(|e| anyhow!(e).context("a shared decode failed"))?;
    if outcome.end == BatchEnd::Cancelled {
        interrupted_note(run.todo, output.next);
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let Some(e) = read_error {
        return Err(e);
    }
    if !args.quiet {
        print_summary(&output.totals, run.todo.n_skipped, (clock.now() - t0).as_secs_f64());
        print_batching(&outcome.stats, n_parallel, args);
    }
    Ok(if output.totals.failed > 0 { ExitCode::from(EXIT_NEGATIVE) } else { ExitCode::SUCCESS })
}

/// What the shared rounds of a `--parallel` run did, on stderr.
fn print_batching(bstats: &specrun_core::batching::BatchStats, n_parallel: usize, args: &BatchArgs) {
    crate::io::note(format!(
        "batching  {n_parallel} slots  {} shared rounds ({} in the tail, no record left to take a free slot)  {:.2} records in flight on average  {:.2} tokens per target decode",
        bstats.n_rounds,
        bstats.n_tail_rounds,
        bstats.mean_active(),
        bstats.tokens_per_decode(),
    ));
    let plans = bstats.plan_check;
    if plans.n_rounds > 0 {
        crate::io::note(format!(
            "plans     {} rounds planned with known costs: {:.2} of the tokens and {:.2} of the time they expected",
            plans.n_rounds,
            plans.tokens_ratio(),
            plans.time_ratio(),
        ));
    }
    if bstats.n_held_rounds > 0 {
        crate::io::note(format!(
            "outlook   drafts held in {} rounds (played to the end, the work left ended sooner plainly)",
            bstats.n_held_rounds
        ));
    }
    if bstats.n_pauses > 0 {
        crate::io::note(format!(
            "guard     drafting paused {} times, {} rounds in all (drafted rounds measured slower than plain ones)",
            bstats.n_pauses, bstats.n_paused_rounds
        ));
    }
    let from_slots = bstats.n_prompt_cached - bstats.n_prompt_restored - bstats.n_prompt_shared;
    if from_slots > 0 {
        crate::io::note(format!("prompts   {from_slots} tokens kept from the record before in the slot (--prompt-cache)"));
    }
    if bstats.n_prompt_shared > 0 {
        crate::io::note(format!("prompts   {} tokens shared from records read at the same time in other slots", bstats.n_prompt_shared));
    }
    if bstats.n_prompt_restored > 0 {
        let p = &bstats.prefix_cache;
        crate::io::note(format!(
            "prompts   {} tokens restored from the prefix cache in {} records ({} entries kept, {} evicted; --cache-ram)",
            bstats.n_prompt_restored, p.n_restores, p.n_saved, p.n_evicted
        ));
    }
    if bstats.n_prompt_rounds > 0 {
        crate::io::note(format!(
            "prompts   {} tokens read inside {} shared rounds (--prefill-chunk {})",
            bstats.n_prompt_in_rounds, bstats.n_prompt_rounds, args.prefill_chunk
        ));
    }
    crate::io::note(format!(
        "time      prefill {:.1} s  decode {:.1} s  {:.2} tok/s aggregate in decode rounds",
        bstats.t_prefill.as_secs_f64(),
        bstats.t_decode.as_secs_f64(),
        bstats.decode_tok_per_s(),
    ));
}

/// Records waiting to be written while one before them is in flight, beyond which the
/// source reads no further (a file of bad lines behind a long record stays small in memory).
const MAX_WAITING: usize = 4096;

/// The output of a `--parallel` run, written in input order: a record waits here until those
/// before it are written. The job source puts the records that cannot run (bad lines, bad
/// settings), the run sink the finished ones.
struct Ordered<'o> {
    ready: BTreeMap<usize, (OutputRecord, LineAsked)>,
    /// The next record to write.
    next: usize,
    totals: Totals,
    write_error: Option<anyhow::Error>,
    out: &'o mut Sink,
    out_name: String,
    bar: ProgressBar,
}

impl Ordered<'_> {
    fn put(&mut self, i: usize, record: OutputRecord, asked: LineAsked) {
        self.ready.insert(i, (record, asked));
        self.write_ready();
    }

    /// Write every record whose predecessors are all written.
    fn write_ready(&mut self) {
        while self.write_error.is_none() {
            let Some((rec, asked)) = self.ready.remove(&self.next) else { break };
            match &rec {
                OutputRecord::Ok(r) => {
                    self.totals.ok += 1;
                    self.totals.stats.n_generated += r.n_generated;
                    self.totals.stats.n_drafted += r.n_drafted;
                    self.totals.stats.n_accepted += r.n_accepted;
                }
                OutputRecord::Error(_) => self.totals.failed += 1,
            }
            if let Err(e) = self.out.write_record(&rec, &asked) {
                self.write_error = Some(anyhow::Error::new(e).context(format!("{}: cannot write", self.out_name)));
            }
            self.next += 1;
            self.bar.inc(1);
        }
    }
}

/// A record in flight: its place in the run, and the record.
struct InFlight {
    i: usize,
    job: Box<Job>,
}

/// The records as jobs for free slots, read as the run asks (and a few ahead, for the run's
/// outlook); those that cannot run go straight to the output.
struct RecordJobs<'a, 'r, 'o> {
    records: &'a mut RecordStream<'r>,
    ahead: VecDeque<BatchJob<InFlight>>,
    output: Rc<RefCell<Ordered<'o>>>,
    run: &'a Run<'a>,
    vocab: &'a LazyVocabulary<'a>,
    /// The input could not be read on: the run ends when the records in flight do.
    read_error: Option<anyhow::Error>,
    read_all: bool,
}

impl RecordJobs<'_, '_, '_> {
    /// The next record that can run; None at the end, or while too many records wait to be
    /// written ([`MAX_WAITING`]).
    fn read(&mut self) -> Option<BatchJob<InFlight>> {
        while !self.read_all && self.output.borrow().ready.len() < MAX_WAITING {
            match self.records.next() {
                None => self.read_all = true,
                Some(Err(e)) => {
                    self.read_error = Some(e);
                    self.read_all = true;
                }
                Some(Ok((i, Err(bad)))) => {
                    let record = OutputRecord::Error(ErrorRecord::new(bad.id.clone(), bad.error()));
                    self.output.borrow_mut().put(i, record, LineAsked::default());
                }
                Some(Ok((i, Ok(mut job)))) => match prepare_job(self.run.codec, self.vocab, self.run.plan, self.run.args, &job) {
                    Ok((config, prompt)) => return Some(BatchJob { tag: InFlight { i, job }, config, prompt }),
                    Err(error) => {
                        let record = OutputRecord::Error(ErrorRecord::new(job.id.clone(), error));
                        self.output.borrow_mut().put(i, record, LineAsked::of(&mut job));
                    }
                },
            }
        }
        None
    }
}

impl JobSource<InFlight> for RecordJobs<'_, '_, '_> {
    fn next_job(&mut self, _idle: bool) -> NextJob<InFlight> {
        match self.ahead.pop_front().or_else(|| self.read()) {
            Some(job) => NextJob::Job(job),
            None if self.read_all => NextJob::Closed,
            None => NextJob::Later,
        }
    }

    fn exhausted(&mut self) -> bool {
        if self.ahead.is_empty() {
            let next = self.read();
            self.ahead.extend(next);
        }
        self.ahead.is_empty() && self.read_all
    }

    fn upcoming(&mut self, n: usize) -> Option<Vec<GenConfig>> {
        while self.ahead.len() < n {
            let Some(job) = self.read() else { break };
            self.ahead.push_back(job);
        }
        // fewer than asked and not at the end: the source cannot say what is left
        (self.ahead.len() >= n || self.read_all).then(|| self.ahead.iter().take(n).map(|j| j.config.clone()).collect())
    }
}

/// Where a `--parallel` run's records go: each record's text streamed ([`TextStream`]), the
/// finished record to the ordered output.
struct RecordSink<'a, 'o> {
    output: Rc<RefCell<Ordered<'o>>>,
    codec: &'a dyn TextCodec,
    texts: BTreeMap<usize, TextStream>,
    drafter_name: &'static str,
    active: bool,
}

impl RunSink<InFlight> for RecordSink<'_, '_> {
    fn tokens(&mut self, tag: &mut InFlight, seq: &Sequence, added: std::ops::Range<usize>) -> bool {
        let text = self.texts.entry(tag.i).or_insert_with(|| TextStream::new(tag.job.stop.clone()));
        for &t in &seq.tokens[added] {
            text.push(&self.codec.piece(t));
        }
        text.stopped()
    }

    fn finished(&mut self, tag: InFlight, result: Result<Sequence, EngineError>) {
        let InFlight { i, mut job } = tag;
        let record = match result {
            Ok(seq) => {
                let text = self.texts.remove(&i).unwrap_or_else(|| TextStream::new(job.stop.clone()));
                let finish = seq.finish.unwrap_or(specrun_core::stats::FinishReason::Length);
                let verify = seq.config.effective_verify();
                let draft_max = if self.active { seq.config.draft_max } else { 0 };
                let r = crate::formats::report::RunReport::new(
                    text.into_text(),
                    finish,
                    self.drafter_name,
                    seq.config.adaptive,
                    verify.as_str(),
                    draft_max,
                    &seq.stats,
                );
                OutputRecord::Ok(ok_record(&job, r))
            }
            Err(e) => {
                let text = self.texts.remove(&i).map(TextStream::into_text).filter(|t| !t.is_empty());
                OutputRecord::Error(ErrorRecord { id: job.id.clone(), error: format!("line {}: {e}", job.line), text })
            }
        };
        self.output.borrow_mut().put(i, record, LineAsked::of(&mut job));
    }

    fn cancel(&mut self) -> bool {
        interrupted()
    }

    fn cancelled(&mut self, tag: InFlight) {
        self.texts.remove(&tag.i);
    }
}

/// A record's settings and prompt tokens, or the error record's message.
fn prepare_job(
    codec: &dyn TextCodec,
    vocab: &LazyVocabulary<'_>,
    plan: &Plan,
    args: &BatchArgs,
    job: &Job,
) -> Result<(specrun_core::engine::GenConfig, Vec<specrun_core::model::Token>), String> {
    let mut config = plan.resolve_with(&job.overrides).map_err(|e| e.to_string())?.gen;
    if let Some(g) = &job.grammar {
        config.constraint = Some(vocab.compile(g).map_err(|e| format!("line {}: {e}", job.line))?);
    }
    let bytes = job.input.text_bytes();
    crate::infer::check_prompt_bytes(codec, bytes, plan.target.n_ctx as usize).map_err(|e| format!("line {}: {e}", job.line))?;
    // messages' contents are text (a turn marker written in one stays characters); a raw
    // `prompt` is the file's own text, control tokens included
    let tokens = match &job.input {
        PromptInput::Text(t) if args.chat => codec.chat_tokens(&[("user".into(), t.clone())]),
        PromptInput::Text(t) => Ok(codec.tokenize(t)),
        PromptInput::Chat(m) => codec.chat_tokens(m),
        PromptInput::Template(c) => crate::formats::chat_template::template_tokens(codec, c),
    }
    .map_err(|e| format!("line {}: {e}", job.line))?;
    Ok((config, tokens))
}

fn ok_record(job: &Job, r: crate::formats::report::RunReport) -> OkRecord {
    OkRecord {
        id: job.id.clone(),
        text: r.text,
        finish_reason: r.finish_reason,
        n_prompt: r.n_prompt,
        n_prompt_cached: r.n_prompt_cached,
        n_generated: r.n_generated,
        n_drafted: r.n_drafted,
        n_accepted: r.n_accepted,
        acceptance_rate: r.acceptance_rate,
        tokens_per_round: r.tokens_per_round,
        t_draft_s: r.t_draft_s,
        t_verify_s: r.t_verify_s,
        decode_tok_per_s: r.decode_tok_per_s,
        n_forced: r.n_forced,
        n_forced_accepted: r.n_forced_accepted,
        n_closing: r.n_closing,
        n_closing_accepted: r.n_closing_accepted,
        n_likely: r.n_likely,
        n_likely_accepted: r.n_likely_accepted,
        n_rows_unread: r.n_rows_unread,
    }
}

/// The settings that change a record's output: the target, the generation limits and the
/// sampling settings — and, when sampling, the drafter (its proposals consume random numbers).
/// Threads, batch size and greedy drafting settings do not change results and may differ
/// between a run and its resume.
fn fingerprint(plan: &Plan, args: &BatchArgs, format: InputFormat) -> serde_json::Map<String, Value> {
    let file = |p: &Path| {
        let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
        let size = std::fs::metadata(p).map(|m| m.len()).ok();
        serde_json::json!({ "file": name, "bytes": size })
    };
    let g = &plan.gen;
    let mut m = serde_json::Map::new();
    m.insert("target".into(), if args.models.mock { Value::from("mock") } else { file(&plan.target.path) });
    m.insert("input_format".into(), Value::from(format!("{format:?}").to_lowercase()));
    m.insert("chat".into(), Value::from(args.chat));
    if let Some(s) = args.shard {
        m.insert("shard".into(), Value::from(format!("{}/{}", s.index, s.count)));
    }
    m.insert("max_tokens".into(), Value::from(g.max_tokens));
    m.insert("temp".into(), Value::from(g.params.temp));
    m.insert("top_k".into(), Value::from(g.params.top_k));
    m.insert("top_p".into(), Value::from(g.params.top_p));
    m.insert("min_p".into(), Value::from(g.params.min_p));
    m.insert("repeat_penalty".into(), Value::from(g.params.repeat_penalty));
    // later settings: written only when set, so that earlier outputs still resume
    if g.params.frequency_penalty != 0.0 {
        m.insert("frequency_penalty".into(), Value::from(g.params.frequency_penalty));
    }
    if g.params.presence_penalty != 0.0 {
        m.insert("presence_penalty".into(), Value::from(g.params.presence_penalty));
    }
    if !g.params.logit_bias.is_empty() {
        m.insert("logit_bias".into(), serde_json::json!(g.params.logit_bias));
    }
    m.insert("seed".into(), Value::from(g.seed));
    if !g.params.is_greedy() {
        m.insert("verify".into(), Value::from(g.verify.as_str()));
        m.insert("drafter".into(), Value::from(plan.drafter.map_or("none", |d| d.as_str())));
        if let Some(d) = &plan.draft {
            m.insert("draft".into(), if args.models.mock { Value::from("mock") } else { file(&d.path) });
        }
        m.insert("draft_max".into(), Value::from(g.draft_max));
        m.insert("adaptive".into(), Value::from(format!("{:?}", g.adaptive).to_lowercase()));
        m.insert("calibrated".into(), Value::from(g.cost_curve.is_some()));
    }
    m
}

/// Open (and lock) the output, create, replace or check and repair it; return where to write
/// and the ids it already holds.
fn prepare_output(args: &BatchArgs, header: &Header) -> Result<(Sink, HashSet<String>)> {
    let out = &args.output;
    if is_stdout(out) {
        if args.resume {
            bail!("--resume needs an output file, not - (stdout)");
        }
        return Ok((Sink::new(Out::Stdout), HashSet::new()));
    }
    let name = out.display().to_string();
    let existed = match std::fs::metadata(out) {
        Ok(m) if !m.is_file() => bail!("{name}: not a regular file (write to a file, or to - for stdout)"),
        Ok(_) => true,
        Err(_) => false,
    };
    if existed && same_file::is_same_file(out, &args.input).unwrap_or(false) {
        bail!("{name} is the input file {}; write the output elsewhere", args.input.display());
    }
    if existed && !args.resume && !args.overwrite {
        bail!("{name} exists: pass --resume to continue it or --overwrite to replace it");
    }
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(out).with_context(|| format!("{name}: cannot open"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!("{name} is being written by another specrun batch (it is locked)"),
        Err(std::fs::TryLockError::Error(e)) => return Err(anyhow!(e).context(format!("{name}: cannot lock"))),
    }
    let mut done = HashSet::new();
    let mut keep = 0u64;
    if existed && args.resume {
        let text = read_text(out, MAX_OUTPUT_BYTES)?;
        let state = read_output(out, &text).map_err(|e| anyhow!("{name}: {e}; refusing to resume (is -o the right file?)"))?;
        if let Some(old) = &state.header {
            if let Some(why) = old.mismatch(header) {
                bail!("{name} cannot be resumed: {why} (run with the same input and settings, or --overwrite)");
            }
        }
        if state.valid_len < text.len() {
            crate::io::note(format!("note: {name}: dropping a cut-off record after {} whole records; it will be redone", state.n_records));
        }
        keep = state.valid_len as u64;
        done = state.done;
    }
    file.set_len(keep).with_context(|| format!("{name}: cannot write"))?;
    file.seek(SeekFrom::End(0)).with_context(|| format!("{name}: cannot write"))?;
    if keep == 0 {
        write_sidecar(out, header)?;
    }
    Ok((Sink::new(Out::File(file)), done))
}

/// The output's settings, beside it ([`sidecar_path`]), written whole or not at all.
fn write_sidecar(out: &Path, header: &Header) -> Result<()> {
    let path = sidecar_path(out);
    let name = path.display().to_string();
    if same_file::is_same_file(&path, out).unwrap_or(false) {
        bail!("{name} is the output itself");
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(header)? + "\n").with_context(|| format!("{name}: cannot write"))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{name}: cannot write"))
}

struct Totals {
    ok: usize,
    failed: usize,
    stats: GenStats,
}

/// One record at a time, each written as it finishes.
fn run_records(
    target: &mut dyn Model,
    drafter: Box<dyn Drafter + '_>,
    run: &Run<'_>,
    records: &mut RecordStream<'_>,
    sink: &mut Sink,
    mut trace: Option<&mut dyn Write>,
) -> Result<ExitCode> {
    let (args, codec, clock) = (run.args, run.codec, run.clock);
    let out_name = args.output.display().to_string();
    let t0 = clock.now();
    let bar = progress_bar(args, run.todo.n);
    let vocab = LazyVocabulary::new(codec, &*target);
    let mut engine = Engine::new(target, drafter, run.plan.gen.clone());
    let mut store = PrefixCache::new(prefix_cache_bytes(args));
    let mut totals = Totals { ok: 0, failed: 0, stats: GenStats::default() };
    for item in records {
        let (i, rec) = item?;
        if args.debug_crash_after == Some(i) {
            if let Out::File(f) = &mut sink.out {
                f.write_all(b"{\"id\": \"half a rec")?;
                f.flush()?;
            }
            std::process::abort();
        }
        let (record, asked) = match rec {
            Ok(mut job) => match run_job(&mut engine, run, &vocab, &job, &mut store, trace.as_mut().map(|w| &mut **w as &mut dyn Write)) {
                Ok((r, generated)) => {
                    if let Some(tokens) = generated {
                        engine.drafter.learn(&tokens);
                    }
                    (r, LineAsked::of(&mut job))
                }
                Err(e) if e.downcast_ref::<Interrupted>().is_some() || interrupted() => {
                    bar.finish_and_clear();
                    interrupted_note(run.todo, i);
                    return Ok(ExitCode::from(EXIT_INTERRUPTED));
                }
                Err(e) => {
                    let text = e.downcast_ref::<crate::infer::FailedAfter>().map(|f| f.text.clone()).filter(|t| !t.is_empty());
                    let record = OutputRecord::Error(ErrorRecord { id: job.id.clone(), error: format!("line {}: {e:#}", job.line), text });
                    (record, LineAsked::of(&mut job))
                }
            },
            Err(bad) => (OutputRecord::Error(ErrorRecord::new(bad.id.clone(), bad.error())), LineAsked::default()),
        };
        match &record {
            OutputRecord::Ok(_) => totals.ok += 1,
            OutputRecord::Error(_) => totals.failed += 1,
        }
        sink.write_record(&record, &asked).with_context(|| format!("{out_name}: cannot write"))?;
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
        print_summary(&totals, run.todo.n_skipped, (clock.now() - t0).as_secs_f64());
        let p = &store.stats;
        if p.n_restores > 0 {
            crate::io::note(format!(
                "prompts   {} tokens restored from the prefix cache in {} records ({} entries kept, {} evicted; --cache-ram)",
                p.n_restored_tokens, p.n_restores, p.n_saved, p.n_evicted
            ));
        }
    }
    Ok(if totals.failed > 0 { ExitCode::from(EXIT_NEGATIVE) } else { ExitCode::SUCCESS })
}

/// The two summary lines on stderr.
fn print_summary(totals: &Totals, n_skipped: usize, wall: f64) {
    crate::io::note(format!("records   ok {}  failed {}  skipped (resumed) {}", totals.ok, totals.failed, n_skipped));
    crate::io::note(format!(
        "tokens    {} generated  acceptance {:.1}%  {:.2} tok/s overall  wall {:.1} s",
        totals.stats.n_generated,
        100.0 * totals.stats.acceptance_rate(),
        totals.stats.n_generated as f64 / wall.max(1e-9),
        wall
    ));
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

/// One record: its own settings over the plan's, a fresh sequence, stop strings. A record
/// that fails (bad settings, a prompt too long for the context, a model error) becomes an
/// error record; only an interruption is returned as `Err`.
fn run_job<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    run: &Run<'_>,
    vocab: &LazyVocabulary<'_>,
    job: &Job,
    store: &mut PrefixCache,
    trace: Option<&mut dyn Write>,
) -> Result<(OutputRecord, Option<Vec<specrun_core::model::Token>>)> {
    let fail = |e: String| Ok((OutputRecord::Error(ErrorRecord::new(job.id.clone(), e)), None));
    let (config, tokens) = match prepare_job(run.codec, vocab, run.plan, run.args, job) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let trace = trace.map(|out| RoundTrace { out, id: Some(&job.id) });
    let g = generate_cached(engine, run.codec, &tokens, config, store, run.clock, &job.stop, &interrupted, trace)?;
    let record = OutputRecord::Ok(ok_record(job, g.report));
    Ok((record, Some(g.tokens)))
}
