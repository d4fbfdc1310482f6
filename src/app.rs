//! The binary's commands: resolve settings (flags over `models.toml`), load models, run the
//! engine, print. This is the edge: errors are `anyhow`, clocks are real, output is written.

use crate::cli::{Cli, Command, DrafterKind, GenArgs, ModelArgs, RunArgs};
use crate::control::AdaptiveMode;
use crate::ngram::{HybridDrafter, NgramConfig, NgramDrafter};
use crate::config::{self, Config};
use crate::detok::Utf8Stream;
use crate::draft::{Drafter, ModelDrafter, NoDraft};
use crate::engine::{Engine, GenConfig};
use crate::mock::{MockCodec, MockModel, MockSpec};
use crate::model::{Model, TextCodec, Token};
use crate::report::{CompareReport, RunReport};
use crate::sampling::SamplingParams;
use crate::stats::Clock;
use crate::verify::VerifyMode;
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
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

/// One model to load, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    pub name: String,
    pub path: PathBuf,
    pub n_gpu_layers: u32,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: u32,
}

/// Everything a generating command needs, flags merged over the models file.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub target: ModelPlan,
    /// The draft model, when the drafter needs one.
    pub draft: Option<ModelPlan>,
    /// `None`: target-only.
    pub drafter: Option<DrafterKind>,
    pub ngram: NgramConfig,
    pub gen: GenConfig,
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}

fn model_plan(name: &str, entry: &config::ModelEntry, cache: &std::path::Path, a: &ModelArgs, ngl: Option<u32>) -> ModelPlan {
    ModelPlan {
        name: name.to_string(),
        path: config::resolve(&entry.path, cache),
        n_gpu_layers: ngl.unwrap_or(entry.n_gpu_layers),
        n_ctx: a.ctx_size.unwrap_or(entry.n_ctx),
        n_batch: a.batch_size.or(entry.n_batch).unwrap_or(512),
        threads: a.threads.or(entry.threads).unwrap_or_else(default_threads),
    }
}

