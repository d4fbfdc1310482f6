//! The OpenAI-compatible wire format `specrun serve` speaks: requests checked field by field
//! into the one settings path (each value tagged [`Origin::Request`]), responses, stream
//! chunks and the error object (`{"error": {"message", "type", "param", "code"}}`).
//!
//! Pure: no HTTP, no clock (the caller passes `created`), no model. A request is read from a
//! `serde_json::Value` rather than derived, so that every wrong field is named in `param`.

use crate::constraint::Grammar;
use crate::formats::chat_template::{self, TemplateChat};
use crate::formats::records::PromptInput;
use crate::formats::tools::{self, ToolCall, ToolRequest};
use crate::settings::{self, Origin, Overrides, Setting};
use serde_json::{json, Map, Value};

/// Longest stop list and stop string a request may carry.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_LEN: usize = 256;
/// Most chat messages in one request.
pub const MAX_MESSAGES: usize = 4096;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A request that cannot be served, as an HTTP status and an OpenAI error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into(), kind: "invalid_request_error", param: Some(param.to_string()), code: None }
    }
    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code }
    }
    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// The `speculative` extension of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Speculative {
    /// The drafter asked for (must be the server's).
    pub drafter: Option<String>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub endpoint: Endpoint,
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub stream: bool,
    /// Choices asked for (`n`): as many sequences of the prompt, choice `i` sampled with seed
    /// `seed + i`.
    pub n: usize,
    /// Each token's log-probability with this many alternatives (chat: `logprobs: true` and
    /// `top_logprobs`; completions: `logprobs: N`).
    pub logprobs: Option<usize>,
    /// `stream_options.include_usage`: a last chunk with `usage`.
    pub include_usage: bool,
    pub stops: Vec<String>,
    /// Settings over the server's (sampling, `max_tokens`, draft length).
    pub overrides: Overrides,
    pub speculative: Speculative,
    /// What the output must follow, and the field that asked: `response_format`, or
    /// llama-server's `json_schema` / `grammar`, or `tool_choice` demanding a call.
    pub grammar: Option<(&'static str, Grammar)>,
    /// The tools the model may call (chat only); the answer is read for calls unless
    /// `tool_choice` is "none".
    pub tools: Option<ToolRequest>,
}

fn get_f32(obj: &Map<String, Value>, key: &'static str) -> Result<Option<f32>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64().map(|x| Some(x as f32)).ok_or_else(|| ApiError::invalid(key, format!("{key} must be a number")))
        }
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a number"))),
    }
}

fn get_uint(obj: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| ApiError::invalid(key, format!("{key} must be a whole number >= 0, got {n}")))
        }
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a whole number"))),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be a string"))),
    }
}

/// Fields OpenAI defines that specrun does not implement: accepted only at their neutral value.
type IsNeutral = fn(&Value) -> bool;
/// These change what comes back, so any other value is refused rather than ignored.
const NEUTRAL: [(&str, IsNeutral); 4] = [
    ("echo", |v| v.as_bool() == Some(false) || v.is_null()),
    ("best_of", |v| v.is_null() || v.as_u64() == Some(1)),
    // the deprecated form of `tools`
    ("functions", |v| v.is_null() || v.as_array().is_some_and(Vec::is_empty)),
    ("suffix", |v| v.is_null() || v.as_str() == Some("")),
];

/// Fields read here.
const KNOWN: [&str; 29] = [
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "frequency_penalty",
    "presence_penalty",
    "json_schema",
    "grammar",
    "ignore_eos",
    "model",
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "seed",
    "stop",
    "n",
    "speculative",
    "user",
    "logit_bias",
    "response_format",
];

/// Most alternatives per token: OpenAI's bounds (chat 20, completions 5).
const MAX_TOP_LOGPROBS_CHAT: u64 = 20;
const MAX_TOP_LOGPROBS_COMPLETIONS: u64 = 5;

