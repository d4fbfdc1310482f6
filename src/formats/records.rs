//! Batch records: parsing prompt files, the JSON Lines output schema, and resuming.
//!
//! # Input
//!
//! JSON Lines (`--input-format jsonl`, the default), one record per line:
//!
//! ```json
//! {"id": "a", "prompt": "text", "max_tokens": 64, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "seed": 1, "stop": ["\n\n"]}
//! {"id": 7, "messages": [{"role": "user", "content": "text"}]}
//! ```
//!
//! Exactly one of `prompt` (raw text) and `messages` (wrapped in the target's chat template).
//! At most one constraint on the output: `response_format` exactly as OpenAI's
//! (`{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name": …, "schema":
//! {…}, "strict": true}}`), `json_schema` (a schema object), `grammar` (GBNF or Lark text) or
//! `regex`; one that does not compile is an error record naming the line and the reason.
//! Sampling fields: `temperature`, `top_p`, `top_k`, `seed`, `frequency_penalty`,
//! `presence_penalty`, `logit_bias` (OpenAI's meanings).
//! `id` is a string or a number; without one the record's line number is its id. Every other
//! field is optional; unknown fields are errors. With `--input-format txt` each non-blank line is
//! one prompt, its id the line number.
//!
//! # Output
//!
//! One JSON object per input record, in input order, each written whole and flushed when the
//! record finishes: an [`OkRecord`] or an [`ErrorRecord`] (`{"id": ..., "error": "..."}`).
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `id` | string or number | the record's id |
//! | `text` | string | generated text (cut before a stop string) |
//! | `finish_reason` | `"stop"`, `"length"`, `"context"` | why generation ended |
//! | `n_prompt`, `n_generated` | int | token counts |
//! | `n_drafted`, `n_accepted` | int | drafted and accepted draft tokens |
//! | `acceptance_rate` | float | `n_accepted / n_drafted` |
//! | `tokens_per_round` | float | generated tokens per target decode |
//! | `t_draft_s`, `t_verify_s` | float | seconds drafting and verifying |
//! | `decode_tok_per_s` | float | generated tokens per second of decoding |
//! | `n_forced`, `n_forced_accepted` | int | tokens the record's constraint forced, and accepted (only with a constraint) |
//! | `n_closing`, `n_closing_accepted` | int | closing tokens drafted where a copied value ended, and accepted (only when some were) |
//! | `n_likely`, `n_likely_accepted` | int | tokens drafted as the likely spelling of text the constraint forces (a quote before a value), and accepted (only when some were) |
//! | `n_rows_unread` | int | target rows decoded without logits, the constraint allowing one token there (only when some were) |
//!
//! The output holds records only. What it was made from, a [`Header`]
//! (`{"specrun_batch": {"format": 1, "input_sha256": "…", "settings": {…}}}`), is written
//! beside it, to `OUT.specrun.json` ([`sidecar_path`]); outputs written before that carried it
//! on their first line, which resuming still reads.
//!
//! # OpenAI Batch API files
//!
//! A JSON Lines input whose first record has a `custom_id` is an OpenAI batch input
//! ([`detect_format`]; `--input-format openai` says so): `{"custom_id", "method": "POST",
//! "url": "/v1/chat/completions" | "/v1/completions", "body": {…}}`, the body checked as the
//! server checks a request. Its output lines are the Batch API's (`{"id", "custom_id",
//! "response": {"status_code", "request_id", "body"}, "error"}`); resuming reads them by
//! `custom_id`.
//!
//! # Ids
//!
//! Ids must be unique ([`check_unique_ids`]); a record without an id has its line number as
//! id, so an explicit numeric id equal to another record's line number is a duplicate too. A
//! duplicate stops the batch before anything runs, naming both lines.
//!
//! # Resuming
//!
//! [`read_output`] reads an earlier output file and its sidecar: the header must match this
//! run's input and settings, the ids it holds are skipped, and only a last line cut off by a crash (no final
//! newline) is cut away before appending. Any other line that is not a record is an error: a
//! resume never truncates what this program did not write.

use crate::constraint::Grammar;
use crate::formats::openai::{parse_request, Endpoint};
use crate::settings::{Origin, Overrides, Setting};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A chat message of an input record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One input line, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    pub id: Option<Value>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// OpenAI's form: token ids (as strings) to a bias in [-100, 100].
    pub logit_bias: Option<Value>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
    /// OpenAI's `response_format` (`json_object`, `json_schema`).
    pub response_format: Option<Value>,
    /// A JSON schema the output must follow.
    pub json_schema: Option<Value>,
    /// A grammar the output must follow (GBNF or Lark).
    pub grammar: Option<String>,
    /// A regular expression the output must match.
    pub regex: Option<String>,
}

