//! One completion request on the handler's side: its `n` choices queued as sequences for the
//! model thread (choice `i` sampled with seed `seed + i`), their events read back, and the
//! answer — whole, or streamed as server-sent events with the choices' chunks interleaved by
//! `index`, a last chunk per choice with its finish reason, the usage chunk when asked, then
//! `[DONE]`. Dropping a stream (the client went away) closes the channels, which ends the
//! sequences at the next round.
//!
//! With tools, each choice's text is read for calls ([`crate::formats::tools`]): content before
//! the first `<tool_call>` streams as it comes; the calls go out whole when the choice ends,
//! with the finish reason "tool_calls".

use super::serve::{check, error, AppState};
use crate::formats::openai::{chunk, response_choices, usage_chunk, ApiError, ChoiceOut, DeltaOut, Endpoint, LogprobEntry, Meta, Usage};
use crate::formats::tools::{split_calls, CallStream, Tool, ToolCall};
use crate::infer::serving::{Event, Failure, ServeRequest};
use crate::settings::{Origin, Setting};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use specrun_core::stats::{FinishReason, GenStats};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What every choice's answer shares.
struct Answer {
    endpoint: Endpoint,
    meta: Meta,
    n_prompt: usize,
    include_usage: bool,
    asked_logprobs: bool,
    /// The tools the text is read for calls of (none: the text is the answer), and whether
    /// an answer may make several calls (`parallel_tool_calls`; else the first counts).
    tools: Vec<Tool>,
    parallel: bool,
    state: Arc<AppState>,
    t0: Instant,
}

pub(super) async fn complete(state: Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Bytes) -> Response {
    let t0 = Instant::now();
    let req = match check(&state, endpoint, headers, &body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.requests_invalid.fetch_add(1, Ordering::Relaxed);
            return error(e);
        }
    };
    let mut receivers = match enqueue(&state, &req) {
        Ok(r) => r,
        Err(refused) => {
            let mut r = error(refused);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    // the first choice's first event says whether the request runs
    let n_prompt = match receivers[0].recv().await {
        Some(Event::Started { n_prompt }) => n_prompt,
        Some(Event::Failed(f)) => return error(failure(f, endpoint)),
        _ => return error(ended_early(&state)),
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta { id: format!("{prefix}-{id}"), created, model: state.model.clone() };
    let parallel = req.tools.as_ref().is_none_or(|t| t.parallel);
    let tools = req.tools.filter(|t| t.reads_calls()).map(|t| t.tools).unwrap_or_default();
    let (include_usage, asked_logprobs) = (req.include_usage, req.logprobs.is_some());
    let answer = Answer { endpoint, meta, n_prompt, include_usage, asked_logprobs, tools, parallel, state, t0 };
    if req.stream {
        Sse::new(relay(receivers, answer)).keep_alive(KeepAlive::default()).into_response()
    } else {
        whole(receivers, answer).await
    }
}

/// Queue the request's `n` choices; a full queue is a 503, answered with `Retry-After` (the
/// choices already queued end with their dropped receivers).
fn enqueue(state: &AppState, req: &crate::formats::openai::CompletionRequest) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let base = req.overrides.seed.as_ref().map_or(state.seed, |s| s.value);
    let mut receivers = Vec::with_capacity(req.n);
    for i in 0..req.n {
        let (tx, rx) = unbounded_channel();
        let mut overrides = req.overrides.clone();
        if req.n > 1 {
            overrides.seed = Some(Setting::new(base.wrapping_add(i as u64), Origin::Request { key: "seed" }));
        }
        let job = ServeRequest {
            prompt: req.prompt.clone(),
            overrides,
            grammar: req.grammar.clone(),
            stops: req.stops.clone(),
            logprobs: req.logprobs,
            events: tx,
        };
        state.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = state.queue.try_send(job) {
            state.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            let why = match e {
                TrySendError::Full(_) if req.n > 1 => format!("the queue cannot take {} choices now; retry later or ask for fewer", req.n),
                TrySendError::Full(_) => "every slot is busy and the queue is full; retry later".to_string(),
                TrySendError::Disconnected(_) => "the server is stopping".to_string(),
            };
            return Err(ApiError::new(503, "server_error", Some("overloaded"), why));
        }
        receivers.push(rx);
    }
    Ok(receivers)
}

/// One choice's answer, read whole.
struct Choice {
    text: String,
    finish: &'static str,
    logprobs: Vec<LogprobEntry>,
    calls: Vec<(String, ToolCall)>,
}

/// Every choice read to its end, then one response; `usage` counts the prompt once.
async fn whole(receivers: Vec<UnboundedReceiver<Event>>, a: Answer) -> Response {
    let mut choices = Vec::with_capacity(receivers.len());
    let mut totals = GenStats::default();
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        loop {
            match rx.recv().await {
                Some(Event::Started { .. }) => {}
                Some(Event::Logprobs(l)) => logprobs.extend(l),
                Some(Event::Text(t)) => {
                    if i == 0 && text.is_empty() {
                        a.state.metrics.observe_ttft(a.t0.elapsed().as_secs_f64());
                    }
                    text.push_str(&t);
                }
                Some(Event::Done { finish, stats }) => {
                    add_stats(&mut totals, &stats, i == 0);
                    // an answer is read for calls only when the request gave tools
                    let found = if a.tools.is_empty() { None } else { split_calls(&text, &a.tools) };
                    let calls = match found {
                        Some((content, calls)) => {
                            text = content;
                            with_ids(&a, i, calls)
                        }
                        None => Vec::new(),
                    };
                    choices.push(Choice { text, finish: finish_str(finish), logprobs, calls });
                    break;
                }
                Some(Event::Failed(f)) => return error(failure(f, a.endpoint)),
                None => return error(ended_early(&a.state)),
            }
        }
    }
    let usage = usage(a.n_prompt, &totals, a.state.drafter.to_string());
    let out: Vec<ChoiceOut<'_>> = choices
        .iter()
        .map(|c| ChoiceOut {
            text: &c.text,
            finish: c.finish,
            logprobs: a.asked_logprobs.then_some(c.logprobs.as_slice()),
            tool_calls: &c.calls,
        })
        .collect();
    Json(response_choices(a.endpoint, &a.meta, &out, &usage)).into_response()
}