/// Chat: `logprobs: true` with `top_logprobs` alternatives; completions: `logprobs: N`.
fn parse_logprobs(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    match endpoint {
        Endpoint::Chat => {
            let on = get_bool(obj, "logprobs")?.unwrap_or(false);
            let top = get_uint(obj, "top_logprobs")?;
            match (on, top) {
                (_, Some(t)) if t > MAX_TOP_LOGPROBS_CHAT => {
                    Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be in [0, {MAX_TOP_LOGPROBS_CHAT}], got {t}")))
                }
                (false, Some(t)) if t > 0 => Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
                (false, _) => Ok(None),
                (true, t) => Ok(Some(t.unwrap_or(0) as usize)),
            }
        }
        Endpoint::Completions => match obj.get("logprobs") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= MAX_TOP_LOGPROBS_COMPLETIONS) => Ok(n.as_u64().map(|n| n as usize)),
            Some(v) => Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be a whole number in [0, {MAX_TOP_LOGPROBS_COMPLETIONS}] on /v1/completions, got {v}"),
            )),
        },
    }
}

/// One generated token's log-probability, as a response gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobEntry {
    pub token: String,
    pub bytes: Vec<u8>,
    /// Where the token's text starts in the answer, in bytes.
    pub offset: usize,
    pub logprob: f32,
    /// The most likely tokens there: text, bytes, log-probability.
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// One choice of a whole response.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceOut<'a> {
    pub text: &'a str,
    pub finish: &'a str,
    pub logprobs: Option<&'a [LogprobEntry]>,
    /// The calls the answer made, with their ids (chat only; the finish reason is then
    /// "tool_calls").
    pub tool_calls: &'a [(String, ToolCall)],
}

/// One chunk of a streamed choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaOut<'a> {
    pub index: usize,
    /// The choice's first chunk (chat: it carries the role).
    pub first: bool,
    pub text: Option<&'a str>,
    pub tool_calls: &'a [(String, ToolCall)],
    pub finish: Option<&'a str>,
    pub logprobs: Option<&'a [LogprobEntry]>,
}

/// OpenAI's `tool_calls` list; in a stream each entry also has its `index`.
fn tool_calls_json(calls: &[(String, ToolCall)], streamed: bool) -> Value {
    let list = calls.iter().enumerate().map(|(i, (id, c))| {
        let mut v = json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
        if streamed {
            v["index"] = json!(i);
        }
        v
    });
    Value::Array(list.collect())
}

/// The `logprobs` object of a choice, in the endpoint's shape (chat: `content` entries;
/// completions: parallel lists).
fn logprobs_json(endpoint: Endpoint, entries: Option<&[LogprobEntry]>) -> Value {
    let Some(entries) = entries else { return Value::Null };
    // -inf (a token the target gave no chance) is written as OpenAI's floor
    let num = |l: f32| json!(if l.is_finite() { l } else { -9999.0 });
    match endpoint {
        Endpoint::Chat => {
            let content: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let top: Vec<Value> = e.top.iter().map(|(t, b, l)| json!({"token": t, "logprob": num(*l), "bytes": b})).collect();
                    json!({"token": e.token, "logprob": num(e.logprob), "bytes": e.bytes, "top_logprobs": top})
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Endpoint::Completions => {
            let (mut tokens, mut lps, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for e in entries {
                tokens.push(json!(e.token));
                lps.push(num(e.logprob));
                tops.push(Value::Object(e.top.iter().map(|(t, _, l)| (t.clone(), num(*l))).collect()));
                offsets.push(json!(e.offset));
            }
            json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
        }
    }
}

/// OpenAI's `logit_bias`: an object from token ids (as strings) to a bias in [-100, 100].
pub fn parse_logit_bias(v: Option<&Value>) -> Result<Option<crate::settings::LogitBias>, ApiError> {
    let bad = |m: String| ApiError::invalid("logit_bias", m);
    let map = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("logit_bias must be an object from token ids to numbers".into())),
    };
    let mut bias = Vec::with_capacity(map.len());
    for (id, b) in map {
        let t =
            id.parse::<i32>().ok().filter(|&t| t >= 0).ok_or_else(|| bad(format!("logit_bias keys must be token ids, got \"{id}\"")))?;
        let b = b
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| bad(format!("logit_bias[\"{id}\"] must be a number in [-100, 100], got {b}")))?;
        bias.push((t, b as f32));
    }
    Ok(Some(crate::settings::LogitBias(bias)))
}

