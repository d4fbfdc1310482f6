//! The llama.cpp backend: the only module that imports `llama_cpp_2`.
//!
//! [`LoadedModel`] owns a GGUF model (weights, or the vocabulary alone) and answers tokenizer
//! questions; [`LlamaRunner`] is one context over it and implements [`Model`]. The backend is
//! initialised once per process ([`backend`]); llama.cpp's own log lines go to `tracing`.
//!
//! Architecture invariant: every call that could trip a C assert is checked here first — batch
//! sizes against `n_batch`, positions against `n_ctx` — and returned as a [`ModelError`].

use crate::settings::{FlashAttn, KvType};
use anyhow::{anyhow, Context as _, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use specrun_core::model::{DecodePart, Model, ModelError, SeqId, Token};
use specrun_core::vocab::VocabFacts;
use std::io::Read as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The errors llama.cpp logged (at most 16) since the last look, so that a failed load can say why in one line (its own log
/// is shown only with `-v`). Filled by [`ErrorCapture`].
static LAST_ERROR: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A `tracing` layer that keeps llama.cpp's ERROR messages for [`LoadedModel::load`].
pub struct ErrorCapture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0 = value.to_string();
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let text = m.0.trim().to_string();
        if !text.is_empty() {
            if let Ok(mut errors) = LAST_ERROR.lock() {
                if errors.len() < 16 {
                    errors.push(text);
                }
            }
        }
    }
}

/// The most telling llama.cpp error since the last call: the reason a model load gave
/// ("error loading model: …"), else the first error logged.
fn take_last_error() -> Option<String> {
    let errors = std::mem::take(&mut *LAST_ERROR.lock().ok()?);
    errors
        .iter()
        .find_map(|e| e.split_once("error loading model: ").map(|(_, why)| why.trim().to_string()))
        .or_else(|| errors.into_iter().next())
}

use super::mem_available;

/// The KV cache a context of `n_ctx` cells needs (f16 keys and values, every layer).
pub fn kv_cache_bytes(n_layer: u64, n_embd: u64, n_head: u64, n_head_kv: u64, n_ctx: u64) -> u64 {
    let n_embd_kv = (n_embd * n_head_kv).checked_div(n_head).unwrap_or(n_embd);
    2 * 2 * n_layer * n_embd_kv * n_ctx
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The process-wide llama.cpp backend (`LlamaBackend::init` works once per process).
pub fn backend() -> Result<&'static LlamaBackend> {
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    // llama.cpp's log goes to `tracing`: shown with -v, and its last error is kept for messages
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let b = LlamaBackend::init().context("cannot initialise the llama.cpp backend")?;
    Ok(BACKEND.get_or_init(|| b))
}

/// What llama.cpp says of this build and CPU (its compiled backends' features).
pub fn system_info() -> String {
    // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string
    let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    info.to_string_lossy().trim().to_string()
}

/// Whether this build can offload layers to a GPU.
pub fn supports_gpu_offload() -> bool {
    backend().map(|b| b.supports_gpu_offload()).unwrap_or(false)
}

/// A loaded GGUF model.
pub struct LoadedModel {
    model: LlamaModel,
    pub path: PathBuf,
    /// The longest token's text in bytes (computed when first asked).
    longest_piece: std::sync::OnceLock<usize>,
}

/// Settings of one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextSettings {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: i32,
    /// Sequences that may share the context.
    pub n_seq_max: u32,
    pub flash_attn: FlashAttn,
    pub type_k: KvType,
    pub type_v: KvType,
    /// KV cache on the offload device (llama.cpp's `offload_kqv`).
    pub kv_offload: bool,
    /// One KV buffer for all sequences (llama.cpp's `kv_unified`): a decode carrying several
    /// sequences is then one ubatch; with one stream per sequence llama.cpp splits it into
    /// ubatches of equal rows per sequence over runs of consecutive sequence ids.
    pub kv_unified: bool,
}

impl ContextSettings {
    /// llama.cpp's defaults for everything but sizes and threads.
    pub fn new(n_ctx: u32, n_batch: u32, threads: i32, n_seq_max: u32) -> Self {
        Self {
            n_ctx,
            n_batch,
            threads,
            n_seq_max,
            flash_attn: FlashAttn::Auto,
            type_k: KvType::F16,
            type_v: KvType::F16,
            kv_offload: true,
            kv_unified: true,
        }
    }
}

