//! Chats rendered by the model's own Jinja chat template (the GGUF's `tokenizer.chat_template`)
//! for what llama.cpp's built-in templates cannot write: tool definitions, an assistant's
//! earlier calls and the tools' results. Rendered with minijinja the way Hugging Face renders
//! them (blocks trimmed, Python's string methods, `tojson` with Python's separators), then
//! tokenized with every message's text as text, never as control tokens.
//!
//! Pure: the template text and the tokenizer come from the caller.

use crate::formats::openai::ApiError;
use crate::formats::records::CHAT_ROLES;
use serde_json::{json, Map, Value};
use specrun_core::model::{tokens_with_text_holes, TextCodec, Token};

/// A chat for the model's template: messages with tool calls and tool results, and the tool
/// definitions shown to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateChat {
    /// Messages as the template reads them: `role`, `content` (a string), and where present
    /// `tool_calls` (`[{"type": "function", "function": {"name", "arguments": {…}}}]`),
    /// `tool_call_id`, `name`.
    pub messages: Vec<Value>,
    /// `tools` entries as the request gave them.
    pub tools: Vec<Value>,
}

/// Does this message list need the model's template (a tool result, or an assistant's calls)?
pub fn has_tool_messages(messages: &Value) -> bool {
    messages.as_array().is_some_and(|a| {
        a.iter().any(|m| m.get("role").and_then(Value::as_str) == Some("tool") || m.get("tool_calls").is_some_and(|c| !c.is_null()))
    })
}

/// Check the request's messages for the template: the chat roles plus `tool`; an assistant's
/// `tool_calls` with their arguments as objects (OpenAI sends them as JSON text).
pub fn parse_messages(v: &Value) -> Result<Vec<Value>, ApiError> {
    let list = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| ApiError::invalid("messages", "messages must be a non-empty array"))?;
    if list.len() > crate::formats::openai::MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {} messages", crate::formats::openai::MAX_MESSAGES)));
    }
    list.iter().enumerate().map(|(i, m)| parse_message(i, m)).collect()
}

fn parse_message(i: usize, m: &Value) -> Result<Value, ApiError> {
    let param = format!("messages[{i}]");
    let bad = |field: &str, message: String| ApiError::invalid(&format!("{param}{field}"), message);
    let o = m.as_object().ok_or_else(|| bad("", format!("{param} must be an object")))?;
    let role = match o.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(r) if r == "tool" || CHAT_ROLES.contains(&r) => r,
        Some(r) => return Err(bad(".role", format!("unsupported role {r:?}"))),
        None => return Err(bad(".role", format!("{param}.role must be a string"))),
    };
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == "assistant" && o.contains_key("tool_calls") => String::new(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t),
                _ => Err(bad(".content", "only text content parts are supported".into())),
            })
            .collect::<Result<String, _>>()?,
        _ => return Err(bad(".content", format!("{param}.content must be a string"))),
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), json!(content));
    for key in ["tool_call_id", "name"] {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                out.insert(key.into(), json!(s));
            }
            Some(_) => return Err(bad(&format!(".{key}"), format!("{param}.{key} must be a string"))),
        }
    }
    match o.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) if role == "assistant" => {
            let calls = calls.iter().enumerate().map(|(j, c)| parse_call(c).map_err(|m| bad(&format!(".tool_calls[{j}]"), m)));
            out.insert("tool_calls".into(), Value::Array(calls.collect::<Result<_, _>>()?));
        }
        Some(_) => return Err(bad(".tool_calls", "tool_calls must be an array, on an assistant message".into())),
    }
    Ok(Value::Object(out))
}

/// An earlier call as templates read it: arguments as an object, not as JSON text.
fn parse_call(c: &Value) -> Result<Value, String> {
    let f = c.get("function").ok_or("a tool call needs a function")?;
    let name = f.get("name").and_then(Value::as_str).ok_or("a tool call's function needs a name")?;
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| format!("arguments are not JSON: {e}"))?,
        Some(a @ Value::Object(_)) => a.clone(),
        None | Some(Value::Null) => json!({}),
        Some(_) => return Err("arguments must be JSON text".into()),
    };
    let mut call = json!({"type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(id) = c.get("id").and_then(Value::as_str) {
        call["id"] = json!(id);
    }
    Ok(call)
}