/// Merge flags over the models file (flags win).
pub fn plan(models: &ModelArgs, gen: &GenArgs) -> Result<Plan> {
    let cache = models.models_dir.clone().unwrap_or_else(config::models_cache);
    let mut cfg = GenConfig { adaptive: AdaptiveMode::Auto, ..GenConfig::default() };
    let mut params = SamplingParams::greedy();
    let mut drafter = DrafterKind::Hybrid;
    let mut ngram = NgramConfig::default();
    let (target, draft) = if let Some(target_path) = &models.model {
        if models.pair.is_some() {
            bail!("--pair and -m/--model exclude each other");
        }
        let direct = |name: &str, path: &PathBuf, ngl: Option<u32>| {
            let entry = config::ModelEntry { path: path.clone(), n_gpu_layers: 0, n_ctx: 4096, threads: None, n_batch: None };
            model_plan(name, &entry, &cache, models, ngl)
        };
        let target = direct("target", target_path, models.n_gpu_layers);
        let draft = models.model_draft.as_ref().map(|p| direct("draft", p, models.n_gpu_layers_draft));
        (target, draft)
    } else {
        if models.model_draft.is_some() {
            bail!("--model-draft needs -m/--model for the target");
        }
        let config = Config::load(&models.config)?;
        let name = match (&models.pair, &config.models.default_pair) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => bail!("{}: no default_pair; name one with --pair", config.file),
        };
        let pair = config.pair(&name)?;
        let t = pair.target.get_ref();
        let d = pair.draft.get_ref();
        let target = model_plan(t, config.model(t)?, &cache, models, models.n_gpu_layers);
        let draft = model_plan(d, config.model(d)?, &cache, models, models.n_gpu_layers_draft);
        cfg.draft_max = pair.draft_max;
        cfg.draft_p_min = pair.draft_p_min.unwrap_or(cfg.draft_p_min);
        cfg.max_tokens = pair.max_tokens.unwrap_or(cfg.max_tokens);
        cfg.seed = pair.seed.unwrap_or(cfg.seed);
        cfg.verify = pair.verify.unwrap_or(cfg.verify);
        params.temp = pair.temp.unwrap_or(params.temp);
        params.top_k = pair.top_k.unwrap_or(params.top_k);
        params.top_p = pair.top_p.unwrap_or(params.top_p);
        params.min_p = pair.min_p.unwrap_or(params.min_p);
        params.repeat_penalty = pair.repeat_penalty.unwrap_or(params.repeat_penalty);
        drafter = pair.drafter.unwrap_or(drafter);
        cfg.adaptive = pair.adaptive.unwrap_or(cfg.adaptive);
        cfg.draft_min = pair.draft_min.unwrap_or(cfg.draft_min);
        ngram.n_min = pair.ngram_min.unwrap_or(ngram.n_min);
        ngram.n_max = pair.ngram_max.unwrap_or(ngram.n_max);
        (target, Some(draft))
    };
    cfg.max_tokens = gen.max_tokens.unwrap_or(cfg.max_tokens);
    cfg.draft_max = gen.draft_max.unwrap_or(cfg.draft_max);
    cfg.draft_p_min = gen.draft_p_min.unwrap_or(cfg.draft_p_min);
    cfg.seed = gen.seed.unwrap_or(cfg.seed);
    cfg.verify = gen.verify.unwrap_or(cfg.verify);
    params.temp = gen.temp.unwrap_or(params.temp);
    params.top_k = gen.top_k.unwrap_or(params.top_k);
    params.top_p = gen.top_p.unwrap_or(params.top_p);
    params.min_p = gen.min_p.unwrap_or(params.min_p);
    params.repeat_penalty = gen.repeat_penalty.unwrap_or(params.repeat_penalty);
    drafter = gen.drafter.unwrap_or(drafter);
    cfg.adaptive = gen.adaptive.unwrap_or(cfg.adaptive);
    cfg.draft_min = gen.draft_min.unwrap_or(cfg.draft_min);
    ngram.n_min = gen.ngram_min.unwrap_or(ngram.n_min);
    ngram.n_max = gen.ngram_max.unwrap_or(ngram.n_max);
    if ngram.n_min == 0 || ngram.n_min > ngram.n_max {
        bail!("--ngram-min must be >= 1 and <= --ngram-max, got {} and {}", ngram.n_min, ngram.n_max);
    }
    params.validate().map_err(|e| anyhow!("--{e}"))?;
    if !(0.0..=1.0).contains(&cfg.draft_p_min) {
        bail!("--draft-p-min must be in [0, 1], got {}", cfg.draft_p_min);
    }
    if cfg.verify == VerifyMode::Greedy && !params.is_greedy() {
        cfg.verify = VerifyMode::Rejection;
    }
    cfg.params = params;
    let drafter = if gen.no_draft { None } else { Some(drafter) };
    if drafter.is_some_and(DrafterKind::needs_model) && draft.is_none() {
        bail!("--draft {} needs a draft model (-md or a pair); use --draft ngram or --no-draft", drafter.map_or("", |d| d.as_str()));
    }
    let draft = if drafter.is_some_and(DrafterKind::needs_model) { draft } else { None };
    Ok(Plan { target, draft, drafter, ngram, gen: cfg })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPECRUN_LOG").unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// Entry point of the binary: `Ok(code)` for handled outcomes, `Err` for one-line errors.
pub fn run_cli(cli: Cli) -> Result<ExitCode> {
    init_logging(cli.verbose);
    match cli.command {
        Command::Run(args) => run_command(&args),
        Command::CheckPair(models) => check_pair(&models),
        Command::Batch(args) => crate::batch_cmd::batch_command(&args),
        Command::Bench(args) => crate::bench_cmd::bench_command(&args),
    }
}

fn read_prompt(args: &RunArgs) -> Result<String> {
    match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("--prompt-file {}: cannot read", f.display())),
        (None, None) => bail!("give --prompt or --prompt-file"),
    }
}

/// Output of one generation.
pub struct Generated {
    pub report: RunReport,
    pub tokens: Vec<Token>,
    pub stats: crate::stats::GenStats,
}