/// Most choices one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// Check a request body (already parsed as JSON) for `endpoint`. `n_ctx` bounds `max_tokens`.
pub fn parse_request(endpoint: Endpoint, body: &Value, n_ctx: usize) -> Result<CompletionRequest, ApiError> {
    let obj =
        body.as_object().ok_or_else(|| ApiError::new(400, "invalid_request_error", None, "the request body must be a JSON object"))?;
    for (key, v) in obj {
        if let Some((_, neutral)) = NEUTRAL.iter().find(|(k, _)| k == key) {
            if !neutral(v) {
                return Err(ApiError::invalid(key, format!("{key} is not supported by specrun serve")));
            }
        } else if !KNOWN.contains(&key.as_str()) {
            // newer OpenAI fields and clients' extras (metadata, store, parallel_tool_calls,
            // service_tier, …) do not change the text: accepted, and said at debug level
            tracing::debug!("ignoring the request field {key}");
        }
    }
    let mut grammar = parse_grammar(obj)?;
    let model = get_str(obj, "model")?.map(str::to_string);
    let tools = tools::parse(obj)?;
    if let Some(g) = tools.as_ref().and_then(ToolRequest::grammar) {
        if let Some((field, _)) = grammar {
            return Err(ApiError::invalid("tool_choice", format!("a tool_choice that demands a call cannot be combined with {field}")));
        }
        grammar = Some(("tools", g));
    }
    let prompt = match endpoint {
        Endpoint::Chat => chat_prompt(obj.get("messages"), tools.as_ref())?,
        Endpoint::Completions if tools.is_some() => {
            return Err(ApiError::invalid("tools", "tools are for /v1/chat/completions (a completion prompt is the model's raw text)"))
        }
        Endpoint::Completions => PromptInput::Text(parse_prompt(obj.get("prompt"))?),
    };
    let stream = get_bool(obj, "stream")?.unwrap_or(false);
    let n = match get_uint(obj, "n")? {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as u64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("n must be in [1, {MAX_CHOICES}], got {n}"))),
    };
    let logprobs = parse_logprobs(endpoint, obj)?;
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => get_bool(o, "include_usage")
            .map_err(|_| ApiError::invalid("stream_options", "stream_options.include_usage must be true or false"))?
            .unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("stream_options", "stream_options must be an object")),
    };
    let stops = parse_stop(obj.get("stop"))?;
    let (overrides, speculative) = parse_settings(obj, n_ctx)?;
    Ok(CompletionRequest { endpoint, model, prompt, stream, n, logprobs, include_usage, stops, overrides, speculative, grammar, tools })
}

