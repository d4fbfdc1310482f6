//! `--deterministic` on the real Qwen pair, in a test binary of its own: ggml reads its
//! tiled-matmul switch once per process, so the batch-invariant target must be the first model
//! this process decodes with. Ignored unless asked for (`--include-ignored`, as
//! `scripts/test.sh` does); a missing model fails them.
#![cfg(feature = "llama")]

#[path = "support/models.rs"]
mod models;

use models::{last_row, model_path, require_models};
use specrun::backend::llama::{ContextSettings, LlamaRunner, LoadSettings, LoadedModel};
use specrun::core::control::AdaptiveMode;
use specrun::core::draft::{ModelDrafter, NoDraft};
use specrun::core::engine::{Engine, GenConfig};
use specrun::core::mock::MockClock;

use specrun::core::draft::{HybridDrafter, NgramDrafter};
use specrun::settings::{FlashAttn, KvType};
use std::path::PathBuf;

const DRAFT: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const TARGET: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// One test at a time: two cores, and each test loads the pair.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn context(m: &LoadedModel) -> LlamaRunner<'_> {
    // as `--deterministic` sets up the target: flash attention over a quantized cache
    let mut s = ContextSettings::new(2048, 512, 2, 1);
    s.flash_attn = FlashAttn::On;
    (s.type_k, s.type_v) = (KvType::Q8_0, KvType::Q8_0);
    m.context(s).unwrap()
}

fn fidelity_prompts(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/bench/prompts-fidelity.jsonl")).unwrap();
    text.lines().take(n).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string()).collect()
}

/// A batch-invariant target gives a token the same logits, bit for bit, whether it is decoded
/// alone or as the last of 2, 4, 8 or 16 (the default build differs by 0.4 there); so greedy
/// speculation, with a draft model or n-grams, is target-only greedy decoding token for token,
/// with no near-tie exception.
#[test]
#[ignore = "needs models: scripts/fetch_models.py all"]
fn a_batch_invariant_target_gives_target_only_greedy_output_exactly() {
    let _g = serial();
    let (t, d) = (model_path(TARGET), model_path(DRAFT));
    let target_model = LoadedModel::load_on(&t, &LoadSettings { batch_invariant: true, ..LoadSettings::default() }).unwrap();
    let draft_model = LoadedModel::load(&d, 0).unwrap();
    let mut target = context(&target_model);
    let prompts = fidelity_prompts(4);
    for p in &prompts[..3] {
        let tokens = target_model.tokenize(p);
        for tail in [2, 4, 8, 16] {
            let (one, batch) = (last_row(&mut target, &tokens, tail, false), last_row(&mut target, &tokens, tail, true));
            assert!(one.iter().zip(&batch).all(|(a, b)| a.to_bits() == b.to_bits()), "tail {tail}: rows differ for {p:?}");
        }
    }
    let clock = MockClock::new();
    for p in &prompts {
        let tokens = target_model.tokenize(p);
        let config = GenConfig { max_tokens: 32, draft_max: 8, adaptive: AdaptiveMode::Fixed, ..GenConfig::default() };
        let mut plain_engine = Engine::new(&mut target, NoDraft, config.clone());
        let mut plain = plain_engine.start(0, tokens.clone(), &clock).unwrap();
        plain_engine.generate(&mut plain, &clock, |_| {}).unwrap();
        let drafter = HybridDrafter { ngram: NgramDrafter::default(), model: ModelDrafter::new(context(&draft_model)) };
        let mut spec_engine = Engine::new(&mut target, drafter, config);
        let mut spec = spec_engine.start(0, tokens.clone(), &clock).unwrap();
        spec_engine.generate(&mut spec, &clock, |_| {}).unwrap();
        assert!(spec.stats.n_drafted > 0, "nothing was drafted for {p:?}");
        assert_eq!(spec.generated(), plain.generated(), "{p:?}");
    }
}

fn specrun(args: &[&str]) -> std::process::Output {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("specrun"))
        .args(args)
        .arg("--config")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models.toml"))
        .output()
        .unwrap()
}

fn texts(output: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].to_string(), v["text"].as_str().unwrap_or_else(|| panic!("not ok: {l}")).to_string())
        })
        .collect()
}

/// With `--deterministic`, a batch's texts do not depend on how many records share a decode
/// nor on the prefix cache: greedy and seeded sampling, one record at a time or three in
/// flight (the second and third share the first's instruction cells as it runs), the cache
/// on or off, give the same texts for records that share an instruction.
#[test]
#[ignore = "needs models: scripts/fetch_models.py all"]
fn deterministic_batches_give_one_text_per_record_at_any_load() {
    let _g = serial();
    require_models(&[TARGET, DRAFT]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let instruction = "You are a careful assistant. Answer in one short sentence, without lists, and never repeat the question.";
    let questions = ["What is a hash map?", "Why do CPUs have caches?", "What is a mutex for?"];
    let lines: String = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            serde_json::json!({"id": i, "messages": [{"role": "system", "content": instruction}, {"role": "user", "content": q}]})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    for sampling in [&["--temp", "0"][..], &["--temp", "0.8", "--seed", "5"][..]] {
        let mut results = Vec::new();
        for extra in [&["--parallel", "1", "--no-prefix-cache"][..], &["--parallel", "3"][..], &["--parallel", "1"][..]] {
            let out = dir.path().join(format!("out{}.jsonl", results.len()));
            let in_flight = extra.contains(&"3");
            let mut args = vec!["batch", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--overwrite"];
            if !in_flight {
                args.push("-q");
            }
            args.extend_from_slice(&["--pair", "qwen-coder", "-t", "2", "-n", "20", "--deterministic"]);
            args.extend_from_slice(sampling);
            args.extend_from_slice(extra);
            let o = specrun(&args);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{args:?}: {stderr}");
            if in_flight {
                assert!(stderr.contains("tokens shared from records read at the same time"), "{args:?}: nothing shared\n{stderr}");
            }
            results.push((extra, texts(&out)));
        }
        for (extra, t) in &results[1..] {
            assert_eq!(t, &results[0].1, "{sampling:?} {extra:?} against one at a time without the prefix cache");
        }
    }
}
