//! What the measurement examples share: `--threads N` (2 by default) and `--model FILE.gguf`
//! (from the model cache, the Qwen target by default), loaded on the CPU.

use specrun::backend::llama::{LoadSettings, LoadedModel};

/// The model file, the threads and the loaded model the command line asks for.
pub fn from_args() -> (String, i32, LoadedModel) {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let threads: i32 = value("--threads").and_then(|t| t.parse().ok()).unwrap_or(2);
    let file = value("--model").unwrap_or_else(|| "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into());
    let path = specrun::formats::models_toml::models_cache().join(&file);
    let model =
        LoadedModel::load_on(&path, &LoadSettings::default()).unwrap_or_else(|e| panic!("{e:#} (fetch it with scripts/fetch_models.py)"));
    (file, threads, model)
}
