//! `specrun serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of the model
//! thread of [`crate::infer::serving`].
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent
//! events ending in `[DONE]`, or whole), `GET /v1/models`, `GET /health`, `GET /metrics`.
//! Handlers check a request ([`crate::formats::openai`]), put it on a bounded queue (full:
//! 503 with `Retry-After`) and relay the model thread's events. The models load before the
//! port opens; SIGINT/SIGTERM stop accepting, let requests in flight finish within `--grace`
//! seconds, then cancel what is left and exit 0.

use super::serve_text::TextRoutes;
use crate::cli::ServeArgs;
use crate::formats::openai::{chunk, parse_request, response_choices, ApiError, ChoiceOut, CompletionRequest, Endpoint, Meta, Usage};
use crate::infer::plan::{prefill, sequences_in_flight};
use crate::infer::serving::{serve_loop, Event, Failure, Metrics, ServeRequest};
use crate::infer::{make_drafter, plan, token_texts, with_backend};
use crate::settings::{Origin, Setting};
use anyhow::{anyhow, Context as _, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use specrun_core::batching::Slots;
use specrun_core::engine::Engine;
use specrun_core::stats::FinishReason;
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Largest request body.
const MAX_BODY_BYTES: usize = 8 << 20;
/// How long a client may take to send a request's headers (a new request on a kept-alive
/// connection included: an idle connection is closed after this), and its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests that may wait for a slot (`--queue`).
const MAX_QUEUE: usize = 4096;

/// What the handlers share.
struct AppState {
    queue: SyncSender<ServeRequest>,
    metrics: Arc<Metrics>,
    model: String,
    drafter: &'static str,
    n_ctx: usize,
    api_key: Option<String>,
    strict_model: bool,
    next_id: AtomicU64,
    /// Shutdown began: a request whose events end early was cut by the grace period.
    stopping: AtomicBool,
    /// `/tokenize`, `/detokenize`, `/apply-template`, `/props`.
    text: TextRoutes,
    /// The seed a request without one samples with (choice `i` of `n` takes `seed + i`).
    seed: u64,
}

/// What the model thread reports once the models are loaded.
struct Ready {
    n_ctx: usize,
    drafter: &'static str,
}

pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    if args.queue > MAX_QUEUE {
        return Err(anyhow!("--queue must be at most {MAX_QUEUE}, got {}", args.queue));
    }
    if args.api_key.as_deref().is_some_and(str::is_empty) {
        return Err(anyhow!("--api-key (or SPECRUN_API_KEY) is empty"));
    }
    let cors = cors(&args.cors_origin)?;
    let mut plan = plan(&args.models.selection(), &args.gen.overrides())?;
    crate::infer::calibration::attach(&mut plan, args.models.mock);
    let n_parallel = sequences_in_flight(args.parallel.or(plan.parallel), &plan, 4);
    let slots = Slots {
        n_parallel,
        prefill: prefill(args.prefill_chunk),
        prompt_cache: args.prompt_cache,
        prefix_cache_bytes: crate::backend::prefix_cache_bytes(args.cache_ram),
    };
    plan.target.n_seq = n_parallel as u32;
    if let Some(d) = &mut plan.draft {
        d.n_seq = n_parallel as u32;
    }
    let model = args.alias.clone().or_else(|| plan.pair.clone()).unwrap_or_else(|| plan.target.name.clone());
    let seed = plan.gen.seed;
    let text = text_routes(&plan, args.models.mock, &model, n_parallel, args)?;
    let metrics = Arc::new(Metrics::default());
    let cancel = Arc::new(AtomicBool::new(false));
    // a queue of at least one: a request is either in a slot, waiting here, or refused
    let (queue_tx, queue_rx) = sync_channel::<ServeRequest>(args.queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
    let mock = args.models.mock;
    let worker = {
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        std::thread::Builder::new().name("specrun-model".into()).spawn(move || {
            with_backend(&plan, mock, &mut |target, draft, codec, clock| {
                let drafter = make_drafter(plan.drafter, plan.ngram, draft, &token_texts(codec, target.n_vocab()));
                let mut engine = Engine::new(target, drafter, plan.gen.clone());
                let _ = ready_tx.send(Ready { n_ctx: engine.target.n_ctx(), drafter: engine.drafter.name() });
                serve_loop(&mut engine, codec, clock, &plan, &queue_rx, slots, &cancel, &metrics);
                Ok(ExitCode::SUCCESS)
            })
        })?
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")?;
    // the port opens first: while the models load, /health says so (503) and so does every
    // other route
    let listener = runtime.block_on(tokio::net::TcpListener::bind((args.host.as_str(), args.port)));
    let listener = listener.with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    crate::io::note(format!("specrun serve: listening on http://{} (loading the models)", listener.local_addr()?));
    // Ctrl-C or SIGTERM while the models load ends the command (the load cannot be stopped
    // part way: exit without tearing llama.cpp down under the loading thread)
    let loaded = runtime.block_on(async {
        tokio::select! {
            ready = tokio::task::spawn_blocking(move || ready_rx.recv()) => Some(ready),
            _ = shutdown_signal() => None,
            _ = answer_loading(&listener) => None,
        }
    });
    let Some(Ok(Ok(ready))) = loaded else {
        if loaded.is_none() {
            crate::io::note("interrupted while the models loaded");
            crate::io::exit_now(crate::commands::EXIT_INTERRUPTED.into());
        }
        // the models did not load: the worker's error says why
        return match worker.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("the model thread ended before the models were ready")),
        };
    };
    let state = Arc::new(AppState {
        queue: queue_tx,
        metrics,
        model,
        drafter: ready.drafter,
        n_ctx: ready.n_ctx,
        api_key: args.api_key.clone(),
        strict_model: args.strict_model,
        next_id: AtomicU64::new(1),
        stopping: AtomicBool::new(false),
        text,
        seed,
    });
    let served = runtime.block_on(run_http(args, listener, state, cors, n_parallel));
    // every handler is gone, so is the queue's sender: the model thread finishes and returns
    cancel.store(served.as_ref().map_or(true, |graceful| !graceful), Ordering::Relaxed);
    let _ = worker.join();
    served.map(|_| ExitCode::SUCCESS)
}