/// Run one prompt to the end on `engine`, streaming text to `stream` when given, stopping
/// early at the first of `stops` (the text is cut before it).
pub fn generate<T: Model, D: Drafter>(
    engine: &mut Engine<T, D>,
    codec: &dyn TextCodec,
    prompt: &[Token],
    clock: &dyn Clock,
    mut stream: Option<&mut dyn Write>,
    stops: &[String],
) -> Result<Generated> {
    let mut seq = engine.start(0, prompt.to_vec(), clock)?;
    let mut utf8 = Utf8Stream::new();
    let mut text = String::new();
    let mut emit = |piece: &str, text: &mut String| -> Result<()> {
        text.push_str(piece);
        if let Some(w) = stream.as_deref_mut() {
            w.write_all(piece.as_bytes()).and_then(|_| w.flush()).context("cannot write the output")?;
        }
        Ok(())
    };
    while seq.finish.is_none() {
        let added = engine.step(&mut seq, clock)?;
        // end-of-generation tokens render as nothing (pieces are taken without specials)
        for &t in &seq.tokens[added] {
            let piece = utf8.push(&codec.piece(t));
            emit(&piece, &mut text)?;
        }
        if let (kept, true) = crate::batch::cut_at_stop(&text, stops) {
            text.truncate(kept.len());
            seq.finish = Some(crate::stats::FinishReason::Stop);
        }
    }
    if !crate::batch::cut_at_stop(&text, stops).1 {
        let tail = utf8.finish();
        emit(&tail, &mut text)?;
    }
    let finish = seq.finish.expect("loop ends when finished");
    let drafter = engine.drafter.name();
    let verify = engine.config.effective_verify();
    let draft_max = if engine.drafter.is_active() { engine.config.draft_max } else { 0 };
    let report = RunReport::new(text, finish, drafter, engine.config.adaptive, verify.as_str(), draft_max, &seq.stats);
    Ok(Generated { report, tokens: seq.generated().to_vec(), stats: seq.stats })
}

/// The drafter a plan asks for, over an already created draft model (if it needs one).
pub(crate) fn make_drafter<'a, M: Model + 'a>(kind: Option<DrafterKind>, ngram: NgramConfig, model: Option<M>) -> Box<dyn Drafter + 'a> {
    match (kind, model) {
        (None, _) => Box::new(NoDraft),
        (Some(DrafterKind::Ngram), _) => Box::new(NgramDrafter::new(ngram)),
        (Some(DrafterKind::Model), Some(m)) => Box::new(ModelDrafter::new(m)),
        (Some(DrafterKind::Hybrid), Some(m)) => Box::new(HybridDrafter { ngram: NgramDrafter::new(ngram), model: ModelDrafter::new(m) }),
        (Some(_), None) => Box::new(NoDraft),
    }
}

/// What a command runs on: the target, the drafter the plan asks for, and the text codec.
/// The clock is the wall clock, except on the mock backend, whose models advance a
/// [`crate::mock::MockClock`] so that its timings (and so its output) are reproducible.
/// The job gets the target, the draft model (when the plan needs one) and builds its drafters
/// with [`make_drafter`].
pub(crate) type Job<'a> = &'a mut dyn FnMut(&mut dyn Model, Option<&mut dyn Model>, &dyn TextCodec, &dyn Clock) -> Result<ExitCode>;

/// Load the plan's models (or mock ones) once and hand them to `job`.
pub(crate) fn with_backend(plan: &Plan, mock: bool, job: Job<'_>) -> Result<ExitCode> {
    if mock {
        let spec = MockSpec::target(1);
        let clock = crate::mock::MockClock::new();
        let mut target = MockModel::new(spec.clone()).with_clock(clock.clone());
        let mut draft = plan.draft.as_ref().map(|_| MockModel::new(MockSpec::draft_of(&spec, 0.8, 1)).with_clock(clock.clone()));
        let codec = MockCodec { n_vocab: spec.n_vocab };
        return job(&mut target, draft.as_mut().map(|d| d as &mut dyn Model), &codec, &clock);
    }
    with_llama(plan, job)
}

#[cfg(feature = "llama")]
fn load(p: &ModelPlan) -> Result<crate::llama::LoadedModel> {
    if !p.path.is_file() {
        bail!(
            "model file not found: {} (model '{}'; fetch the default models with scripts/fetch_models.py)",
            p.path.display(),
            p.name
        );
    }
    crate::llama::LoadedModel::load(&p.path, p.n_gpu_layers)
}

