//! Hostile but realistic use of the binary (on the mock backend): closed and full streams,
//! output files that are the input, foreign or locked, unbounded inputs, duplicate ids,
//! mismatched resumes, out-of-range settings, Ctrl-C. Each test failed before its fix.

use assert_cmd::cargo::CommandCargoExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("specrun")
}

fn models_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models.toml")
}

fn specrun(args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("specrun").unwrap();
    c.args(args).arg("--config").arg(models_toml());
    c
}

fn run(args: &[&str]) -> Output {
    specrun(args).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run a shell line with `$S` the binary and `$C` the models file; returns (status of the
/// specrun in the pipeline, stderr of the whole line).
fn sh(line: &str) -> (i32, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{line}; echo \"rc=${{PIPESTATUS[0]}}\" >&2"))
        .env("S", bin())
        .env("C", models_toml())
        .output()
        .unwrap();
    let err = stderr(&out);
    let rc = err.lines().rev().find_map(|l| l.strip_prefix("rc=")).and_then(|v| v.parse().ok()).unwrap();
    (rc, err)
}

const TWO: &str = "{\"id\": \"a\", \"prompt\": \"hello\"}\n{\"id\": \"b\", \"prompt\": \"world\"}\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_closed_pipe_ends_quietly_with_success() {
    for line in [
        "$S run --mock --config $C --prompt 'hello world' -n 20 --json | true",
        "$S run --mock --config $C --prompt 'hello world' -n 200 2>&1 | head -c 10 >/dev/null",
        "$S run --mock --config $C --prompt 'hello world' -n 20 --compare | true",
        "$S config path | true",
    ] {
        let (rc, err) = sh(line);
        assert_eq!(rc, 0, "{line}: {err}");
        assert!(!err.contains("panicked") && !err.contains("failed printing"), "{line}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    let line =
        format!("$S batch --mock --config $C {} -o {} --overwrite 2>&1 | true", input.display(), dir.path().join("o.jsonl").display());
    let (rc, err) = sh(&line);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("o.jsonl")).unwrap().lines().count(), 2, "both records");
    let line = format!("$S bench --mock --config $C --prompts {} --repeat 1 --draft-max 1 -n 4 | true", input.display());
    assert_eq!(sh(&line).0, 0);
}

#[test]
fn a_full_or_closed_stdout_is_an_error_not_a_panic() {
    let (rc, err) = sh("$S run --mock --config $C --prompt x -n 5 --json >/dev/full");
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("No space left on device") && !err.contains("panicked"), "{err}");
    let (rc, err) = sh("$S run --mock --config $C --prompt x -n 5 >&-");
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("standard output is closed"), "{err}");
    // /dev/null is fine
    assert_eq!(sh("$S run --mock --config $C --prompt x -n 5 >/dev/null 2>&1").0, 0);
}

#[test]
fn the_output_is_never_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "same.jsonl", TWO);
    std::os::unix::fs::symlink(&input, dir.path().join("link.jsonl")).unwrap();
    for (out, flag) in
        [("same.jsonl", "--resume"), ("./same.jsonl", "--overwrite"), ("link.jsonl", "--overwrite"), ("link.jsonl", "--resume")]
    {
        let o = specrun(&["batch", "--mock", "same.jsonl", "-o", out, flag]).current_dir(dir.path()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{out} {flag}");
        assert!(stderr(&o).contains("is the input file"), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&input).unwrap(), TWO, "the input survived {out} {flag}");
    }
}