/// While the models load: answer every request 503 (`/health`: `{"status": "loading"}`,
/// llama-server's answer) and close the connection. Never returns.
async fn answer_loading(listener: &tokio::net::TcpListener) {
    let loading = || async {
        let mut r = error(ApiError::new(503, "unavailable_error", Some("loading"), "the models are loading"));
        r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        r
    };
    let app = Router::new()
        .route(
            "/health",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, [(header::CONNECTION, "close")], Json(json!({"status": "loading"}))) }),
        )
        .fallback(loading);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEADER_TIMEOUT * 2, conn).await;
        });
    }
}

/// Serve on `listener` until a signal; `Ok(true)` when every request finished in the grace
/// period.
async fn run_http(
    args: &ServeArgs,
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    cors: Option<tower_http::cors::CorsLayer>,
    n_parallel: usize,
) -> Result<bool> {
    crate::io::note(format!(
        "specrun serve: ready (model {}, {n_parallel} slots, drafter {}, queue {})",
        state.model,
        state.drafter,
        args.queue.max(1)
    ));
    let app = match cors {
        Some(layer) => router(state.clone()).layer(layer),
        None => router(state.clone()),
    };
    // HTTP/1 connections whose headers must arrive within HEADER_TIMEOUT: a client that sends
    // half a request, or keeps an idle connection, cannot hold a socket or delay shutdown
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // out of descriptors or a reset before accept: go on with the next
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = connections.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut signal => break,
        }
    }
    drop(listener);
    state.stopping.store(true, Ordering::Relaxed);
    crate::io::note("specrun serve: stopping (no new connections; requests in flight may finish)");
    tokio::select! {
        _ = connections.shutdown() => Ok(true),
        _ = tokio::time::sleep(Duration::from_secs(args.grace)) => {
            crate::io::note("specrun serve: grace period over; cancelling the requests still in flight");
            Ok(false)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The CORS policy `--cors-origin` asks for (none: no CORS headers at all); a bad origin is
/// one line naming the flag.
fn cors(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| header::HeaderValue::from_str(o).map_err(|_| anyhow!("--cors-origin: not an origin: {o:?}")))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    let methods = [axum::http::Method::GET, axum::http::Method::POST];
    Ok(Some(CorsLayer::new().allow_origin(allow).allow_methods(methods).allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])))
}

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(|s: State<Arc<AppState>>, r: Request| text_route(s, r, TextRoutes::tokenize)))
        .route("/detokenize", post(|s: State<Arc<AppState>>, r: Request| text_route(s, r, TextRoutes::detokenize)))
        .route("/apply-template", post(|s: State<Arc<AppState>>, r: Request| text_route(s, r, TextRoutes::apply_template)))
        .route("/props", get(|State(state): State<Arc<AppState>>| async move { Json(state.text.props.clone()) }))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(api)
        .fallback(|| async { error(ApiError::new(404, "invalid_request_error", Some("not_found"), "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::new(405, "invalid_request_error", Some("method_not_allowed"), "this route does not take that method"))
        })
        // bodies are read by the handlers (bounded, with a timeout, refused as JSON)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(e.body())).into_response()
}

async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return error(ApiError::new(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                "missing or wrong API key (Authorization: Bearer KEY)",
            ));
        }
    }
    next.run(req).await
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "specrun"}]}))
}

