//! The model side of `specrun serve`: one thread owns the models and runs continuous batching
//! ([`specrun_core::batching::run_continuous_from`]) over a bounded queue of requests, each
//! with a channel back to its HTTP handler.
//!
//! A request joins the shared rounds as soon as a slot is free. Its tokens go back as text
//! deltas (whole UTF-8 characters, cut at a stop string); when the handler's receiver is gone
//! (the client disconnected), the sequence ends at the next round and its cells are freed at
//! once. A request that cannot start (bad settings, a prompt longer than the context) fails
//! alone; a shared decode that fails fails the requests in flight (their channels close) and
//! the loop goes on with the next ones.

use crate::formats::openai::LogprobEntry;
use crate::formats::records::PromptInput;
use crate::infer::Plan;
use crate::settings::Overrides;
use specrun_core::batching::{run_continuous_from, BatchJob, BatchStats, JobSource, NextJob, RunSink, SharedPolicy, Slots};
use specrun_core::clock::Clock;
use specrun_core::detok::TextStream;
use specrun_core::draft::Drafter;
use specrun_core::engine::{Engine, EngineError, Sequence};
use specrun_core::model::{Model, TextCodec};
use specrun_core::sampling::TokenLogprob;
use specrun_core::stats::{FinishReason, GenStats};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// One request for the model thread.
pub struct ServeRequest {
    pub prompt: PromptInput,
    pub overrides: Overrides,
    /// The constraint, and the request field that asked for it.
    pub grammar: Option<(&'static str, crate::constraint::Grammar)>,
    pub stops: Vec<String>,
    /// Each token's log-probability, with this many alternatives.
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
}

/// What the model thread tells a request's handler, in order: `Started`, any number of
/// `Text`, then `Done`; or `Failed` instead of all of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        n_prompt: usize,
    },
    Text(String),
    /// The log-probabilities of the tokens of the `Text` that follows (when the request asked).
    Logprobs(Vec<LogprobEntry>),
    Done {
        finish: FinishReason,
        stats: Box<GenStats>,
    },
    Failed(Failure),
}

/// Why a request could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The prompt does not fit the context.
    TooLong { n_prompt: usize, n_ctx: usize },
    /// A setting out of range (the message names it), a chat template that failed, an empty prompt.
    Invalid(String),
    /// A request field that cannot be used (a grammar that does not compile).
    InvalidField { param: &'static str, message: String },
    /// The model failed.
    Model(String),
}

/// Counters `/metrics` shows (Prometheus text format).
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests_ok: AtomicU64,
    pub requests_invalid: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub rounds: AtomicU64,
    pub drafted: AtomicU64,
    pub accepted: AtomicU64,
    /// Shared rounds (one target decode for every request in flight), the tokens they
    /// decoded, and the rounds in which the run's guard had paused drafting (and how often it
    /// paused): what [`BatchStats`] counts, summed over the server's life.
    pub shared_rounds: AtomicU64,
    pub decoded_tokens: AtomicU64,
    /// Prompt tokens read inside the shared rounds, and the rounds that carried some.
    pub prompt_in_rounds_tokens: AtomicU64,
    pub prompt_cached_tokens: AtomicU64,
    /// Of those, the ones the prefix cache restored, and the bytes it holds now.
    pub prompt_restored_tokens: AtomicU64,
    /// Of those, the ones shared from another slot's cells.
    pub prompt_shared_tokens: AtomicU64,
    pub prefix_cache_bytes: AtomicU64,
    pub prompt_rounds: AtomicU64,
    pub draft_paused_rounds: AtomicU64,
    pub draft_pauses: AtomicU64,
    /// Microseconds spent reading prompts and in shared rounds.
    pub prefill_us: AtomicU64,
    pub decode_us: AtomicU64,
    /// The shared rounds' plans against what the rounds did ([`BatchStats::plan_check`]):
    /// expected tokens (thousandths: an expectation is fractional), emitted tokens, expected
    /// and measured microseconds.
    pub plan_expected_mtokens: AtomicU64,
    pub plan_tokens: AtomicU64,
    pub plan_expected_us: AtomicU64,
    pub plan_us: AtomicU64,
    pub queue_depth: AtomicUsize,
    pub in_flight: AtomicUsize,
    /// Time to first token: bucket counts (cumulative at render), sum and count.
    ttft: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Upper bounds of the time-to-first-token histogram, in seconds.
