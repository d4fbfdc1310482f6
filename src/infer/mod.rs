//! The inference layer every command uses: resolve settings ([`mod@plan`], over [`crate::settings`]), load the
//! models once ([`with_backend`]: llama.cpp, or the mock with `--mock`), build drafters
//! ([`make_drafter`]) and generate with streaming and stop strings ([`generate`]).
//!
//! This is the edge of the core: errors are `anyhow`, the clock is real ([`WallClock`]), except
//! on the mock backend, whose models advance a mock clock so that its output is reproducible.

pub mod calibration;
pub mod plan;
pub mod serving;

pub use plan::{plan, ModelPlan, ModelSelection, Plan};

use crate::formats::report::RunReport;
use anyhow::{bail, Context as _, Result};
use specrun_core::anchor::TokenTexts;
use specrun_core::clock::Clock;
use specrun_core::detok::TextStream;
use specrun_core::draft::{Drafter, DrafterKind, ModelDrafter, NoDraft};
use specrun_core::draft::{HybridDrafter, NgramDrafter};
use specrun_core::engine::{Engine, GenConfig, KeptCells};
use specrun_core::mock::{MockClock, MockCodec, MockModel, MockSpec};
use specrun_core::model::{Model, TextCodec, Token};
use specrun_core::ngram::NgramConfig;
use specrun_core::prefix_cache::PrefixCache;
use specrun_core::stats::{FinishReason, GenStats};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The real clock, for the binary only.
pub struct WallClock(Instant);

impl WallClock {
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for WallClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Output of one generation.
pub struct Generated {
    pub report: RunReport,
    pub tokens: Vec<Token>,
    pub stats: GenStats,
}

/// Refuse a prompt text that cannot fit `n_ctx` tokens before tokenizing it (a huge prompt
/// would cost time and memory only to be refused): more bytes than `n_ctx` of the longest
/// token. The longest token is only looked up for texts longer than 8 bytes a token.
pub fn check_prompt_bytes(codec: &dyn TextCodec, bytes: usize, n_ctx: usize) -> Result<(), String> {
    if bytes <= n_ctx.saturating_mul(8) {
        return Ok(());
    }
    let longest = codec.longest_piece();
    if bytes > n_ctx.saturating_mul(longest) {
        return Err(format!(
            "the prompt has {bytes} bytes, more than the context's {n_ctx} tokens can hold (at most {longest} bytes a token)"
        ));
    }
    Ok(())
}

/// A generation stopped by Ctrl-C (nothing of it is reported; the command exits 130).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Run one prompt to the end on `engine`, streaming text to `stream` when given, stopping
/// early at the first of `stops` (the text is cut before it). `cancel` is asked before every
/// round; when it says yes the generation ends with [`Interrupted`].
pub fn generate<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    prompt: &[Token],
    clock: &dyn Clock,
    stream: Option<&mut dyn Write>,
    stops: &[String],
    cancel: &dyn Fn() -> bool,
) -> Result<Generated> {
    generate_traced(engine, codec, prompt, clock, stream, stops, cancel, None)
}

/// A generation that failed after writing text: the error, and the text so far (a batch
/// keeps it in the record's error line).
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct FailedAfter {
    pub error: anyhow::Error,
    pub text: String,
}

/// Where a round trace goes ([`crate::formats::trace::RoundLine`]), and the id of the record
/// its lines belong to (`batch`).
pub struct RoundTrace<'a> {
    pub out: &'a mut dyn Write,
    pub id: Option<&'a serde_json::Value>,
}

/// [`generate`], writing one JSON line per round to `trace` when given
/// ([`crate::formats::trace::RoundLine`]).
#[allow(clippy::too_many_arguments)]
pub fn generate_traced<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    prompt: &[Token],
    clock: &dyn Clock,
    stream: Option<&mut dyn Write>,
    stops: &[String],
    cancel: &dyn Fn() -> bool,
    trace: Option<&mut dyn Write>,
) -> Result<Generated> {
    let config = engine.config.clone();
    let trace = trace.map(|out| RoundTrace { out, id: None });
    Ok(generate_after(engine, codec, prompt, config, None, clock, stream, stops, cancel, trace)?.0)
}

