//! Tool calling (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`): the request's
//! function definitions, the calls a model writes in the `<tool_call>{"name": …, "arguments":
//! …}</tool_call>` format its chat template teaches (Qwen2.5, Qwen3, Hermes and the templates
//! that follow them), and the grammar that forces such a call when the request demands one.
//!
//! Pure: the template is rendered in [`super::chat_template`], the text comes from the server.

use crate::constraint::Grammar;
use crate::formats::openai::ApiError;
use serde_json::{json, Map, Value};

/// Where a call begins and ends in the model's text.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";
/// Most tools one request may define.
pub const MAX_TOOLS: usize = 128;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// The JSON schema of its arguments (an object schema).
    pub parameters: Value,
    /// The definition as the request gave it (`{"type": "function", "function": {…}}`), for
    /// the chat template.
    pub definition: Value,
}

/// What the model may or must do with the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Answer in text; the tools are not shown to the model.
    None,
    /// Text or calls, as the model decides.
    Auto,
    /// At least one call, of any tool.
    Required,
    /// A call of this tool.
    Function(String),
}

/// A request's tools and what it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one answer (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

fn function_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Read `tools`, `tool_choice` and `parallel_tool_calls`. None when there are no tools (then
/// only `tool_choice` "none" or "auto" make sense).
pub fn parse(obj: &Map<String, Value>) -> Result<Option<ToolRequest>, ApiError> {
    let tools = parse_tools(obj.get("tools"))?;
    let choice = parse_choice(obj.get("tool_choice"), &tools)?;
    let parallel = match obj.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("parallel_tool_calls", "parallel_tool_calls must be true or false")),
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid("tool_choice", "tool_choice asks for a call but the request defines no tools")),
        };
    }
    Ok(Some(ToolRequest { tools, choice, parallel }))
}

fn parse_tools(v: Option<&Value>) -> Result<Vec<Tool>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("tools", "tools must be an array")),
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools")));
    }
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let bad = |m: String| ApiError::invalid(&format!("tools[{i}]"), m);
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(format!("tools[{i}].type must be \"function\"")));
        }
        let f = t.get("function").and_then(Value::as_object).ok_or_else(|| bad(format!("tools[{i}].function must be an object")))?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !function_name_ok(name) {
            return Err(bad(format!("tools[{i}].function.name must be 1 to 64 letters, digits, _ or -, got {name:?}")));
        }
        if tools.iter().any(|t| t.name == name) {
            return Err(bad(format!("two tools are named {name:?}")));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(bad(format!("tools[{i}].function.parameters must be a JSON schema object"))),
        };
        let parameters = match f.get("strict") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => parameters,
            Some(Value::Bool(true)) => crate::constraint::schema::closed(parameters),
            Some(_) => return Err(bad(format!("tools[{i}].function.strict must be true or false"))),
        };
        tools.push(Tool { name: name.to_string(), parameters, definition: t.clone() });
    }
    Ok(tools)
}

fn parse_choice(v: Option<&Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let bad = |m: &str| ApiError::invalid("tool_choice", m.to_string());
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(bad(&format!("tool_choice must be \"none\", \"auto\", \"required\" or a function, got {other:?}"))),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| bad("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": …}}"))?;
            if !tools.is_empty() && !tools.iter().any(|t| t.name == name) {
                return Err(bad(&format!("tool_choice names {name:?}, which is not among the tools")));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => return Err(bad("tool_choice must be a string or an object")),
    })
}

impl ToolRequest {
    /// The tools the model is shown: none when it may not call them.
    pub fn shown(&self) -> &[Tool] {
        if self.choice == ToolChoice::None {
            &[]
        } else {
            &self.tools
        }
    }

    /// Whether the answer is read for calls.
    pub fn reads_calls(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The grammar of the answer when a call is required: one call (several when parallel),
    /// each `<tool_call>\n{"name": N, "arguments": A}\n</tool_call>` with A valid against N's
    /// schema. None when the model chooses.
    pub fn grammar(&self) -> Option<Grammar> {
        let callable: Vec<&Tool> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
        };
        let mut lark = String::new();
        lark.push_str(if self.parallel { "start: call (\"\\n\" call)*\n" } else { "start: call\n" });
        lark.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n");
        let bodies: Vec<String> = (0..callable.len()).map(|i| format!("body_{i}")).collect();
        lark.push_str(&format!("body: {}\n", bodies.join(" | ")));
        for (rule, tool) in bodies.iter().zip(&callable) {
            let schema = json!({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": crate::constraint::without_unknown_formats(tool.parameters.clone())},
                "required": ["name", "arguments"],
                "additionalProperties": false,
                "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
            });
            lark.push_str(&format!("{rule}: %json {schema}\n"));
        }
        Some(Grammar::Lark(lark))
    }
}