/// The choices' counters as one: the prompt's cached cells once (the first choice's), the
/// generated, drafted and accepted tokens and rounds of all.
fn add_stats(totals: &mut GenStats, stats: &GenStats, first: bool) {
    if first {
        totals.n_prompt_cached = stats.n_prompt_cached;
    }
    totals.n_generated += stats.n_generated;
    totals.n_drafted += stats.n_drafted;
    totals.n_accepted += stats.n_accepted;
    totals.n_rounds += stats.n_rounds;
}

/// Calls with ids unique to the response (the first only, when one call is allowed).
fn with_ids(a: &Answer, choice: usize, calls: Vec<ToolCall>) -> Vec<(String, ToolCall)> {
    let allowed = if a.parallel { calls.len() } else { 1 };
    calls.into_iter().take(allowed).enumerate().map(|(k, c)| (format!("call-{}-{choice}-{k}", a.meta.id), c)).collect()
}

/// A streamed choice's state.
struct Streamed {
    first: bool,
    ended: bool,
    /// Log-probabilities for its next text chunk.
    logprobs: Vec<LogprobEntry>,
    /// With tools: the text read for calls.
    calls: Option<CallStream>,
}

/// The SSE stream of a request's choices.
fn relay(receivers: Vec<UnboundedReceiver<Event>>, a: Answer) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    // each choice's events, then `None` when its channel closes
    let events: SelectAll<BoxStream<'static, (usize, Option<Event>)>> =
        stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
            stream::unfold(Some(rx), move |rx| async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(e) => Some(((i, Some(e)), Some(rx))),
                    None => Some(((i, None), None)),
                }
            })
            .boxed()
        }));
    let choices: Vec<Streamed> = (0..events.len())
        .map(|_| Streamed { first: true, ended: false, logprobs: Vec::new(), calls: (!a.tools.is_empty()).then(CallStream::default) })
        .collect();
    let st = Relay { a, events, choices, totals: GenStats::default(), tail: VecDeque::new(), done: false };
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.tail.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            match st.events.next().await {
                Some((i, Some(event))) => st.on_event(i, event),
                Some((i, None)) if !st.choices[i].ended => st.fail(ended_early(&st.a.state)),
                Some((_, None)) => {}
                None => st.done = true,
            }
        }
    })
}

struct Relay {
    a: Answer,
    events: SelectAll<BoxStream<'static, (usize, Option<Event>)>>,
    choices: Vec<Streamed>,
    totals: GenStats,
    /// Chunks ready to go out, in order.
    tail: VecDeque<String>,
    done: bool,
}