/// [`generate`] with the sequence's own settings and a prefix cache: the prompt starts from
/// the longest prefix `store` holds, and what the sequence leaves is stored for the prompts
/// after it. Rounds are traced to `trace` when given.
#[allow(clippy::too_many_arguments)]
pub fn generate_cached<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    prompt: &[Token],
    config: GenConfig,
    store: &mut PrefixCache,
    clock: &dyn Clock,
    stops: &[String],
    cancel: &dyn Fn() -> bool,
    trace: Option<RoundTrace<'_>>,
) -> Result<Generated> {
    let head = &prompt[..prompt.len().saturating_sub(1)];
    let cells = store.restore(engine, 0, head, KeptCells::default());
    let restored = !cells.is_empty();
    let (mut g, left) = generate_after(engine, codec, prompt, config, restored.then_some(&cells), clock, None, stops, cancel, trace)?;
    store.save(engine, 0, &left);
    if restored {
        g.stats.n_prompt_restored = g.stats.n_prompt_cached;
    }
    Ok(g)
}

/// [`generate_traced`] in a slot holding `kept`: also returns what the sequence leaves there.
#[allow(clippy::too_many_arguments)]
fn generate_after<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    prompt: &[Token],
    config: GenConfig,
    kept: Option<&KeptCells>,
    clock: &dyn Clock,
    mut stream: Option<&mut dyn Write>,
    stops: &[String],
    cancel: &dyn Fn() -> bool,
    mut trace: Option<RoundTrace<'_>>,
) -> Result<(Generated, KeptCells)> {
    let mut seq = engine.start_after(0, prompt.to_vec(), config, kept, clock)?;
    seq.trace_rounds = trace.is_some();
    // the pieces' bytes joined before decoding: a character may span two tokens
    let text_of =
        |tokens: &[Token]| String::from_utf8_lossy(&tokens.iter().flat_map(|&t| codec.piece(t)).collect::<Vec<u8>>()).into_owned();
    let mut text = TextStream::new(stops.to_vec());
    // what the text has ready goes to the stream (a possible stop string's start waits)
    let mut emit = |text: &mut TextStream| -> Result<()> {
        let ready = text.take_ready();
        if let (Some(w), false) = (stream.as_deref_mut(), ready.is_empty()) {
            w.write_all(ready.as_bytes()).and_then(|_| w.flush()).context("cannot write the output")?;
        }
        Ok(())
    };
    // the first token came with the prompt (`Engine::start`); then one round at a time
    let mut added = seq.n_prompt..seq.tokens.len();
    loop {
        // end-of-generation tokens render as nothing (pieces are taken without specials)
        for &t in &seq.tokens[added] {
            text.push(&codec.piece(t));
        }
        if text.stopped() {
            seq.finish = Some(FinishReason::Stop);
        }
        if seq.finish.is_some() {
            break;
        }
        emit(&mut text)?;
        if cancel() {
            return Err(Interrupted.into());
        }
        added = match engine.step(&mut seq, clock) {
            Ok(added) => added,
            Err(error) => {
                text.finish();
                emit(&mut text)?;
                return Err(FailedAfter { error: error.into(), text: text.into_text() }.into());
            }
        };
        if let (Some(t), Some(r)) = (trace.as_mut(), seq.last_round.take()) {
            let mut line = crate::formats::trace::RoundLine::new(
                seq.stats.n_rounds,
                &r,
                added.len(),
                text_of(&r.drafted),
                text_of(&seq.tokens[added.clone()]),
            );
            line.id = t.id.cloned();
            writeln!(t.out, "{}", serde_json::to_string(&line)?).context("cannot write the round trace")?;
        }
    }
    text.finish();
    emit(&mut text)?;
    if let Some(t) = trace {
        t.out.flush().context("cannot write the round trace")?;
    }
    let finish = seq.finish.expect("loop ends when finished");
    let drafter = engine.drafter.name();
    let verify = seq.config.effective_verify();
    let draft_max = if engine.drafter.is_active() { seq.config.draft_max } else { 0 };
    let report = RunReport::new(text.into_text(), finish, drafter, seq.config.adaptive, verify.as_str(), draft_max, &seq.stats);
    let kept = seq.kept_cells();
    Ok((Generated { report, tokens: seq.generated().to_vec(), stats: seq.stats }, kept))
}