/// The chat roles a message may have (`developer` is OpenAI's newer name for `system`).
pub const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Chat(Vec<(String, String)>),
    /// A chat with tools, calls or tool results, for the model's own Jinja template.
    Template(crate::formats::chat_template::TemplateChat),
}

impl PromptInput {
    /// The bytes of text it holds (a bound on its tokens before tokenizing).
    pub fn text_bytes(&self) -> usize {
        match self {
            PromptInput::Text(t) => t.len(),
            PromptInput::Chat(m) => m.iter().map(|(role, c)| role.len() + c.len()).sum(),
            PromptInput::Template(c) => c.messages.iter().chain(&c.tools).map(|v| v.to_string().len()).sum(),
        }
    }
}

/// A checked input record.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Value,
    /// 1-based line in the input file.
    pub line: usize,
    pub input: PromptInput,
    /// The record's own generation settings, located at its line (validated when merged);
    /// boxed, as most records set few of them (a file of millions of records stays small).
    pub overrides: Box<Overrides>,
    pub stop: Vec<String>,
    /// What the output must follow.
    pub grammar: Option<Grammar>,
    /// The endpoint of an OpenAI batch line (its output is that endpoint's response object).
    pub openai: Option<Endpoint>,
    /// An OpenAI batch line's tools, when its answer is read for calls.
    pub tools: Option<Box<crate::formats::tools::ToolRequest>>,
}

impl Job {
    fn plain(id: Value, line: usize, input: PromptInput) -> Self {
        Self { id, line, input, overrides: Box::default(), stop: vec![], grammar: None, openai: None, tools: None }
    }
}

/// A record that could not even be read: it becomes an error record. The reason is shared
/// between lines that fail the same way (a file of millions of bad lines stays small).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub id: Value,
    pub line: usize,
    /// Where in the line JSON parsing stopped, for syntax errors.
    pub column: Option<usize>,
    pub reason: std::sync::Arc<str>,
}

impl BadRecord {
    fn new(id: Value, line: usize, reason: String) -> Self {
        Self { id, line, column: None, reason: reason.into() }
    }

    /// The error record's text: `line N[, column M]: reason`.
    pub fn error(&self) -> String {
        match self.column {
            Some(c) => format!("line {}, column {c}: {}", self.line, self.reason),
            None => format!("line {}: {}", self.line, self.reason),
        }
    }
}

/// The input file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// specrun's records (below).
    Jsonl,
    /// One prompt per line.
    Txt,
    /// The OpenAI Batch API's input: `{"custom_id", "method", "url", "body"}` a line.
    Openai,
}

/// A JSON Lines file's format by its first record: OpenAI batch lines have a `custom_id`.
pub fn detect_format(first_record: &str) -> InputFormat {
    let openai = serde_json::from_str::<Value>(first_record).ok().is_some_and(|v| v.get("custom_id").is_some());
    if openai {
        InputFormat::Openai
    } else {
        InputFormat::Jsonl
    }
}

/// The endpoints an OpenAI batch line may name in `url`.
const OPENAI_URLS: [(&str, Endpoint); 2] = [("/v1/chat/completions", Endpoint::Chat), ("/v1/completions", Endpoint::Completions)];

/// One line of an OpenAI batch input file: its `body` is checked as the server checks a request.
fn check_openai(raw: &str, line: usize) -> Result<Job, BadRecord> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m).to_string();
        BadRecord { column: Some(e.column()), ..BadRecord::new(Value::from(line), line, msg) }
    })?;
    let id = value.get("custom_id").cloned().filter(Value::is_string).unwrap_or_else(|| Value::from(line));
    let bad = |error: String| BadRecord::new(id.clone(), line, error);
    let obj = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    if let Some(k) = obj.keys().find(|k| !["custom_id", "method", "url", "body"].contains(&k.as_str())) {
        return Err(bad(format!("unknown field `{k}` (an OpenAI batch line has custom_id, method, url, body)")));
    }
    if !obj.get("custom_id").is_some_and(Value::is_string) {
        return Err(bad("custom_id must be a string".into()));
    }
    if let Some(m) = obj.get("method").filter(|m| m.as_str() != Some("POST")) {
        return Err(bad(format!("method must be \"POST\", got {m}")));
    }
    let url = obj.get("url").and_then(Value::as_str).ok_or_else(|| bad("url must be a string".into()))?;
    let endpoint = OPENAI_URLS
        .iter()
        .find(|(u, _)| *u == url)
        .map(|(_, e)| *e)
        .ok_or_else(|| bad(format!("url {url:?} is not supported (/v1/chat/completions, /v1/completions)")))?;
    let body = obj.get("body").ok_or_else(|| bad("missing body".into()))?;
    let req = parse_request(endpoint, body, u32::MAX as usize).map_err(|e| match &e.param {
        Some(p) if !p.is_empty() => bad(format!("body.{p}: {}", e.message)),
        _ => bad(format!("body: {}", e.message)),
    })?;
    if let PromptInput::Chat(m) = &req.prompt {
        if m.is_empty() {
            return Err(bad("body.messages is empty".into()));
        }
    }
    // what only the server gives: refused rather than silently left out of the answer
    if req.n > 1 {
        return Err(bad(format!("body.n: a batch line gives one choice, got n = {}", req.n)));
    }
    if req.logprobs.is_some() {
        return Err(bad("body.logprobs: log-probabilities are given by specrun serve, not in batch outputs".into()));
    }
    Ok(Job {
        id,
        line,
        input: req.prompt,
        overrides: Box::new(req.overrides.at_line(line)),
        stop: req.stops,
        grammar: req.grammar.map(|(_, g)| g),
        openai: Some(endpoint),
        tools: req.tools.filter(|t| t.reads_calls()).map(Box::new),
    })
}