impl Relay {
    fn send(&mut self, i: usize, mut delta: DeltaOut<'_>) {
        delta.index = i;
        delta.first = std::mem::replace(&mut self.choices[i].first, false);
        self.tail.push_back(chunk(self.a.endpoint, &self.a.meta, &delta).to_string());
    }

    fn fail(&mut self, e: ApiError) {
        self.tail.push_back(e.body().to_string());
        self.tail.push_back("[DONE]".to_string());
        self.done = true;
    }

    fn on_event(&mut self, i: usize, event: Event) {
        match event {
            Event::Started { .. } => {}
            Event::Logprobs(l) => self.choices[i].logprobs.extend(l),
            Event::Text(t) => {
                if i == 0 && self.choices[0].first {
                    self.a.state.metrics.observe_ttft(self.a.t0.elapsed().as_secs_f64());
                }
                let content = match &mut self.choices[i].calls {
                    Some(calls) => calls.push(&t).to_string(),
                    None => t,
                };
                if !content.is_empty() {
                    let logprobs = std::mem::take(&mut self.choices[i].logprobs);
                    let logprobs = self.a.asked_logprobs.then_some(logprobs.as_slice());
                    self.send(i, DeltaOut { text: Some(&content), logprobs, ..DeltaOut::default() });
                }
            }
            Event::Done { finish, stats } => self.on_done(i, finish, &stats),
            Event::Failed(f) => {
                let e = failure(f, self.a.endpoint);
                self.fail(e);
            }
        }
    }

    /// A choice ended: what its text held back, its calls, its finish; after the last
    /// choice the usage (when asked) and `[DONE]`.
    fn on_done(&mut self, i: usize, finish: FinishReason, stats: &GenStats) {
        add_stats(&mut self.totals, stats, i == 0);
        self.choices[i].ended = true;
        let (rest, calls) = match self.choices[i].calls.as_mut() {
            Some(c) => c.finish(&self.a.tools),
            None => (String::new(), Vec::new()),
        };
        let logprobs = std::mem::take(&mut self.choices[i].logprobs);
        if !rest.is_empty() {
            self.send(
                i,
                DeltaOut { text: Some(&rest), logprobs: self.a.asked_logprobs.then_some(logprobs.as_slice()), ..DeltaOut::default() },
            );
        }
        let calls = with_ids(&self.a, i, calls);
        if !calls.is_empty() {
            self.send(i, DeltaOut { tool_calls: &calls, ..DeltaOut::default() });
        }
        let finish = if calls.is_empty() { finish_str(finish) } else { "tool_calls" };
        self.send(i, DeltaOut { finish: Some(finish), ..DeltaOut::default() });
        if self.choices.iter().all(|c| c.ended) {
            if self.a.include_usage {
                let usage = usage(self.a.n_prompt, &self.totals, self.a.state.drafter.to_string());
                self.tail.push_back(usage_chunk(self.a.endpoint, &self.a.meta, &usage).to_string());
            }
            self.tail.push_back("[DONE]".to_string());
            self.done = true;
        }
    }
}

fn usage(n_prompt: usize, stats: &GenStats, drafter: String) -> Usage {
    Usage {
        prompt_tokens: n_prompt,
        cached_tokens: stats.n_prompt_cached,
        completion_tokens: stats.n_generated,
        drafter,
        n_drafted: stats.n_drafted,
        n_accepted: stats.n_accepted,
        n_rounds: stats.n_rounds,
    }
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
    }
}

/// Why a request's events ended without an answer: the grace period of a shutdown, or the
/// model thread failing.
fn ended_early(state: &AppState) -> ApiError {
    if state.stopping.load(Ordering::Relaxed) {
        ApiError::new(
            503,
            "server_error",
            Some("shutting_down"),
            "the server stopped before this request finished (its grace period ended)",
        )
    } else {
        ApiError::new(500, "server_error", Some("model_error"), "the model failed while this request was in flight")
    }
}

fn failure(f: Failure, endpoint: Endpoint) -> ApiError {
    match f {
        Failure::TooLong { n_prompt, n_ctx } => ApiError {
            status: 400,
            message: format!("the prompt has {n_prompt} tokens but the context holds {n_ctx}"),
            kind: "invalid_request_error",
            param: Some(if endpoint == Endpoint::Chat { "messages" } else { "prompt" }.into()),
            code: Some("context_length_exceeded"),
        },
        Failure::Invalid(m) => ApiError::new(400, "invalid_request_error", None, m),
        Failure::InvalidField { param, message } => ApiError::invalid(param, message),
        Failure::Model(m) => ApiError::new(500, "server_error", Some("model_error"), m),
    }
}