/// The tokenizer the text routes use (a vocabulary-only copy of the target, no weights) and
/// what `/props` says.
fn text_routes(plan: &crate::infer::Plan, mock: bool, model: &str, n_parallel: usize, args: &ServeArgs) -> Result<TextRoutes> {
    let (codec, n_vocab): (Box<dyn specrun_core::model::TextCodec + Send + Sync>, usize) = if mock {
        (Box::new(specrun_core::mock::MockCodec { n_vocab: crate::infer::MOCK_VOCAB, text: true }), crate::infer::MOCK_VOCAB)
    } else {
        vocab_only(plan)?
    };
    let props = json!({
        "model": model,
        "model_path": plan.target.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "total_slots": n_parallel,
        "n_ctx": plan.target.n_ctx,
        "drafter": plan.drafter.map_or("none", |d| d.as_str()),
        "deterministic": plan.target.batch_invariant,
        "cache_ram_mib": args.cache_ram,
        "build_info": crate::commands::long_version(),
    });
    Ok(TextRoutes { codec, n_vocab, props })
}

#[cfg(feature = "llama")]
fn vocab_only(plan: &crate::infer::Plan) -> Result<(Box<dyn specrun_core::model::TextCodec + Send + Sync>, usize)> {
    let m = crate::backend::llama::LoadedModel::load_vocab_only(&plan.target.path)?;
    let n = m.n_vocab();
    Ok((Box::new(m), n))
}

#[cfg(not(feature = "llama"))]
fn vocab_only(_plan: &crate::infer::Plan) -> Result<(Box<dyn specrun_core::model::TextCodec + Send + Sync>, usize)> {
    Err(anyhow!("this build has no llama.cpp backend (use --mock)"))
}

/// A text route: the body as JSON, answered by `f` (a JSON error naming the field otherwise).
async fn text_route(State(state): State<Arc<AppState>>, req: Request, f: fn(&TextRoutes, &Value) -> Result<Value, ApiError>) -> Response {
    let (_, body) = match read_body(req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(ApiError::new(400, "invalid_request_error", Some("invalid_json"), format!("the body is not valid JSON: {e}")))
        }
    };
    match f(&state.text, &value) {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut r = state.metrics.render(state.drafter).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (headers, body) = match read_body(req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    complete(state, Endpoint::Chat, &headers, body).await
}

async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (headers, body) = match read_body(req).await {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    complete(state, Endpoint::Completions, &headers, body).await
}

/// A request's headers and whole body: at most [`MAX_BODY_BYTES`] (413), within
/// [`BODY_TIMEOUT`] (408), each refusal OpenAI's JSON error.
async fn read_body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok((parts.headers, bytes)),
        Ok(Err(_)) => Err(ApiError::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the body is larger than {MAX_BODY_BYTES} bytes (or broke off)"),
        )),
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            Some("request_timeout"),
            format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// Check the body as JSON of the endpoint's shape.