/// A finished record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OkRecord {
    pub id: Value,
    pub text: String,
    pub finish_reason: String,
    pub n_prompt: usize,
    /// Prompt tokens not read (restored from the prefix cache, or kept in the slot): reported
    /// in OpenAI batch output, not in records, whose bytes must not depend on what an earlier
    /// record of the run left (a resumed run equals an uninterrupted one).
    #[serde(skip)]
    pub n_prompt_cached: usize,
    pub n_generated: usize,
    pub n_drafted: usize,
    pub n_accepted: usize,
    pub acceptance_rate: f64,
    pub tokens_per_round: f64,
    pub t_draft_s: f64,
    pub t_verify_s: f64,
    pub decode_tok_per_s: f64,
    /// Tokens the record's constraint forced (drafted ahead of the drafter's) and how many
    /// were accepted; absent without a constraint.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_forced: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_forced_accepted: usize,
    /// Closing tokens drafted where a copied value ended, and accepted; absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_closing: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_closing_accepted: usize,
    /// Tokens drafted as the likely spelling of text the constraint forces, and accepted;
    /// absent when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_likely: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_likely_accepted: usize,
    /// Target rows decoded without logits (the constraint allowed one token there); absent
    /// when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_rows_unread: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A failed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRecord {
    pub id: Value,
    pub error: String,
    /// The text generated before a failure during generation; absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl ErrorRecord {
    /// A record that failed before generating anything.
    pub fn new(id: Value, error: String) -> Self {
        Self { id, error, text: None }
    }
}

/// Any output line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRecord {
    Ok(OkRecord),
    Error(ErrorRecord),
}

impl OutputRecord {
    pub fn id(&self) -> &Value {
        match self {
            OutputRecord::Ok(r) => &r.id,
            OutputRecord::Error(r) => &r.id,
        }
    }
}

/// The key an id is matched by when resuming (`"a"` and `7` as written in JSON).
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

