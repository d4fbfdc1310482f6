//! `specrun batch` end to end on the hidden mock backend: mixed records, txt input, resuming
//! after a crash, and the one-line messages for bad input.

use assert_cmd::Command;
use specrun::formats::records::{ErrorRecord, Header, OkRecord, OutputRecord};
use std::path::{Path, PathBuf};

fn models_toml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models.toml")
}

fn batch(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("specrun")
        .unwrap()
        .args(["batch", "--mock", "--quiet", "--config"])
        .arg(models_toml())
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

/// The settings beside the output, and every line of it parses into exactly one of the two
/// record types (unknown fields are errors): the output holds records only.
fn records(output: &Path) -> Vec<OutputRecord> {
    let sidecar = std::fs::read_to_string(specrun::formats::records::sidecar_path(output)).unwrap();
    let header: Header = serde_json::from_str(&sidecar).unwrap();
    assert_eq!(header.specrun_batch.input_sha256.len(), 64);
    let text = std::fs::read_to_string(output).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str::<OkRecord>(l)
                .map(OutputRecord::Ok)
                .or_else(|_| serde_json::from_str::<ErrorRecord>(l).map(OutputRecord::Error))
                .unwrap_or_else(|e| panic!("not a record ({e}): {l}"))
        })
        .collect()
}

