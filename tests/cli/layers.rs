//! The tree's architecture, checked: the layers of `src/` import only downwards, and the core
//! crate touches no command line, file, environment or clock.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer of a top-level module of `src/` (lower imports nothing higher).
fn rank(module: &str) -> Option<usize> {
    Some(match module {
        "io" | "settings" => 0,
        "backend" | "constraint" => 1,
        "formats" => 2,
        "infer" => 3,
        "cli" => 4,
        "commands" => 5,
        "main" | "lib" => 6,
        _ => return None,
    })
}

fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// `crate::NAME` paths a file mentions (outside comments).
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `specrun_core::` and the like end in "crate" only by accident of naming
            let before = &rest[..i];
            if !before.ends_with(|c: char| c.is_alphanumeric() || c == '_') && !name.is_empty() {
                refs.push(name);
            }
            rest = after;
        }
    }
    refs
}

#[test]
fn src_layers_import_only_downwards() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(files.len() > 10);
    let mut violations = Vec::new();
    for f in &files {
        let module = module_of(f);
        let from = rank(&module).unwrap_or_else(|| panic!("{}: module '{module}' has no layer; add it to tests/layers.rs", f.display()));
        let text = std::fs::read_to_string(f).unwrap();
        for r in crate_refs(&text) {
            let Some(to) = rank(&r) else { continue };
            if to > from || (to == from && r != module && from != 0) {
                violations.push(format!("{}: {module} (layer {from}) uses crate::{r} (layer {to})", f.display()));
            }
        }
    }
    assert!(violations.is_empty(), "upward or sideways imports:\n{}", violations.join("\n"));
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    assert_eq!(crate_refs("use crate::commands::run; // crate::cli in a comment\nlet x = specrun_core::model::Token;"), vec!["commands"]);
}

#[test]
fn the_core_touches_no_command_line_file_environment_or_clock() {
    let mut files = Vec::new();
    rust_files(&root().join("crates/specrun-core/src"), &mut files);
    assert!(files.len() >= 10);
    let forbidden = [
        "std::fs",
        "std::env",
        "Instant",
        "SystemTime",
        "std::io::stdin",
        "std::io::stdout",
        "std::net",
        "std::process",
        "println!",
        "eprintln!",
        "llama_cpp",
    ];
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for bad in forbidden {
                assert!(!code.contains(bad), "{}:{}: the core uses {bad}: {line}", f.display(), n + 1);
            }
            // clap only as an optional derive for front ends
            if code.contains("clap") {
                assert!(
                    code.contains("cfg_attr(feature = \"clap\""),
                    "{}:{}: clap outside the optional derive: {line}",
                    f.display(),
                    n + 1
                );
            }
        }
    }
    let manifest = std::fs::read_to_string(root().join("crates/specrun-core/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("clap = { workspace = true, features = [\"std\", \"derive\"], optional = true }"),
        "clap is optional in the core"
    );
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(workspace.contains("clap = { version = \"4.5\", default-features = false }"), "the core's clap brings no defaults");
}

/// The layer of a module of the core (lower imports nothing higher; `mock` is test support).
fn core_rank(module: &str) -> Option<usize> {
    Some(match module {
        "model" | "clock" | "detok" | "vocab" | "outlook" => 0,
        "sampling" | "anchor" | "constraint" => 1,
        "verify" | "ngram" | "closing" => 2,
        "draft" => 3,
        "stats" => 4,
        "control" => 5,
        "engine" => 6,
        "prefix_cache" => 7,
        "batching" => 8,
        "mock" | "lib" => 9,
        _ => return None,
    })
}

#[test]
fn core_modules_import_only_downwards() {
    let src = root().join("crates/specrun-core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let from = core_rank(&module)
            .unwrap_or_else(|| panic!("{}: core module '{module}' has no layer; add it to tests/cli/layers.rs", f.display()));
        let text = std::fs::read_to_string(f).unwrap();
        // unit tests may reach anywhere
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for r in crate_refs(code) {
            let Some(to) = core_rank(&r) else { continue };
            if r != module && to >= from {
                violations.push(format!("{}: {module} (layer {from}) uses crate::{r} (layer {to})", f.display()));
            }
        }
    }
    assert!(violations.is_empty(), "upward or sideways imports in the core:\n{}", violations.join("\n"));
}