/// A request's generation settings (each tagged with its field) and its `speculative`
/// extension, checked by the one settings path.
fn parse_settings(obj: &Map<String, Value>, n_ctx: usize) -> Result<(Overrides, Speculative), ApiError> {
    let req = |key: &'static str| Origin::Request { key };
    let mut o = Overrides::default();
    // a number that is no whole u64 (1e+30, -1, 2.5) is out of the same bound
    let bounded = |key: &'static str| match obj.get(key) {
        Some(Value::Number(n)) if n.as_u64().is_none() => {
            Err(ApiError::invalid(key, format!("{key} must be a whole number in [1, {n_ctx}] (the context size), got {n}")))
        }
        _ => get_uint(obj, key),
    };
    let max_tokens = match (bounded("max_tokens")?, bounded("max_completion_tokens")?) {
        (Some(m), _) => Some(("max_tokens", m)),
        (None, Some(m)) => Some(("max_completion_tokens", m)),
        (None, None) => None,
    };
    if let Some((key, m)) = max_tokens {
        if m == 0 || m > n_ctx as u64 {
            return Err(ApiError::invalid(key, format!("{key} must be a whole number in [1, {n_ctx}] (the context size), got {m}")));
        }
        o.max_tokens = Some(Setting::new(m as usize, req(if key == "max_tokens" { "max_tokens" } else { "max_completion_tokens" })));
    }
    o.temp = get_f32(obj, "temperature")?.map(|v| Setting::new(v, req("temperature")));
    o.top_p = get_f32(obj, "top_p")?.map(|v| Setting::new(v, req("top_p")));
    o.min_p = get_f32(obj, "min_p")?.map(|v| Setting::new(v, req("min_p")));
    o.repeat_penalty = get_f32(obj, "repeat_penalty")?.map(|v| Setting::new(v, req("repeat_penalty")));
    o.frequency_penalty = get_f32(obj, "frequency_penalty")?.map(|v| Setting::new(v, req("frequency_penalty")));
    o.presence_penalty = get_f32(obj, "presence_penalty")?.map(|v| Setting::new(v, req("presence_penalty")));
    o.logit_bias = parse_logit_bias(obj.get("logit_bias"))?.map(|b| Setting::new(b, req("logit_bias")));
    o.top_k = get_uint(obj, "top_k")?.map(|v| Setting::new(v.min(usize::MAX as u64) as usize, req("top_k")));
    o.seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        // OpenAI's seed is a signed integer: take its bits
        Some(Value::Number(n)) => Some(Setting::new(
            n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)).ok_or_else(|| {
                ApiError::invalid("seed", format!("seed must be a whole number from {} to {}, got {n}", i64::MIN, u64::MAX))
            })?,
            req("seed"),
        )),
        Some(_) => return Err(ApiError::invalid("seed", "seed must be an integer")),
    };
    o.ignore_eos = get_bool(obj, "ignore_eos")?.map(|v| Setting::new(v, req("ignore_eos")));
    let mut speculative = Speculative::default();
    match obj.get("speculative") {
        None | Some(Value::Null) => {}
        Some(Value::Object(s)) => {
            for key in s.keys() {
                if !["drafter", "draft_max", "enabled"].contains(&key.as_str()) {
                    return Err(ApiError::invalid(
                        "speculative",
                        format!("unknown field speculative.{key} (known: drafter, draft_max, enabled)"),
                    ));
                }
            }
            let bad = |m: &str| ApiError::invalid("speculative", m.to_string());
            speculative.drafter = get_str(s, "drafter").map_err(|_| bad("speculative.drafter must be a string"))?.map(str::to_string);
            if let Some(k) = get_uint(s, "draft_max").map_err(|_| bad("speculative.draft_max must be a whole number"))? {
                o.draft_max = Some(Setting::new(k.min(usize::MAX as u64) as usize, req("speculative.draft_max")));
            }
            if get_bool(s, "enabled").map_err(|_| bad("speculative.enabled must be true or false"))? == Some(false) {
                o.no_draft = Some(Setting::new(true, req("speculative.enabled")));
            }
        }
        Some(_) => return Err(ApiError::invalid("speculative", "speculative must be an object")),
    }
    // the one settings path checks ranges; its message names the field
    settings::validate(&o).map_err(|e| {
        let param = match &e.origin {
            Origin::Request { key } => key.to_string(),
            _ => String::new(),
        };
        ApiError::invalid(&param, e.to_string())
    })?;
    Ok((o, speculative))
}

/// A chat's messages: for llama.cpp's template, or for the model's own Jinja template when
/// tools are shown or earlier calls and their results are part of the chat.
fn chat_prompt(messages: Option<&Value>, tools: Option<&ToolRequest>) -> Result<PromptInput, ApiError> {
    let shown = tools.map_or(&[][..], ToolRequest::shown);
    match messages {
        Some(m) if !shown.is_empty() || chat_template::has_tool_messages(m) => Ok(PromptInput::Template(TemplateChat {
            messages: chat_template::parse_messages(m)?,
            tools: shown.iter().map(|t| t.definition.clone()).collect(),
        })),
        _ => Ok(PromptInput::Chat(parse_messages(messages)?)),
    }
}

/// The request's constraint: OpenAI's `response_format`, llama-server's `json_schema` (an
/// object) or `grammar` (GBNF or Lark text), a `regex` (as batch records have it), or vLLM's
/// `guided_json`, `guided_regex`, `guided_grammar` and `guided_choice`; at most one.
fn parse_grammar(obj: &Map<String, Value>) -> Result<Option<(&'static str, Grammar)>, ApiError> {
    const FIELDS: [&str; 8] =
        ["response_format", "json_schema", "grammar", "regex", "guided_json", "guided_regex", "guided_grammar", "guided_choice"];
    let given: Vec<&'static str> = FIELDS.into_iter().filter(|k| obj.get(*k).is_some_and(|v| !v.is_null())).collect();
    if given.len() > 1 {
        return Err(ApiError::invalid(given[1], format!("give at most one of {}", given.join(", "))));
    }
    let Some(&field) = given.first() else { return Ok(None) };
    let value = &obj[field];
    let bad = |e: String| ApiError::invalid(field, format!("{field}: {e}"));
    let text = || value.as_str().ok_or_else(|| ApiError::invalid(field, format!("{field} must be a string")));
    let grammar = match field {
        "response_format" => match crate::constraint::response_format(value).map_err(|e| ApiError::invalid(field, e))? {
            Some(g) => g,
            None => return Ok(None),
        },
        "json_schema" => Grammar::schema_from_text(&value.to_string()).map_err(|e| bad(e.to_string()))?,
        // vLLM takes the schema as an object or as its text
        "guided_json" => {
            Grammar::schema_from_text(&value.as_str().map_or_else(|| value.to_string(), str::to_string)).map_err(|e| bad(e.to_string()))?
        }
        "grammar" | "guided_grammar" => Grammar::from_text(text()?).map_err(|e| bad(e.to_string()))?,
        "regex" | "guided_regex" => Grammar::Regex(text()?.to_string()),
        _ => Grammar::Lark(choice_grammar(value).map_err(|e| ApiError::invalid(field, e))?),
    };
    Ok(Some((field, grammar)))
}