/// The text before the first call, and the calls, when `text` holds any: every
/// `<tool_call>…</tool_call>` block must hold a JSON object naming one of `tools` with object
/// arguments (given as an object, or as JSON text of one), and nothing but whitespace may
/// stand between and after the blocks. An answer that is nothing but such an object (or a
/// list of them), bare or in a ```` ```json ```` fence, is a call too: small models write
/// calls so. Anything else is no call (None): the text is the answer.
pub fn split_calls(text: &str, tools: &[Tool]) -> Option<(String, Vec<ToolCall>)> {
    let Some(start) = text.find(CALL_OPEN) else {
        return bare_calls(text, tools).map(|calls| (String::new(), calls));
    };
    let mut rest = &text[start..];
    let mut calls = Vec::new();
    while !rest.trim_start().is_empty() {
        let body = rest.trim_start().strip_prefix(CALL_OPEN)?;
        let end = body.find(CALL_CLOSE)?;
        calls.push(read_call(&serde_json::from_str(body[..end].trim()).ok()?, tools)?);
        rest = &body[end + CALL_CLOSE.len()..];
    }
    Some((text[..start].trim_end().to_string(), calls))
}

/// Calls written as the whole answer: `{"name", "arguments"}` or a list of them, bare or
/// fenced (```` ``` ```` or ```` ```json ````).
fn bare_calls(text: &str, tools: &[Tool]) -> Option<Vec<ToolCall>> {
    let t = text.trim();
    let body = match t.strip_prefix("```") {
        Some(fenced) => fenced.strip_prefix("json").unwrap_or(fenced).strip_suffix("```")?.trim(),
        None => t,
    };
    match serde_json::from_str::<Value>(body).ok()? {
        Value::Array(items) if !items.is_empty() => items.iter().map(|v| read_call(v, tools)).collect(),
        v => Some(vec![read_call(&v, tools)?]),
    }
}

/// One call object: a known tool's name and object arguments, nothing else.
fn read_call(v: &Value, tools: &[Tool]) -> Option<ToolCall> {
    let o = v.as_object().filter(|o| o.len() == 2)?;
    let name = o.get("name")?.as_str()?;
    tools.iter().find(|t| t.name == name)?;
    let arguments = match o.get("arguments")? {
        a @ Value::Object(_) => a.clone(),
        Value::String(s) => serde_json::from_str::<Value>(s).ok().filter(Value::is_object)?,
        _ => return None,
    };
    Some(ToolCall { name: name.to_string(), arguments: arguments.to_string() })
}

/// A streamed answer's text as it comes: what precedes the first `<tool_call>` goes out as
/// content; from the marker on it is held until the answer ends (the calls are read whole).
/// A suffix that may begin the marker is held back until the next text decides it, and so is
/// an answer that so far may be a bare call (it starts with `{`, `[` or a JSON fence).
#[derive(Debug, Default)]
pub struct CallStream {
    text: String,
    sent: usize,
    /// Where the first marker starts, once seen.
    call_at: Option<usize>,
    /// The text so far cannot be a bare call.
    not_bare: bool,
}

/// Could an answer beginning with `text` be a bare call ([`split_calls`])?
fn may_be_bare(text: &str) -> bool {
    let t = text.trim_start();
    if t.is_empty() || t.starts_with('{') || t.starts_with('[') || "```".starts_with(t) {
        return true;
    }
    match t.strip_prefix("```").map(|rest| rest.split_once('\n')) {
        Some(None) => true,
        Some(Some((lang, _))) => matches!(lang.trim(), "" | "json"),
        None => false,
    }
}

impl CallStream {
    /// Add text; returns the content that can go out now.
    pub fn push(&mut self, piece: &str) -> &str {
        self.text.push_str(piece);
        if !self.not_bare {
            if may_be_bare(&self.text) {
                return "";
            }
            self.not_bare = true;
        }
        let from = self.sent;
        let ready = match self.call_at {
            Some(at) => at,
            None => match self.text[self.search_from()..].find(CALL_OPEN) {
                Some(i) => {
                    let at = self.search_from() + i;
                    self.call_at = Some(at);
                    at
                }
                None => self.text.len() - held_prefix(&self.text, CALL_OPEN),
            },
        };
        let ready = ready.max(from);
        self.sent = ready;
        &self.text[from..ready]
    }