fn check(state: &AppState, endpoint: Endpoint, headers: &HeaderMap, body: &[u8]) -> Result<CompletionRequest, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(415, "invalid_request_error", None, format!("Content-Type must be application/json, got {ct}")));
        }
    }
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::new(400, "invalid_request_error", None, format!("the body is not UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::new(400, "invalid_request_error", Some("invalid_json"), format!("the body is not valid JSON: {e}")))?;
    let req = parse_request(endpoint, &value, state.n_ctx)?;
    if let Some(m) = req.model.as_ref().filter(|_| state.strict_model) {
        if *m != state.model {
            return Err(ApiError {
                status: 404,
                message: format!("the model '{m}' does not exist (this server has '{}')", state.model),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
            });
        }
    }
    if let Some(d) = &req.speculative.drafter {
        if d != state.drafter {
            return Err(ApiError::invalid(
                "speculative",
                format!(
                    "this server drafts with '{}', not '{d}' (start it with --draft {d}); set speculative.enabled false for plain decoding",
                    state.drafter
                ),
            ));
        }
    }
    Ok(req)
}

async fn complete(state: Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Bytes) -> Response {
    let t0 = Instant::now();
    let req = match check(&state, endpoint, headers, &body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.requests_invalid.fetch_add(1, Ordering::Relaxed);
            return error(e);
        }
    };
    if req.n > 1 {
        return complete_choices(state, endpoint, req, t0).await;
    }
    let (tx, mut rx) = unbounded_channel();
    let (stream, include_usage, asked_logprobs) = (req.stream, req.include_usage, req.logprobs.is_some());
    let job = ServeRequest {
        prompt: req.prompt,
        overrides: req.overrides,
        grammar: req.grammar,
        stops: req.stops,
        logprobs: req.logprobs,
        events: tx,
    };
    state.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = state.queue.try_send(job) {
        state.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
        let why = match e {
            TrySendError::Full(_) => "every slot is busy and the queue is full; retry later",
            TrySendError::Disconnected(_) => "the server is stopping",
        };
        let mut r = error(ApiError::new(503, "server_error", Some("overloaded"), why));
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta { id: format!("{prefix}-{id}"), created, model: state.model.clone() };
    // the first event says whether the request runs
    let n_prompt = match rx.recv().await {
        Some(Event::Started { n_prompt }) => n_prompt,
        Some(Event::Failed(f)) => return error(failure(f, endpoint)),
        _ => return error(ended_early(&state)),
    };
    let drafter = state.drafter.to_string();
    if stream {
        let events = relay(rx, endpoint, meta, n_prompt, drafter, include_usage, state.clone(), t0);
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut first = true;
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => {
                if first {
                    state.metrics.observe_ttft(t0.elapsed().as_secs_f64());
                    first = false;
                }
                text.push_str(&t);
            }
            Some(Event::Logprobs(l)) => logprobs.extend(l),
            Some(Event::Done { finish, stats }) => {
                let usage = usage(n_prompt, &stats, drafter);
                let logprobs = asked_logprobs.then_some(logprobs.as_slice());
                let choice = ChoiceOut { text: &text, finish: finish_str(finish), logprobs };
                return Json(response_choices(endpoint, &meta, &[choice], &usage)).into_response();
            }
            Some(Event::Failed(f)) => return error(failure(f, endpoint)),
            Some(Event::Started { .. }) => {}
            None => return error(ended_early(&state)),
        }
    }
}