fn check(rec: InputRecord, line: usize) -> Result<Job, BadRecord> {
    let id = rec.id.clone().unwrap_or_else(|| Value::from(line));
    let bad = |error: String| BadRecord::new(id.clone(), line, error);
    if !matches!(id, Value::String(_) | Value::Number(_)) {
        return Err(bad("id must be a string or a number".into()));
    }
    // the same rules as the server's: a known role, at least one token
    if let Some(m) = rec.messages.iter().flatten().find(|m| !CHAT_ROLES.contains(&m.role.as_str())) {
        return Err(bad(format!("unsupported role {:?} (system, user, assistant, developer)", m.role)));
    }
    if rec.max_tokens == Some(0) {
        return Err(bad("max_tokens must be at least 1".into()));
    }
    let input = match (rec.prompt, rec.messages) {
        (Some(p), None) => PromptInput::Text(p),
        (None, Some(m)) if !m.is_empty() => PromptInput::Chat(
            m.into_iter().map(|m| (if m.role == "developer" { "system".to_string() } else { m.role }, m.content)).collect(),
        ),
        (None, Some(_)) => return Err(bad("messages is empty".into())),
        (Some(_), Some(_)) => return Err(bad("give prompt or messages, not both".into())),
        (None, None) => return Err(bad("missing prompt or messages".into())),
    };
    let at = |key: &'static str| Origin::Record { line, key };
    let overrides = Overrides {
        max_tokens: rec.max_tokens.map(|v| Setting::new(v, at("max_tokens"))),
        temp: rec.temperature.map(|v| Setting::new(v, at("temperature"))),
        top_p: rec.top_p.map(|v| Setting::new(v, at("top_p"))),
        top_k: rec.top_k.map(|v| Setting::new(v, at("top_k"))),
        frequency_penalty: rec.frequency_penalty.map(|v| Setting::new(v, at("frequency_penalty"))),
        presence_penalty: rec.presence_penalty.map(|v| Setting::new(v, at("presence_penalty"))),
        logit_bias: crate::formats::openai::parse_logit_bias(rec.logit_bias.as_ref())
            .map_err(|e| bad(e.message))?
            .map(|b| Setting::new(b, at("logit_bias"))),
        seed: rec.seed.map(|v| Setting::new(v, at("seed"))),
        ..Overrides::default()
    };
    let grammars = [rec.response_format.is_some(), rec.json_schema.is_some(), rec.grammar.is_some(), rec.regex.is_some()];
    if grammars.iter().filter(|&&g| g).count() > 1 {
        return Err(bad("give at most one of response_format, json_schema, grammar, regex".into()));
    }
    let grammar = if let Some(rf) = &rec.response_format {
        crate::constraint::response_format(rf).map_err(bad)?
    } else if let Some(schema) = rec.json_schema {
        Some(Grammar::schema_from_text(&schema.to_string()).map_err(|e| bad(format!("json_schema: {e}")))?)
    } else if let Some(g) = &rec.grammar {
        Some(Grammar::from_text(g).map_err(|e| bad(format!("grammar: {e}")))?)
    } else {
        rec.regex.map(Grammar::Regex)
    };
    Ok(Job { id, line, input, overrides: Box::new(overrides), stop: rec.stop.unwrap_or_default(), grammar, openai: None, tools: None })
}

/// One input line: a job (boxed: a file of millions of records, most of them bad, stays
/// small) or why it is not one.
pub type Record = Result<Box<Job>, BadRecord>;

/// Parse a whole input file held in memory. Blank lines are skipped; a line that is not a
/// valid record becomes a [`BadRecord`] naming its line.
pub fn parse_input(text: &str, format: InputFormat) -> Vec<Record> {
    // a string is UTF-8 and has no line over the limit: every item is a record
    RecordReader::new(text.as_bytes(), Some(format), usize::MAX).filter_map(|r| r.ok().map(|(_, rec)| rec)).collect()
}

/// Why a record file cannot be read on: one line naming the file's line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: {reason}")]
    Io { line: usize, reason: String },
    #[error("line {line}: not UTF-8 text (byte {offset} of the line)")]
    NotUtf8 { line: usize, offset: usize },
    #[error("line {line}: longer than {limit} bytes; refusing to read it")]
    TooLong { line: usize, limit: usize },
}

/// A record file read one line at a time, never whole: each non-blank line's record with its
/// line number, or why it is none. The format is given, or taken from the first non-blank
/// line ([`detect_format`]). A UTF-8 byte-order mark before the first line is skipped; lines
/// failing alike share their reason (a bounded number of reasons is kept).
pub struct RecordReader<R> {
    reader: R,
    format: Option<InputFormat>,
    line: usize,
    max_line: usize,
    buf: Vec<u8>,
    reasons: HashMap<String, std::sync::Arc<str>>,
}

impl<R: std::io::BufRead> RecordReader<R> {
    pub fn new(reader: R, format: Option<InputFormat>, max_line: usize) -> Self {
        Self { reader, format, line: 0, max_line, buf: Vec::new(), reasons: HashMap::new() }
    }

    /// The reader, at where reading stopped.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// The format, once the first non-blank line decided it (or as given).
    pub fn format(&self) -> Option<InputFormat> {
        self.format
    }

    /// The next line's bytes without its line end; None at the end of the file.
    fn read_line(&mut self) -> Option<Result<&str, LineError>> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        self.line += 1;
        let line = self.line;
        let limit = self.max_line.saturating_add(1) as u64;
        match (&mut self.reader).take(limit).read_until(b'\n', &mut self.buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(LineError::Io { line, reason: e.to_string() })),
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if self.buf.len() > self.max_line {
            return Some(Err(LineError::TooLong { line, limit: self.max_line }));
        }
        let bytes = if line == 1 { self.buf.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&self.buf) } else { &self.buf };
        Some(std::str::from_utf8(bytes).map_err(|e| LineError::NotUtf8 { line, offset: e.valid_up_to() }))
    }
}