const MIXED: &str = r#"{"id": "a", "prompt": "hello there", "max_tokens": 12}
{"id": "b", "promt": "typo"}
{not json at all

{"id": "c", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0.8, "seed": 4}
{"id": "d", "prompt": 17}
{"prompt": "no id", "max_tokens": 5, "stop": ["q "]}
"#;

#[test]
fn mixed_records_give_one_output_each_in_order_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, MIXED).unwrap();
    let out = batch(&input, &output, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = records(&output);
    let ids: Vec<String> = recs.iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids, ["\"a\"", "\"b\"", "3", "\"c\"", "\"d\"", "7"]);
    let errors: Vec<&str> = recs
        .iter()
        .filter_map(|r| match r {
            OutputRecord::Error(e) => Some(e.error.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(errors[0].starts_with("line 2, column 19: unknown field `promt`"), "{}", errors[0]);
    assert!(errors[1].starts_with("line 3, column "), "{}", errors[1]);
    assert!(errors[2].starts_with("line 6, column ") && errors[2].contains("invalid type"), "{}", errors[2]);
    let OutputRecord::Ok(a) = &recs[0] else { panic!("a failed") };
    assert_eq!((a.n_generated, a.finish_reason.as_str()), (12, "length"));
    let OutputRecord::Ok(last) = &recs[5] else { panic!("7 failed") };
    assert!(!last.text.contains("q "), "stop string kept: {:?}", last.text);
}

#[test]
fn all_good_records_exit_0_and_txt_input_takes_one_prompt_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.jsonl"));
    std::fs::write(&input, "first prompt\n\nsecond prompt\n").unwrap();
    let out = batch(&input, &output, &["--input-format", "txt", "-n", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = records(&output).iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids, ["1", "3"]);
}

#[test]
fn resume_after_a_crash_gives_the_uninterrupted_output_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text: String = (0..6).map(|i| format!("{{\"id\": {i}, \"prompt\": \"prompt number {i}\", \"max_tokens\": {}}}\n", 5 + i)).collect();
    std::fs::write(&input, text).unwrap();
    let whole = dir.path().join("whole.jsonl");
    assert!(batch(&input, &whole, &[]).status.success());

    let cut = dir.path().join("cut.jsonl");
    let crashed = batch(&input, &cut, &["--debug-crash-after", "3"]);
    assert!(!crashed.status.success(), "the simulated crash must abort");
    let partial = std::fs::read_to_string(&cut).unwrap();
    assert_eq!(partial.lines().count(), 4, "three records and a cut-off line: {partial}");
    assert!(!partial.ends_with('\n'));

    let refused = batch(&input, &cut, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --resume"));

    let resumed = batch(&input, &cut, &["--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("dropping a cut-off record"));
    assert_eq!(std::fs::read(&cut).unwrap(), std::fs::read(&whole).unwrap());

    // resuming a finished file does nothing
    assert!(batch(&input, &cut, &["--resume"]).status.success());
    assert_eq!(std::fs::read(&cut).unwrap(), std::fs::read(&whole).unwrap());
}

#[test]
fn fatal_input_problems_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("empty.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input, "\n\n").unwrap();
    let out = batch(&input, &output, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1);
    assert!(err.contains("empty.jsonl: no records"), "{err}");
    let out = batch(&dir.path().join("missing.jsonl"), &output, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl: cannot read"));
}

#[test]
fn shards_split_the_input_and_the_check_finds_gaps_and_doubles() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text: String = (0..7).map(|i| format!("{{\"id\": \"r{i}\", \"prompt\": \"prompt {i}\", \"max_tokens\": 3}}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let outs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("shard{i}.jsonl"))).collect();
    for (i, o) in outs.iter().enumerate() {
        let shard = format!("{i}/3");
        let out = batch(&input, o, &["--shard", &shard]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ids = |o: &Path| records(o).iter().map(|r| r.id().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&outs[0]), ["\"r0\"", "\"r3\"", "\"r6\""]);
    assert_eq!(ids(&outs[2]), ["\"r2\"", "\"r5\""]);
    // a shard resumes on its own: its header names the shard
    assert!(batch(&input, &outs[1], &["--shard", "1/3", "--resume"]).status.success());
    let refused = batch(&input, &outs[1], &["--shard", "2/3", "--resume"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("shard"), "{}", String::from_utf8_lossy(&refused.stderr));
    let check = |files: &[&PathBuf]| Command::cargo_bin("specrun").unwrap().arg("shards").arg(&input).args(files).output().unwrap();
    let ok = check(&[&outs[0], &outs[1], &outs[2]]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("complete: 7 records in 3 outputs"));
    let gap = check(&[&outs[0], &outs[2]]);
    assert_eq!(gap.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gap.stdout).contains("missing: "), "{}", String::from_utf8_lossy(&gap.stdout));
    let twice = check(&[&outs[0], &outs[1], &outs[2], &outs[0]]);
    assert!(String::from_utf8_lossy(&twice.stdout).contains("more than once: "));
    // shards made with different settings are not one run's output
    let other = dir.path().join("other.jsonl");
    assert!(batch(&input, &other, &["--shard", "1/3", "--temp", "0.7"]).status.success());
    let mixed = check(&[&outs[0], &other, &outs[2]]);
    assert_eq!(mixed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&mixed.stdout).contains("were made with different settings"),
        "{}",
        String::from_utf8_lossy(&mixed.stdout)
    );
    // bad shard specs are refused by the parser
    let bad = batch(&input, &dir.path().join("x.jsonl"), &["--shard", "3/3"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_draft_cache_changes_timing_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // the same prompt three times: later records can draft from earlier outputs
    let text: String = (0..3).map(|i| format!("{{\"id\": {i}, \"prompt\": \"tell me a story\", \"max_tokens\": 40}}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let (plain, cached) = (dir.path().join("plain.jsonl"), dir.path().join("cached.jsonl"));
    assert!(batch(&input, &plain, &["--draft", "ngram", "--adaptive", "fixed"]).status.success());
    let out = batch(&input, &cached, &["--draft", "ngram", "--adaptive", "fixed", "--draft-cache"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (records(&plain), records(&cached));
    let ok = |r: &OutputRecord| match r {
        OutputRecord::Ok(r) => r.clone(),
        OutputRecord::Error(e) => panic!("{e:?}"),
    };
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(ok(x).text, ok(y).text, "the cache may only change timing");
    }
    // the first record has nothing cached; the later ones draft from it
    assert_eq!(ok(&a[0]).n_accepted, ok(&b[0]).n_accepted);
    assert!(ok(&b[2]).n_accepted > ok(&a[2]).n_accepted, "{:?} vs {:?}", ok(&b[2]), ok(&a[2]));
}

/// Ten records of mixed lengths, greedy, and two sampled ones with their own seeds (fixed
/// draft length: see the README on sampling and --parallel).
fn mixed_input(dir: &Path) -> PathBuf {
    let input = dir.join("mixed.jsonl");
    let mut text = String::new();
    for i in 0..10 {
        let extra = if i % 5 == 4 { ", \"temperature\": 0.8, \"seed\": 9" } else { "" };
        text += &format!("{{\"id\": \"m{i}\", \"prompt\": \"record {i} says a b a b a b\", \"max_tokens\": {}{extra}}}\n", 4 + 9 * (i % 4));
    }
    text += "{\"id\": \"bad\", \"promt\": \"typo\"}\n";
    std::fs::write(&input, text).unwrap();
    input
}

#[test]
fn parallel_records_give_the_same_file_as_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let input = mixed_input(dir.path());
    let one = dir.path().join("one.jsonl");
    let args = ["--draft", "ngram", "--adaptive", "fixed", "--draft-max", "3"];
    assert_eq!(batch(&input, &one, &args).status.code(), Some(1), "one bad record");
    // prompts read between rounds, and inside them a few tokens a round; with a slot's prompt
    // cache (the records share their first tokens)
    let cases = [
        ("2", "0", "off"),
        ("3", "0", "off"),
        ("4", "0", "off"),
        ("3", "4", "off"),
        ("4", "256", "off"),
        ("2", "0", "on"),
        ("3", "4", "on"),
    ];
    for (n, chunk, cache) in cases {
        let many = dir.path().join(format!("p{n}-{chunk}-{cache}.jsonl"));
        let out = batch(&input, &many, &[&args[..], &["--parallel", n, "--prefill-chunk", chunk, "--prompt-cache", cache]].concat());
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let strip = |p: &Path| {
            records(p)
                .into_iter()
                .map(|r| match r {
                    OutputRecord::Ok(r) => (r.id, r.text, r.finish_reason, r.n_generated),
                    OutputRecord::Error(e) => (e.id, e.error, String::new(), 0),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&many), strip(&one), "--parallel {n} --prefill-chunk {chunk} --prompt-cache {cache}");
    }
    // greedy records with the cost-aware policy too
    let auto_one = dir.path().join("auto1.jsonl");
    let auto_many = dir.path().join("auto4.jsonl");
    let greedy = dir.path().join("greedy.jsonl");
    let text: String =
        std::fs::read_to_string(&input).unwrap().lines().filter(|l| !l.contains("temperature")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&greedy, text).unwrap();
    batch(&greedy, &auto_one, &[]);
    batch(&greedy, &auto_many, &["--parallel", "4"]);
    let texts = |p: &Path| {
        records(p)
            .into_iter()
            .map(|r| match r {
                OutputRecord::Ok(r) => r.text,
                OutputRecord::Error(e) => e.error,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&auto_many), texts(&auto_one));
}

#[test]
fn a_killed_parallel_batch_resumes_to_the_one_at_a_time_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = mixed_input(dir.path());
    let args = ["--draft", "ngram", "--adaptive", "fixed", "--draft-max", "3"];
    let one = dir.path().join("one.jsonl");
    batch(&input, &one, &args);
    let out = dir.path().join("killed.jsonl");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("specrun"))
        .args(["batch", "--mock", "--quiet", "--config"])
        .arg(models_toml())
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(args)
        .args(["--parallel", "3", "--mock-delay-ms", "15"])
        .spawn()
        .unwrap();
    // kill it once some records are written
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 4 && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(partial < 12, "killed before the end: {partial} lines");
    let resumed = batch(&input, &out, &[&args[..], &["--parallel", "3", "--resume"]].concat());
    assert_eq!(resumed.status.code(), Some(1), "{}", String::from_utf8_lossy(&resumed.stderr));
    let strip = |p: &Path| {
        records(p)
            .into_iter()
            .map(|r| match r {
                OutputRecord::Ok(r) => (r.id, r.text),
                OutputRecord::Error(e) => (e.id, e.error),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&out), strip(&one));
}

const OPENAI_BATCH: &str = r#"{"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}], "max_tokens": 7, "metadata": {"k": "v"}}}
{"custom_id": "text-2", "method": "POST", "url": "/v1/completions", "body": {"model": "x", "prompt": "def f(", "max_tokens": 5, "temperature": 0.7, "seed": 3}}
{"custom_id": "emb-3", "method": "POST", "url": "/v1/embeddings", "body": {"model": "x", "input": "hi"}}
{"custom_id": "bad-4", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}}
{"custom_id": "json-5", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "a json object"}], "max_tokens": 40, "response_format": {"type": "json_object"}}}
"#;

/// An OpenAI Batch API input file is recognised by its `custom_id`s and answered line for
/// line in the Batch API's output format; bad lines are 400 responses naming the field.
#[test]
fn openai_batch_files_are_read_and_answered_in_their_format() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("requests.jsonl"), dir.path().join("results.jsonl"));
    std::fs::write(&input, OPENAI_BATCH).unwrap();
    let out = batch(&input, &output, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "records only: {text}");
    let ids: Vec<&str> = lines.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["chat-1", "text-2", "emb-3", "bad-4", "json-5"]);
    for l in &lines {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"), "{l}");
        assert!(l["error"].is_null());
        assert!(l["response"]["request_id"].is_string());
    }
    let chat = &lines[0]["response"];
    assert_eq!(chat["status_code"], 200);
    assert_eq!(chat["body"]["object"], "chat.completion");
    assert!(chat["body"]["choices"][0]["message"]["content"].is_string());
    assert_eq!(chat["body"]["usage"]["completion_tokens"], 7);
    assert_eq!(lines[1]["response"]["body"]["object"], "text_completion");
    assert!(lines[1]["response"]["body"]["choices"][0]["text"].is_string());
    let emb = &lines[2]["response"];
    assert_eq!(emb["status_code"], 400);
    assert!(emb["body"]["error"]["message"].as_str().unwrap().contains("line 3: url \"/v1/embeddings\" is not supported"), "{emb}");
    assert!(lines[3]["response"]["body"]["error"]["message"].as_str().unwrap().contains("line 4: body.max_tokens"), "{}", lines[3]);
    let json = lines[4]["response"]["body"]["choices"][0]["message"]["content"].as_str().unwrap();
    let finish = lines[4]["response"]["body"]["choices"][0]["finish_reason"].as_str().unwrap();
    if finish == "stop" {
        assert!(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json).is_ok(), "{json}");
    }
    // resumable like any output: a finished file resumes to itself (nothing runs: exit 0)
    let before = std::fs::read(&output).unwrap();
    assert_eq!(batch(&input, &output, &["--resume"]).status.code(), Some(0));
    assert_eq!(std::fs::read(&output).unwrap(), before);
}

/// OpenAI batch lines with tools: a demanded call is answered as `tool_calls` (the arguments
/// follow the tool's schema), with `--parallel` as one at a time.
#[test]
fn openai_batch_lines_with_tools_are_answered_with_calls() {
    let dir = tempfile::tempdir().unwrap();
    let tools = r#"[{"type": "function", "function": {"name": "set_light", "parameters": {"type": "object", "properties": {"room": {"enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}}, "required": ["room", "on"], "additionalProperties": false}}}]"#;
    let text: String = (0..3)
        .map(|i| {
            format!(
                "{{\"custom_id\": \"t{i}\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {{\"messages\": [{{\"role\": \"user\", \"content\": \"lights {i}\"}}], \"tools\": {tools}, \"tool_choice\": \"required\", \"parallel_tool_calls\": false, \"max_tokens\": 400}}}}\n"
            )
        })
        .collect();
    let input = dir.path().join("tools.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut answers = Vec::new();
    for (name, extra) in [("one.jsonl", vec![]), ("par.jsonl", vec!["--parallel", "2"])] {
        let output = dir.path().join(name);
        let out = batch(&input, &output, &extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        for l in &lines {
            let choice = &l["response"]["body"]["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls", "{l}");
            let call = &choice["message"]["tool_calls"][0];
            assert_eq!(call["function"]["name"], "set_light", "{l}");
            let args: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(args["on"].is_boolean() && (args["room"] == "kitchen" || args["room"] == "hall"), "{args}");
        }
        answers.push(
            lines.iter().map(|l| l["response"]["body"]["choices"][0]["message"]["tool_calls"][0]["function"].clone()).collect::<Vec<_>>(),
        );
    }
    assert_eq!(answers[0], answers[1], "the same calls one at a time and in parallel");
}

#[test]
fn an_openai_batch_resumes_after_a_crash_to_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    let text: String = (0..5)
        .map(|i| format!("{{\"custom_id\": \"r{i}\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": {{\"prompt\": \"p {i}\", \"max_tokens\": {}}}}}\n", 4 + i))
        .collect();
    std::fs::write(&input, text).unwrap();
    let whole = dir.path().join("whole.jsonl");
    assert!(batch(&input, &whole, &[]).status.success());
    let cut = dir.path().join("cut.jsonl");
    assert!(!batch(&input, &cut, &["--debug-crash-after", "2"]).status.success());
    assert!(batch(&input, &cut, &["--resume"]).status.success());
    // the same answers; ids and timestamps are per run
    let strip = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::json!([v["custom_id"], v["response"]["body"]["choices"], v["response"]["body"]["usage"]["completion_tokens"]])
            })
            .collect()
    };
    assert_eq!(strip(&cut), strip(&whole));
}

/// Records that share an instruction restore it from the prefix cache (one at a time and in
/// parallel), with the texts of reading every prompt whole; `--no-prefix-cache` reads them all.
#[test]
fn records_sharing_an_instruction_read_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let instruction = "You rewrite sentences in the house style, one line, no preamble. ".repeat(4);
    let text: String = (0..6)
        .map(|i| {
            serde_json::json!({"id": i, "messages": [{"role": "system", "content": instruction}, {"role": "user", "content": format!("sentence {i}")}], "max_tokens": 6})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = Command::cargo_bin("specrun")
            .unwrap()
            .args(["batch", "--mock", "--config"])
            .arg(models_toml())
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (records(&out), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (plain, stderr) = run("plain.jsonl", &["--no-prefix-cache"]);
    assert!(!stderr.contains("restored from the prefix cache"), "{stderr}");
    for (name, extra) in [("seq.jsonl", &[][..]), ("par.jsonl", &["--parallel", "2"][..])] {
        let (recs, stderr) = run(name, extra);
        let texts = |r: &[OutputRecord]| {
            r.iter().map(|r| if let OutputRecord::Ok(o) = r { o.text.clone() } else { panic!("{r:?}") }).collect::<Vec<_>>()
        };
        assert_eq!(texts(&recs), texts(&plain), "{extra:?}");
        assert!(stderr.contains("restored from the prefix cache"), "{extra:?}: {stderr}");
    }
}

/// `batch --trace-rounds FILE`: one JSON line per round of every record, each with its
/// record's id, adding up to what the record reports; refused with several records in flight,
/// with one line naming the flag.
#[test]
fn the_round_trace_of_a_batch_names_each_rounds_record_and_adds_up_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output, trace) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"), dir.path().join("rounds.jsonl"));
    std::fs::write(
        &input,
        "{\"id\": \"first\", \"prompt\": \"the cat sat on the mat and the cat sat on the\", \"max_tokens\": 30}\n\
         {\"id\": 2, \"prompt\": \"one two three one two three one two\", \"max_tokens\": 20}\n",
    )
    .unwrap();
    let out = batch(&input, &output, &["--draft", "ngram", "--adaptive", "fixed", "--trace-rounds", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&trace).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    for rec in records(&output) {
        let OutputRecord::Ok(r) = rec else { panic!("an error record: {rec:?}") };
        let mine: Vec<_> = lines.iter().filter(|l| l["id"] == r.id).collect();
        // every round but the first token's, which came with the prompt
        let emitted: u64 = mine.iter().map(|l| l["n_emitted"].as_u64().unwrap()).sum();
        assert_eq!(emitted as usize + 1, r.n_generated, "record {}", r.id);
        let drafted: u64 = mine.iter().map(|l| l["n_drafted"].as_u64().unwrap()).sum();
        assert_eq!(drafted as usize, r.n_drafted, "record {}", r.id);
        assert!(!mine.is_empty());
    }
    assert!(lines.iter().all(|l| l["id"] == "first" || l["id"] == 2), "every line names its record");
    // several records in flight share rounds: refused by name, nothing written
    let other = dir.path().join("other.jsonl");
    let out = batch(&input, &other, &["--parallel", "2", "--trace-rounds", trace.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--trace-rounds") && err.contains("--parallel 1"), "{err}");
    assert!(!other.exists(), "nothing written");
    // never onto the run's own files
    let before = std::fs::read(&input).unwrap();
    let settings = specrun::formats::records::sidecar_path(&other);
    for onto in [&input, &other, &settings] {
        let out = batch(&input, &other, &["--trace-rounds", onto.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("--trace-rounds") && err.contains("refusing"), "{err}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(!other.exists() && !settings.exists(), "nothing written");
}

/// A grammar that fails while generating (llguidance's lexer past its limits) is that record's
/// error, with the text it wrote; the records around it, in flight beside it or after it, run.
#[test]
fn a_grammar_that_fails_mid_output_is_its_records_error_with_the_text_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 6}\n",
            "{\"id\": \"b\", \"prompt\": \"y\", \"max_tokens\": 30, \"regex\": \"a{1000}{1000}\"}\n",
            "{\"id\": \"c\", \"prompt\": \"z\", \"max_tokens\": 6, \"regex\": \"[0-9]{3}\"}\n",
        ),
    )
    .unwrap();
    for parallel in ["1", "3"] {
        let out = dir.path().join(format!("out-{parallel}.jsonl"));
        let o = batch(&input, &out, &["--parallel", parallel]);
        assert_eq!(o.status.code(), Some(1), "--parallel {parallel}: {}", String::from_utf8_lossy(&o.stderr));
        let recs = records(&out);
        assert_eq!(recs.len(), 3, "--parallel {parallel}");
        let OutputRecord::Error(e) = &recs[1] else { panic!("--parallel {parallel}: {:?}", recs[1]) };
        assert!(e.error.starts_with("line 2: ") && e.error.contains("too many"), "{}", e.error);
        assert!(e.text.as_deref().is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b == b'a')), "{e:?}");
        assert!(matches!(&recs[0], OutputRecord::Ok(r) if r.n_generated == 6), "{:?}", recs[0]);
        assert!(
            matches!(&recs[2], OutputRecord::Ok(r) if r.text.len() == 3 && r.text.bytes().all(|b| b.is_ascii_digit())),
            "{:?}",
            recs[2]
        );
    }
}
