//! Structured output: what a user asks for (a JSON schema, any JSON object, a GBNF or Lark
//! grammar, a regex) compiled by llguidance into the core's [`Constraint`] seam.
//!
//! [`Grammar`] is the request, parsed and checked without a model; [`Vocabulary`] is the
//! target's token table as llguidance sees it (built once per process and model);
//! [`Vocabulary::compile`] turns a grammar into a [`ConstraintSpec`] that makes one matcher per
//! sequence. JSON schemas and `json_object` produce compact one-line JSON with `", "` and
//! `": "` separators (Python's `json.dumps` style), so keys and punctuation are forced tokens; a
//! schema's `x-guidance` object overrides that (llguidance's JSON options).

pub mod gbnf;
pub mod schema;

use anyhow::{anyhow, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{InferenceCapabilities, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use specrun_core::constraint::{Constraint, ConstraintError, ConstraintSpec, TokenMask};
use specrun_core::model::{TextCodec, Token};
use std::sync::Arc;

/// The longest grammar text compiled: llguidance's compiler recurses along chains of rules,
/// and a chain this long stays within the compiler thread's stack ([`Vocabulary::compile`]).
const MAX_GRAMMAR_BYTES: usize = 1 << 20;

/// A constraint as a user asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Output valid against this JSON schema.
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// llguidance's Lark-like grammar (GBNF is translated into it).
    Lark(String),
    /// Output matching this regular expression, whole.
    Regex(String),
}

impl Grammar {
    /// What kind of constraint it is, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonSchema(_) => "json_schema",
            Grammar::JsonObject => "json_object",
            Grammar::Lark(_) => "grammar",
            Grammar::Regex(_) => "regex",
        }
    }

    /// A grammar's text: llama.cpp's GBNF when it defines rules with `::=` (translated), else
    /// llguidance's Lark syntax.
    pub fn from_text(text: &str) -> Result<Self> {
        if text.len() > MAX_GRAMMAR_BYTES {
            return Err(anyhow!(
                "a grammar of {} bytes; at most {} (llguidance's compiler recurses along chains of rules)",
                text.len(),
                MAX_GRAMMAR_BYTES
            ));
        }
        if gbnf::is_gbnf(text) {
            return gbnf::to_lark(text).map(Grammar::Lark).map_err(|e| anyhow!("GBNF {e}"));
        }
        Ok(Grammar::Lark(text.to_string()))
    }

    /// A JSON schema given as text.
    pub fn schema_from_text(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
        if !(v.is_object() || v.is_boolean()) {
            return Err(anyhow!("a JSON schema is an object"));
        }
        Ok(Grammar::JsonSchema(v))
    }

    /// Compiled against a byte vocabulary: what does not compile says why before a model
    /// loads (compiling for a model's vocabulary finds the same errors, later).
    pub fn check(&self) -> Result<()> {
        Vocabulary::bytes().build(self).map(drop).map_err(|why| anyhow!(why))
    }

    fn top_level(&self) -> TopLevelGrammar {
        let compact = |mut schema: Value| {
            if let Some(o) = schema.as_object_mut() {
                o.entry("x-guidance")
                    .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
            }
            schema
        };
        match self {
            Grammar::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact(without_unknown_formats(s.clone()))),
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }
}

/// `schema` without the `format`s llguidance does not know, which JSON Schema makes
/// annotations ([`schema::unknown_formats_dropped`]).
pub fn without_unknown_formats(schema: Value) -> Value {
    schema::unknown_formats_dropped(schema, &known_format)
}

/// Whether llguidance knows `format` (its list is private): a string schema with it compiles.
/// Asked once per format for the first formats a process meets (a server's clients may send
/// any number of them: the rest are asked each time).
fn known_format(format: &str) -> bool {
    static KNOWN: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, k)) = known.iter().find(|(f, _)| f == format) {
        return *k;
    }
    let probe = TopLevelGrammar::from_json_schema(json!({"type": "string", "format": format}));
    let k = Vocabulary::bytes().factory.create_parser(probe).is_ok();
    if known.len() < 256 {
        known.push((format.to_string(), k));
    }
    k
}