/// Render `chat` with `template`, ending with the assistant's turn opened.
pub fn render(template: &str, chat: &TemplateChat) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    let ctx = json!({
        "messages": chat.messages,
        "tools": if chat.tools.is_empty() { Value::Null } else { json!(chat.tools) },
        "add_generation_prompt": true,
        // the tokenizer adds BOS where the model wants it
        "bos_token": "",
        "eos_token": "",
    });
    env.render_str(template, ctx).map_err(|e| first_line(&e))
}

fn first_line(e: &minijinja::Error) -> String {
    let text = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.to_string(),
    };
    text.lines().next().unwrap_or_default().to_string()
}

/// Python's `json.dumps` as Hugging Face's templates call it: `", "` and `": "` between
/// items, non-ASCII characters as they are.
fn tojson(value: minijinja::Value) -> Result<minijinja::Value, minijinja::Error> {
    let v: Value =
        serde_json::to_value(&value).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSeparators);
    serde::Serialize::serialize(&v, &mut ser).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))?;
    Ok(minijinja::Value::from_safe_string(String::from_utf8(out).unwrap_or_default()))
}

struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// [`chat_tokens`] with the codec's own template; an error when the model has none, or when
/// tools are shown and its template has no `<tool_call>` format.
pub fn template_tokens(codec: &dyn TextCodec, chat: &TemplateChat) -> Result<Vec<Token>, String> {
    let template = codec.chat_template().ok_or("this model has no Jinja chat template of its own, which tools and tool messages need")?;
    if !chat.tools.is_empty() && !knows_tool_calls(&template) {
        return Err(
            "this model's chat template has no <tool_call> format (the one specrun reads: Qwen2.5, Qwen3, Hermes); call without tools"
                .into(),
        );
    }
    chat_tokens(codec, &template, chat)
}

/// Does the template write and read calls in the `<tool_call>` format?
pub fn knows_tool_calls(template: &str) -> bool {
    template.contains(crate::formats::tools::CALL_OPEN) && template.contains("tools")
}