impl<R: std::io::BufRead> Iterator for RecordReader<R> {
    type Item = Result<(usize, Record), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = match self.read_line()? {
                Ok(raw) if raw.trim().is_empty() => continue,
                Ok(raw) => raw.to_string(),
                Err(e) => return Some(Err(e)),
            };
            let format = *self.format.get_or_insert_with(|| detect_format(&raw));
            return Some(Ok((self.line, parse_line(&raw, self.line, format, &mut self.reasons))));
        }
    }
}

/// One non-blank line's record.
fn parse_line(raw: &str, line: usize, format: InputFormat, reasons: &mut HashMap<String, std::sync::Arc<str>>) -> Record {
    match format {
        InputFormat::Txt => Ok(Box::new(Job::plain(Value::from(line), line, PromptInput::Text(raw.to_string())))),
        InputFormat::Openai => check_openai(raw, line).map(Box::new),
        InputFormat::Jsonl => match serde_json::from_str::<InputRecord>(raw) {
            Ok(rec) => check(rec, line).map(Box::new),
            Err(e) => {
                // keep the id when the line is JSON with an id, else the line number
                let id = serde_json::from_str::<Value>(raw)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .filter(|v| matches!(v, Value::String(_) | Value::Number(_)))
                    .unwrap_or_else(|| Value::from(line));
                // serde_json counts lines within this one line: say the column only
                let msg = e.to_string();
                let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m).to_string();
                let reason = match reasons.get(&msg) {
                    Some(r) => r.clone(),
                    None if reasons.len() < 256 => reasons.entry(msg.clone()).or_insert_with(|| msg.into()).clone(),
                    None => msg.into(),
                };
                Err(BadRecord { id, line, column: Some(e.column()), reason })
            }
        },
    }
}

/// The first line of every output file: what it was made from, so that `--resume` refuses an
/// output written from another input or with settings that change results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub specrun_batch: HeaderBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderBody {
    /// Version of this output format.
    pub format: u32,
    /// sha256 of the input file's bytes.
    pub input_sha256: String,
    /// The settings that change results (models, sampling, limits), by name.
    pub settings: serde_json::Map<String, Value>,
}

/// The output format version [`Header`] names.
pub const OUTPUT_FORMAT: u32 = 1;

impl Header {
    pub fn new(input_sha256: String, settings: serde_json::Map<String, Value>) -> Self {
        Self { specrun_batch: HeaderBody { format: OUTPUT_FORMAT, input_sha256, settings } }
    }

    /// Why an output with header `self` cannot be continued by a run that would write
    /// `current`, or `None` when it can.
    pub fn mismatch(&self, current: &Header) -> Option<String> {
        let (old, new) = (&self.specrun_batch, &current.specrun_batch);
        if old.format != new.format {
            return Some(format!("it is output format {}, this specrun writes {}", old.format, new.format));
        }
        if old.input_sha256 != new.input_sha256 {
            return Some("it was made from a different input (sha256 differs)".to_string());
        }
        // a value both name first (temp 0.8 vs 0.2), then one only one of them has
        let show = |v: Option<&Value>| v.map_or("(unset)".to_string(), Value::to_string);
        let both = old.settings.iter().filter_map(|(k, a)| new.settings.get(k).filter(|b| *b != a).map(|b| (k, Some(a), Some(b))));
        let only_old = old.settings.iter().filter(|(k, _)| !new.settings.contains_key(*k)).map(|(k, a)| (k, Some(a), None));
        let only_new = new.settings.iter().filter(|(k, _)| !old.settings.contains_key(*k)).map(|(k, b)| (k, None, Some(b)));
        both.chain(only_old)
            .chain(only_new)
            .next()
            .map(|(k, a, b)| format!("it was made with {k} = {}, this run has {k} = {}", show(a), show(b)))
    }
}

/// What an earlier output file holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResumeState {
    /// Its header (`None`: the file is empty, or its header line was cut off).
    pub header: Option<Header>,
    /// Ids already written.
    pub done: HashSet<String>,
    /// Bytes of the file that are whole lines; anything after is a cut-off line to remove.
    pub valid_len: usize,
    /// Whole records kept, and how many of them are errors.
    pub n_records: usize,
    pub n_failed: usize,
}

/// Why an existing file cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("{sidecar} is missing (this program did not write the file, or not its settings)")]
    NoHeader { sidecar: String },
    #[error("{sidecar} is not a specrun batch settings file")]
    BadSidecar { sidecar: String },
    #[error("line {line} is not a specrun output record")]
    NotARecord { line: usize },
    #[error("line {line} repeats id {id} (an output holds each record once)")]
    DuplicateId { line: usize, id: String },
}