/// The target's tokens as llguidance sees them, and its parser factory.
#[derive(Clone)]
pub struct Vocabulary {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
}

/// Bytes to tokens for forced text: the longest-match tokenization over the vocabulary's
/// trie. Forced tokens are drafts that the target verifies, so a tokenization the model would
/// not choose costs acceptance, never exactness.
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}

impl Vocabulary {
    /// The vocabulary of `codec`'s model: `n_vocab` tokens, control tokens by their text,
    /// `is_eog` the tokens that end generation (allowed where the grammar is complete).
    pub fn of(codec: &dyn TextCodec, n_vocab: usize, is_eog: &dyn Fn(Token) -> bool) -> Result<Self> {
        let mut words = Vec::with_capacity(n_vocab);
        let mut eog = Vec::new();
        for t in 0..n_vocab as Token {
            if is_eog(t) {
                eog.push(t as u32);
            }
            let piece = codec.piece(t);
            if piece.is_empty() {
                let special = codec.special_piece(t);
                words.push(if special.is_empty() { special } else { [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &special].concat() });
            } else {
                words.push(piece);
            }
        }
        Self::from_words(&words, &eog)
    }

    /// The 256 bytes and an end token: enough to compile any grammar, so that one which does
    /// not compile is found before a model loads.
    fn bytes() -> &'static Self {
        static BYTES: std::sync::OnceLock<Vocabulary> = std::sync::OnceLock::new();
        BYTES.get_or_init(|| {
            let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
            words.push([&[TokTrie::SPECIAL_TOKEN_MARKER][..], b"</s>"].concat());
            Self::from_words(&words, &[256]).expect("a byte vocabulary with an end token")
        })
    }

    fn from_words(words: &[Vec<u8>], eog: &[u32]) -> Result<Self> {
        let n_vocab = words.len();
        let eos = *eog.first().ok_or_else(|| anyhow!("the model has no end-of-generation token: its output cannot end under a grammar"))?;
        let trie = TokTrie::from(&TokRxInfo::new(n_vocab as u32, eos), words).with_eos_tokens(eog);
        let env: llguidance::toktrie::TokEnv = Arc::new(TrieEnv { trie });
        let caps = InferenceCapabilities { ff_tokens: true, ..InferenceCapabilities::default() };
        let mut factory = ParserFactory::new(&env, caps, &llguidance::earley::SlicedBiasComputer::general_slices())
            .map_err(|e| anyhow!("cannot set up structured output: {e}"))?;
        factory.quiet();
        Ok(Self { factory: Arc::new(factory), n_vocab })
    }

    /// Compile `grammar` for this vocabulary: a schema, grammar or regex that does not compile
    /// is an error naming the reason.
    pub fn compile(&self, grammar: &Grammar) -> Result<ConstraintSpec> {
        self.build(grammar).map_err(|why| anyhow!("{}: {why}", grammar.kind()))
    }

    /// [`Vocabulary::compile`], the error being the reason alone.
    fn build(&self, grammar: &Grammar) -> std::result::Result<ConstraintSpec, String> {
        // llguidance's grammar compiler recurses along chains of rules: a thread of its own
        // with room for the longest grammar taken (`MAX_GRAMMAR_BYTES`)
        let parser = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(512 << 20)
                .spawn_scoped(s, || self.factory.create_parser(grammar.top_level()).map_err(|e| first_line(&e.to_string())))
                .map_err(|e| format!("cannot start the grammar compiler: {e}"))?
                .join()
                .map_err(|_| "the grammar compiler failed".to_string())?
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(first_line(&e));
        }
        let n_vocab = self.n_vocab;
        Ok(ConstraintSpec::new(grammar.kind(), move || Box::new(LlgConstraint { matcher: matcher.deep_clone(), n_vocab })))
    }
}