#[test]
fn no_output_of_any_command_overwrites_an_input_and_exports_are_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write(dir.path(), "p.jsonl", TWO);
    let prompt = write(dir.path(), "prompt.txt", "hello there");
    let config = write(dir.path(), "c.toml", &std::fs::read_to_string(models_toml()).unwrap());
    std::os::unix::fs::symlink(&prompts, dir.path().join("link.jsonl")).unwrap();
    let p = prompts.to_str().unwrap();
    for (args, needle) in [
        (vec!["bench", "--mock", "--prompts", p, "--export-json", p, "-n", "2"], "--export-json"),
        (vec!["bench", "--mock", "--prompts", p, "--export-csv", "./p.jsonl", "-n", "2"], "--export-csv"),
        (vec!["bench", "--mock", "--prompts", p, "--export-markdown", "link.jsonl", "-n", "2"], "--export-markdown"),
        (vec!["bench", "--mock", "--prompts", p, "--plot", p, "-n", "2"], "--plot"),
        (vec!["run", "--mock", "-f", "prompt.txt", "--trace-rounds", "prompt.txt"], "--trace-rounds"),
    ] {
        let o = specrun(&args).current_dir(dir.path()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle) && stderr(&o).contains("refusing to overwrite an input"), "{args:?}: {}", stderr(&o));
    }
    // the models file given with --config, through its own flag
    let o = Command::cargo_bin("specrun")
        .unwrap()
        .args(["run", "--mock", "--prompt", "x", "--config", "c.toml", "--trace-rounds", "c.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&prompts).unwrap(), TWO);
    assert_eq!(std::fs::read_to_string(&prompt).unwrap(), "hello there");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), std::fs::read_to_string(models_toml()).unwrap());
    // an export is renamed into place whole: no temporary file stays beside it
    let json = dir.path().join("r.json");
    let o = run(&["bench", "--mock", "--prompts", p, "--export-json", json.to_str().unwrap(), "-n", "2", "--draft-max", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&json).unwrap().trim_start().starts_with('['));
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    // and a saved run's exports reach stdout too (one writer for files and `-`)
    let o = run(&["bench", "--mock", "--from-json", json.to_str().unwrap(), "--export-markdown", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.matches("| pair").count() >= 1 && stdout.contains("|---"), "{stdout}");
}

