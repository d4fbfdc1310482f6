//! llama-server's routes that need the tokenizer and the chat template but no decode:
//! `/tokenize`, `/detokenize`, `/apply-template`, and `/props` (what the server runs). They
//! answer from a vocabulary-only copy of the target (no weights), so they never wait for a
//! slot; their JSON follows llama-server's.

use crate::formats::openai::ApiError;
use serde_json::{json, Map, Value};
use specrun_core::model::{TextCodec, Token};

/// The tokenizer the routes use, and the facts `/props` reports.
pub struct TextRoutes {
    pub codec: Box<dyn TextCodec + Send + Sync>,
    pub n_vocab: usize,
    pub props: Value,
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::new(400, "invalid_request_error", None, "the request body must be a JSON object"))
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

impl TextRoutes {
    /// `/tokenize {"content": TEXT, "add_special"?: bool, "parse_special"?: bool,
    /// "with_pieces"?: bool}` → `{"tokens": [...]}` (ids, or `{"id", "piece"}` with pieces).
    /// Text is text: control tokens written in it are not parsed unless `parse_special`.
    pub fn tokenize(&self, body: &Value) -> Result<Value, ApiError> {
        let obj = object(body)?;
        let content = obj.get("content").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("content", "content must be a string"))?;
        let tokens = if flag(obj, "parse_special")? { self.codec.tokenize(content) } else { self.codec.tokenize_plain(content) };
        let _ = flag(obj, "add_special")?; // specrun adds no BOS to a tokenized text
        if flag(obj, "with_pieces")? {
            let pieces: Vec<Value> =
                tokens.iter().map(|&t| json!({"id": t, "piece": String::from_utf8_lossy(&self.codec.piece(t))})).collect();
            return Ok(json!({ "tokens": pieces }));
        }
        Ok(json!({ "tokens": tokens }))
    }

    /// `/detokenize {"tokens": [ids]}` → `{"content": TEXT}`; an id outside the vocabulary is a 400.
    pub fn detokenize(&self, body: &Value) -> Result<Value, ApiError> {
        let obj = object(body)?;
        let bad = || ApiError::invalid("tokens", format!("tokens must be an array of token ids in [0, {})", self.n_vocab));
        let ids = obj.get("tokens").and_then(Value::as_array).ok_or_else(bad)?;
        let mut bytes = Vec::new();
        for v in ids {
            let id = v.as_u64().filter(|&i| (i as usize) < self.n_vocab).ok_or_else(bad)?;
            bytes.extend(self.codec.piece(id as Token));
        }
        Ok(json!({ "content": String::from_utf8_lossy(&bytes) }))
    }

    /// `/apply-template {"messages": [...], "tools"?: [...]}` → `{"prompt": TEXT}`: the
    /// target's chat template with the assistant's turn opened, as a chat completion reads it
    /// (with tools or tool messages: the model's own Jinja template).
    pub fn apply_template(&self, body: &Value) -> Result<Value, ApiError> {
        use crate::formats::chat_template::{render, TemplateChat};
        use crate::formats::records::PromptInput;
        let obj = object(body)?;
        let request = json!({"messages": obj.get("messages").cloned().unwrap_or(Value::Null), "tools": obj.get("tools").cloned().unwrap_or(Value::Null)});
        let prompt = match crate::formats::openai::parse_request(crate::formats::openai::Endpoint::Chat, &request, usize::MAX)?.prompt {
            PromptInput::Template(chat @ TemplateChat { .. }) => {
                let template = self
                    .codec
                    .chat_template()
                    .ok_or_else(|| ApiError::invalid("messages", "this model has no Jinja chat template of its own"))?;
                render(&template, &chat).map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?
            }
            PromptInput::Chat(messages) => {
                self.codec.chat(&messages).map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?
            }
            PromptInput::Text(_) => return Err(ApiError::invalid("messages", "messages is required")),
        };
        Ok(json!({ "prompt": prompt }))
    }
}