/// A device llama.cpp can run on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub index: usize,
    /// llama.cpp's name (`CPU`, `CUDA0`, `Vulkan0`): what `--device` takes.
    pub name: String,
    pub description: String,
    pub backend: String,
    /// cpu, gpu, igpu, accel or unknown.
    pub kind: &'static str,
    pub memory_free: u64,
    pub memory_total: u64,
}

/// The devices this build of llama.cpp sees.
pub fn devices() -> Result<Vec<Device>> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .map(|d| Device {
            index: d.index,
            name: d.name,
            description: d.description,
            backend: d.backend,
            kind: match d.device_type {
                T::Cpu => "cpu",
                T::Gpu => "gpu",
                T::IntegratedGpu => "igpu",
                T::Accelerator => "accel",
                T::Unknown => "unknown",
            },
            memory_free: d.memory_free as u64,
            memory_total: d.memory_total as u64,
        })
        .collect())
}

/// Device indices for names as `specrun devices` prints them (case-insensitive); `none` (or
/// nothing) selects none (llama.cpp's default placement when the list is empty and layers are
/// offloaded; CPU only with `none`).
pub fn device_indices(names: &[String]) -> Result<Vec<usize>> {
    if names.iter().any(|n| n.eq_ignore_ascii_case("none")) {
        return Ok(Vec::new());
    }
    let all = devices()?;
    names
        .iter()
        .map(|n| {
            all.iter().find(|d| d.name.eq_ignore_ascii_case(n)).map(|d| d.index).ok_or_else(|| {
                anyhow!(
                    "unknown device '{}' (this build sees: {})",
                    n.escape_debug(),
                    all.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

/// How a model is loaded: layers to offload and onto which devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSettings {
    pub n_gpu_layers: u32,
    /// Device names; `["none"]` keeps every layer on the CPU.
    pub devices: Vec<String>,
    /// Batch-invariant weights: layers kept on the CPU stay in llama.cpp's plain CPU buffer
    /// instead of the repacked one, whose batched kernels sum in another order than its
    /// one-row kernel (see `docs/guide/exactness.md`).
    pub batch_invariant: bool,
}

/// How [`LoadedModel::load_with`] asks llama.cpp for the weights.
enum Weights<'a> {
    Params(&'a LlamaModelParams),
    /// Every layer on the CPU in llama.cpp's plain buffer (`use_extra_bufts = false`): no
    /// repacked weights, whose batched kernel sums in another order than their one-row kernel.
    PlainCpu,
}

/// Load a model on the CPU without llama.cpp's extra (repacking) buffer types. llama-cpp-2
/// does not wrap `use_extra_bufts`, so this calls llama.cpp directly and wraps the pointer.
fn load_plain_cpu(path: &Path) -> Option<LlamaModel> {
    // `LlamaModel` is `repr(transparent)` over llama-cpp-2's `Ptr`, itself `repr(transparent)`
    // over `NonNull<llama_model>` (the version is pinned in Cargo.toml)
    const _: () = assert!(std::mem::size_of::<LlamaModel>() == std::mem::size_of::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>>());
    let c_path = std::ffi::CString::new(path.to_str()?).ok()?;
    // SAFETY: default parameters with two plain fields changed; the path outlives the call
    let raw = unsafe {
        let mut p = llama_cpp_sys_2::llama_model_default_params();
        p.n_gpu_layers = 0;
        p.use_extra_bufts = false;
        llama_cpp_sys_2::llama_model_load_from_file(c_path.as_ptr(), p)
    };
    let ptr = std::ptr::NonNull::new(raw)?;
    // SAFETY: same layout (asserted above); the model is freed by `LlamaModel`'s drop
    Some(unsafe { std::mem::transmute::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>, LlamaModel>(ptr) })
}

/// Hyperparameters read from a GGUF's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_vocab: u64,
}

impl LoadedModel {
    /// Load weights, offloading `n_gpu_layers` layers where the build supports it.
    pub fn load(path: &Path, n_gpu_layers: u32) -> Result<Self> {
        Self::load_on(path, &LoadSettings { n_gpu_layers, ..LoadSettings::default() })
    }

    /// Load weights with `s`'s offload (layers, devices).
    pub fn load_on(path: &Path, s: &LoadSettings) -> Result<Self> {
        let none = s.devices.iter().any(|n| n.eq_ignore_ascii_case("none"));
        let mut params = LlamaModelParams::default().with_n_gpu_layers(if none { 0 } else { s.n_gpu_layers });
        if !s.devices.is_empty() && !none {
            let idx = device_indices(&s.devices)?;
            params =
                params.with_devices(&idx).map_err(|e| anyhow!("{}: cannot use devices {}: {e}", path.display(), s.devices.join(",")))?;
        }
        let cpu_only = none || s.n_gpu_layers == 0;
        if s.batch_invariant {
            // ggml's tiled CPU matmul takes over from the one-row kernel at larger batches and
            // sums in another order; it reads this switch once, at its first matmul, so it is
            // set before any weights are loaded (no llama.cpp thread runs yet)
            std::env::set_var("GGML_CPU_TILED_MM", "0");
        }
        let how = if s.batch_invariant && cpu_only { Weights::PlainCpu } else { Weights::Params(&params) };
        Self::load_with(path, how).map_err(|e| {
            if s.n_gpu_layers > 0 && !none {
                let on = if s.devices.is_empty() { "the default device".to_string() } else { s.devices.join(",") };
                e.context(format!("offloading {} layers to {on}", s.n_gpu_layers))
            } else {
                e
            }
        })
    }

    /// The model's shape, read from its GGUF metadata (`<arch>.block_count`, …), so that it
    /// also works on a model loaded with [`LoadedModel::load_vocab_only`]: llama.cpp loads no
    /// hyperparameters then, and asking it for `n_head` aborts the process (found the first
    /// time the fit estimate ran, on a Vulkan build). A missing key counts as 0 (`head_count_kv`
    /// as `head_count`), which the estimate then treats as unknown.
    pub fn shape(&self) -> Shape {
        let m = &self.model;
        let arch = m.meta_val_str("general.architecture").unwrap_or_default();
        let key = |k: &str| m.meta_val_str(&format!("{arch}.{k}")).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let n_head = key("attention.head_count").unwrap_or(0);
        Shape {
            n_layer: key("block_count").unwrap_or(0),
            n_embd: key("embedding_length").unwrap_or(0),
            n_head,
            n_head_kv: key("attention.head_count_kv").unwrap_or(n_head),
            n_vocab: m.n_vocab().max(0) as u64,
        }
    }

    /// Load only the vocabulary (fast: no weights are read).
    pub fn load_vocab_only(path: &Path) -> Result<Self> {
        Self::load_with(path, Weights::Params(&LlamaModelParams::default().with_vocab_only(true)))
    }

    fn load_with(path: &Path, how: Weights<'_>) -> Result<Self> {
        if !path.is_file() {
            return Err(anyhow!("model file not found: {}", path.display()));
        }
        let mut magic = [0u8; 4];
        let n =
            std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).with_context(|| format!("cannot read {}", path.display()))?;
        if n < 4 || &magic != b"GGUF" {
            return Err(anyhow!("not a GGUF file: {}", path.display()));
        }
        let backend = backend()?;
        take_last_error();
        let loaded = match how {
            Weights::Params(params) => LlamaModel::load_from_file(backend, path, params).ok(),
            Weights::PlainCpu => load_plain_cpu(path),
        };
        match loaded {
            Some(model) => Ok(Self { model, path: path.to_path_buf(), longest_piece: std::sync::OnceLock::new() }),
            None => {
                let why = take_last_error().unwrap_or_else(|| "truncated or corrupted GGUF".to_string());
                Err(anyhow!("cannot load model {}: {why}", path.display()))
            }
        }
    }

    /// Refuse a context larger than the model was trained for, or whose KV cache (`n_seq`
    /// sequences of `n_ctx` cells each) cannot fit the memory left, before llama.cpp tries to
    /// allocate it.
    pub fn check_context(&self, n_ctx: u32, n_seq: u32) -> Result<()> {
        let trained = self.model.n_ctx_train();
        if trained > 0 && n_ctx > trained {
            return Err(anyhow!("{}: n_ctx {n_ctx} exceeds the {trained} tokens the model was trained for", self.path.display()));
        }
        let m = &self.model;
        let per_cell = kv_cache_bytes(u64::from(m.n_layer()), m.n_embd().max(0) as u64, u64::from(m.n_head()), u64::from(m.n_head_kv()), 1);
        let Some(avail) = mem_available() else { return Ok(()) };
        let need = per_cell * u64::from(n_ctx) * u64::from(n_seq.max(1));
        if need <= avail {
            return Ok(());
        }
        let fits = avail / per_cell.max(1);
        let what = if n_seq > 1 { format!("{n_seq} sequences of n_ctx {n_ctx}") } else { format!("n_ctx {n_ctx}") };
        let hint = if n_seq > 1 { format!("lower --parallel or -c ({fits} cells fit)") } else { format!("at most n_ctx {fits} fits") };
        Err(anyhow!(
            "{}: {what} need {:.1} GiB of KV cache but {:.1} GiB of memory is available; {hint}",
            self.path.display(),
            gib(need),
            gib(avail)
        ))
    }

    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab() as usize
    }

    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// Tokenize `text`, adding BOS where the model wants it and parsing special tokens.
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        let vocab = self.model.vocab();
        vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), true).into_iter().map(|t| t.0).collect()
    }

    /// The bytes a token stands for (special tokens render as nothing).
    pub fn piece(&self, token: Token) -> Vec<u8> {
        self.model.vocab().token_to_piece(LlamaToken(token), false, None)
    }

    pub fn is_eog(&self, token: Token) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    /// Wrap several chat messages (role, content) in the model's chat template.
    pub fn chat_messages(&self, messages: &[(String, String)]) -> Result<String> {
        let tmpl = self.model.chat_template(None).map_err(|e| anyhow!("{} has no chat template: {e}", self.path.display()))?;
        let msgs = messages
            .iter()
            .map(|(r, c)| LlamaChatMessage::new(r.clone(), c.clone()).map_err(|e| anyhow!("invalid chat message: {e}")))
            .collect::<Result<Vec<_>>>()?;
        self.model.apply_chat_template(&tmpl, &msgs, true).map_err(|e| anyhow!("cannot apply the chat template: {e}"))
    }

    /// [`LoadedModel::chat_messages`] as tokens, each message's content tokenized as text: the
    /// template is rendered with a placeholder for each content, its own text tokenized with
    /// control tokens, the contents without (so a message cannot write a turn marker).
    pub fn chat_message_tokens(&self, messages: &[(String, String)]) -> Result<Vec<Token>> {
        let marker = |i: usize| format!("\u{1}specrun-content-{i}\u{1}");
        let placeholders: Vec<(String, String)> = messages.iter().enumerate().map(|(i, (r, _))| (r.clone(), marker(i))).collect();
        let rendered = self.chat_messages(&placeholders)?;
        let contents: Vec<&str> = messages.iter().map(|(_, c)| c.as_str()).collect();
        let mut part = |text: &str, first: bool, special: bool| self.tokenize_part(text, first, special);
        // a template that rewrites, drops or repeats contents gets its text tokenized as before
        match specrun_core::model::tokens_with_text_holes(&rendered, &contents, &marker, &mut part) {
            Some(tokens) => Ok(tokens),
            None => Ok(self.tokenize(&self.chat_messages(messages)?)),
        }
    }

    /// Tokenize one piece of a longer text: BOS first when `bos` and the model wants it,
    /// special-token spellings parsed when `special`.
    pub fn tokenize_part(&self, text: &str, bos: bool, special: bool) -> Vec<Token> {
        let vocab = self.model.vocab();
        vocab.tokenize(text.as_bytes(), bos && vocab.should_add_bos(), special).into_iter().map(|t| t.0).collect()
    }

    /// The facts llama.cpp's draft-compatibility rules look at.
    pub fn vocab_facts(&self) -> VocabFacts {
        let vocab = self.model.vocab();
        let kind = self.model.meta_val_str("tokenizer.ggml.model").unwrap_or_else(|_| "unknown".into());
        let texts = (0..vocab.n_tokens()).map(|i| vocab.text(LlamaToken(i)).map(|c| c.to_bytes().to_vec()).unwrap_or_default()).collect();
        VocabFacts { kind, add_bos: vocab.should_add_bos(), add_eos: vocab.should_add_eos(), bos: vocab.bos().0, eos: vocab.eos().0, texts }
    }

    /// A fresh context over this model.
    pub fn context(&self, s: ContextSettings) -> Result<LlamaRunner<'_>> {
        if s.n_batch == 0 || s.n_ctx == 0 {
            return Err(anyhow!("{}: n_ctx and n_batch must be > 0", self.path.display()));
        }
        // each sequence may use n_ctx cells: the context holds n_seq_max × n_ctx (one buffer
        // when unified, else a stream of n_ctx per sequence)
        let n_seq = s.n_seq_max.max(1);
        self.check_context(s.n_ctx, n_seq)?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(s.n_ctx.saturating_mul(n_seq)))
            .with_n_batch(s.n_batch)
            .with_n_ubatch(s.n_batch)
            .with_n_seq_max(s.n_seq_max.max(1))
            .with_n_threads(s.threads)
            .with_n_threads_batch(s.threads)
            .with_flash_attention_policy(match s.flash_attn {
                FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
                FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
                FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            })
            .with_type_k(kv_type(s.type_k))
            .with_type_v(kv_type(s.type_v))
            .with_offload_kqv(s.kv_offload)
            .with_kv_unified(s.kv_unified);
        let ctx =
            self.model.new_context(backend()?, params).with_context(|| format!("cannot create a context for {}", self.path.display()))?;
        // llama.cpp may round the context up; specrun enforces the size that was asked for
        let n_ctx = (ctx.n_ctx() as usize / n_seq as usize).min(s.n_ctx as usize);
        let n_batch = ctx.n_batch() as usize;
        Ok(LlamaRunner {
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            loaded: self,
            n_vocab: self.n_vocab(),
            n_ctx,
            n_batch,
            n_seq: n_seq as usize,
            rows: Vec::new(),
            rows_checked: vec![false; n_seq as usize],
            recurrent: self.model.is_recurrent() || self.model.is_hybrid(),
            kv_unified: s.kv_unified,
        })
    }
}