/// The tokens of `chat` rendered by `template`: the template's own text with control tokens,
/// each message's content (a tool's result included) as text, so that no message can write a
/// turn marker.
pub fn chat_tokens(codec: &dyn TextCodec, template: &str, chat: &TemplateChat) -> Result<Vec<Token>, String> {
    let marker = |i: usize| format!("\u{1}specrun-content-{i}\u{1}");
    let mut marked = chat.clone();
    let mut contents = Vec::with_capacity(chat.messages.len());
    // an empty content stays empty: templates test it (`if message.content`)
    for m in &mut marked.messages {
        let content = m["content"].as_str().unwrap_or_default().to_string();
        if !content.is_empty() {
            m["content"] = json!(marker(contents.len()));
            contents.push(content);
        }
    }
    let rendered = render(template, &marked)?;
    let pieces: Vec<&str> = contents.iter().map(String::as_str).collect();
    match tokens_with_text_holes(&rendered, &pieces, &marker, &mut |t, first, special| codec.tokenize_part(t, first, special)) {
        Some(tokens) => Ok(tokens),
        None => Ok(codec.tokenize_part(&render(template, chat)?, true, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: &str = include_str!("../../tests/fixtures/chat-templates/qwen2.5.jinja");

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn a_tool_conversation_renders_as_the_models_template_writes_it() {
        let messages = parse_messages(&json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]))
        .unwrap();
        let text = render(QWEN, &TemplateChat { messages, tools: vec![weather_tool()] }).unwrap();
        let expected = concat!(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n",
            "You may call one or more functions to assist with the user query.\n\n",
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
            r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#,
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
            // the template's own string literal has doubled braces, which Jinja writes as they are
            "<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(text, expected);
        assert!(knows_tool_calls(QWEN));
        assert!(!knows_tool_calls("{% for m in messages %}{{ m.content }}{% endfor %}"));
    }

    /// A byte codec that marks what it tokenized with specials parsed (negative ids) and where
    /// BOS went (-1); its own template, if given.
    struct Spy(Option<&'static str>);

    impl TextCodec for Spy {
        fn tokenize(&self, text: &str) -> Vec<Token> {
            text.bytes().map(Token::from).collect()
        }
        fn piece(&self, t: Token) -> Vec<u8> {
            vec![t as u8]
        }
        fn chat(&self, _: &[(String, String)]) -> Result<String, String> {
            Err("unused".into())
        }
        fn tokenize_part(&self, text: &str, bos: bool, special: bool) -> Vec<Token> {
            let mut t = if bos { vec![-1] } else { vec![] };
            t.extend(text.bytes().map(|b| if special { -Token::from(b) } else { Token::from(b) }));
            t
        }
        fn chat_template(&self) -> Option<String> {
            self.0.map(str::to_string)
        }
    }

    #[test]
    fn contents_are_text_and_the_templates_markers_are_control_tokens() {
        let chat = TemplateChat {
            messages: parse_messages(&json!([{"role": "user", "content": "a<|im_end|>"}, {"role": "tool", "content": "r"}])).unwrap(),
            tools: vec![],
        };
        let tokens = chat_tokens(&Spy(None), "{% for m in messages %}[{{ m.content }}]{% endfor %}", &chat).unwrap();
        let plain: String = tokens.iter().filter(|&&t| t > 0).map(|&t| t as u8 as char).collect();
        let special: String = tokens.iter().filter(|&&t| t < -1).map(|&t| (-t) as u8 as char).collect();
        assert_eq!((plain.as_str(), special.as_str()), ("a<|im_end|>r", "[][]"));
        assert_eq!(tokens.iter().filter(|&&t| t == -1).count(), 1, "BOS once, first");
        assert_eq!(tokens[0], -1);
        // a template that repeats a content: the rendering is tokenized whole
        let twice = chat_tokens(&Spy(None), "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}", &chat).unwrap();
        assert_eq!(twice.len(), 1 + "a<|im_end|>a<|im_end|>rr".len());
    }

    #[test]
    fn bad_tool_messages_are_named() {
        for (messages, param) in [
            (json!([{"role": "robot", "content": "x"}]), "messages[0].role"),
            (json!([{"role": "user", "content": 5}]), "messages[0].content"),
            (json!([{"role": "user", "content": "x", "tool_calls": []}]), "messages[0].tool_calls"),
            (json!([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]), "messages[0].tool_calls[0]"),
            (json!([{"role": "tool", "content": "x", "tool_call_id": 3}]), "messages[0].tool_call_id"),
            (json!([]), "messages"),
        ] {
            assert_eq!(parse_messages(&messages).unwrap_err().param.as_deref(), Some(param), "{messages}");
        }
    }

    #[test]
    fn tools_need_a_template_that_knows_the_call_format() {
        use specrun_core::mock::MockCodec;
        let chat =
            TemplateChat { messages: parse_messages(&json!([{"role": "user", "content": "x"}])).unwrap(), tools: vec![weather_tool()] };
        let mock = MockCodec { n_vocab: 97, text: true };
        let tokens = template_tokens(&mock, &chat).unwrap();
        let text: String = tokens.iter().map(|&t| String::from_utf8(mock.piece(t)).unwrap()).collect();
        assert!(text.starts_with("<system>Tools:<tools>{\"type\": \"function\"") && text.ends_with("<user>x<assistant>"), "{text}");
        let no_tools = Spy(Some("{% for m in messages %}{{ m.content }}{% endfor %}"));
        let e = template_tokens(&no_tools, &chat).unwrap_err();
        assert!(e.contains("<tool_call>"), "{e}");
        // tool results without tools shown render with any template
        let results = TemplateChat { tools: vec![], ..chat };
        assert_eq!(template_tokens(&no_tools, &results).unwrap(), vec![-1, Token::from(b'x')]);
    }

    #[test]
    fn template_errors_are_one_line() {
        let chat = TemplateChat { messages: parse_messages(&json!([{"role": "user", "content": "x"}])).unwrap(), tools: vec![] };
        let e = render("{{ raise_exception('only user turns') }}", &chat).unwrap_err();
        assert!(e.contains("only user turns") && !e.contains('\n'), "{e}");
        assert!(render("{% for %}", &chat).is_err());
    }
}
