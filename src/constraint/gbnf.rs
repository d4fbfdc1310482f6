//! llama.cpp's GBNF, translated to llguidance's Lark syntax.
//!
//! GBNF (`rule ::= alternatives`, literals, character classes, `.`, groups, `* + ?` and
//! `{m,n}`, `#` comments, `root` as the start) maps one to one onto Lark rules: a literal
//! becomes a JSON-escaped string, a character class a one-character regex, a rule name a
//! lowercase Lark name. What has no counterpart here — token references such as `<[1234]>` or
//! `<|tag|>` — is refused with its line and column, so a grammar either works as written or
//! gets one line naming the construct.

use std::collections::HashSet;
use std::fmt::Write as _;

/// Whether `text` looks like GBNF rather than Lark: it defines a rule with `::=`.
pub fn is_gbnf(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        !l.starts_with('#') && l.contains("::=")
    })
}

/// A GBNF grammar as Lark text (its `root` rule is the start), or the first construct that
/// cannot be translated, with its line and column.
pub fn to_lark(src: &str) -> Result<String, String> {
    let mut p = Parser { s: src.chars().collect(), i: 0, refs: Vec::new() };
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut defined: HashSet<String> = HashSet::new();
    loop {
        p.space(true);
        if p.eof() {
            break;
        }
        let at = p.i;
        let name = p.name().ok_or_else(|| p.error(at, "expected a rule name"))?;
        p.space(false);
        if !p.eat_str("::=") {
            return Err(p.error(p.i, &format!("expected ::= after rule name '{name}'")));
        }
        p.space(true);
        let body = p.alternates(false)?;
        if !defined.insert(name.clone()) {
            return Err(p.error(at, &format!("rule '{name}' is defined twice")));
        }
        rules.push((name, body));
    }
    if !defined.contains("root") {
        return Err("line 1: the grammar has no 'root' rule".into());
    }
    if let Some((name, at)) = p.refs.iter().find(|(name, _)| !defined.contains(name)) {
        return Err(p.error(*at, &format!("rule '{name}' is not defined")));
    }
    let mut out = String::from("start: g_root\n");
    for (name, body) in &rules {
        let _ = writeln!(out, "{}: {}", lark_name(name), body);
    }
    Ok(out)
}

