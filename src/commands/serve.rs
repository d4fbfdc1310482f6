//! `specrun serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of the model
//! thread of [`crate::infer::serving`].
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent
//! events ending in `[DONE]`, or whole), `GET /v1/models`, `GET /health`, `GET /metrics`.
//! Handlers check a request ([`crate::formats::openai`]), put it on a bounded queue (full:
//! 503 with `Retry-After`) and relay the model thread's events. The models load before the
//! port opens; SIGINT/SIGTERM stop accepting, let requests in flight finish within `--grace`
//! seconds, then cancel what is left and exit 0.

use super::serve_completion::complete;
use super::serve_text::TextRoutes;
use crate::cli::ServeArgs;
use crate::formats::openai::{parse_request, ApiError, CompletionRequest, Endpoint};
use crate::infer::plan::{prefill, sequences_in_flight};
use crate::infer::serving::{serve_loop, Metrics, ServeRequest};
use crate::infer::{make_drafter, plan, token_texts, with_backend};
use anyhow::{anyhow, Context as _, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use specrun_core::batching::Slots;
use specrun_core::engine::Engine;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body.
const MAX_BODY_BYTES: usize = 8 << 20;
/// How long a client may take to send a request's headers (a new request on a kept-alive
/// connection included: an idle connection is closed after this), and its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests that may wait for a slot (`--queue`).
const MAX_QUEUE: usize = 4096;

/// What the handlers share.
pub(super) struct AppState {
    pub(super) queue: SyncSender<ServeRequest>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) model: String,
    pub(super) drafter: &'static str,
    n_ctx: usize,
    api_key: Option<String>,
    strict_model: bool,
    pub(super) next_id: AtomicU64,
    /// Shutdown began: a request whose events end early was cut by the grace period.
    pub(super) stopping: AtomicBool,
    /// `/tokenize`, `/detokenize`, `/apply-template`, `/props`.
    text: TextRoutes,
    /// The seed a request without one samples with (choice `i` of `n` takes `seed + i`).
    pub(super) seed: u64,
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

pub(super) fn error(e: ApiError) -> Response {
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
pub(super) fn check(state: &AppState, endpoint: Endpoint, headers: &HeaderMap, body: &[u8]) -> Result<CompletionRequest, ApiError> {
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
