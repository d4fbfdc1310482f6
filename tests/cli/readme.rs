//! The README's command lines parse: every `specrun …` line of its shell blocks goes through
//! the same argument parsing as the binary (llama.cpp spellings included), so a renamed or
//! removed flag fails here instead of in a reader's terminal. The README's statements about
//! defaults are checked against the parser too.

use clap::Parser;
use specrun::cli::{normalize_args, Cli, Command};

/// Shell words of one line: quotes kept together and removed, a `#` comment outside quotes
/// dropped.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, '#') if cur.is_empty() => break,
            (None, ' ' | '\t') => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `specrun` command lines of the README's `sh` blocks (continuation lines joined).
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (mut cmds, mut in_sh, mut pending) = (Vec::new(), false, String::new());
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let line = if pending.is_empty() { line.trim_start().to_string() } else { format!("{pending} {}", line.trim()) };
        if let Some(head) = line.strip_suffix('\\') {
            pending = head.to_string();
            continue;
        }
        pending.clear();
        if line.starts_with("specrun ") {
            cmds.push(line);
        }
    }
    cmds
}

#[test]
fn every_readme_command_line_parses() {
    let cmds = readme_commands();
    assert!(cmds.len() >= 25, "found only {} command lines", cmds.len());
    for cmd in cmds {
        let args = words(&cmd);
        if let Err(e) = Cli::try_parse_from(normalize_args(args.iter().map(Into::into))) {
            panic!("README: `{cmd}` does not parse:\n{e}");
        }
    }
}

#[test]
fn the_readme_says_the_defaults_the_parser_has() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let Command::Serve(s) = Cli::try_parse_from(["specrun", "serve"]).unwrap().command else { panic!("not serve") };
    assert!(text.contains(&format!("{} tokens at a time (`--prefill-chunk`)", s.prefill_chunk)), "--prefill-chunk default");
    assert!(s.prompt_cache && text.contains("`--prompt-cache\non`, default"), "the prompt cache is on by default in serve");
    assert!(text.contains(&format!("http://{}:{}/v1", s.host, s.port)));
    let pair = specrun::formats::models_toml::BUILTIN;
    assert!(pair.contains("draft_max = 16") && text.contains("draft_max = 16"), "the shipped pair's draft_max");
    assert!(
        text.contains("`specrun::formats::report`")
            && std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/formats/report.rs")).is_file()
    );
}

#[test]
fn shell_words_split_like_a_shell() {
    assert_eq!(words(r#"specrun run --prompt "a b" -j '{"x": 1}'   # note"#), ["specrun", "run", "--prompt", "a b", "-j", r#"{"x": 1}"#]);
    assert_eq!(words(r#"x "" y"#), ["x", "", "y"]);
}