fn kv_type(t: KvType) -> llama_cpp_2::context::params::KvCacheType {
    use llama_cpp_2::context::params::KvCacheType as K;
    match t {
        KvType::F32 => K::F32,
        KvType::F16 => K::F16,
        KvType::Bf16 => K::BF16,
        KvType::Q8_0 => K::Q8_0,
        KvType::Q4_0 => K::Q4_0,
        KvType::Q4_1 => K::Q4_1,
        KvType::Iq4Nl => K::IQ4_NL,
        KvType::Q5_0 => K::Q5_0,
        KvType::Q5_1 => K::Q5_1,
    }
}

/// One llama.cpp context, as a [`Model`].
pub struct LlamaRunner<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    loaded: &'m LoadedModel,
    n_vocab: usize,
    n_ctx: usize,
    n_batch: usize,
    n_seq: usize,
    /// Batch index of each logits row kept by the last decode (-1: a row left unread).
    rows: Vec<i32>,
    /// Per sequence: whether its logits were checked for NaN/inf since it was last cleared.
    rows_checked: Vec<bool>,
    recurrent: bool,
    /// One KV buffer for all sequences: cells can be shared between sequences.
    kv_unified: bool,
}

impl LlamaRunner<'_> {
    pub fn model(&self) -> &LoadedModel {
        self.loaded
    }

    /// Whether the memory can remove a suffix of a sequence (not recurrent/hybrid).
    pub fn can_roll_back(&self) -> bool {
        !self.recurrent
    }
}