pub const TTFT_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    pub fn observe_ttft(&self, secs: f64) {
        let mut h = self.ttft.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = TTFT_BUCKETS.iter().position(|&b| secs <= b) {
            h.counts[i] += 1;
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The Prometheus text exposition; `drafter` labels the draft counters.
    pub fn render(&self, drafter: &str) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP specrun_{name} {help}\n# TYPE specrun_{name} counter");
            for (labels, v) in values {
                let _ = writeln!(s, "specrun_{name}{labels} {v}");
            }
        };
        counter(
            "requests_total",
            "Completion requests by outcome.",
            &[
                ("{outcome=\"ok\"}", get(&self.requests_ok)),
                ("{outcome=\"invalid\"}", get(&self.requests_invalid)),
                ("{outcome=\"rejected\"}", get(&self.requests_rejected)),
                ("{outcome=\"failed\"}", get(&self.requests_failed)),
                ("{outcome=\"cancelled\"}", get(&self.requests_cancelled)),
            ],
        );
        counter("prompt_tokens_total", "Prompt tokens read.", &[("", get(&self.prompt_tokens))]);
        counter("completion_tokens_total", "Tokens generated.", &[("", get(&self.completion_tokens))]);
        counter("rounds_total", "Speculative rounds (one target decode each, per sequence).", &[("", get(&self.rounds))]);
        let label = format!("{{drafter=\"{drafter}\"}}");
        counter("drafted_tokens_total", "Draft tokens proposed.", &[(&label, get(&self.drafted))]);
        counter("accepted_tokens_total", "Draft tokens accepted.", &[(&label, get(&self.accepted))]);
        counter("shared_rounds_total", "Target decodes shared by the requests in flight.", &[("", get(&self.shared_rounds))]);
        counter(
            "decoded_tokens_total",
            "Tokens the shared target decodes carried (last tokens and drafts).",
            &[("", get(&self.decoded_tokens))],
        );
        counter(
            "prompt_in_rounds_tokens_total",
            "Prompt tokens read inside the shared rounds, beside the running requests' tokens.",
            &[("", get(&self.prompt_in_rounds_tokens))],
        );
        counter(
            "prompt_cached_tokens_total",
            "Prompt tokens not read: a slot kept them from the request before (--prompt-cache), the prefix cache restored them (--cache-ram), or another slot's cells were shared.",
            &[("", get(&self.prompt_cached_tokens))],
        );
        counter(
            "prompt_restored_tokens_total",
            "Prompt tokens the host-memory prefix cache restored into a slot (--cache-ram).",
            &[("", get(&self.prompt_restored_tokens))],
        );
        counter(
            "prompt_shared_tokens_total",
            "Prompt tokens shared from another slot's cells: a request in flight, or still reading the same prompt, or a free slot's kept cells.",
            &[("", get(&self.prompt_shared_tokens))],
        );
        counter("prompt_rounds_total", "Shared rounds that read prompt tokens.", &[("", get(&self.prompt_rounds))]);
        counter(
            "draft_paused_rounds_total",
            "Shared rounds in which drafting was paused because drafted rounds measured slower than plain ones.",
            &[("", get(&self.draft_paused_rounds))],
        );
        counter("draft_pauses_total", "Times drafting was paused by that measurement.", &[("", get(&self.draft_pauses))]);
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        for (name, help, v) in [
            ("prefill_seconds_total", "Time spent reading prompts between rounds (and admitting requests).", secs(&self.prefill_us)),
            ("decode_seconds_total", "Time spent in shared rounds (with the prompt chunks read in them).", secs(&self.decode_us)),
            (
                "planned_tokens_expected_total",
                "Tokens the draft-length plans expected of the shared rounds they priced.",
                self.plan_expected_mtokens.load(Ordering::Relaxed) as f64 / 1e3,
            ),
            ("planned_tokens_total", "Tokens those rounds emitted.", self.plan_tokens.load(Ordering::Relaxed) as f64),
            ("planned_seconds_expected_total", "Seconds the cost model expected of those rounds.", secs(&self.plan_expected_us)),
            ("planned_seconds_total", "Seconds those rounds took.", secs(&self.plan_us)),
        ] {
            let _ = writeln!(s, "# HELP specrun_{name} {help}\n# TYPE specrun_{name} counter\nspecrun_{name} {v}");
        }
        for (name, help, v) in [
            ("queue_depth", "Requests waiting for a slot.", self.queue_depth.load(Ordering::Relaxed)),
            ("requests_in_flight", "Requests being generated.", self.in_flight.load(Ordering::Relaxed)),
            (
                "prefix_cache_bytes",
                "Host memory the prefix cache holds (--cache-ram).",
                self.prefix_cache_bytes.load(Ordering::Relaxed) as usize,
            ),
        ] {
            let _ = writeln!(s, "# HELP specrun_{name} {help}\n# TYPE specrun_{name} gauge\nspecrun_{name} {v}");
        }
        let h = self.ttft.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            s,
            "# HELP specrun_time_to_first_token_seconds From request to first token.\n# TYPE specrun_time_to_first_token_seconds histogram"
        );
        let mut cum = 0;
        for (b, c) in TTFT_BUCKETS.iter().zip(h.counts) {
            cum += c;
            let _ = writeln!(s, "specrun_time_to_first_token_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(s, "specrun_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(s, "specrun_time_to_first_token_seconds_sum {}", h.sum);
        let _ = writeln!(s, "specrun_time_to_first_token_seconds_count {}", h.count);
        s
    }
}