/// The text of every token of the target's vocabulary, for n-gram drafts anchored on text.
pub fn token_texts(codec: &dyn TextCodec, n_vocab: usize) -> Arc<TokenTexts> {
    Arc::new(TokenTexts::new((0..n_vocab as Token).map(|t| codec.piece(t)).collect()))
}

/// The drafter a plan asks for, over an already created draft model (if it needs one); its
/// n-gram lookups also anchor on the token `texts` ([`token_texts`]).
pub fn make_drafter<'a, M: Model + 'a>(
    kind: Option<DrafterKind>,
    ngram: NgramConfig,
    model: Option<M>,
    texts: &Arc<TokenTexts>,
) -> Box<dyn Drafter + 'a> {
    make_drafter_with_cache(kind, ngram, model, texts, false)
}

/// [`make_drafter`], with an n-gram draft cache across sequences when `cache` (for drafters
/// that use n-grams).
pub fn make_drafter_with_cache<'a, M: Model + 'a>(
    kind: Option<DrafterKind>,
    ngram: NgramConfig,
    model: Option<M>,
    texts: &Arc<TokenTexts>,
    cache: bool,
) -> Box<dyn Drafter + 'a> {
    let ngram_drafter = || if cache { NgramDrafter::with_cache(ngram) } else { NgramDrafter::new(ngram) }.with_texts(Arc::clone(texts));
    match (kind, model) {
        (None, _) => Box::new(NoDraft),
        (Some(DrafterKind::Ngram), _) => Box::new(ngram_drafter()),
        (Some(DrafterKind::Model), Some(m)) => Box::new(ModelDrafter::new(m)),
        (Some(DrafterKind::Hybrid), Some(m)) => Box::new(HybridDrafter { ngram: ngram_drafter(), model: ModelDrafter::new(m) }),
        (Some(_), None) => Box::new(NoDraft),
    }
}

/// What a command runs on: the target, the drafter the plan asks for, and the text codec.
/// The clock is the wall clock, except on the mock backend, whose models advance a
/// [`crate::backend::mock::MockClock`] so that its timings (and so its output) are reproducible.
/// The job gets the target, the draft model (when the plan needs one) and builds its drafters
/// with [`make_drafter`].
pub type Job<'a> = &'a mut dyn FnMut(&mut dyn Model, Option<&mut dyn Model>, &dyn TextCodec, &dyn Clock) -> Result<ExitCode>;

/// Load the plan's models (or mock ones) once and hand them to `job`. The mock honours the
/// plan's context and batch sizes, and with `plan.mock_delay` sleeps once to load and in every target decode
/// (so that tests can interrupt a long record).
/// The mock backend's vocabulary: 97 printable tokens ([`MockCodec`]'s text mode).
pub const MOCK_VOCAB: usize = 97;

pub fn with_backend(plan: &Plan, mock: bool, job: Job<'_>) -> Result<ExitCode> {
    if mock {
        let spec = MockSpec {
            n_ctx: plan.target.n_ctx as usize,
            n_batch: plan.target.n_batch as usize,
            n_seq: plan.target.n_seq as usize,
            // printable text (see `MockCodec::text`), so that grammars run on it
            n_vocab: MOCK_VOCAB,
            ..MockSpec::target(1)
        };
        let clock = MockClock::new();
        // the mock loads as slowly as it decodes (so that tests see a server still loading)
        if let Some(d) = plan.mock_delay {
            std::thread::sleep(d);
        }
        let mut target = Slow { inner: MockModel::new(spec.clone()).with_clock(clock.clone()), delay: plan.mock_delay };
        let mut draft = plan.draft.as_ref().map(|_| MockModel::new(MockSpec::draft_of(&spec, 0.8, 1)).with_clock(clock.clone()));
        let codec = MockCodec { n_vocab: spec.n_vocab, text: true };
        return job(&mut target, draft.as_mut().map(|d| d as &mut dyn Model), &codec, &clock);
    }
    with_llama(plan, job)
}