/// Scan an earlier output file for resuming. Only a last line without its newline (a write
/// cut off by a crash) is dropped; any other line that is not this program's is an error, so
/// that resuming never truncates what it did not write.
pub fn scan_output(text: &str) -> Result<ResumeState, ScanError> {
    let mut state = ResumeState::default();
    let mut pos = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break; // cut off mid-write: redone
        }
        let body = line.trim_end();
        // outputs written before the settings moved to a sidecar begin with them
        let legacy_header = if i == 0 { serde_json::from_str::<Header>(body).ok() } else { None };
        if legacy_header.is_some() {
            state.header = legacy_header;
        } else {
            let (id, failed) = output_line_id(body).ok_or(ScanError::NotARecord { line: i + 1 })?;
            if !state.done.insert(id_key(&id)) {
                return Err(ScanError::DuplicateId { line: i + 1, id: id_key(&id) });
            }
            state.n_records += 1;
            state.n_failed += usize::from(failed);
        }
        pos += line.len();
        state.valid_len = pos;
    }
    Ok(state)
}

/// The id of an output line (a specrun record, or an OpenAI batch output line by its
/// `custom_id`) and whether it is an error.
fn output_line_id(line: &str) -> Option<(Value, bool)> {
    if let Ok(rec) = serde_json::from_str::<OutputRecord>(line) {
        return Some((rec.id().clone(), matches!(rec, OutputRecord::Error(_))));
    }
    let v: OpenAiOutputLine = serde_json::from_str(line).ok()?;
    let failed =
        v.error.is_some_and(|e| !e.is_null()) || v.response.and_then(|r| r.get("status_code").and_then(Value::as_u64)) != Some(200);
    Some((Value::String(v.custom_id), failed))
}

/// An OpenAI batch output line, as far as resuming reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiOutputLine {
    #[allow(dead_code)]
    id: String,
    custom_id: String,
    response: Option<Value>,
    error: Option<Value>,
}

/// Where an output file's settings live: beside it, `OUT.specrun.json`, so that the output
/// itself holds records only.
pub fn sidecar_path(output: &std::path::Path) -> std::path::PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".specrun.json");
    output.with_file_name(name)
}

/// An earlier output and its settings: the sidecar's header (or, for older outputs, the one
/// on the output's first line); none at all is an error once the output holds anything.
pub fn read_output(output: &std::path::Path, text: &str) -> Result<ResumeState, ScanError> {
    let mut state = scan_output(text)?;
    let sidecar = sidecar_path(output);
    let name = sidecar.display().to_string();
    match std::fs::read_to_string(&sidecar) {
        Ok(s) => state.header = Some(serde_json::from_str(&s).map_err(|_| ScanError::BadSidecar { sidecar: name })?),
        Err(_) if state.header.is_none() && !text.is_empty() => return Err(ScanError::NoHeader { sidecar: name }),
        Err(_) => {}
    }
    Ok(state)
}