/// A request in flight: its channel, its text so far, and how far its log-probabilities
/// were sent.
struct Request {
    events: UnboundedSender<Event>,
    text: TextStream,
    /// With logprobs: how many tokens' entries were sent, and where the next one's text starts.
    lp_sent: usize,
    lp_offset: usize,
}

/// The queue as the batching loop's job source: waits (briefly, so that cancellation is
/// seen) when nothing is in flight, otherwise takes only what is already there.
struct Queue<'a> {
    rx: &'a Receiver<ServeRequest>,
    codec: &'a dyn TextCodec,
    vocab: &'a crate::constraint::LazyVocabulary<'a>,
    plan: &'a Plan,
    metrics: &'a Metrics,
    /// The run's counters at the last round (the metrics get what changed since).
    seen: BatchStats,
}

impl Queue<'_> {
    /// Turn a request into a job, or answer it with a failure.
    fn job(&self, r: ServeRequest) -> Option<BatchJob<Request>> {
        let fail = |f: Failure| {
            let _ = r.events.send(Event::Failed(f));
            None
        };
        if let Err(message) = crate::infer::check_prompt_bytes(self.codec, r.prompt.text_bytes(), self.plan.target.n_ctx as usize) {
            let param = if matches!(r.prompt, PromptInput::Text(_)) { "prompt" } else { "messages" };
            return fail(Failure::InvalidField { param, message });
        }
        // a request's text is text: spellings of control tokens in it stay characters
        let prompt = match &r.prompt {
            PromptInput::Text(t) => self.codec.tokenize_plain(t),
            PromptInput::Chat(m) => match self.codec.chat_tokens(m) {
                Ok(t) => t,
                Err(e) => return fail(Failure::Invalid(format!("the chat template failed: {e}"))),
            },
            PromptInput::Template(c) => match crate::formats::chat_template::template_tokens(self.codec, c) {
                Ok(t) => t,
                Err(message) => {
                    return fail(Failure::InvalidField { param: if c.tools.is_empty() { "messages" } else { "tools" }, message })
                }
            },
        };
        let resolved = match self.plan.resolve_with(&r.overrides) {
            Ok(x) => x,
            Err(e) => return fail(Failure::Invalid(e.to_string())),
        };
        let mut config = resolved.gen;
        config.logprobs = r.logprobs;
        if resolved.drafter.is_none() {
            config.draft_max = 0;
        }
        if let Some((param, g)) = &r.grammar {
            match self.vocab.compile(g) {
                Ok(spec) => config.constraint = Some(spec),
                Err(e) => return fail(Failure::InvalidField { param, message: format!("{e:#}") }),
            }
        }
        let request = Request { events: r.events, text: TextStream::new(r.stops), lp_sent: 0, lp_offset: 0 };
        Some(BatchJob { tag: request, config, prompt })
    }
}