/// A model that sleeps before every decode (test hook for interrupts on the mock backend).
struct Slow<M> {
    inner: M,
    delay: Option<Duration>,
}

impl<M: Model> Model for Slow<M> {
    fn n_vocab(&self) -> usize {
        self.inner.n_vocab()
    }
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx()
    }
    fn n_batch(&self) -> usize {
        self.inner.n_batch()
    }
    fn is_eog(&self, token: Token) -> bool {
        self.inner.is_eog(token)
    }
    fn decode(
        &mut self,
        seq: specrun_core::model::SeqId,
        pos: usize,
        tokens: &[Token],
        logits_from: usize,
    ) -> Result<(), specrun_core::model::ModelError> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.inner.decode(seq, pos, tokens, logits_from)
    }
    fn logits(&self, row: usize) -> &[f32] {
        self.inner.logits(row)
    }
    fn truncate(&mut self, seq: specrun_core::model::SeqId, len: usize) -> Result<(), specrun_core::model::ModelError> {
        self.inner.truncate(seq, len)
    }
    fn n_seq_max(&self) -> usize {
        self.inner.n_seq_max()
    }
    fn decode_parts(&mut self, parts: &[specrun_core::model::DecodePart<'_>]) -> Result<(), specrun_core::model::ModelError> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.inner.decode_parts(parts)
    }
    fn snapshot(&mut self, seq: specrun_core::model::SeqId) -> Option<specrun_core::model::Snapshot> {
        self.inner.snapshot(seq)
    }
    fn restore(
        &mut self,
        seq: specrun_core::model::SeqId,
        snapshot: &specrun_core::model::Snapshot,
    ) -> Result<(), specrun_core::model::ModelError> {
        self.inner.restore(seq, snapshot)
    }
    fn copy_cells(
        &mut self,
        from: specrun_core::model::SeqId,
        to: specrun_core::model::SeqId,
        len: usize,
    ) -> Result<(), specrun_core::model::ModelError> {
        self.inner.copy_cells(from, to, len)
    }
}

#[cfg(feature = "llama")]
fn load(p: &ModelPlan) -> Result<crate::backend::llama::LoadedModel> {
    if p.path.exists() && !p.path.is_file() {
        bail!("model file is not a regular file: {} (model '{}')", p.path.display(), p.name);
    }
    if !p.path.is_file() {
        bail!("model file not found: {} (model '{}'; fetch the default models with scripts/fetch_models.py)", p.path.display(), p.name);
    }
    let s = crate::backend::llama::LoadSettings {
        n_gpu_layers: p.n_gpu_layers,
        devices: p.devices.clone(),
        batch_invariant: p.batch_invariant,
    };
    crate::backend::llama::LoadedModel::load_on(&p.path, &s).with_context(|| format!("model '{}'", p.name))
}

#[cfg(feature = "llama")]
fn context<'m>(m: &'m crate::backend::llama::LoadedModel, p: &ModelPlan) -> Result<crate::backend::llama::LlamaRunner<'m>> {
    m.context(crate::backend::llama::ContextSettings {
        n_ctx: p.n_ctx,
        n_batch: p.n_batch,
        threads: p.threads as i32,
        n_seq_max: p.n_seq,
        flash_attn: p.flash_attn,
        type_k: p.type_k,
        type_v: p.type_v,
        kv_offload: p.kv_offload,
        kv_unified: p.kv_unified,
    })
}

