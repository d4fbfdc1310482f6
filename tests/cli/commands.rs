//! The binary, end to end on the hidden mock backend: output formats, flag handling and the
//! one-line errors for bad input.

use assert_cmd::Command;
use predicates::prelude::*;
use specrun::formats::report::{CompareReport, RunReport};
use std::path::PathBuf;

fn models_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models.toml")
}

fn specrun() -> Command {
    Command::cargo_bin("specrun").unwrap()
}

/// A command line with the mock backend and the repository's models file added.
fn mock(args: &[&str]) -> Command {
    let mut c = specrun();
    c.args(args).args(["--mock", "--config"]).arg(models_toml());
    c
}

fn mock_run(extra: &[&str]) -> Command {
    let mut c = specrun();
    c.args(["run", "--mock", "--config"]).arg(models_toml()).args(["--prompt", "hello world"]).args(extra);
    c
}

#[test]
fn help_lists_every_run_flag() {
    let out = specrun().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--pair",
        "--model",
        "--model-draft",
        "--config",
        "--models-dir",
        "--n-gpu-layers",
        "--n-gpu-layers-draft",
        "--threads",
        "--ctx-size",
        "--batch-size",
        "--max-tokens",
        "--draft-max",
        "--draft-p-min",
        "--no-draft",
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--seed",
        "--verify",
        "--prompt",
        "--prompt-file",
        "--chat",
        "--compare",
        "--json",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
    assert!(!help.contains("--mock"), "the test backend flag is hidden");
}

#[test]
fn json_output_is_one_record_with_the_documented_fields() {
    let out = mock_run(&["-n", "20", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let r: RunReport = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r.drafter, "ngram", "the pair's drafter from models.toml");
    assert_eq!(r.adaptive, "auto", "the pair's policy");
    // flags override the models file
    let out = mock_run(&["-n", "20", "--json", "--draft", "hybrid", "--adaptive", "step"]).output().unwrap();
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r.drafter.as_str(), r.adaptive.as_str()), ("hybrid", "step"));
    assert_eq!(r.verify, "greedy");
    assert!(r.n_generated <= 20 && r.n_generated > 0);
    let eog = usize::from(r.finish_reason == "stop");
    assert_eq!(r.text.len(), r.n_generated - eog, "mock tokens print as one character each, the end token as nothing");
    assert!(r.n_accepted <= r.n_drafted);
}

