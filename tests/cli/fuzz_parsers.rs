//! Property-based fuzzing of the parsers that read user files: `models.toml`, batch input
//! records and batch output (resume). Arbitrary bytes and mutations of valid files must give
//! a value or a located error, never a panic. Bounded and seeded for CI (`PROPTEST_CASES`
//! and `PROPTEST_RNG_SEED` explore further).

use proptest::prelude::*;
use specrun::formats::models_toml::{Config, BUILTIN};
use specrun::formats::records::{check_unique_ids, parse_input, scan_output, InputFormat};
use specrun::settings::resolve;

const RECORDS: &str = "{\"id\": \"a\", \"prompt\": \"hi\", \"max_tokens\": 5, \"temperature\": 0.8, \"stop\": [\"x\"]}\n\
{\"id\": 7, \"messages\": [{\"role\": \"user\", \"content\": \"yo\"}], \"top_p\": 0.9, \"seed\": 3}\n";

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20000)
}

/// A fixed seed, so that CI is reproducible; `PROPTEST_RNG_SEED=<n>` explores elsewhere.
fn seed() -> proptest::test_runner::RngSeed {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(proptest::test_runner::RngSeed::Fixed(0x5eed), proptest::test_runner::RngSeed::Fixed)
}

/// A valid text with some bytes replaced, inserted or deleted.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((0..base.len(), any::<u8>(), 0u8..3), 0..8).prop_map(move |edits| {
        let mut b = base.as_bytes().to_vec();
        for (pos, byte, op) in edits {
            let pos = pos.min(b.len().saturating_sub(1));
            match op {
                0 if !b.is_empty() => b[pos] = byte,
                1 => b.insert(pos, byte),
                _ if !b.is_empty() => {
                    b.remove(pos);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

fn check_models_toml(text: &str) {
    match Config::parse("m.toml", text) {
        Ok(c) => {
            // every pair's settings go through the one validation path without panicking
            for p in c.models.pairs.values() {
                let _ = resolve(&[&c.pair_overrides(p)]);
            }
            for m in c.models.models.values() {
                let _ = c.model_settings(m);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("m.toml"), "unlocated error: {msg}");
            assert!(!msg.contains('\n'), "error of several lines: {msg}");
        }
    }
}

fn check_records(text: &str) {
    for format in [InputFormat::Jsonl, InputFormat::Txt] {
        let jobs = parse_input(text, format);
        let _ = check_unique_ids(&jobs);
        for j in jobs.iter().flatten() {
            let _ = resolve(&[&j.overrides]);
        }
    }
    let _ = scan_output(text);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, rng_seed: seed(), ..ProptestConfig::default() })]

    #[test]
    fn models_toml_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_models_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn models_toml_never_panics_on_mutations(text in mutated(BUILTIN)) {
        check_models_toml(&text);
    }

    #[test]
    fn records_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_records(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn records_never_panic_on_mutations(text in mutated(RECORDS)) {
        check_records(&text);
    }
}