/// Before any weights are loaded: when layers go to a GPU, estimate what both models need on
/// each device ([`crate::backend::fit`]) and refuse with the fix when it does not fit.
#[cfg(feature = "llama")]
fn check_fit(plan: &Plan) -> Result<()> {
    use crate::backend::fit::{check, Footprint};
    use crate::backend::llama::{devices, LoadedModel};
    let models: Vec<(&'static str, &ModelPlan)> = std::iter::once(("target", &plan.target))
        .chain(plan.draft.iter().map(|d| ("draft", d)))
        .filter(|(_, m)| m.n_gpu_layers > 0)
        .collect();
    if models.is_empty() {
        return Ok(());
    }
    let gpus: Vec<_> = devices()?.into_iter().filter(|d| d.kind != "cpu").collect();
    if gpus.is_empty() {
        crate::io::note("note: this build of llama.cpp sees no GPU; -ngl/-ngld have no effect (`specrun devices`)");
        return Ok(());
    }
    let mut by_device: Vec<(String, u64, Vec<Footprint>)> = Vec::new();
    for (role, m) in models {
        if m.devices.iter().any(|d| d.eq_ignore_ascii_case("none")) || !m.path.is_file() {
            continue;
        }
        // the first named device, else llama.cpp's default (the first GPU); a split over
        // several devices is checked against the first as if it held everything (errs high)
        let dev = match m.devices.first() {
            Some(name) => gpus.iter().find(|d| d.name.eq_ignore_ascii_case(name)),
            None => gpus.first(),
        };
        let Some(dev) = dev else { continue };
        let shape = LoadedModel::load_vocab_only(&m.path)?.shape();
        let f = Footprint {
            role,
            name: m.name.clone(),
            file_bytes: std::fs::metadata(&m.path).map_or(0, |x| x.len()),
            n_layer: shape.n_layer,
            n_embd_kv: (shape.n_embd * shape.n_head_kv).checked_div(shape.n_head).unwrap_or(shape.n_embd),
            n_embd: shape.n_embd,
            n_vocab: shape.n_vocab,
            n_gpu_layers: u64::from(m.n_gpu_layers),
            n_cells: u64::from(m.n_ctx) * u64::from(m.n_seq.max(1)),
            n_ubatch: u64::from(m.n_batch),
            type_k: m.type_k,
            type_v: m.type_v,
            kv_offload: m.kv_offload,
        };
        match by_device.iter_mut().find(|(n, _, _)| *n == dev.name) {
            Some((_, _, v)) => v.push(f),
            None => by_device.push((dev.name.clone(), dev.memory_free, vec![f])),
        }
    }
    for (name, free, models) in &by_device {
        check(models, name, *free).map_err(|e| anyhow::anyhow!("the models do not fit: {e}"))?;
    }
    Ok(())
}

#[cfg(feature = "llama")]
fn with_llama(plan: &Plan, job: Job<'_>) -> Result<ExitCode> {
    check_fit(plan)?;
    let target_model = load(&plan.target)?;
    let draft_model = plan.draft.as_ref().map(load).transpose()?;
    if let Some(d) = &draft_model {
        specrun_core::vocab::check_compatible(&target_model.vocab_facts(), &d.vocab_facts())
            .map_err(|e| anyhow::anyhow!("{} cannot draft for {}: {e}", d.path.display(), target_model.path.display()))?;
    }
    let mut target = context(&target_model, &plan.target)?;
    if plan.drafter.is_some() && !target.can_roll_back() {
        bail!("{} has recurrent or hybrid memory, which cannot roll back a rejected draft", target_model.path.display());
    }
    let mut draft = match (&draft_model, &plan.draft) {
        (Some(m), Some(p)) => Some(context(m, p)?),
        _ => None,
    };
    job(&mut target, draft.as_mut().map(|d| d as &mut dyn Model), &target_model, &WallClock::new())
}

#[cfg(not(feature = "llama"))]
fn with_llama(_: &Plan, _: Job<'_>) -> Result<ExitCode> {
    bail!("this specrun was built without the llama.cpp backend (cargo feature `llama`)")
}