#[test]
fn a_fifo_as_input_is_refused_at_once() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let f = fifo.to_str().unwrap();
    let out = dir.path().join("o.jsonl");
    for args in [
        vec!["batch", "--mock", f, "-o", out.to_str().unwrap()],
        vec!["run", "--mock", "-f", f],
        vec!["bench", "--mock", "--prompts", f],
        vec!["bench", "--mock", "--from-json", f],
        vec!["run", "--mock", "--prompt", "x", "--json-schema-file", f],
    ] {
        let mut child = specrun(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{args:?} hangs on a FIFO");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("not a regular file"), "{args:?}: {err}");
    }
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn resume_never_truncates_a_file_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    let foreign_text = "{\"id\": 1, \"note\": \"my own data\"}\nsecond line\n";
    let foreign = write(dir.path(), "notes.jsonl", foreign_text);
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", foreign.to_str().unwrap(), "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 1 is not a specrun output record"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), foreign_text);
    // a damaged line in the middle of a real output is refused too, not cut away
    let out = dir.path().join("out.jsonl");
    assert!(run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "3"]).status.success());
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.insert_str(text.find('\n').unwrap() + 1, "garbage\n");
    std::fs::write(&out, &text).unwrap();
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "3", "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 2 is not a specrun output record"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn unbounded_and_special_files_are_refused_at_once() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    let out = dir.path().join("o.jsonl");
    for (args, needle) in [
        (vec!["batch", "--mock", "/dev/zero", "-o", out.to_str().unwrap()], "/dev/zero: not a regular file"),
        (vec!["batch", "--mock", input.to_str().unwrap(), "-o", "/dev/full", "--resume"], "/dev/full: not a regular file"),
        (vec!["run", "--mock", "--prompt-file", "/dev/zero"], "--prompt-file /dev/zero: not a regular file"),
        (vec!["bench", "--mock", "--prompts", "/dev/zero"], "--prompts /dev/zero: not a regular file"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
    let o = Command::cargo_bin("specrun").unwrap().args(["run", "--mock", "--prompt", "x", "--config", "/dev/zero"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim_end(), "error: /dev/zero: not a regular file");
    assert!(t0.elapsed() < Duration::from_secs(20), "no input may be read for ever");
}

#[test]
fn duplicate_ids_stop_the_batch_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    // the example: x, x, y, (no id on line 4), 4
    let text = "{\"id\":\"x\",\"prompt\":\"a\"}\n{\"id\":\"x\",\"prompt\":\"b\"}\n{\"id\":\"y\",\"prompt\":\"c\"}\n{\"prompt\":\"d\"}\n{\"id\":4,\"prompt\":\"e\"}\n";
    let input = write(dir.path(), "dup.jsonl", text);
    let out = dir.path().join("o.jsonl");
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 2: duplicate id \"x\" (also line 1)"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing is written");
    // an explicit id equal to another record's implicit one (its line number) clashes too
    let input = write(dir.path(), "dup2.jsonl", "{\"id\":\"x\",\"prompt\":\"a\"}\n{\"prompt\":\"d\"}\n{\"id\":2,\"prompt\":\"e\"}\n");
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(stderr(&o).contains("line 3: duplicate id 2 (also line 2)"), "{}", stderr(&o));
}

#[test]
fn resume_refuses_another_input_or_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    let other = write(dir.path(), "other.jsonl", &TWO.replace("hello", "goodbye"));
    let out = dir.path().join("o.jsonl");
    let (i, o_) = (input.to_str().unwrap(), out.to_str().unwrap());
    assert!(run(&["batch", "--mock", i, "-o", o_, "-n", "4"]).status.success());
    let before = std::fs::read(&out).unwrap();
    let o = run(&["batch", "--mock", other.to_str().unwrap(), "-o", o_, "-n", "4", "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("made from a different input"), "{}", stderr(&o));
    let o = run(&["batch", "--mock", i, "-o", o_, "-n", "4", "--temp", "0.7", "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("it was made with temp = 0.0, this run has temp = 0.699999988079071")
            || stderr(&o).contains("temp = 0.0, this run has temp = 0.7"),
        "{}",
        stderr(&o)
    );
    let o = run(&["batch", "--mock", i, "-o", o_, "-n", "5", "--resume"]);
    assert!(stderr(&o).contains("max_tokens = 4, this run has max_tokens = 5"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), before, "a refused resume changes nothing");
    // threads do not change results: resuming with other threads is fine
    assert!(run(&["batch", "--mock", i, "-o", o_, "-n", "4", "-t", "1", "--resume"]).status.success());
}

#[test]
fn a_second_batch_on_the_same_output_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    let out = dir.path().join("o.jsonl");
    let mut first =
        specrun(&["batch", "--mock", "--mock-delay-ms", "40", "-n", "40", input.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    // wait for the first to hold the file (its settings are written beside it after the lock)
    let t0 = Instant::now();
    let sidecar = specrun::formats::records::sidecar_path(&out);
    while !sidecar.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t1 = Instant::now();
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--overwrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("being written by another specrun batch"), "{}", stderr(&o));
    assert!(t1.elapsed() < Duration::from_secs(10));
    assert!(first.wait().unwrap().success());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 2, "each record once: {text}");
}

#[test]
fn every_numeric_setting_is_bounded_and_sampling_is_validated_everywhere() {
    let t0 = Instant::now();
    let o = run(&[
        "run",
        "--mock",
        "--prompt",
        "a b c a b c a b c a b c",
        "--draft",
        "ngram",
        "--ngram-max",
        "18446744073709551615",
        "-n",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ngram-max must be in [1, 64]"), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(10));
    for (flag, val, needle) in [
        ("-c", "64", "--ctx-size must be in [256,"),
        ("-c", "1000000000", "--ctx-size must be in [256,"),
        ("--draft-max", "100000", "--draft-max must be at most 1024"),
        ("--temp", "-1", "--temp must be a number >= 0, got -1"),
        ("--temp", "nan", "--temp must be a number >= 0, got NaN"),
        ("--top-p", "0", "--top-p must be in (0, 1], got 0"),
        ("-t", "0", "--threads must be in [1, 1024], got 0"),
    ] {
        let o = run(&["run", "--mock", "--prompt", "x", flag, val]);
        assert_eq!(o.status.code(), Some(2), "{flag} {val}");
        assert!(stderr(&o).contains(needle), "{flag} {val}: {}", stderr(&o));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.jsonl", TWO);
    for temp in ["-1", "nan", "inf"] {
        let t0 = Instant::now();
        let o = run(&["bench", "--mock", "--prompts", input.to_str().unwrap(), "--temp", temp, "--repeat", "1"]);
        assert_eq!(o.status.code(), Some(2), "bench --temp {temp}");
        assert!(stderr(&o).contains("--temp must be a number >= 0"), "{}", stderr(&o));
        assert!(o.stdout.is_empty(), "nothing measured");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    // a record's own bad value fails that record alone, naming its line
    let input = write(dir.path(), "rec.jsonl", "{\"id\":1,\"prompt\":\"a\",\"temperature\":-2}\n{\"id\":2,\"prompt\":\"b\"}\n");
    let out = dir.path().join("o.jsonl");
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "3"]);
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\"error\":\"line 1: temperature must be a number >= 0, got -2\""), "{text}");
}

fn interrupt(pid: u32) {
    assert!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
}

#[test]
fn ctrl_c_stops_at_the_next_round_and_writes_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    // a short record, then a long one (300 rounds of 30 ms)
    let input = write(
        dir.path(),
        "in.jsonl",
        "{\"id\":\"short\",\"prompt\":\"a\",\"max_tokens\":2}\n{\"id\":\"long\",\"prompt\":\"b\",\"max_tokens\":300}\n",
    );
    let out = dir.path().join("o.jsonl");
    let child = specrun(&["batch", "--mock", "--mock-delay-ms", "30", "--no-draft", input.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 1 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    interrupt(child.id());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(t1.elapsed() < Duration::from_secs(3), "stopped at the next round, not at the end of the record ({:?})", t1.elapsed());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1, "the finished record only: {text}");
    assert!(text.ends_with('\n'));
    assert!(stderr(&o).contains("nothing partial was written"), "{}", stderr(&o));
    // and it resumes where it stopped
    let o = run(&["batch", "--mock", "--no-draft", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    // every decode takes 2 s: the first Ctrl-C would wait for the round to end
    let mut child = specrun(&["run", "--mock", "--mock-delay-ms", "2000", "--prompt", "x", "-n", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    interrupt(child.id());
    std::thread::sleep(Duration::from_millis(100));
    interrupt(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
}

#[test]
fn messages_are_one_line_and_conventions_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    // .txt input is detected by its extension, as bench does
    let txt = write(dir.path(), "prompts.txt", "first prompt\nsecond prompt\n");
    let out = dir.path().join("o.jsonl");
    let o = run(&["batch", "--mock", txt.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // a UTF-8 byte-order mark does not cost line 1 its id
    let bom = write(dir.path(), "bom.jsonl", "\u{feff}{\"id\": \"first\", \"prompt\": \"x\"}\n");
    let o = run(&["batch", "--mock", bom.to_str().unwrap(), "-o", "-", "-n", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.lines().next().unwrap().starts_with("{\"id\":\"first\""), "-o - is stdout: {stdout}");
    assert!(!dir.path().join("-").exists());
    // a duplicate TOML table is one line
    let f = write(dir.path(), "dup.toml", "[models.a]\npath = \"a.gguf\"\n[models.a]\npath = \"b.gguf\"\n");
    let o = Command::cargo_bin("specrun").unwrap().args(["run", "--mock", "--prompt", "x", "--config"]).arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("dup.toml:3:"), "{}", stderr(&o));
    // --write-best with -m is refused before measuring anything
    let input = write(dir.path(), "in.jsonl", TWO);
    let o = Command::cargo_bin("specrun")
        .unwrap()
        .args(["bench", "--mock", "--write-best", "-m", "x.gguf", "--prompts"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--write-best needs pairs from a models file"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    // --resume needs a file
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", "-", "--resume"]);
    assert!(stderr(&o).contains("--resume needs an output file"), "{}", stderr(&o));
}

/// `-m ./x.gguf` is the working directory's file, as in every CLI (the models cache is for bare
/// names); a device is "not a regular file", not "not found".
#[cfg(feature = "llama")]
#[test]
fn model_paths_on_the_command_line_are_read_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let o = specrun(&["run", "-m", "./absent.gguf", "--draft", "ngram", "--prompt", "x"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let cwd = dir.path().canonicalize().unwrap();
    assert!(stderr(&o).contains(&format!("model file not found: {}", cwd.join("./absent.gguf").display())), "{}", stderr(&o));
    let o = run(&["run", "-m", "/dev/zero", "--draft", "ngram", "--prompt", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("model file is not a regular file: /dev/zero"), "{}", stderr(&o));
}

/// `calibrate --show` tells a corrupt stored calibration (and where it is) from none stored.
#[test]
fn a_corrupt_stored_calibration_is_named_as_such() {
    let cache = tempfile::tempdir().unwrap();
    let show = || specrun(&["calibrate", "--mock", "--show"]).env("SPECRUN_CACHE", cache.path()).output().unwrap();
    let o = show();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no stored calibration"), "{}", stderr(&o));
    let o = specrun(&["calibrate", "--mock", "--repeat", "1"]).env("SPECRUN_CACHE", cache.path()).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = cache.path().join("calibration");
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    assert!(show().status.success());
    std::fs::write(&file, "{ not json").unwrap();
    let o = show();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("corrupt") && stderr(&o).contains(&file.display().to_string()), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
}

/// A prompt too long for the context is refused before it is tokenized, by its size in bytes:
/// a 40 MB one-line prompt is one line at once, not seconds of tokenizing and gigabytes.
/// The peak resident memory of a finished child, in bytes (the kernel's count for it).
#[cfg(target_os = "linux")]
#[allow(clippy::zombie_processes, reason = "wait4 reaps the child")]
fn run_measuring_peak(cmd: &mut Command) -> (i32, u64) {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, writing into locals that live across the call
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

/// A batch input is read as a stream: a file of a million bad records (the case was
/// 32 MB at 2.8 GB resident) runs in the memory of a small one, and every line gets its
/// error record.
#[cfg(target_os = "linux")]
#[test]
fn a_million_bad_records_are_read_as_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000;
    let input = write(dir.path(), "bad.jsonl", &"{\"x\": 1}\n".repeat(n));
    let out = dir.path().join("o.jsonl");
    let (code, peak) = run_measuring_peak(&mut specrun(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap()]));
    assert_eq!(code, 1, "every record failed");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(&out).unwrap())).count();
    assert_eq!(lines, n);
    let small = write(dir.path(), "small.jsonl", "{\"x\": 1}\n");
    let (_, base) =
        run_measuring_peak(&mut specrun(&["batch", "--mock", small.to_str().unwrap(), "-o", dir.path().join("s.jsonl").to_str().unwrap()]));
    // 16 bytes of id fingerprint a record (in a hash set), nothing else that grows
    assert!(peak < base + (80 << 20), "{} MiB resident for a million bad records, {} MiB for one", peak >> 20, base >> 20);
}

#[test]
fn a_huge_prompt_is_refused_before_tokenizing() {
    let dir = tempfile::tempdir().unwrap();
    let big = write(dir.path(), "big.txt", &"word ".repeat(8 << 20));
    let t0 = Instant::now();
    let o = run(&["run", "--mock", "-f", big.to_str().unwrap(), "-c", "1024"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("more than the context's 1024 tokens can hold"), "{}", stderr(&o));
    let line = format!("{{\"id\": 1, \"prompt\": \"{}\"}}\n{{\"id\": 2, \"prompt\": \"hi\"}}\n", "word ".repeat(4 << 20));
    let input = write(dir.path(), "in.jsonl", &line);
    let out = dir.path().join("o.jsonl");
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-c", "1024", "-n", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("line 1: the prompt has") && text.contains("\"id\":2,\"text\""), "{}", &text[..text.len().min(400)]);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// One validation path for records and requests: a role the server refuses, or max_tokens 0,
/// is an error record in a batch too; a resume refuses an output holding ids twice or ids the
/// input does not have; calibrate says a cache it cannot write before measuring.
#[test]
fn records_resumes_and_caches_are_checked_like_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "in.jsonl",
        "{\"id\": \"a\", \"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}\n{\"id\": \"b\", \"prompt\": \"x\", \"max_tokens\": 0}\n{\"id\": \"c\", \"prompt\": \"x\"}\n",
    );
    let out = dir.path().join("o.jsonl");
    let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("line 1: unsupported role \\\"wizard\\\"") && text.contains("line 2: max_tokens must be at least 1"), "{text}");
    // a record repeated in the output, or one the input lacks: refused, the file untouched
    let lines: Vec<&str> = text.lines().collect();
    for edited in [format!("{text}{}\n", lines[2]), format!("{text}{}\n", lines[2].replace("\"id\":\"c\"", "\"id\":\"zz\""))] {
        std::fs::write(&out, &edited).unwrap();
        let o = run(&["batch", "--mock", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-n", "3", "--resume"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("repeats id") || stderr(&o).contains("not in the input"), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), edited);
    }
    // a cache that cannot be written (here: a file where the directory should be) is said
    // before anything is measured
    let cache = write(dir.path(), "not-a-dir", "");
    let o = specrun(&["calibrate", "--mock"]).env("SPECRUN_CACHE", &cache).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot create the calibration cache"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("measur"), "{}", stderr(&o));
}