impl Model for LlamaRunner<'_> {
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_batch(&self) -> usize {
        self.n_batch
    }
    fn is_eog(&self, token: Token) -> bool {
        self.loaded.is_eog(token)
    }

    fn decode(&mut self, seq: SeqId, pos: usize, tokens: &[Token], logits_from: usize) -> Result<(), ModelError> {
        self.decode_parts(&[DecodePart { seq, pos, tokens, logits_from, unread: &[] }])
    }

    fn n_seq_max(&self) -> usize {
        self.n_seq
    }

    fn decode_parts(&mut self, parts: &[DecodePart<'_>]) -> Result<(), ModelError> {
        let n_tokens: usize = parts.iter().map(|p| p.tokens.len()).sum();
        if n_tokens > self.n_batch {
            return Err(ModelError::BatchTooLarge { n_tokens, n_batch: self.n_batch });
        }
        for (i, p) in parts.iter().enumerate() {
            if p.seq < 0 || p.seq as usize >= self.n_seq {
                return Err(ModelError::Decode(format!("sequence id {} is outside 0..{}", p.seq, self.n_seq)));
            }
            if parts[..i].iter().any(|q| q.seq == p.seq) {
                return Err(ModelError::Decode(format!("sequence {} appears twice in one decode", p.seq)));
            }
            if p.pos + p.tokens.len() > self.n_ctx {
                return Err(ModelError::ContextFull { end: p.pos + p.tokens.len(), n_ctx: self.n_ctx });
            }
            if let Some(&t) = p.tokens.iter().find(|&&t| t < 0 || t as usize >= self.n_vocab) {
                return Err(ModelError::Decode(format!("token {t} is outside the vocabulary")));
            }
        }
        self.batch.clear();
        self.rows.clear();
        let mut index = 0i32;
        for p in parts {
            for (i, &t) in p.tokens.iter().enumerate() {
                let kept = i >= p.logits_from;
                let read = kept && p.reads(i - p.logits_from);
                self.batch.add(LlamaToken(t), (p.pos + i) as i32, &[p.seq], read).map_err(|e| ModelError::Decode(e.to_string()))?;
                if kept {
                    self.rows.push(if read { index } else { -1 });
                }
                index += 1;
            }
        }
        if n_tokens == 0 {
            return Ok(());
        }
        self.ctx.decode(&mut self.batch).map_err(|e| ModelError::Decode(e.to_string()))?;
        // Corrupted weights show as NaN/inf logits from the first rows on: check the first rows
        // a sequence gets after it was cleared (its prompt's), not every round's, which would
        // scan every kept row of the vocabulary in the decode loop.
        let mut row = 0;
        for p in parts {
            let n_rows = p.tokens.len() - p.logits_from.min(p.tokens.len());
            let seq = p.seq as usize;
            if n_rows > 0 && !self.rows_checked[seq] {
                for &r in self.rows[row..row + n_rows].iter().filter(|&&r| r >= 0) {
                    if !self.ctx.get_logits_ith(r).iter().all(|x| x.is_finite()) {
                        return Err(ModelError::NonFinite);
                    }
                }
                self.rows_checked[seq] = true;
            }
            row += n_rows;
        }
        Ok(())
    }

    fn logits(&self, row: usize) -> &[f32] {
        assert!(row < self.rows.len(), "logits row {row} was not kept (last decode kept {})", self.rows.len());
        assert!(self.rows[row] >= 0, "logits row {row} was left unread");
        self.ctx.get_logits_ith(self.rows[row])
    }

    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ModelError> {
        if len == 0 {
            if let Some(c) = usize::try_from(seq).ok().and_then(|i| self.rows_checked.get_mut(i)) {
                *c = false;
            }
        }
        self.ctx.kv_cache_seq_rm(seq, Some(len as u32), None).map_err(|_| ModelError::TruncateRefused { seq, len })
    }
    fn snapshot(&mut self, seq: SeqId) -> Option<specrun_core::model::Snapshot> {
        let state = self.ctx.state_seq_get(seq, llama_cpp_2::context::session::LlamaStateSeqFlags::empty()).ok()?;
        let bytes = state.byte_len();
        Some(specrun_core::model::Snapshot::new(state, bytes))
    }
    fn restore(&mut self, seq: SeqId, snapshot: &specrun_core::model::Snapshot) -> Result<(), ModelError> {
        let state = snapshot
            .data::<llama_cpp_2::context::session::SeqState>()
            .ok_or_else(|| ModelError::Restore("not a llama.cpp sequence state".into()))?;
        if let Some(c) = usize::try_from(seq).ok().and_then(|i| self.rows_checked.get_mut(i)) {
            *c = false;
        }
        self.ctx.state_seq_set(state, seq).map_err(|e| ModelError::Restore(e.to_string()))
    }
    fn copy_cells(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ModelError> {
        if self.recurrent {
            return Err(ModelError::Restore("a recurrent memory's cells are not shared between sequences".into()));
        }
        let n_seq = self.n_seq as SeqId;
        if !(0..n_seq).contains(&from) || !(0..n_seq).contains(&to) || from == to {
            return Err(ModelError::Restore(format!("cannot share cells of sequence {from} with sequence {to}")));
        }
        if let Some(c) = usize::try_from(to).ok().and_then(|i| self.rows_checked.get_mut(i)) {
            *c = false;
        }
        let refused = |_| ModelError::TruncateRefused { seq: to, len: 0 };
        self.ctx.kv_cache_seq_rm(to, None, None).map_err(refused)?;
        let copy_failed = |e: llama_cpp_2::context::kv_cache::KvCacheConversionError| ModelError::Restore(e.to_string());
        if self.kv_unified {
            // one buffer: the cells are tagged with both sequences, nothing is copied
            self.ctx.copy_kv_cache_seq(from, to, Some(0), Some(len as u32)).map_err(copy_failed)
        } else {
            // a stream per sequence: llama.cpp copies a whole stream (asserting otherwise),
            // then the copy is cut back to `len`
            self.ctx.copy_kv_cache_seq(from, to, None, None).map_err(copy_failed)?;
            self.ctx.kv_cache_seq_rm(to, Some(len as u32), None).map_err(|_| ModelError::TruncateRefused { seq: to, len })
        }
    }
}

impl specrun_core::model::TextCodec for LoadedModel {
    fn tokenize(&self, text: &str) -> Vec<Token> {
        LoadedModel::tokenize(self, text)
    }
    fn piece(&self, token: Token) -> Vec<u8> {
        LoadedModel::piece(self, token)
    }
    fn chat(&self, messages: &[(String, String)]) -> Result<String, String> {
        self.chat_messages(messages).map_err(|e| e.to_string())
    }
    fn chat_tokens(&self, messages: &[(String, String)]) -> Result<Vec<Token>, String> {
        self.chat_message_tokens(messages).map_err(|e| e.to_string())
    }
    fn longest_piece(&self) -> usize {
        *self.longest_piece.get_or_init(|| {
            let vocab = self.model.vocab();
            (0..vocab.n_tokens()).map(|t| vocab.token_to_piece(LlamaToken(t), true, None).len()).max().unwrap_or(1).max(1)
        })
    }
    fn tokenize_plain(&self, text: &str) -> Vec<Token> {
        let vocab = self.model.vocab();
        vocab.tokenize(text.as_bytes(), vocab.should_add_bos(), false).into_iter().map(|t| t.0).collect()
    }
    fn special_piece(&self, token: Token) -> Vec<u8> {
        self.model.vocab().token_to_piece(LlamaToken(token), true, None)
    }
    fn tokenize_part(&self, text: &str, bos: bool, special: bool) -> Vec<Token> {
        LoadedModel::tokenize_part(self, text, bos, special)
    }
    fn chat_template(&self) -> Option<String> {
        self.model.chat_template(None).ok().and_then(|t| t.to_string().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::kv_cache_bytes;

    #[test]
    fn kv_cache_size_by_hand() {
        // Qwen2.5-1.5B: 28 layers, n_embd 1536, 12 heads, 2 KV heads → 256 KV dims per layer;
        // f16 K and V: 2 * 2 * 28 * 256 = 28,672 bytes per cell, 4096 cells = 112 MiB
        assert_eq!(kv_cache_bytes(28, 1536, 12, 2, 1), 28_672);
        assert_eq!(kv_cache_bytes(28, 1536, 12, 2, 4096), 112 << 20);
        // a billion cells is ~27 TiB: refused before allocating
        assert!(kv_cache_bytes(28, 1536, 12, 2, 1_000_000_000) > 1u64 << 44);
    }
}