/// Ids must be unique: an explicit id may not repeat, nor equal another record's implicit id
/// (its line number). Returns the first clash as `line N: duplicate id X (also line M)`.
pub fn check_unique_ids(records: &[Record]) -> Result<(), String> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in records {
        let (id, line) = match r {
            Ok(j) => (&j.id, j.line),
            Err(b) => (&b.id, b.line),
        };
        if let Some(first) = seen.insert(id_key(id), line) {
            return Err(format!("line {line}: duplicate id {id} (also line {first}); ids must be unique"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn openai_batch_lines_asking_for_what_only_the_server_gives_are_error_records() {
        let line = |body: &str| format!(r#"{{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {body}}}"#);
        let ok = line(r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
        let n = line(r#"{"messages": [{"role": "user", "content": "hi"}], "n": 2}"#);
        let lp = line(r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true}"#);
        let recs = parse_input(&[ok, n, lp].join("\n"), InputFormat::Openai);
        assert!(recs[0].is_ok());
        assert!(recs[1].as_ref().unwrap_err().error().contains("body.n"), "{:?}", recs[1]);
        assert!(recs[2].as_ref().unwrap_err().error().contains("body.logprobs"), "{:?}", recs[2]);
    }

    #[test]
    fn a_file_of_many_bad_lines_stays_small() {
        // a record holds a pointer to its job, and lines failing alike share their reason
        assert!(std::mem::size_of::<Record>() <= 128, "{} bytes a record", std::mem::size_of::<Record>());
        let recs = parse_input("{\"x\": 1}\n{\"y\": 2}\n{\"x\": 1}\n", InputFormat::Jsonl);
        let reason = |i: usize| recs[i].as_ref().unwrap_err().reason.clone();
        assert!(std::sync::Arc::ptr_eq(&reason(0), &reason(2)));
        assert!(!std::sync::Arc::ptr_eq(&reason(0), &reason(1)));
        assert!(recs[2].as_ref().unwrap_err().error().starts_with("line 3, column "), "{}", recs[2].as_ref().unwrap_err().error());
    }
    use super::*;

    #[test]
    fn records_take_prompt_or_messages_and_default_their_id_to_the_line() {
        let text = "{\"id\": \"a\", \"prompt\": \"hi\", \"max_tokens\": 5}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}], \"stop\": [\"x\"]}\n";
        let jobs = parse_input(text, InputFormat::Jsonl);
        assert_eq!(jobs.len(), 2);
        let a = jobs[0].as_ref().unwrap();
        assert_eq!((a.id.clone(), a.line), (Value::from("a"), 1));
        assert_eq!(a.overrides.max_tokens, Some(Setting::new(5, Origin::Record { line: 1, key: "max_tokens" })));
        let b = jobs[1].as_ref().unwrap();
        assert_eq!(b.id, Value::from(3));
        assert_eq!(b.input, PromptInput::Chat(vec![("user".into(), "yo".into())]));
        assert_eq!(b.stop, vec!["x".to_string()]);
    }

    #[test]
    fn bad_lines_name_the_line_and_keep_their_id() {
        let text = "{\"id\": 1, \"prompt\": \"ok\"}\n{\"id\": 2, \"promt\": \"typo\"}\n{not json\n{\"id\": \"w\", \"prompt\": 5}\n{\"prompt\": \"a\", \"messages\": []}\n";
        let jobs = parse_input(text, InputFormat::Jsonl);
        let errs: Vec<&BadRecord> = jobs.iter().filter_map(|j| j.as_ref().err()).collect();
        assert_eq!(errs.len(), 4);
        assert!(errs[0].error().starts_with("line 2, column 17: unknown field `promt`"), "{}", errs[0].error());
        assert!(!errs[0].error().contains("at line"), "{}", errs[0].error());
        assert_eq!(errs[0].id, Value::from(2));
        assert_eq!(errs[1].error(), "line 3, column 2: key must be a string");
        assert_eq!(errs[1].id, Value::from(3));
        assert!(errs[2].error().starts_with("line 4, column ") && errs[2].error().contains(": invalid type"), "{}", errs[2].error());
        assert_eq!(errs[2].id, Value::from("w"));
        assert_eq!(errs[3].error(), "line 5: give prompt or messages, not both");
    }

    #[test]
    fn txt_input_is_one_prompt_per_non_blank_line() {
        let jobs = parse_input("first\n\n  \nsecond\n", InputFormat::Txt);
        let ids: Vec<Value> = jobs.iter().map(|j| j.as_ref().unwrap().id.clone()).collect();
        assert_eq!(ids, vec![Value::from(1), Value::from(4)]);
    }

    fn header() -> String {
        serde_json::to_string(&Header::new("abc".into(), Default::default())).unwrap() + "\n"
    }

    #[test]
    fn resume_keeps_whole_records_and_drops_a_cut_off_line() {
        let ok = format!("{}{{\"id\":\"a\",\"error\":\"boom\"}}\n{{\"id\":2,\"error\":\"x\"}}\n", header());
        let text = format!("{ok}{{\"id\":3,\"te");
        let s = scan_output(&text).unwrap();
        assert_eq!(s.valid_len, ok.len());
        assert_eq!(s.n_records, 2);
        assert!(s.done.contains("\"a\"") && s.done.contains("2"));
        assert_eq!(s.header.unwrap().specrun_batch.input_sha256, "abc");
        assert_eq!(scan_output("").unwrap(), ResumeState::default());
        // a cut-off header is as good as an empty file
        assert_eq!(scan_output("{\"specrun_ba").unwrap().valid_len, 0);
    }

    #[test]
    fn resume_never_truncates_lines_it_did_not_write() {
        assert_eq!(scan_output("{\"id\": 1, \"prompt\": \"an input file\"}\n"), Err(ScanError::NotARecord { line: 1 }));
        let text = format!("{}{{\"id\":1,\"error\":\"x\"}}\nsomething else\n{{\"id\":2,\"error\":\"x\"}}\n", header());
        assert_eq!(scan_output(&text), Err(ScanError::NotARecord { line: 3 }));
    }

    #[test]
    fn an_output_without_its_settings_is_not_resumed_and_one_with_them_is() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        assert_eq!(sidecar_path(&out), dir.path().join("out.jsonl.specrun.json"));
        let records = "{\"id\":\"a\",\"error\":\"boom\"}\n";
        assert!(matches!(read_output(&out, records), Err(ScanError::NoHeader { .. })));
        // nothing written yet: nothing to check
        assert_eq!(read_output(&out, "").unwrap().header, None);
        std::fs::write(sidecar_path(&out), "not json").unwrap();
        assert!(matches!(read_output(&out, records), Err(ScanError::BadSidecar { .. })));
        std::fs::write(sidecar_path(&out), header()).unwrap();
        let state = read_output(&out, records).unwrap();
        assert_eq!(state.header.unwrap().specrun_batch.input_sha256, "abc");
        assert_eq!((state.n_records, state.n_failed), (1, 1));
    }

    #[test]
    fn openai_batch_lines_become_jobs_and_their_outputs_resume() {
        let text = concat!(
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "stop": "\n", "store": true}}"#,
            "\n",
            r#"{"custom_id": "b", "url": "/v1/completions", "body": {"prompt": "x", "temperature": -1}}"#,
            "\n",
            r#"{"custom_id": "c", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}}"#,
            "\n",
            r#"{"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x"}, "extra": 1}"#,
            "\n",
        );
        assert_eq!(detect_format(text.lines().next().unwrap()), InputFormat::Openai);
        let mut reader = RecordReader::new(text.as_bytes(), None, 1 << 20);
        assert!(reader.next().unwrap().is_ok());
        assert_eq!(reader.format(), Some(InputFormat::Openai), "the first record decides");
        assert_eq!(detect_format("{\"id\": 1, \"prompt\": \"p\"}\n"), InputFormat::Jsonl);
        let jobs = parse_input(text, InputFormat::Openai);
        let a = jobs[0].as_ref().unwrap();
        assert_eq!((a.id.clone(), a.openai), (Value::from("a"), Some(Endpoint::Chat)));
        assert_eq!(a.overrides.max_tokens, Some(Setting::new(9, Origin::Record { line: 1, key: "max_tokens" })));
        assert_eq!(a.stop, vec!["\n".to_string()]);
        let err = |i: usize| jobs[i].as_ref().unwrap_err().error();
        assert!(err(1).starts_with("line 2: body.temperature"), "{}", err(1));
        assert_eq!(err(2), "line 3: method must be \"POST\", got \"GET\"");
        assert!(err(3).starts_with("line 4: unknown field `extra`"), "{}", err(3));
        assert_eq!(jobs[3].as_ref().unwrap_err().id, Value::from("d"));
        // their output lines resume by custom_id; a 400 counts as failed
        let out = concat!(
            r#"{"id": "batch_1", "custom_id": "a", "response": {"status_code": 200, "request_id": "r1", "body": {}}, "error": null}"#,
            "\n",
            r#"{"id": "batch_2", "custom_id": "b", "response": {"status_code": 400, "request_id": "r2", "body": {}}, "error": null}"#,
            "\n",
        );
        let state = scan_output(out).unwrap();
        assert_eq!((state.n_records, state.n_failed), (2, 1));
        assert!(state.done.contains("\"a\"") && state.done.contains("\"b\""));
    }

    #[test]
    fn ids_must_be_unique_and_implicit_ids_count() {
        let jobs = parse_input("{\"id\": \"x\", \"prompt\": \"a\"}\n{\"id\": \"x\", \"prompt\": \"b\"}\n", InputFormat::Jsonl);
        assert_eq!(check_unique_ids(&jobs).unwrap_err(), "line 2: duplicate id \"x\" (also line 1); ids must be unique");
        // line 1 has no id (its id is 1); line 2 says id 1
        let jobs = parse_input("{\"prompt\": \"a\"}\n{\"id\": 1, \"prompt\": \"b\"}\n", InputFormat::Jsonl);
        assert_eq!(check_unique_ids(&jobs).unwrap_err(), "line 2: duplicate id 1 (also line 1); ids must be unique");
        // a string "1" and a number 1 differ
        let jobs = parse_input("{\"prompt\": \"a\"}\n{\"id\": \"1\", \"prompt\": \"b\"}\n", InputFormat::Jsonl);
        assert!(check_unique_ids(&jobs).is_ok());
    }

    #[test]
    fn a_header_names_what_differs() {
        let mut a = serde_json::Map::new();
        a.insert("temp".into(), Value::from(0.8));
        let old = Header::new("abc".into(), a.clone());
        assert_eq!(old.mismatch(&old.clone()), None);
        assert_eq!(old.mismatch(&Header::new("abd".into(), a.clone())).unwrap(), "it was made from a different input (sha256 differs)");
        a.insert("temp".into(), Value::from(0.2));
        assert_eq!(old.mismatch(&Header::new("abc".into(), a)).unwrap(), "it was made with temp = 0.8, this run has temp = 0.2");
    }
}