/// vLLM's `guided_choice`: the output is one of the strings, whole.
fn choice_grammar(v: &Value) -> Result<String, String> {
    let choices: Vec<&str> = match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(Value::as_str).collect::<Option<_>>(),
        _ => None,
    }
    .ok_or("guided_choice must be a non-empty array of strings")?;
    let alternatives: Vec<String> = choices.iter().map(|c| Value::from(*c).to_string()).collect();
    Ok(format!("start: {}\n", alternatives.join(" | ")))
}

pub fn parse_messages(v: Option<&Value>) -> Result<Vec<(String, String)>, ApiError> {
    let arr = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "messages must not be empty")),
        None | Some(Value::Null) => return Err(ApiError::invalid("messages", "messages is required")),
        Some(_) => return Err(ApiError::invalid("messages", "messages must be an array")),
    };
    if arr.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages")));
    }
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let o = m.as_object().ok_or_else(|| ApiError::invalid(&param, format!("{param} must be an object")))?;
            let role = match o.get("role") {
                Some(Value::String(r)) if crate::formats::records::CHAT_ROLES.contains(&r.as_str()) => {
                    if r == "developer" {
                        "system".to_string()
                    } else {
                        r.clone()
                    }
                }
                Some(Value::String(r)) => return Err(ApiError::invalid(&format!("{param}.role"), format!("unsupported role {r:?}"))),
                _ => return Err(ApiError::invalid(&format!("{param}.role"), format!("{param}.role must be a string"))),
            };
            let content = match o.get("content") {
                Some(Value::String(s)) => s.clone(),
                // the list form: text parts only
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => return Err(ApiError::invalid(&format!("{param}.content"), "only text content parts are supported")),
                        }
                    }
                    text
                }
                _ => return Err(ApiError::invalid(&format!("{param}.content"), format!("{param}.content must be a string"))),
            };
            Ok((role, content))
        })
        .collect()
}

fn parse_prompt(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid("prompt", "prompt must not be empty")),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => parse_prompt(Some(&a[0])),
        Some(Value::Array(_)) => Err(ApiError::invalid("prompt", "prompt must be one string (batches of prompts are not supported)")),
        None | Some(Value::Null) => Err(ApiError::invalid("prompt", "prompt is required")),
        Some(_) => Err(ApiError::invalid("prompt", "prompt must be a string")),
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid("stop", "stop must be a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS || stops.iter().any(|s| s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop strings of at most {MAX_STOP_LEN} bytes")));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

/// What a finished request reports besides its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose cells a slot kept from the request before (OpenAI's
    /// `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// The `specrun` extension: drafter, acceptance and tokens per round.
    pub drafter: String,
    pub n_drafted: usize,
    pub n_accepted: usize,
    pub n_rounds: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        let acceptance = if self.n_drafted > 0 { self.n_accepted as f64 / self.n_drafted as f64 } else { 0.0 };
        let per_round = if self.n_rounds > 0 { self.completion_tokens as f64 / self.n_rounds as f64 } else { 0.0 };
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
            "specrun": {
                "drafter": self.drafter,
                "n_drafted": self.n_drafted,
                "n_accepted": self.n_accepted,
                "acceptance_rate": acceptance,
                "tokens_per_round": per_round,
            }
        })
    }
}

/// The response's identity: id, creation time (Unix seconds) and model name.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A whole (non-streamed) response.
pub fn response(endpoint: Endpoint, meta: &Meta, text: &str, finish: &str, usage: &Usage) -> Value {
    response_choices(endpoint, meta, &[ChoiceOut { text, finish, logprobs: None, tool_calls: &[] }], usage)
}

