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
//!
//! The first line of an output file is a [`Header`]:
//! `{"specrun_batch": {"format": 1, "input_sha256": "…", "settings": {…}}}` — what the file was
//! made from. Every later line is one record; readers that only want records skip line 1 (or
//! keep the lines that have an `id`).
//!
//! # Ids
//!
//! Ids must be unique ([`check_unique_ids`]); a record without an id has its line number as
//! id, so an explicit numeric id equal to another record's line number is a duplicate too. A
//! duplicate stops the batch before anything runs, naming both lines.
//!
//! # Resuming
//!
//! [`scan_output`] reads an earlier output file: its header must match this run's input and
//! settings, the ids it holds are skipped, and only a last line cut off by a crash (no final
//! newline) is cut away before appending. Any other line that is not a record is an error: a
//! resume never truncates what this program did not write.

use crate::constraint::Grammar;
use crate::settings::{Origin, Overrides, Setting};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

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
}

/// A checked input record.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Value,
    /// 1-based line in the input file.
    pub line: usize,
    pub input: PromptInput,
    /// The record's own generation settings, located at its line (validated when merged).
    pub overrides: Overrides,
    pub stop: Vec<String>,
    /// What the output must follow.
    pub grammar: Option<Grammar>,
}

impl Job {
    fn plain(id: Value, line: usize, input: PromptInput) -> Self {
        Self { id, line, input, overrides: Overrides::default(), stop: vec![], grammar: None }
    }
}

/// A record that could not even be read: it becomes an error record.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub id: Value,
    pub line: usize,
    pub error: String,
}

/// The input file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Jsonl,
    Txt,
}

/// A finished record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OkRecord {
    pub id: Value,
    pub text: String,
    pub finish_reason: String,
    pub n_prompt: usize,
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
    let bad = |error: String| BadRecord { id: id.clone(), line, error: format!("line {line}: {error}") };
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
    Ok(Job { id, line, input, overrides, stop: rec.stop.unwrap_or_default(), grammar })
}

/// Parse a whole input file. Blank lines are skipped; a line that is not a valid record
/// becomes a [`BadRecord`] naming its line.
pub fn parse_input(text: &str, format: InputFormat) -> Vec<Result<Job, BadRecord>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        out.push(match format {
            InputFormat::Txt => Ok(Job::plain(Value::from(line), line, PromptInput::Text(raw.to_string()))),
            InputFormat::Jsonl => match serde_json::from_str::<InputRecord>(raw) {
                Ok(rec) => check(rec, line),
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
                    Err(BadRecord { id, line, error: format!("line {line}, column {}: {msg}", e.column()) })
                }
            },
        });
    }
    out
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
    /// Whole records kept.
    pub n_records: usize,
}

/// Why an existing file cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("line 1 is not a specrun batch header (this program did not write the file)")]
    NoHeader,
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
        if i == 0 {
            state.header = Some(serde_json::from_str::<Header>(body).map_err(|_| ScanError::NoHeader)?);
        } else {
            let rec = serde_json::from_str::<OutputRecord>(body).map_err(|_| ScanError::NotARecord { line: i + 1 })?;
            if !state.done.insert(id_key(rec.id())) {
                return Err(ScanError::DuplicateId { line: i + 1, id: id_key(rec.id()) });
            }
            state.n_records += 1;
        }
        pos += line.len();
        state.valid_len = pos;
    }
    Ok(state)
}

/// Ids must be unique: an explicit id may not repeat, nor equal another record's implicit id
/// (its line number). Returns the first clash as `line N: duplicate id X (also line M)`.
pub fn check_unique_ids(records: &[Result<Job, BadRecord>]) -> Result<(), String> {
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
        assert!(errs[0].error.starts_with("line 2, column 17: unknown field `promt`"), "{}", errs[0].error);
        assert!(!errs[0].error.contains("at line"), "{}", errs[0].error);
        assert_eq!(errs[0].id, Value::from(2));
        assert_eq!(errs[1].error, "line 3, column 2: key must be a string");
        assert_eq!(errs[1].id, Value::from(3));
        assert!(errs[2].error.starts_with("line 4, column ") && errs[2].error.contains(": invalid type"), "{}", errs[2].error);
        assert_eq!(errs[2].id, Value::from("w"));
        assert_eq!(errs[3].error, "line 5: give prompt or messages, not both");
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
        assert_eq!(scan_output("{\"id\": 1, \"prompt\": \"an input file\"}\n"), Err(ScanError::NoHeader));
        let text = format!("{}{{\"id\":1,\"error\":\"x\"}}\nsomething else\n{{\"id\":2,\"error\":\"x\"}}\n", header());
        assert_eq!(scan_output(&text), Err(ScanError::NotARecord { line: 3 }));
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