impl JobSource<Request> for Queue<'_> {
    fn next_job(&mut self, idle: bool) -> NextJob<Request> {
        loop {
            let r = if idle {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => return NextJob::Later,
                    Err(RecvTimeoutError::Disconnected) => return NextJob::Closed,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => return NextJob::Later,
                    Err(TryRecvError::Disconnected) => return NextJob::Closed,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if r.events.is_closed() {
                // the client left while it waited
                self.metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(job) = self.job(r) {
                return NextJob::Job(job);
            }
        }
    }

    fn after_round(&mut self, stats: &BatchStats) {
        let m = self.metrics;
        let add = |a: &AtomicU64, now: u64, before: u64| a.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
        let us = |d: Duration| d.as_micros() as u64;
        let seen = self.seen;
        add(&m.shared_rounds, stats.n_rounds as u64, seen.n_rounds as u64);
        add(&m.decoded_tokens, stats.n_decoded as u64, seen.n_decoded as u64);
        add(&m.prompt_in_rounds_tokens, stats.n_prompt_in_rounds as u64, seen.n_prompt_in_rounds as u64);
        add(&m.prompt_cached_tokens, stats.n_prompt_cached as u64, seen.n_prompt_cached as u64);
        add(&m.prompt_restored_tokens, stats.n_prompt_restored as u64, seen.n_prompt_restored as u64);
        add(&m.prompt_shared_tokens, stats.n_prompt_shared as u64, seen.n_prompt_shared as u64);
        m.prefix_cache_bytes.store(stats.prefix_cache_bytes as u64, Ordering::Relaxed);
        add(&m.prompt_rounds, stats.n_prompt_rounds as u64, seen.n_prompt_rounds as u64);
        add(&m.draft_paused_rounds, stats.n_paused_rounds as u64, seen.n_paused_rounds as u64);
        add(&m.draft_pauses, stats.n_pauses as u64, seen.n_pauses as u64);
        add(&m.prefill_us, us(stats.t_prefill), us(seen.t_prefill));
        add(&m.decode_us, us(stats.t_decode), us(seen.t_decode));
        let (p, q) = (stats.plan_check, seen.plan_check);
        let milli = |x: f64| (x * 1e3) as u64;
        add(&m.plan_expected_mtokens, milli(p.expected_tokens), milli(q.expected_tokens));
        add(&m.plan_tokens, p.n_tokens as u64, q.n_tokens as u64);
        add(&m.plan_expected_us, (p.expected_secs * 1e6) as u64, (q.expected_secs * 1e6) as u64);
        add(&m.plan_us, (p.secs * 1e6) as u64, (q.secs * 1e6) as u64);
        self.seen = *stats;
    }
}

/// The log-probabilities of the tokens from entry `from.0` on (whose text starts at byte
/// `from.1`) whose text begins within the first `text_len` bytes (a stop string cuts the
/// rest), with their texts; and where the next entry would start, `(entry, byte)`.
fn logprob_entries_from(
    codec: &dyn TextCodec,
    logprobs: &[TokenLogprob],
    (mut next, mut offset): (usize, usize),
    text_len: usize,
) -> (Vec<LogprobEntry>, (usize, usize)) {
    let text = |t| {
        let bytes = codec.piece(t);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let mut out = Vec::new();
    while let Some(lp) = logprobs.get(next).filter(|_| offset < text_len) {
        let (token, bytes) = text(lp.token);
        let start = offset;
        offset += bytes.len();
        next += 1;
        let top = lp.top.iter().map(|&(t, l)| {
            let (s, b) = text(t);
            (s, b, l)
        });
        out.push(LogprobEntry { token, bytes, offset: start, logprob: lp.logprob, top: top.collect() });
    }
    (out, (next, offset))
}

/// Send the log-probabilities of the tokens whose text the next `Text` event, up to byte
/// `upto`, carries (when the request asked for them).
fn send_logprobs(codec: &dyn TextCodec, request: &mut Request, logprobs: Option<&[TokenLogprob]>, upto: usize) {
    let Some(logprobs) = logprobs else { return };
    let (entries, next) = logprob_entries_from(codec, logprobs, (request.lp_sent, request.lp_offset), upto);
    (request.lp_sent, request.lp_offset) = next;
    if !entries.is_empty() {
        let _ = request.events.send(Event::Logprobs(entries));
    }
}

/// Serve requests from `rx` until every sender is gone (or `cancel`), with up to `n_parallel`
/// in flight on `engine`.
#[allow(clippy::too_many_arguments)]
pub fn serve_loop<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    plan: &Plan,
    rx: &Receiver<ServeRequest>,
    slots: Slots,
    cancel: &AtomicBool,
    metrics: &Metrics,
) {
    let mut policy = SharedPolicy::new(plan.gen.cost_curve.clone());
    let vocab = crate::constraint::LazyVocabulary::new(codec, &engine.target);
    loop {
        let mut queue = Queue { rx, codec, vocab: &vocab, plan, metrics, seen: BatchStats::default() };
        let mut sink = Replies { codec, metrics, cancel };
        match run_continuous_from(engine, &mut queue, slots, &mut policy, clock, &mut sink) {
            Ok(_) => return,
            Err(e) => {
                // the requests in flight are dropped with their channels: their handlers answer 500
                tracing::error!("a shared decode failed: {e}");
                metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
                metrics.in_flight.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The serving loop's run sink: each request's text and log-probabilities go to its channel
/// as they come, its end with its statistics; the metrics count them.
struct Replies<'a> {
    codec: &'a dyn TextCodec,
    metrics: &'a Metrics,
    cancel: &'a AtomicBool,
}

impl Replies<'_> {
    /// Send what the request's text has ready (with its tokens' log-probabilities first).
    /// False when the client is gone.
    fn send_ready(&self, request: &mut Request, seq: &Sequence) -> bool {
        let upto = request.text.ready_len();
        if upto <= request.text.taken() {
            return true;
        }
        send_logprobs(self.codec, request, seq.config.logprobs.map(|_| seq.logprobs.as_slice()), upto);
        let delta = request.text.take_ready().to_string();
        request.events.send(Event::Text(delta)).is_ok()
    }
}

impl RunSink<Request> for Replies<'_> {
    fn tokens(&mut self, request: &mut Request, seq: &Sequence, added: std::ops::Range<usize>) -> bool {
        if added.is_empty() {
            // a prompt still being read: a client gone ends it now
            return request.events.is_closed();
        }
        if seq.stats.n_generated == added.len() && added.start == seq.n_prompt {
            self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let _ = request.events.send(Event::Started { n_prompt: seq.n_prompt });
        }
        for &t in &seq.tokens[added] {
            request.text.push(&self.codec.piece(t));
        }
        // a client that went away ends its sequence now (its cells are freed)
        !self.send_ready(request, seq) || request.text.stopped() || request.events.is_closed()
    }

    fn finished(&mut self, mut request: Request, result: Result<Sequence, EngineError>) {
        let metrics = self.metrics;
        let seq = match result {
            Ok(seq) => seq,
            Err(e) => {
                let failure = match e {
                    EngineError::PromptTooLong { n_prompt, n_ctx } => Failure::TooLong { n_prompt, n_ctx },
                    EngineError::EmptyPrompt => Failure::Invalid("the prompt is empty".into()),
                    other => Failure::Model(other.to_string()),
                };
                if matches!(failure, Failure::Model(_)) {
                    metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    metrics.requests_invalid.fetch_add(1, Ordering::Relaxed);
                }
                let _ = request.events.send(Event::Failed(failure));
                return;
            }
        };
        let started = seq.stats.n_generated > 0;
        if started {
            metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if request.events.is_closed() {
            metrics.requests_cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !started {
            let _ = request.events.send(Event::Started { n_prompt: seq.n_prompt });
        }
        request.text.finish();
        self.send_ready(&mut request, &seq);
        metrics.requests_ok.fetch_add(1, Ordering::Relaxed);
        metrics.prompt_tokens.fetch_add(seq.n_prompt as u64, Ordering::Relaxed);
        metrics.completion_tokens.fetch_add(seq.stats.n_generated as u64, Ordering::Relaxed);
        metrics.rounds.fetch_add(seq.stats.n_rounds as u64, Ordering::Relaxed);
        metrics.drafted.fetch_add(seq.stats.n_drafted as u64, Ordering::Relaxed);
        metrics.accepted.fetch_add(seq.stats.n_accepted as u64, Ordering::Relaxed);
        let finish = if request.text.stopped() { FinishReason::Stop } else { seq.finish.unwrap_or(FinishReason::Length) };
        let _ = request.events.send(Event::Done { finish, stats: Box::new(seq.stats) });
    }

    fn cancel(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        m.requests_ok.fetch_add(2, Ordering::Relaxed);
        m.observe_ttft(0.07);
        m.observe_ttft(3.0);
        let text = m.render("ngram");
        assert!(text.contains("specrun_requests_total{outcome=\"ok\"} 2"), "{text}");
        assert!(text.contains("specrun_drafted_tokens_total{drafter=\"ngram\"} 0"));
        assert!(text.contains("specrun_time_to_first_token_seconds_bucket{le=\"0.1\"} 1"));
        assert!(text.contains("specrun_time_to_first_token_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("specrun_time_to_first_token_seconds_count 2"));
        assert!(text.contains("specrun_draft_paused_rounds_total 0"));
        assert!(text.lines().all(|l| l.starts_with('#') || l.starts_with("specrun_")));
    }
}