pub fn response_choices(endpoint: Endpoint, meta: &Meta, choices: &[ChoiceOut<'_>], usage: &Usage) -> Value {
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = logprobs_json(endpoint, c.logprobs);
            match endpoint {
                Endpoint::Chat if c.tool_calls.is_empty() => json!({
                    "index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish, "logprobs": logprobs
                }),
                Endpoint::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": if c.text.is_empty() { Value::Null } else { json!(c.text) },
                        "tool_calls": tool_calls_json(c.tool_calls, false)},
                    "finish_reason": "tool_calls",
                    "logprobs": logprobs
                }),
                Endpoint::Completions => json!({"index": i, "text": c.text, "finish_reason": c.finish, "logprobs": logprobs}),
            }
        })
        .collect();
    json!({
        "id": meta.id,
        "object": if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage.json(),
    })
}

fn chunk_of(endpoint: Endpoint, meta: &Meta, choices: Value) -> Value {
    json!({
        "id": meta.id,
        "object": if endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    })
}

/// A stream chunk of one choice.
pub fn chunk(endpoint: Endpoint, meta: &Meta, d: &DeltaOut<'_>) -> Value {
    let logprobs = logprobs_json(endpoint, d.logprobs);
    let choice = match endpoint {
        Endpoint::Chat => {
            let mut delta = Map::new();
            if d.first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = d.text {
                delta.insert("content".into(), json!(t));
            }
            if !d.tool_calls.is_empty() {
                delta.insert("tool_calls".into(), tool_calls_json(d.tool_calls, true));
            }
            json!({"index": d.index, "delta": delta, "finish_reason": d.finish, "logprobs": logprobs})
        }
        Endpoint::Completions => json!({"index": d.index, "text": d.text.unwrap_or(""), "finish_reason": d.finish, "logprobs": logprobs}),
    };
    chunk_of(endpoint, meta, json!([choice]))
}