/// A request for `n` > 1 choices: `n` sequences of its prompt in the slots like any others,
/// choice `i` with seed `seed + i` (so that sampled choices differ and each is reproducible),
/// answered whole once all are done; `usage` counts the prompt once.
async fn complete_choices(state: Arc<AppState>, endpoint: Endpoint, req: CompletionRequest, t0: Instant) -> Response {
    let base = req.overrides.seed.as_ref().map_or(state.seed, |s| s.value);
    let asked = req.logprobs.is_some();
    let mut receivers = Vec::with_capacity(req.n);
    for i in 0..req.n {
        let (tx, rx) = unbounded_channel();
        let mut overrides = req.overrides.clone();
        overrides.seed = Some(Setting::new(base.wrapping_add(i as u64), Origin::Request { key: "seed" }));
        let job = ServeRequest {
            prompt: req.prompt.clone(),
            overrides,
            grammar: req.grammar.clone(),
            stops: req.stops.clone(),
            logprobs: req.logprobs,
            events: tx,
        };
        state.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if state.queue.try_send(job).is_err() {
            // the choices already queued end with their dropped receivers
            state.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            state.metrics.requests_rejected.fetch_add(1, Ordering::Relaxed);
            let why = format!("the queue cannot take {} choices now; retry later or ask for fewer", req.n);
            let mut r = error(ApiError::new(503, "server_error", Some("overloaded"), why));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        receivers.push(rx);
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta { id: format!("{prefix}-{id}"), created, model: state.model.clone() };
    let (mut choices, mut merged, mut n_prompt) = (Vec::new(), specrun_core::stats::GenStats::default(), 0);
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        loop {
            match rx.recv().await {
                Some(Event::Started { n_prompt: n }) => n_prompt = n,
                Some(Event::Logprobs(l)) => logprobs.extend(l),
                Some(Event::Text(t)) => {
                    if i == 0 && text.is_empty() {
                        state.metrics.observe_ttft(t0.elapsed().as_secs_f64());
                    }
                    text.push_str(&t);
                }
                Some(Event::Done { finish, stats }) => {
                    if i == 0 {
                        merged.n_prompt_cached = stats.n_prompt_cached;
                    }
                    merged.n_generated += stats.n_generated;
                    merged.n_drafted += stats.n_drafted;
                    merged.n_accepted += stats.n_accepted;
                    merged.n_rounds += stats.n_rounds;
                    choices.push((text, finish_str(finish), logprobs));
                    break;
                }
                Some(Event::Failed(f)) => return error(failure(f, endpoint)),
                None => return error(ended_early(&state)),
            }
        }
    }
    let usage = usage(n_prompt, &merged, state.drafter.to_string());
    let choices: Vec<ChoiceOut<'_>> =
        choices.iter().map(|(text, finish, logprobs)| ChoiceOut { text, finish, logprobs: asked.then_some(logprobs.as_slice()) }).collect();
    Json(response_choices(endpoint, &meta, &choices, &usage)).into_response()
}

fn usage(n_prompt: usize, stats: &specrun_core::stats::GenStats, drafter: String) -> Usage {
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

/// The SSE stream of one request: a chunk per text delta, a last chunk with the finish
/// reason, the usage chunk when asked, then `[DONE]`. Dropping it (the client went away)
/// closes the channel, which ends the sequence at the next round.
#[allow(clippy::too_many_arguments)]
fn relay(
    rx: UnboundedReceiver<Event>,
    endpoint: Endpoint,
    meta: Meta,
    n_prompt: usize,
    drafter: String,
    include_usage: bool,
    state: Arc<AppState>,
    t0: Instant,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        rx: UnboundedReceiver<Event>,
        first: bool,
        /// Log-probabilities for the next text chunk.
        logprobs: Option<Vec<crate::formats::openai::LogprobEntry>>,
        /// Events left to send after the model is done.
        tail: Vec<String>,
        done: bool,
    }
    let st = St { rx, first: true, logprobs: None, tail: Vec::new(), done: false };
    futures_util::stream::unfold(st, move |mut st| {
        let (meta, drafter, state) = (meta.clone(), drafter.clone(), state.clone());
        async move {
            loop {
                if let Some(data) = st.tail.pop() {
                    return Some((Ok(SseEvent::default().data(data)), st));
                }
                if st.done {
                    return None;
                }
                match st.rx.recv().await {
                    Some(Event::Text(t)) => {
                        if st.first {
                            state.metrics.observe_ttft(t0.elapsed().as_secs_f64());
                        }
                        let c = chunk(endpoint, &meta, Some(&t), st.first, None, None, st.logprobs.take().as_deref());
                        st.first = false;
                        return Some((Ok(SseEvent::default().data(c.to_string())), st));
                    }
                    Some(Event::Done { finish, stats }) => {
                        let mut tail = vec![chunk(endpoint, &meta, None, st.first, Some(finish_str(finish)), None, None).to_string()];
                        if include_usage {
                            tail.push(
                                chunk(endpoint, &meta, None, false, None, Some(&usage(n_prompt, &stats, drafter.clone())), None)
                                    .to_string(),
                            );
                        }
                        tail.push("[DONE]".to_string());
                        tail.reverse();
                        st.tail = tail;
                        st.done = true;
                    }
                    Some(Event::Failed(f)) => {
                        st.tail = vec!["[DONE]".to_string(), failure(f, endpoint).body().to_string()];
                        st.done = true;
                    }
                    Some(Event::Logprobs(l)) => st.logprobs = Some(l),
                    Some(Event::Started { .. }) => {}
                    None => {
                        let e = ended_early(&state);
                        st.tail = vec!["[DONE]".to_string(), e.body().to_string()];
                        st.done = true;
                    }
                }
            }
        }
    })
}