/// A [`Vocabulary`] built on first use (most runs never ask for a constraint) and the
/// grammars compiled so far, by their text (a batch file usually repeats one schema).
pub struct LazyVocabulary<'a> {
    codec: &'a dyn TextCodec,
    n_vocab: usize,
    eog: Vec<Token>,
    vocab: std::cell::OnceCell<std::result::Result<Vocabulary, String>>,
    compiled: std::cell::RefCell<std::collections::HashMap<String, ConstraintSpec>>,
}

impl<'a> LazyVocabulary<'a> {
    pub fn new(codec: &'a dyn TextCodec, model: &dyn specrun_core::model::Model) -> Self {
        let n_vocab = model.n_vocab();
        let eog = (0..n_vocab as Token).filter(|&t| model.is_eog(t)).collect();
        Self { codec, n_vocab, eog, vocab: Default::default(), compiled: Default::default() }
    }

    /// [`Vocabulary::compile`], once per distinct grammar.
    pub fn compile(&self, grammar: &Grammar) -> Result<ConstraintSpec> {
        let key = format!("{grammar:?}");
        if let Some(spec) = self.compiled.borrow().get(&key) {
            return Ok(spec.clone());
        }
        let vocab = self
            .vocab
            .get_or_init(|| Vocabulary::of(self.codec, self.n_vocab, &|t| self.eog.contains(&t)).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))?;
        let spec = vocab.compile(grammar)?;
        self.compiled.borrow_mut().insert(key, spec.clone());
        Ok(spec)
    }
}

/// OpenAI's `response_format` (`{"type": "text" | "json_object" | "json_schema", ...}`) as a
/// grammar (`None` for text), or what is wrong with it. A `"strict": true` schema's open
/// objects are closed ([`schema::closed`]).
pub fn response_format(v: &Value) -> std::result::Result<Option<Grammar>, String> {
    let kind = v.get("type").and_then(Value::as_str).ok_or("response_format needs a string \"type\"")?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonObject)),
        "json_schema" => {
            let js = v.get("json_schema").ok_or("response_format of type json_schema needs a \"json_schema\" object")?;
            let schema = js.get("schema").cloned().unwrap_or_else(|| json!({}));
            if !(schema.is_object() || schema.is_boolean()) {
                return Err("response_format.json_schema.schema must be an object".into());
            }
            let is_strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err("response_format.json_schema.strict must be true or false".into()),
            };
            Ok(Some(Grammar::JsonSchema(if is_strict { schema::closed(schema) } else { schema })))
        }
        other => Err(format!("response_format type \"{other}\" is not supported (text, json_object, json_schema)")),
    }
}

/// llguidance's message on one line: its first line, with the reason a regex parser gives
/// on a later `error:` line (the lines between echo the pattern and point at it), and a
/// leading capital lowered where the word is not an acronym.
fn first_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let line = match lines.rev().find_map(|l| l.strip_prefix("error:")) {
        Some(reason) => format!("{} {}", first.trim_end_matches(':'), reason.trim()),
        None => first.to_string(),
    };
    let mut chars = line.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => a.to_lowercase().chain(line[a.len_utf8()..].chars()).collect(),
        _ => line,
    }
}

/// llguidance's matcher behind the core's seam.
struct LlgConstraint {
    matcher: Matcher,
    n_vocab: usize,
}

fn failed(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError(first_line(&e.to_string()))
}

impl Constraint for LlgConstraint {
    fn mask(&mut self) -> Result<TokenMask, ConstraintError> {
        let vob = self.matcher.compute_mask_or_eos().map_err(|e| {
            if e.to_string().contains("NoExtensionBias") {
                ConstraintError("the grammar allows no token of this model's vocabulary here".into())
            } else {
                failed(e)
            }
        })?;
        Ok(TokenMask::from_words(vob.as_slice().to_vec(), self.n_vocab))
    }