    /// Where a marker not seen yet can start: a marker's length before the text not sent.
    fn search_from(&self) -> usize {
        let mut from = self.sent.saturating_sub(CALL_OPEN.len());
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        from
    }

    /// The answer is complete: the calls (when the text holds valid ones) and the content not
    /// sent yet. Text that turned out to be no call is content.
    pub fn finish(&mut self, tools: &[Tool]) -> (String, Vec<ToolCall>) {
        let (from, unsent) = (self.sent, self.text[self.sent..].to_string());
        self.sent = self.text.len();
        let may_call = self.call_at.is_some() || !self.not_bare;
        match may_call.then(|| split_calls(&self.text, tools)).flatten() {
            Some((content, calls)) => (content.get(from..).unwrap_or_default().to_string(), calls),
            None => (unsent, Vec::new()),
        }
    }
}

/// How many bytes at the end of `text` are a proper prefix of `marker` (on a char boundary).
fn held_prefix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}})
    }

    fn request(extra: Value) -> Result<Option<ToolRequest>, ApiError> {
        let mut body = json!({"tools": [weather(), {"type": "function", "function": {"name": "now"}}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        parse(body.as_object().unwrap())
    }

    #[test]
    fn tools_and_choices_are_read() {
        let r = request(json!({})).unwrap().unwrap();
        assert_eq!((r.tools.len(), &r.choice, r.parallel), (2, &ToolChoice::Auto, true));
        assert_eq!(r.tools[1].parameters, json!({"type": "object", "properties": {}}));
        assert_eq!(r.tools[0].parameters.get("additionalProperties"), None, "JSON Schema's open objects unless strict");
        let mut strict = weather();
        strict["function"]["strict"] = json!(true);
        let r = parse(json!({"tools": [strict]}).as_object().unwrap()).unwrap().unwrap();
        assert_eq!(r.tools[0].parameters["additionalProperties"], json!(false), "strict closes them");
        let r = request(json!({"tool_choice": {"type": "function", "function": {"name": "now"}}, "parallel_tool_calls": false})).unwrap();
        assert_eq!(r.as_ref().map(|r| (&r.choice, r.parallel)), Some((&ToolChoice::Function("now".into()), false)));
        assert_eq!(request(json!({"tool_choice": "none"})).unwrap().unwrap().shown().len(), 0);
        // no tools: none and auto mean nothing, a demanded call is an error
        assert_eq!(parse(json!({"tool_choice": "auto"}).as_object().unwrap()).unwrap(), None);
        assert_eq!(parse(json!({"tools": []}).as_object().unwrap()).unwrap(), None);
        assert_eq!(parse(json!({"tool_choice": "required"}).as_object().unwrap()).unwrap_err().param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn every_bad_tool_field_is_named() {
        for (body, param) in [
            (json!({"tools": {}}), "tools"),
            (json!({"tools": [{"type": "code_interpreter"}]}), "tools[0]"),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0]"),
            (json!({"tools": [weather(), weather()]}), "tools[1]"),
            (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}), "tools[0]"),
            (json!({"tools": [weather()], "tool_choice": "always"}), "tool_choice"),
            (json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "other"}}}), "tool_choice"),
            (json!({"tools": [weather()], "parallel_tool_calls": "yes"}), "parallel_tool_calls"),
            (json!({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}), "tools[0]"),
        ] {
            let e = parse(body.as_object().unwrap()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn calls_are_read_from_the_models_format() {
        let r = request(json!({})).unwrap().unwrap();
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": \"{}\"}\n</tool_call>";
        let (content, calls) = split_calls(text, &r.tools).unwrap();
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![
                ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
                ToolCall { name: "now".into(), arguments: "{}".into() },
            ]
        );
        // a bare call object, or one in a JSON fence, as small models write them
        for text in [
            "{\"name\": \"now\", \"arguments\": {}}",
            "```json\n{\"name\": \"now\", \"arguments\": {}}\n```",
            "[{\"name\": \"now\", \"arguments\": {}}]",
        ] {
            assert_eq!(
                split_calls(text, &r.tools),
                Some((String::new(), vec![ToolCall { name: "now".into(), arguments: "{}".into() }])),
                "{text}"
            );
        }
        // not calls: no marker, an unknown tool, bad JSON, text after a call, an unclosed call,
        // a bare object with more than a call's fields, text around a bare object
        for text in [
            "plain answer",
            "{\"name\": \"now\", \"arguments\": {}, \"why\": 1}",
            "Here: {\"name\": \"now\", \"arguments\": {}}",
            "```python\n{\"name\": \"now\", \"arguments\": {}}\n```",
            "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"now\", \"arguments\": {}\n</tool_call>",
            "<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call> and then text",
            "<tool_call>{\"name\": \"now\", \"arguments\": {}}",
            "<tool_call>{\"name\": \"now\", \"arguments\": [1]}</tool_call>",
        ] {
            assert_eq!(split_calls(text, &r.tools), None, "{text}");
        }
    }

    #[test]
    fn a_required_call_is_a_grammar_of_the_tools_schemas() {
        let r = request(json!({"tool_choice": "required"})).unwrap().unwrap();
        let Some(Grammar::Lark(g)) = r.grammar() else { panic!("a required call has a grammar") };
        assert!(g.starts_with("start: call (\"\\n\" call)*\n") && g.contains("body: body_0 | body_1\n"), "{g}");
        assert!(g.contains(r#"{"const":"get_weather"}"#) && g.contains(r#""required":["city"]"#), "{g}");
        let one = request(json!({"tool_choice": {"type": "function", "function": {"name": "now"}}, "parallel_tool_calls": false}));
        let Some(Grammar::Lark(g)) = one.unwrap().unwrap().grammar() else { panic!() };
        assert!(g.starts_with("start: call\n") && g.contains("body: body_0\n") && !g.contains("get_weather"), "{g}");
        assert_eq!(request(json!({})).unwrap().unwrap().grammar(), None, "auto leaves the choice to the model");
        // the grammar compiles, and a call that breaks a schema is refused by it
        use crate::constraint::tests::{tokens, vocab};
        let spec = vocab().compile(&Grammar::Lark(g)).unwrap();
        let good = tokens("<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>");
        assert_eq!(spec.start().validate(&good), good.len());
        let bad = tokens("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}");
        assert!(spec.start().validate(&bad) < bad.len(), "get_weather is not the named tool");
        let r = request(json!({"tool_choice": "required"})).unwrap().unwrap();
        let spec = vocab().compile(&r.grammar().unwrap()).unwrap();
        let two = tokens("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>");
        assert_eq!(spec.start().validate(&two), two.len());
        let no_city = tokens("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}");
        assert!(spec.start().validate(&no_city) < no_city.len(), "city is required");
    }

    #[test]
    fn a_stream_sends_the_content_before_the_first_call_and_holds_the_calls() {
        let r = request(json!({})).unwrap().unwrap();
        let text = "Sure <b> é.<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        // every split of the text into two pieces sends the same content
        for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut s = CallStream::default();
            let mut sent = s.push(&text[..cut]).to_string();
            sent += s.push(&text[cut..]);
            let (rest, calls) = s.finish(&r.tools);
            assert_eq!((sent.clone() + &rest).trim_end(), "Sure <b> é.", "cut at {cut}");
            assert_eq!(calls.len(), 1);
            assert!(!sent.contains('{'), "a call is never streamed as content: {sent:?}");
        }
        // an answer that may be a bare call is held: a call, or content at the end
        let mut s = CallStream::default();
        assert_eq!(s.push("```json\n{\"name\": \"now\", "), "");
        assert_eq!(s.push("\"arguments\": {}}\n```"), "");
        assert_eq!(s.finish(&r.tools), (String::new(), vec![ToolCall { name: "now".into(), arguments: "{}".into() }]));
        let mut s = CallStream::default();
        assert_eq!(s.push("{\"a\": "), "");
        assert_eq!(s.finish(&r.tools), ("{\"a\": ".to_string(), vec![]));
        // a code block in another language streams once its first line says so
        let mut s = CallStream::default();
        assert_eq!(s.push("```pyt"), "");
        assert_eq!(s.push("hon\nx = 1"), "```python\nx = 1");
        // a marker's beginning that turns out to be text is sent; text that is no call stays content
        let mut s = CallStream::default();
        assert_eq!(s.push("a <tool"), "a ");
        assert_eq!(s.push("s>"), "<tools>");
        let mut s = CallStream::default();
        assert_eq!(s.push("x <tool_call> y"), "x ");
        assert_eq!(s.finish(&r.tools), ("<tool_call> y".to_string(), vec![]));
    }
}
