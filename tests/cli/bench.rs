//! `specrun bench` end to end on the hidden mock backend (deterministic timings through the
//! mock clock): the table and exports (snapshots), the SVG plot, and `--write-best` on a copy
//! of models.toml.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bench(dir: &Path, extra: &[&str]) -> std::process::Output {
    let config = dir.join("models.toml");
    if !config.exists() {
        std::fs::copy(repo("models.toml"), &config).unwrap();
    }
    Command::cargo_bin("specrun")
        .unwrap()
        .args(["bench", "--mock", "--quiet", "--config"])
        .arg(&config)
        .arg("--prompts")
        .arg(repo("examples/prompts/prompts.jsonl"))
        .args(["-n", "12", "--repeat", "2", "--draft-max", "1,3", "--drafter", "model,hybrid", "--adaptive", "fixed,auto"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn table_and_exports_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = bench(
        d,
        &[
            "--export-csv",
            d.join("r.csv").to_str().unwrap(),
            "--export-markdown",
            d.join("r.md").to_str().unwrap(),
            "--export-json",
            d.join("r.json").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    insta::assert_snapshot!("table", String::from_utf8(out.stdout).unwrap());
    insta::assert_snapshot!("csv", std::fs::read_to_string(d.join("r.csv")).unwrap());
    insta::assert_snapshot!("markdown", std::fs::read_to_string(d.join("r.md")).unwrap());
    // re-rendering the saved results gives the same exports
    let again = Command::cargo_bin("specrun")
        .unwrap()
        .args(["bench", "--from-json"])
        .arg(d.join("r.json"))
        .arg("--export-markdown")
        .arg(d.join("again.md"))
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read(d.join("again.md")).unwrap(), std::fs::read(d.join("r.md")).unwrap());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2);
    for r in rows {
        assert!(r["speedup_min"].as_f64().unwrap() <= r["speedup"].as_f64().unwrap());
        assert!(r["speedup"].as_f64().unwrap() <= r["speedup_max"].as_f64().unwrap());
    }
}

#[test]
fn the_plot_is_an_svg_with_a_line_per_series() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plot.svg");
    let out = bench(dir.path(), &["--plot", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(text.trim_end().ends_with("</svg>"));
    assert_eq!(text.matches("<polyline").count(), 4, "one line per drafter × policy");
    // every element that opens also closes (self-closing or paired)
    let opens = text.matches("<text").count();
    assert_eq!(opens, text.matches("</text>").count());
    assert!(text.contains("stroke-dasharray"), "the break-even line");
}

#[test]
fn write_best_edits_the_models_file_and_keeps_its_comments() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["--write-best"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::read_to_string(repo("models.toml")).unwrap();
    let after = std::fs::read_to_string(dir.path().join("models.toml")).unwrap();
    assert_ne!(before, after);
    for line in before.lines().filter(|l| l.starts_with('#')) {
        assert!(after.contains(line), "comment lost: {line}");
    }
    assert_eq!(after.matches("# tuned by specrun bench").count(), 1);
    let config = specrun::formats::models_toml::Config::parse("models.toml", &after).unwrap();
    let pair = config.pair("qwen-coder").unwrap();
    assert!([1, 3].contains(pair.draft_max.as_ref().unwrap().get_ref()));
    assert!(pair.drafter.is_some() && pair.adaptive.is_some());
}

/// `--parallel 1,3`: every configuration is measured once per N; N = 3 rows are aggregate
/// rates of continuous batching, and on the mock (a decode costs 20 ms a call + 2 ms a token)
/// three sequences in one decode give a higher aggregate target-only rate than one.
#[test]
fn parallel_is_a_bench_dimension_with_aggregate_rates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv = d.join("p.csv");
    let out = bench(d, &["--parallel", "1,3", "--export-csv", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 2 * 2 * 2, "drafter × adaptive × K × N");
    let base =
        |n: &str| -> Vec<f64> { rows.iter().filter(|r| r[col("parallel")] == n).map(|r| r[col("base_tok_s")].parse().unwrap()).collect() };
    let (one, three) = (base("1"), base("3"));
    assert_eq!(one.len(), 8);
    let (lo3, hi1) = (three.iter().copied().fold(f64::INFINITY, f64::min), one.iter().copied().fold(0.0, f64::max));
    assert!(lo3 > 1.5 * hi1, "aggregate target-only rate with 3 in flight {lo3:.1} vs one {hi1:.1}");
    let bad = Command::cargo_bin("specrun").unwrap().args(["bench", "--mock", "--prompts", "x.jsonl", "--parallel", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--parallel must be in [1, 64], got 0"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `--per-prompt`: each prompt's own row in a sweep over the whole file equals the sweep of
/// that prompt alone (one expectation through both paths); the JSON export always has them,
/// in prompt order, by record id; shared decodes (`--parallel` above 1) have none.
#[test]
fn per_prompt_results_equal_benching_each_prompt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |prompts: &Path, json: &Path, extra: &[&str]| {
        let out = Command::cargo_bin("specrun")
            .unwrap()
            .args(["bench", "--mock", "--quiet", "--config"])
            .arg(repo("models.toml"))
            .arg("--prompts")
            .arg(prompts)
            .args(["-n", "12", "--repeat", "2", "--draft-max", "3", "--drafter", "ngram", "--adaptive", "auto", "--export-json"])
            .arg(json)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        (String::from_utf8(out.stdout).unwrap(), v)
    };
    let all = repo("examples/prompts/prompts.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&all).unwrap().lines().map(String::from).collect();
    let md = d.join("all.md");
    let (stdout, whole) = run(&all, &d.join("all.json"), &["--per-prompt", "--parallel", "1,2", "--export-markdown", md.to_str().unwrap()]);
    let rows = whole.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let prompts = rows[0]["prompts"].as_array().unwrap();
    assert!(rows[1].get("prompts").is_none(), "N = 2 shares decodes: no per-prompt rates");
    assert_eq!(prompts.len(), lines.len());
    for (i, (line, p)) in lines.iter().zip(prompts).enumerate() {
        let id = serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(p["id"], id.as_str());
        assert!(stdout.contains(&id), "the terminal table names {id}");
        let one = d.join(format!("p{i}.jsonl"));
        std::fs::write(&one, format!("{line}\n")).unwrap();
        let (_, alone) = run(&one, &d.join(format!("p{i}.json")), &[]);
        let alone = &alone[0];
        for key in ["speedup", "speedup_min", "speedup_max", "spec_tok_s", "base_tok_s", "acceptance_rate", "tokens_per_round"] {
            assert_eq!(p[key], alone[key], "{id}: {key}");
        }
    }
    let markdown = std::fs::read_to_string(&md).unwrap();
    assert_eq!(markdown.matches("| qwen-coder ngram auto K=3 T=0 |").count(), lines.len(), "{markdown}");
}
