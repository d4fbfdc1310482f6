//! What structured output costs per token, against a 151,936-token vocabulary (Qwen2.5's
//! size; the tokens are generated words, so no model file is needed): one grammar mask, the
//! forced tokens, and a draft's validation, for a JSON schema record half written.
//!
//! `cargo bench --bench constraint`; the results and the decode cost they are compared with
//! are in docs/benchmarks.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use specrun::constraint::{Grammar, Vocabulary};
use specrun_core::model::{TextCodec, Token};

const N_VOCAB: usize = 151_936;

/// Single bytes, then words of 2..8 printable characters from a fixed generator, with and
/// without a leading space, like a BPE vocabulary's; the last token ends generation.
struct Words(Vec<Vec<u8>>);

impl Words {
    fn new() -> Self {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_\":{}[],.-";
        let mut seen = std::collections::HashSet::new();
        while words.len() < N_VOCAB - 1 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 2 + (x % 7) as usize;
            let mut w: Vec<u8> = if x >> 60 & 1 == 1 { vec![b' '] } else { vec![] };
            w.extend((0..len).map(|i| alphabet[((x >> (i * 6)) % alphabet.len() as u64) as usize]));
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        words.push(Vec::new());
        Self(words)
    }
}

impl TextCodec for Words {
    fn tokenize(&self, _: &str) -> Vec<Token> {
        Vec::new()
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        self.0[token as usize].clone()
    }
    fn chat(&self, _: &[(String, String)]) -> Result<String, String> {
        Err("none".into())
    }
    fn special_piece(&self, token: Token) -> Vec<u8> {
        if token as usize == N_VOCAB - 1 {
            b"<|end|>".to_vec()
        } else {
            Vec::new()
        }
    }
}

/// A mask at a new state each time (a state's mask may be cached): one of `next` on, masked,
/// back.
fn mask_at_new_states(c: &mut Criterion, name: &str, m: &mut dyn specrun_core::constraint::Constraint, next: &[u8]) {
    let next: Vec<Token> = next.iter().map(|&b| b as Token).collect();
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % next.len();
            m.consume(&next[i..=i]).unwrap();
            let mask = black_box(m.mask().unwrap());
            m.rollback(1).unwrap();
            mask
        })
    });
}

fn bench(c: &mut Criterion) {
    let words = Words::new();
    let vocab = Vocabulary::of(&words, N_VOCAB, &|t| t as usize == N_VOCAB - 1).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "city", "tags"], "additionalProperties": false
    });
    let spec = vocab.compile(&Grammar::JsonSchema(schema)).unwrap();
    // a record written up to inside the "city" value, byte by byte
    let prefix: Vec<Token> = br#"{"name": "Maria Lopez", "age": 34, "city": "Ma"#.iter().map(|&b| b as Token).collect();
    let mut m = spec.start();
    m.consume(&prefix).unwrap();
    let mut at_key = spec.start();
    at_key.consume(&prefix[..prefix.len() - 11]).unwrap(); // after `34`
    mask_at_new_states(c, "constraint/mask inside a string value (151,936 tokens)", &mut *m, b"drid a,x");
    mask_at_new_states(c, "constraint/mask after a number (151,936 tokens)", &mut *at_key, b"0123456789");
    let mut after_value = spec.start();
    after_value.consume(&br#"{"name": "Maria""#.iter().map(|&b| b as Token).collect::<Vec<_>>()).unwrap();
    c.bench_function("constraint/forced tokens after a value", |b| b.iter(|| black_box(after_value.forced())));
    let draft: Vec<Token> = br#"drid", "tags": ["#.iter().map(|&b| b as Token).collect();
    c.bench_function("constraint/validate a 16-token draft", |b| b.iter(|| black_box(m.validate(&draft))));
    c.bench_function("constraint/consume and roll back one token", |b| {
        b.iter(|| {
            m.consume(&[b'd' as Token]).unwrap();
            m.rollback(1).unwrap();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