#[cfg(feature = "llama")]
fn context<'m>(m: &'m crate::llama::LoadedModel, p: &ModelPlan) -> Result<crate::llama::LlamaRunner<'m>> {
    m.context(crate::llama::ContextSettings { n_ctx: p.n_ctx, n_batch: p.n_batch, threads: p.threads as i32, n_seq_max: 1 })
}

#[cfg(feature = "llama")]
fn with_llama(plan: &Plan, job: Job<'_>) -> Result<ExitCode> {
    let target_model = load(&plan.target)?;
    let draft_model = plan.draft.as_ref().map(load).transpose()?;
    if let Some(d) = &draft_model {
        crate::vocab::check_compatible(&target_model.vocab_facts(), &d.vocab_facts()).map_err(|e| {
            anyhow!("{} cannot draft for {}: {e}", d.path.display(), target_model.path.display())
        })?;
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

/// `run`: one prompt, speculative, target-only or both.
fn run_command(args: &RunArgs) -> Result<ExitCode> {
    let plan = plan(&args.models, &args.gen)?;
    let prompt = read_prompt(args)?;
    with_backend(&plan, args.models.mock, &mut |target, draft, codec, clock| {
        execute(target, make_drafter(plan.drafter, plan.ngram, draft), codec, clock, &prompt, args, &plan)
    })
}

fn execute(
    target: &mut dyn Model,
    drafter: Box<dyn Drafter + '_>,
    codec: &dyn TextCodec,
    clock: &dyn Clock,
    prompt: &str,
    args: &RunArgs,
    plan: &Plan,
) -> Result<ExitCode> {
    let prompt = if args.chat {
        codec.chat(&[("user".into(), prompt.to_string())]).map_err(|e| anyhow!(e))?
    } else {
        prompt.to_string()
    };
    let tokens = codec.tokenize(&prompt);
    let mut stdout = std::io::stdout();
    let stream: Option<&mut dyn Write> = if args.json { None } else { Some(&mut stdout) };
    if args.compare {
        let mut baseline = Engine::new(&mut *target, NoDraft, plan.gen.clone());
        let base = generate(&mut baseline, codec, &tokens, clock, None, &[])?;
        let mut engine = Engine::new(&mut *target, drafter, plan.gen.clone());
        let spec = generate(&mut engine, codec, &tokens, clock, stream, &[])?;
        let cmp = CompareReport::new(base.report, spec.report);
        if args.json {
            println!("{}", serde_json::to_string(&cmp)?);
        } else {
            println!();
            eprint!("{}{}", cmp.speculative.stats_block(), cmp.summary());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut engine = Engine::new(&mut *target, drafter, plan.gen.clone());
    let out = generate(&mut engine, codec, &tokens, clock, stream, &[])?;
    if args.json {
        println!("{}", serde_json::to_string(&out.report)?);
    } else {
        println!();
        eprint!("{}", out.report.stats_block());
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-pair`: vocabularies only.
fn check_pair(models: &ModelArgs) -> Result<ExitCode> {
    let gen = GenArgs { drafter: Some(DrafterKind::Model), ..GenArgs::default() };
    let plan = plan(models, &gen)?;
    let draft = plan.draft.as_ref().ok_or_else(|| anyhow!("check-pair needs a draft model (-md or a pair)"))?;
    check_pair_files(&plan.target, draft)
}

#[cfg(feature = "llama")]
fn check_pair_files(target: &ModelPlan, draft: &ModelPlan) -> Result<ExitCode> {
    let t = crate::llama::LoadedModel::load_vocab_only(&target.path)?;
    let d = crate::llama::LoadedModel::load_vocab_only(&draft.path)?;
    let (tf, df) = (t.vocab_facts(), d.vocab_facts());
    match crate::vocab::check_compatible(&tf, &df) {
        Ok(()) => {
            println!(
                "compatible: draft {} ({} tokens) can draft for target {} ({} tokens), vocabulary {}",
                draft.name,
                df.texts.len(),
                target.name,
                tf.texts.len(),
                tf.kind
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: incompatible pair: draft {} cannot draft for target {}: {e}", draft.path.display(), target.path.display());
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(not(feature = "llama"))]
fn check_pair_files(_: &ModelPlan, _: &ModelPlan) -> Result<ExitCode> {
    bail!("this specrun was built without the llama.cpp backend (cargo feature `llama`)")
}
