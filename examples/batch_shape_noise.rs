//! How much one token's logits move between batch shapes in llama.cpp's CPU path: the last
//! tokens of a few prompts decoded one by one and as one batch, the largest |Δlogit| over the
//! vocabulary printed per tail length. A measurement for docs/guide/exactness.md, run by hand:
//!
//! ```sh
//! cargo run --release --example batch_shape_noise -- [--plain-weights] [--fa on|off] [--kv f16|q8_0]
//! GGML_CPU_TILED_MM=0 cargo run --release --example batch_shape_noise -- --plain-weights
//! ```
//!
//! `--plain-weights` loads the target without llama.cpp's repacking buffers (as
//! `--deterministic` does); `GGML_CPU_TILED_MM=0` switches ggml's tiled matmul off.

#[path = "../tests/support/models.rs"]
mod models;

use models::last_row;
use specrun::backend::llama::{ContextSettings, LoadSettings, LoadedModel};
use specrun::settings::{FlashAttn, KvType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str);
    let plain = args.iter().any(|a| a == "--plain-weights");
    let fa = if value("--fa") == Some("off") { FlashAttn::Off } else { FlashAttn::On };
    let kv = if value("--kv") == Some("q8_0") { KvType::Q8_0 } else { KvType::F16 };
    let path = specrun::formats::models_toml::models_cache().join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    let model = LoadedModel::load_on(&path, &LoadSettings { batch_invariant: plain, ..LoadSettings::default() })
        .unwrap_or_else(|e| panic!("{e:#} (fetch it with scripts/fetch_models.py)"));
    let mut s = ContextSettings::new(2048, 512, 2, 1);
    (s.flash_attn, s.type_k, s.type_v) = (fa, kv, kv);
    let mut target = model.context(s).unwrap();
    let prompts = [
        "Write a Python function that returns the n-th Fibonacci number iteratively.",
        "Explain how a hash map handles collisions, in one paragraph.",
        "Write a C function that reverses a null-terminated string in place.",
    ];
    println!(
        "plain weights {plain}, flash attention {fa:?}, KV {kv:?}, GGML_CPU_TILED_MM={}",
        std::env::var("GGML_CPU_TILED_MM").unwrap_or_default()
    );
    for p in prompts {
        let tokens = model.tokenize(&model.chat_messages(&[("user".into(), p.into())]).unwrap());
        let line: Vec<String> = [2usize, 4, 8, 16]
            .iter()
            .map(|&tail| {
                let (a, b) = (last_row(&mut target, &tokens, tail, false), last_row(&mut target, &tokens, tail, true));
                format!("tail {tail}: {:.3}", a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max))
            })
            .collect();
        println!("{}", line.join("  "));
    }
}