/// A GBNF rule name as a Lark rule name: prefixed, upper-case letters escaped (Lark reserves
/// them for terminals).
fn lark_name(name: &str) -> String {
    let mut s = String::from("g_");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

struct Parser {
    s: Vec<char>,
    i: usize,
    /// Rule names used, where.
    refs: Vec<(String, usize)>,
}

impl Parser {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn eat_str(&mut self, t: &str) -> bool {
        let n = t.chars().count();
        if self.s[self.i.min(self.s.len())..].iter().take(n).copied().eq(t.chars()) {
            self.i += n;
            true
        } else {
            false
        }
    }

    /// Line and column of character `at`, and a message.
    fn error(&self, at: usize, msg: &str) -> String {
        let before = &self.s[..at.min(self.s.len())];
        let line = 1 + before.iter().filter(|&&c| c == '\n').count();
        let col = 1 + before.iter().rev().take_while(|&&c| c != '\n').count();
        format!("line {line}, column {col}: {msg}")
    }

    /// Skip blanks and comments; newlines too when `newlines` (inside a group, after `|`).
    fn space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.i += 1;
                }
            } else if c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r')) {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.i += 1;
        }
        (self.i > start).then(|| self.s[start..self.i].iter().collect())
    }

    /// Alternatives up to the end of the rule (a newline outside a group) or `)` when nested.
    fn alternates(&mut self, nested: bool) -> Result<String, String> {
        let mut alts = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.i += 1;
            self.space(true);
            alts.push(self.sequence(nested)?);
        }
        Ok(alts.join(" | "))
    }

    fn sequence(&mut self, nested: bool) -> Result<String, String> {
        let mut items: Vec<String> = Vec::new();
        loop {
            self.space(nested);
            let at = self.i;
            let item = match self.peek() {
                None | Some('|') | Some('\n') | Some('\r') => break,
                Some(')') if nested => break,
                Some(')') => return Err(self.error(at, "unbalanced ')'")),
                Some('"') => self.literal()?,
                Some('[') => self.class()?,
                Some('.') => {
                    self.i += 1;
                    "/(?s:.)/".to_string()
                }
                Some('(') => {
                    self.i += 1;
                    self.space(true);
                    let inner = self.alternates(true)?;
                    self.space(true);
                    if self.peek() != Some(')') {
                        return Err(self.error(self.i, "expected ')'"));
                    }
                    self.i += 1;
                    format!("({inner})")
                }
                Some('<') | Some('!') => {
                    return Err(self.error(at, "token references (<[id]>, <|tag|>, !<...>) are not supported; write the text instead"))
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    let name = self.name().unwrap_or_default();
                    if self.s[self.i..].iter().skip_while(|c| **c == ' ' || **c == '\t').take(3).copied().eq("::=".chars()) {
                        // the next rule starts: this sequence ended with the previous line
                        self.i = at;
                        break;
                    }
                    let lark = lark_name(&name);
                    self.refs.push((name, at));
                    lark
                }
                Some(c) => return Err(self.error(at, &format!("unexpected '{c}'"))),
            };
            let item = self.postfix(item)?;
            items.push(item);
        }
        Ok(if items.is_empty() { "\"\"".to_string() } else { items.join(" ") })
    }

    fn postfix(&mut self, item: String) -> Result<String, String> {
        match self.peek() {
            Some(op @ ('*' | '+' | '?')) => {
                self.i += 1;
                Ok(format!("({item}){op}"))
            }
            Some('{') => {
                let at = self.i;
                let end =
                    self.s[self.i..].iter().position(|&c| c == '}').map(|p| self.i + p).ok_or_else(|| self.error(at, "unclosed '{'"))?;
                let body: String = self.s[self.i + 1..end].iter().filter(|c| !c.is_whitespace()).collect();
                let (min, max) = match body.split_once(',') {
                    None => (body.clone(), Some(body.clone())),
                    Some((a, b)) => (if a.is_empty() { "0".to_string() } else { a.to_string() }, (!b.is_empty()).then(|| b.to_string())),
                };
                let num = |s: &str| s.parse::<u32>().map_err(|_| self.error(at, &format!("bad repetition {{{body}}}")));
                let min = num(&min)?;
                let max = max.map(|m| num(&m)).transpose()?;
                self.i = end + 1;
                Ok(match max {
                    Some(max) if max < min => return Err(self.error(at, &format!("bad repetition {{{body}}}"))),
                    Some(max) => format!("({item}){{{min},{max}}}"),
                    None => format!("({item}){{{min},}}"),
                })
            }
            _ => Ok(item),
        }
    }

    /// One character of a literal or class, escapes decoded.
    fn char_in(&mut self, close: char) -> Result<char, String> {
        let at = self.i;
        let c = self.peek().ok_or_else(|| self.error(at, &format!("unterminated, expected '{close}'")))?;
        self.i += 1;
        if c != '\\' {
            return Ok(c);
        }
        let e = self.peek().ok_or_else(|| self.error(at, "unterminated escape"))?;
        self.i += 1;
        let hex = |p: &mut Parser, n: usize| -> Result<char, String> {
            let digits: String = p.s[p.i..(p.i + n).min(p.s.len())].iter().collect();
            p.i += n;
            u32::from_str_radix(&digits, 16).ok().and_then(char::from_u32).ok_or_else(|| p.error(at, &format!("bad escape \\{e}{digits}")))
        };
        match e {
            'x' => hex(self, 2),
            'u' => hex(self, 4),
            'U' => hex(self, 8),
            't' => Ok('\t'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            '0' => Ok('\0'),
            '\\' | '"' | '[' | ']' | '-' | '^' => Ok(e),
            _ => Err(self.error(at, &format!("unknown escape \\{e}"))),
        }
    }

    fn literal(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut text = String::new();
        while self.peek() != Some('"') {
            if self.eof() || self.peek() == Some('\n') {
                return Err(self.error(self.i, "unterminated string"));
            }
            text.push(self.char_in('"')?);
        }
        self.i += 1;
        Ok(serde_json::to_string(&text).unwrap_or_default())
    }

    fn class(&mut self) -> Result<String, String> {
        let at = self.i;
        self.i += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.i += 1;
        }
        let mut out = String::from(if negated { "/[^" } else { "/[" });
        while self.peek() != Some(']') {
            if self.eof() {
                return Err(self.error(at, "unterminated character class"));
            }
            let lo = self.char_in(']')?;
            let _ = write!(out, "\\x{{{:X}}}", lo as u32);
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&c| c != ']') {
                self.i += 1;
                let hi = self.char_in(']')?;
                if hi < lo {
                    return Err(self.error(at, "character range out of order"));
                }
                let _ = write!(out, "-\\x{{{:X}}}", hi as u32);
            }
        }
        self.i += 1;
        out.push_str("]/");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_literals_classes_groups_and_repetitions_translate() {
        let g = r#"
# a comment
root ::= greeting ws items   # trailing comment
greeting ::= "Hi \"you\"\n" | "yo"
ws ::= | " " | "\n" [ \t]{0,3}
items ::=
  ( item
    ("," item)* )?
item ::= [a-zA-Z_] [^\x00-\x1F\u2028]+ . digitRun{2}
digitRun ::= [0-9]{1,}
"#;
        let lark = to_lark(g).unwrap();
        assert!(lark.starts_with("start: g_root\n"), "{lark}");
        assert!(lark.contains(r#"g_greeting: "Hi \"you\"\n" | "yo""#), "{lark}");
        assert!(lark.contains(r#"g_ws: "" | " " | "\n" (/[\x{20}\x{9}]/){0,3}"#), "{lark}");
        assert!(lark.contains(r#"g_items: ((g_item (("," g_item))*))?"#), "{lark}");
        assert!(
            lark.contains(r#"g_item: /[\x{61}-\x{7A}\x{41}-\x{5A}\x{5F}]/ (/[^\x{0}-\x{1F}\x{2028}]/)+ /(?s:.)/ (g_digit_run){2,2}"#),
            "{lark}"
        );
        assert!(lark.contains(r#"g_digit_run: (/[\x{30}-\x{39}]/){1,}"#), "{lark}");
        assert!(is_gbnf(g) && !is_gbnf("start: \"a\" | /[0-9]+/"));
    }

    #[test]
    fn what_cannot_be_translated_is_named_with_its_place() {
        let e = to_lark("root ::= \"a\" <[1234]>\n").unwrap_err();
        assert!(e.starts_with("line 1, column 14: token references"), "{e}");
        let e = to_lark("root ::= \"a\"\nx ::= \"unterminated\n").unwrap_err();
        assert!(e.starts_with("line 2, column 20: unterminated string"), "{e}");
        assert_eq!(to_lark("x ::= \"a\"\n").unwrap_err(), "line 1: the grammar has no 'root' rule");
        assert!(to_lark("root ::= (\"a\"\n").unwrap_err().contains("expected ')'"));
        assert!(to_lark("root ::= [b-a]\n").unwrap_err().contains("out of order"));
        assert!(to_lark("root ::= \"a\"{3,1}\n").unwrap_err().contains("bad repetition"));
        assert!(to_lark("root ::= \"a\"\nroot ::= \"b\"\n").unwrap_err().contains("defined twice"));
        assert_eq!(
            to_lark("item ::= \"b\"\nroot ::= item (\"a\" | missing)\n").unwrap_err(),
            "line 2, column 22: rule 'missing' is not defined"
        );
    }
}