#[test]
fn compare_reports_identical_outputs_and_a_speedup() {
    let out = mock_run(&["-n", "30", "--compare", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: CompareReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.identical);
    assert_eq!(r.target_only.text, r.speculative.text);
    assert_eq!(r.target_only.drafter, "none");
    assert_eq!(r.target_only.n_drafted, 0);
    assert!(r.speedup > 0.0);
}

#[test]
fn text_mode_streams_to_stdout_and_stats_to_stderr() {
    mock_run(&["-n", "10"])
        .assert()
        .success()
        .stdout(predicate::str::is_match("^[ -~\n]+\n$").unwrap())
        .stderr(predicate::str::contains("acceptance").and(predicate::str::contains("tok/s")));
}

#[test]
fn no_draft_runs_target_only_with_the_same_text() {
    let spec = mock_run(&["-n", "25", "--json"]).output().unwrap();
    let plain = mock_run(&["-n", "25", "--json", "--no-draft"]).output().unwrap();
    let spec: RunReport = serde_json::from_slice(&spec.stdout).unwrap();
    let plain: RunReport = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(plain.drafter, "none");
    assert_eq!(plain.n_rounds, plain.n_generated);
    assert_eq!(spec.text, plain.text);
}

#[test]
fn bad_toml_is_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("models.toml");
    std::fs::write(&f, "[models.a]\npath = \"a.gguf\"\nn_ctxx = 5\n").unwrap();
    let out = specrun().args(["run", "--prompt", "x", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: {}:3:1: unknown field `n_ctxx`", f.display())), "{err}");
}

#[test]
fn missing_model_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = specrun().args(["run", "--prompt", "x", "--config"]).arg(models_toml()).arg("--models-dir").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("model file not found") || err.contains("built without the llama.cpp backend"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_name_the_flag() {
    let out = mock_run(&["--temp=-1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temp must be a number >= 0, got -1"));
    let out = mock_run(&["--top-p", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--top-p must be in (0, 1], got 0"));
    let out =
        specrun().args(["run", "--mock", "--prompt-file", "/nonexistent/prompt.txt", "--config"]).arg(models_toml()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt-file /nonexistent/prompt.txt: cannot read"));
    // clap usage errors exit 2
    specrun().args(["run", "--draft-max", "many", "--prompt", "x"]).assert().code(2);
}

/// A `specrun` with no models file anywhere near: run from `/`, with empty config dirs.
fn isolated(home: &std::path::Path) -> Command {
    let mut c = specrun();
    c.current_dir("/").env("HOME", home).env("XDG_CONFIG_HOME", home.join("config")).env_remove("SPECRUN_CONFIG");
    c
}

#[test]
fn runs_from_anywhere_with_the_built_in_models_file() {
    let home = tempfile::tempdir().unwrap();
    let out = isolated(home.path()).args(["run", "--mock", "--prompt", "hi", "-n", "5", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.drafter, "ngram", "the shipped pair's drafter");
    let out = isolated(home.path()).args(["config", "path"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("built-in defaults"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn config_lookup_order_env_then_user_dir_then_builtin() {
    let home = tempfile::tempdir().unwrap();
    // config init writes the shipped defaults to the user's config directory
    let out = isolated(home.path()).args(["config", "init"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let user_file = home.path().join("config/specrun/models.toml");
    assert!(user_file.is_file());
    isolated(home.path()).args(["config", "init"]).assert().code(2).stderr(predicate::str::contains("exists: pass --force"));
    // the user's file is now the one read: a pair only it has is found
    let mut text = std::fs::read_to_string(&user_file).unwrap();
    text.push_str("\n[pairs.mine]\ndraft = \"smollm2-135m\"\ntarget = \"smollm2-135m\"\ndrafter = \"hybrid\"\n");
    std::fs::write(&user_file, &text).unwrap();
    let out = isolated(home.path()).args(["config", "path"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{} (user config directory)", user_file.display())));
    let out = isolated(home.path()).args(["run", "--mock", "--pair", "mine", "--prompt", "hi", "-n", "3", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // $SPECRUN_CONFIG comes before the user's file, and --config before both
    let env_file = home.path().join("env.toml");
    std::fs::write(&env_file, "[models.a]\npath = \"a.gguf\"\n[pairs.envpair]\ndraft = \"a\"\ntarget = \"a\"\n").unwrap();
    let out = isolated(home.path())
        .env("SPECRUN_CONFIG", &env_file)
        .args(["run", "--mock", "--pair", "mine", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pair named 'mine' (known: envpair)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = isolated(home.path())
        .env("SPECRUN_CONFIG", &env_file)
        .args(["run", "--mock", "--pair", "mine", "--prompt", "hi", "-n", "3", "--config"])
        .arg(&user_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_value_in_models_toml_is_reported_where_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("models.toml");
    std::fs::write(&f, "[models.a]\npath = \"a.gguf\"\n\n[pairs.p]\ndraft = \"a\"\ntarget = \"a\"\ntop_p = 0.0\n").unwrap();
    let out = specrun().args(["run", "--mock", "--pair", "p", "--prompt", "x", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end(), format!("error: {}:7:9: top_p must be in (0, 1], got 0", f.display()));
}

#[test]
fn calibrate_stores_a_curve_that_run_plans_with() {
    let cache = tempfile::tempdir().unwrap();
    let calibrate = |extra: &[&str]| {
        specrun()
            .env("SPECRUN_CACHE", cache.path())
            .args(["calibrate", "--mock", "--config"])
            .arg(models_toml())
            .args(["--sizes", "1,2,4,8,16", "--repeat", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = calibrate(&["--show"]);
    assert_eq!(out.status.code(), Some(2), "nothing stored yet");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stored calibration"));
    let out = calibrate(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    // the mock's cost model: 20 ms a call + 2 ms a token
    assert!(table.contains("     1       22.00        1.00"), "{table}");
    assert!(table.contains("    16       52.00        2.36"), "{table}");
    assert!(table.contains("draft step"), "the pair's draft model is measured too: {table}");
    let files: Vec<_> = std::fs::read_dir(cache.path().join("calibration")).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(String::from_utf8(calibrate(&["--show"]).stdout).unwrap(), table);
    // another thread count is another key
    let out = calibrate(&["--show", "-t", "3"]);
    assert_eq!(out.status.code(), Some(2));
    // with the curve, `auto` may plan drafts beyond the lengths it has tried; the text is the same
    let run = |cache_dir: &std::path::Path| {
        let out = specrun()
            .env("SPECRUN_CACHE", cache_dir)
            .args(["run", "--mock", "--config"])
            .arg(models_toml())
            .args(["--prompt", "a b c d a b c d a b c d a b c d", "-n", "60", "--draft-max", "16", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<RunReport>(&out.stdout).unwrap()
    };
    let empty = tempfile::tempdir().unwrap();
    let (with, without) = (run(cache.path()), run(empty.path()));
    assert_eq!(with.text, without.text);
}

/// Offload settings in llama.cpp's spellings reach the plan the backend loads with, and come
/// back in `--json` (`placement`) and the stats block; bad ones are one line naming the flag.
#[test]
fn offload_flags_reach_the_backend_and_the_report() {
    let out = mock_run(&[
        "--json",
        "--draft",
        "model",
        "-ngl",
        "7",
        "-ngld",
        "0",
        "-dev",
        "none",
        "-devd",
        "CPU",
        "-ctk",
        "q8_0",
        "-ctvd",
        "q4_0",
        "-fa",
        "on",
        "-nkvo",
        "--kv-unified",
        "off",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    let p = r.placement.expect("placement");
    assert_eq!(p.target.summary, "none, 7 GPU layers, KV q8_0/f16 on the host per sequence, flash attention on");
    let t = &p.target;
    assert_eq!(
        (t.devices.as_slice(), t.gpu_layers, t.cache_type_k.as_str(), t.cache_type_v.as_str()),
        (&["none".to_string()][..], 7, "q8_0", "f16")
    );
    assert_eq!((t.kv_offload, t.kv_unified, t.flash_attn.as_str(), t.batch_invariant), (false, false, "on", false));
    let d = p.draft.expect("draft placement");
    assert_eq!(d.summary, "CPU, 0 GPU layers, KV f16/q4_0 on the host per sequence, flash attention on");
    assert_eq!((d.devices, d.cache_type_v.as_str()), (vec!["CPU".to_string()], "q4_0"));
    let out = mock_run(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("target on  default devices, 0 GPU layers, KV f16/f16, flash attention auto"), "{err}");
    for (flags, msg) in [
        (vec!["-ctk", "q3"], "invalid value 'q3' for '--cache-type-k <TYPE>': expected a KV cache type (f32, f16, bf16, q8_0"),
        (vec!["-fa", "maybe"], "invalid value 'maybe' for '--flash-attn [<on|off|auto>]': expected on, off or auto"),
        (vec!["--kv-unified", "yes"], "invalid value 'yes' for '--kv-unified <on|off>': expected on or off"),
    ] {
        let out = mock_run(&flags).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{err}");
    }
}

/// The models file takes the same settings per model, located when wrong.
#[test]
fn offload_keys_in_models_toml_are_checked_where_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(models_toml()).unwrap().replace(
        "path = \"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf\"",
        "path = \"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf\"\ndevices = [\"none\"]\ncache_type_k = \"q8_0\"\nflash_attn = \"off\"\nkv_offload = false\nkv_unified = false",
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let out = specrun().args(["run", "--mock", "--json", "--prompt", "hi", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.placement.unwrap().target.summary, "none, 0 GPU layers, KV q8_0/f16 on the host per sequence, flash attention off");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("cache_type_k = \"q8_0\"", "cache_type_k = \"q9\"")).unwrap();
    let out = specrun().args(["run", "--mock", "--prompt", "hi", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:") && err.contains("expected a KV cache type"), "{err}");
}

/// `specrun devices` lists at least the CPU on a CPU build (and says how to get a GPU).
#[cfg(feature = "llama")]
#[test]
fn devices_lists_the_cpu() {
    let out = specrun().args(["devices"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("built with: cpu"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("CPU ") && l.contains(" cpu ")), "{text}");
    let out = specrun().args(["devices", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert!(devs.iter().any(|d| d["kind"] == "cpu" && d["memory_total"].as_u64().unwrap() > 0), "{v}");
}

#[test]
fn the_round_trace_is_one_json_line_per_round_and_adds_up_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rounds.jsonl");
    let out = mock_run(&["-n", "40", "--json", "--draft", "hybrid", "--adaptive", "fixed", "--trace-rounds"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    // every round but the first token's, which came with the prompt
    assert_eq!(lines.len() + 1, r.n_rounds);
    let sum = |key: &str| lines.iter().map(|l| l[key].as_u64().unwrap() as usize).sum::<usize>();
    assert_eq!(sum("n_emitted") + 1, r.n_generated);
    assert_eq!((sum("n_drafted"), sum("n_accepted")), (r.n_drafted, r.n_accepted));
    assert!(r.n_drafted > 0, "a fixed hybrid draft drafts every round");
    let rounds: Vec<u64> = lines.iter().map(|l| l["round"].as_u64().unwrap()).collect();
    assert_eq!(rounds, (2..2 + lines.len() as u64).collect::<Vec<_>>());
    for l in &lines {
        assert!(l["n_accepted"].as_u64() <= l["n_drafted"].as_u64(), "{l}");
        let (chars, n) = (l["emitted"].as_str().unwrap().len(), l["n_emitted"].as_u64().unwrap() as usize);
        assert!(chars == n || chars + 1 == n, "mock tokens print as one character, the end token as nothing: {l}");
    }
    // a path that cannot be created: one line naming the flag, nothing generated
    let out = mock_run(&["--trace-rounds", "/nonexistent-dir/rounds.jsonl"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--trace-rounds") && err.contains("cannot create"), "{err}");
}

/// `--print-prompt` prints the text the target reads (the chat template applied with `--chat`)
/// and generates nothing.
#[test]
fn print_prompt_shows_the_templated_text_and_generates_nothing() {
    let out = mock_run(&["--chat", "--print-prompt"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<user>hello world<assistant>");
    let out = mock_run(&["--print-prompt"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("tok/s"), "no generation report");
    mock_run(&["--print-prompt", "--compare"]).assert().code(2);
}

/// llama.cpp's command-line conventions: its flag spellings run (on the mock), and its flags
/// specrun has no counterpart for are refused with one line naming them — never help and 0.
#[test]
fn llama_cpp_command_lines_run_or_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("p.txt");
    std::fs::write(&prompt, "Building a website can be done in 10 simple steps:").unwrap();
    let p = prompt.to_str().unwrap();
    for line in [
        vec!["run", "-p", "I believe the meaning of life is", "-n", "8", "-c", "512", "-t", "2", "-s", "42", "--temp", "0.7"],
        vec!["run", "-f", p, "-n", "8", "-b", "256", "-ngl", "all", "-fa"],
        vec!["run", "-p", "hi", "-n", "4", "-ngl", "-1", "-ngld", "auto", "--spec-draft-n-max", "8", "-fa", "off"],
        vec!["run", "-p", "hi", "-n", "4", "-ctk", "q8_0", "-ctv", "q8_0", "-nkvo"],
        vec!["batch", p, "-o", dir.path().join("o.jsonl").to_str().unwrap(), "-np", "2", "-n", "4"],
    ] {
        let o = mock(&line).output().unwrap();
        assert!(o.status.success(), "{line:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for flag in
        ["-hf", "-hfd", "-ot", "--override-tensor", "-sm", "-ts", "-mg", "-ub", "-cd", "-td", "-tb", "--mlock", "--no-mmap", "--spec-type"]
    {
        let o = mock(&["run", "-p", "hi", flag, "x"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(o.stdout.is_empty(), "{flag}: no help on stdout");
        assert_eq!(
            err.trim_end(),
            format!("error: {flag} is a llama.cpp flag specrun does not support (see `specrun help` for what it has)")
        );
    }
    // the pair is -P, the prompt -p
    let o = mock(&["run", "-P", "qwen-coder", "-p", "hi", "-n", "2", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn version_completions_and_man_page() {
    let o = Command::cargo_bin("specrun").unwrap().arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && v.starts_with("specrun 0.1.0\nllama.cpp: ") && v.contains("\nbackends: "), "{v}");
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::cargo_bin("specrun").unwrap().args(["completions", shell]).output().unwrap();
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("specrun"), "{shell}");
    }
    let o = Command::cargo_bin("specrun").unwrap().arg("man").output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains(".TH specrun 1"));
}