    fn forced(&mut self) -> Vec<Token> {
        self.matcher.compute_ff_tokens().into_iter().map(|t| t as Token).collect()
    }

    fn likely(&mut self, forced: &[Token]) -> Vec<Token> {
        // the forced bytes past the forced tokens: llguidance holds back the last token of
        // forced text that could merge with what follows (` "` before a value)
        let bytes = self.matcher.compute_ff_bytes();
        let Ok(env) = self.matcher.tok_env() else { return Vec::new() };
        let forced: Vec<u32> = forced.iter().map(|&t| t as u32).collect();
        let done = env.tok_trie().decode_raw(&forced);
        match bytes.strip_prefix(done.as_slice()) {
            Some(rest) if !rest.is_empty() => env.tokenize_bytes(rest).into_iter().map(|t| t as Token).collect(),
            _ => Vec::new(),
        }
    }

    fn validate(&mut self, tokens: &[Token]) -> usize {
        let tokens: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        self.matcher.validate_tokens(&tokens).unwrap_or(0)
    }

    fn consume(&mut self, tokens: &[Token]) -> Result<(), ConstraintError> {
        let tokens: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        self.matcher.consume_tokens(&tokens).map_err(failed)
    }

    fn rollback(&mut self, n: usize) -> Result<(), ConstraintError> {
        self.matcher.rollback(n).map_err(failed)
    }

    fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    fn boxed_clone(&self) -> Box<dyn Constraint> {
        Box::new(LlgConstraint { matcher: self.matcher.deep_clone(), n_vocab: self.n_vocab })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use specrun_core::mock::MockCodec;

    /// The mock's text vocabulary (printable ASCII and newline), token 0 ending generation.
    pub(crate) fn vocab() -> Vocabulary {
        Vocabulary::of(&MockCodec { n_vocab: 97, text: true }, 97, &|t| t == 0).unwrap()
    }

    pub(crate) fn tokens(s: &str) -> Vec<Token> {
        MockCodec { n_vocab: 97, text: true }.tokenize(s)
    }

    #[test]
    fn grammars_of_every_kind_compile_and_follow_their_text() {
        let v = vocab();
        let cases = [
            (Grammar::from_text("root ::= \"id-\" [0-9]{3} (\"-a\" | \"-b\")\n").unwrap(), "id-042-b", "id-4a"),
            (Grammar::from_text("start: \"x\" /[0-9]+/").unwrap(), "x123", "y1"),
            (Grammar::Regex("[A-Z]{2}-[0-9]{2}".into()), "AB-12", "AB-1x"),
            (
                Grammar::schema_from_text(
                    r#"{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}"#,
                )
                .unwrap(),
                r#"{"ok": true}"#,
                r#"{"ok":true}"#,
            ),
            (Grammar::JsonObject, r#"{"a": [1, 2]}"#, "[1]"),
        ];
        for (g, good, bad) in cases {
            let spec = v.compile(&g).unwrap();
            let mut m = spec.start();
            let good = tokens(good);
            assert_eq!(m.validate(&good), good.len(), "{g:?}");
            m.consume(&good).unwrap();
            assert!(m.is_accepting(), "{g:?}");
            assert!(m.mask().unwrap().allows(0), "{g:?}: the end is allowed once complete");
            let bad = tokens(bad);
            assert!(spec.start().validate(&bad) < bad.len(), "{g:?}");
        }
        // keys and punctuation of a schema are forced
        let spec = v
            .compile(
                &Grammar::schema_from_text(r#"{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}"#)
                    .unwrap(),
            )
            .unwrap();
        let mut m = spec.start();
        assert_eq!(m.forced(), tokens(r#"{"name": ""#));
    }

    #[test]
    fn what_does_not_compile_says_why_in_one_line() {
        let v = vocab();
        for g in
            [Grammar::Lark("start: undefined_rule".into()), Grammar::JsonSchema(json!({"type": "nonsense"})), Grammar::Regex("(".into())]
        {
            let e = v.compile(&g).unwrap_err().to_string();
            assert!(e.starts_with(g.kind()) && !e.contains('\n'), "{e}");
        }
        // a regex parser's reason comes on a later line
        let e = v.compile(&Grammar::Regex("(?=x)x".into())).unwrap_err().to_string();
        assert!(e.contains("regex parse error") && e.contains("look-around") && !e.contains('\n'), "{e}");
        let e = v.compile(&Grammar::JsonSchema(json!({"type": "object", "if": {}}))).unwrap_err().to_string();
        assert!(e.starts_with("json_schema: unimplemented keys"), "{e}");
        assert!(Grammar::schema_from_text("[1]").is_err());
        // a chain of rules as long as a grammar may be compiles or says why, never overflows
        // the stack
        let chain: String = (0..)
            .map(|i| format!("r{i}: \"a\" r{}\n", i + 1))
            .take_while({
                let mut len = 0;
                move |r: &String| {
                    len += r.len();
                    len < MAX_GRAMMAR_BYTES - 64
                }
            })
            .collect::<String>();
        let n = chain.lines().count();
        let g = Grammar::from_text(&format!("start: r0\n{chain}r{n}: \"b\"\n")).unwrap();
        let e = v.compile(&g).unwrap_err().to_string();
        assert!(e.contains("symbols") && !e.contains('\n'), "{n} rules: {e}");
        assert!(Grammar::from_text(&"x".repeat(MAX_GRAMMAR_BYTES + 1)).unwrap_err().to_string().contains("at most"));
        assert!(Grammar::from_text("root ::= <[3]>").unwrap_err().to_string().starts_with("GBNF line 1, column 10"));
        assert_eq!(response_format(&json!({"type": "text"})), Ok(None));
        assert_eq!(response_format(&json!({"type": "json_object"})), Ok(Some(Grammar::JsonObject)));
        assert!(response_format(&json!({"type": "json_schema"})).is_err());
        assert!(response_format(&json!({"type": "json_schema", "json_schema": {"schema": 3}})).is_err());
        assert!(response_format(&json!({"type": "json_schema", "json_schema": {"schema": {}, "strict": 1}})).is_err());
    }

    #[test]
    fn a_format_llguidance_does_not_know_is_an_annotation_and_one_it_knows_constrains() {
        let v = vocab();
        let schema = |format: &str| Grammar::JsonSchema(json!({"type": "string", "format": format}));
        let spec = v.compile(&schema("password")).unwrap();
        let any = tokens(r#""hunter2!""#);
        assert_eq!(spec.start().validate(&any), any.len());
        let spec = v.compile(&schema("date")).unwrap();
        assert_eq!(spec.start().validate(&any), 1, "only the quote is a date's start");
        let date = tokens(r#""2024-03-05""#);
        assert_eq!(spec.start().validate(&date), date.len());
    }

    #[test]
    fn a_strict_schema_refuses_keys_it_does_not_list() {
        let v = vocab();
        let schema =
            json!({"type": "object", "properties": {"title": {"type": "string"}, "pages": {"type": "integer"}}, "required": ["title"]});
        let extra = tokens(r#"{"title": "Dune", "author": "#);
        let listed = tokens(r#"{"title": "Dune", "pages": 412}"#);
        for (is_strict, extra_allowed) in [(false, true), (true, false)] {
            let rf = json!({"type": "json_schema", "json_schema": {"name": "book", "schema": schema, "strict": is_strict}});
            let spec = v.compile(&response_format(&rf).unwrap().unwrap()).unwrap();
            assert_eq!(spec.start().validate(&extra) == extra.len(), extra_allowed, "strict: {is_strict}");
            assert_eq!(spec.start().validate(&listed), listed.len(), "strict: {is_strict}");
        }
    }
}