/// The stream's last chunk before `[DONE]` when the request asked for usage: no choices.
pub fn usage_chunk(endpoint: Endpoint, meta: &Meta, usage: &Usage) -> Value {
    let mut c = chunk_of(endpoint, meta, json!([]));
    c["usage"] = usage.json();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<CompletionRequest, ApiError> {
        parse_request(Endpoint::Chat, &body, 4096)
    }

    #[test]
    fn a_full_chat_request_becomes_settings() {
        let r = chat(json!({
            "model": "qwen-coder", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": -1, "stop": "END", "n": 1,
            "stream": true, "stream_options": {"include_usage": true}, "speculative": {"draft_max": 8}
        }))
        .unwrap();
        assert_eq!(r.prompt, PromptInput::Chat(vec![("system".into(), "be brief".into()), ("user".into(), "hi".into())]));
        assert_eq!(r.overrides.max_tokens.as_ref().unwrap().value, 20);
        assert_eq!(r.overrides.seed.as_ref().unwrap().value, u64::MAX);
        assert_eq!(r.overrides.draft_max.as_ref().unwrap().value, 8);
        assert_eq!(r.stops, vec!["END".to_string()]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn tools_take_the_models_template_and_a_demanded_call_its_grammar() {
        let tool = json!({"type": "function", "function": {"name": "now"}});
        let r = chat(json!({"messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "required"})).unwrap();
        let PromptInput::Template(c) = &r.prompt else { panic!("{:?}", r.prompt) };
        assert_eq!(c.tools, vec![tool.clone()]);
        assert!(matches!(r.grammar, Some(("tools", Grammar::Lark(_)))), "{:?}", r.grammar);
        // auto: shown, no grammar; none: not shown, the plain chat path
        let r = chat(json!({"messages": [{"role": "user", "content": "hi"}], "tools": [tool]})).unwrap();
        assert!(matches!(r.prompt, PromptInput::Template(_)) && r.grammar.is_none());
        let r = chat(json!({"messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "none"})).unwrap();
        assert!(matches!(r.prompt, PromptInput::Chat(_)) && !r.tools.unwrap().reads_calls());
        // a tool result without tools still needs the model's template
        let r = chat(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]})).unwrap();
        assert!(matches!(r.prompt, PromptInput::Template(_)));
    }

    #[test]
    fn every_bad_field_is_named() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            chat(b).unwrap_err()
        };
        for (k, v, param) in [
            ("max_tokens", json!(0), "max_tokens"),
            ("max_tokens", json!(1u64 << 40), "max_tokens"),
            ("max_tokens", json!("5"), "max_tokens"),
            ("temperature", json!(-1), "temperature"),
            ("temperature", json!("hot"), "temperature"),
            ("top_p", json!(0), "top_p"),
            ("n", json!(17), "n"),
            ("n", json!(0), "n"),
            ("stop", json!([1]), "stop"),
            ("messages", json!([]), "messages"),
            ("messages", json!("hi"), "messages"),
            ("frequency_penalty", json!(3.0), "frequency_penalty"),
            ("presence_penalty", json!("high"), "presence_penalty"),
            ("logit_bias", json!({"x": 1}), "logit_bias"),
            ("logit_bias", json!({"5": 200}), "logit_bias"),
            ("logit_bias", json!([5]), "logit_bias"),
            ("tool_choice", json!("required"), "tool_choice"),
            ("tools", json!([{"type": "function"}]), "tools[0]"),
            ("top_logprobs", json!(3), "top_logprobs"),
            ("speculative", json!({"k": 1}), "speculative"),
        ] {
            let e = with(k, v.clone());
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{k}={v}: {e:?}");
            assert!(!e.message.is_empty() && !e.message.ends_with('.'), "{}", e.message);
        }
        // a field that does not change the text is accepted
        let mut extra = base.clone();
        extra["bogus"] = json!(1);
        extra["metadata"] = json!({"x": "y"});
        assert!(chat(extra).is_ok());
        // n > 1, whole or streamed
        let mut many = base.clone();
        many["n"] = json!(3);
        assert_eq!(chat(many.clone()).unwrap().n, 3);
        many["stream"] = json!(true);
        assert_eq!(chat(many).unwrap().n, 3);
        // penalties and biases are taken, as OpenAI and llama-server define them
        let mut p = base.clone();
        p["frequency_penalty"] = json!(0.5);
        p["presence_penalty"] = json!(-0.25);
        p["logit_bias"] = json!({"5": -100, "7": 2.5});
        let r = chat(p).unwrap();
        assert_eq!(r.overrides.frequency_penalty.map(|s| s.value), Some(0.5));
        assert_eq!(r.overrides.presence_penalty.map(|s| s.value), Some(-0.25));
        let mut bias = r.overrides.logit_bias.unwrap().value.0;
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, vec![(5, -100.0), (7, 2.5)]);
        let e = chat(json!([1, 2])).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_request(Endpoint::Completions, &json!({"prompt": ["a", "b"]}), 4096).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let body = e.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"].get("code").is_some());
    }

    #[test]
    fn chunks_and_responses_have_the_openai_shape() {
        let meta = Meta { id: "chatcmpl-1".into(), created: 7, model: "m".into() };
        let usage = Usage {
            prompt_tokens: 3,
            cached_tokens: 2,
            completion_tokens: 4,
            drafter: "ngram".into(),
            n_drafted: 4,
            n_accepted: 2,
            n_rounds: 2,
        };
        let r = response(Endpoint::Chat, &meta, "hey", "stop", &usage);
        assert_eq!(r["choices"][0]["message"]["content"], "hey");
        assert_eq!(r["usage"]["total_tokens"], 7);
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(r["usage"]["specrun"]["acceptance_rate"], 0.5);
        let c = chunk(Endpoint::Chat, &meta, &DeltaOut { first: true, text: Some("he"), ..DeltaOut::default() });
        assert_eq!(c["choices"][0]["delta"], json!({"role": "assistant", "content": "he"}));
        let c = chunk(Endpoint::Completions, &meta, &DeltaOut { index: 2, finish: Some("length"), ..DeltaOut::default() });
        assert_eq!((&c["choices"][0]["finish_reason"], &c["choices"][0]["index"]), (&json!("length"), &json!(2)));
        let u = usage_chunk(Endpoint::Chat, &meta, &usage);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["completion_tokens"], 4);
        // calls: whole, and as a stream's delta
        let calls = [("call_1".to_string(), ToolCall { name: "now".into(), arguments: "{}".into() })];
        let r =
            response_choices(Endpoint::Chat, &meta, &[ChoiceOut { text: "", finish: "stop", logprobs: None, tool_calls: &calls }], &usage);
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            r["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]})
        );
        let c = chunk(Endpoint::Chat, &meta, &DeltaOut { tool_calls: &calls, ..DeltaOut::default() });
        assert_eq!(c["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "now");
    }
}
