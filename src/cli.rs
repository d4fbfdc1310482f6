//! Command-line interface definitions (clap).
//!
//! llama.cpp users type `-md`, `-ngl`, `-ngld`; [`normalize_args`] maps those single-dash
//! spellings onto the long flags before clap parses. Flags become the layers' own types here
//! ([`ModelArgs::selection`], [`GenArgs::overrides`]), each value tagged with its flag so that
//! a bad one is reported as `--top-p must be …`. Negative numbers reach the validators
//! (`--temp -1` is "must be a number >= 0", not "unexpected argument").

use crate::formats::models_toml::ModelSettings;
use crate::formats::records::InputFormat;
use crate::infer::ModelSelection;
use crate::settings::{Origin, Overrides, Setting};
use clap::{Args, Parser, Subcommand};
use specrun_core::control::AdaptiveMode;
use specrun_core::draft::DrafterKind;
use specrun_core::verify::VerifyMode;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "specrun", version, about = "Speculative decoding runner for GGUF models on llama.cpp", allow_negative_numbers = true)]
pub struct Cli {
    /// More log output (-v: specrun and llama.cpp info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate from one prompt, speculatively (or target-only with --no-draft).
    Run(RunArgs),
    /// Check that a draft model's vocabulary is compatible with a target's (vocab only, fast).
    CheckPair(ModelArgs),
    /// Run a file of prompts to JSON Lines: streamed, resumable, with progress.
    Batch(BatchArgs),
    /// Sweep draft configurations against target-only decoding, export, plot, auto-tune.
    Bench(BenchArgs),
    /// Check that shard outputs cover every input record exactly once.
    Shards(ShardsArgs),
    /// Measure the target's decode cost by batch size and store it for `auto` to plan with.
    Calibrate(CalibrateArgs),
    /// Serve an OpenAI-compatible HTTP API (chat and text completions, streamed or not),
    /// speculative for every request, several requests per target decode.
    Serve(ServeArgs),
    /// The backends and devices llama.cpp sees (the names --device takes, free/total memory).
    Devices(DevicesArgs),
    /// Show or create the models file (`path`, `init`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `specrun man > specrun.1`.
    Man,
}

impl Command {
    /// Whether the command's result goes to stdout (everything but `batch` to a file).
    pub fn writes_stdout(&self) -> bool {
        if let Command::Shards(_) = self {
            return true;
        }
        match self {
            Command::Batch(b) => crate::io::is_stdout(&b.output),
            Command::Serve(_) => false,
            _ => true,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the models file specrun reads, and the places it looks, in order.
    Path {
        /// A models file, as --config would name it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write the shipped defaults to the user's config directory (or FILE) to edit them.
    Init {
        /// Where to write (default: the user's config directory).
        #[arg(value_name = "FILE")]
        path: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    /// Pairs to sweep (default: --pair, else the default pair).
    #[arg(long, value_delimiter = ',', value_name = "PAIR,...")]
    pub pairs: Vec<String>,
    /// Draft lengths.
    #[arg(allow_negative_numbers = true, long = "draft-max", value_delimiter = ',', default_value = "1,2,4,8", value_name = "K,...")]
    pub draft_max: Vec<usize>,
    /// Temperatures (0: greedy; others sample with rejection verification).
    #[arg(allow_negative_numbers = true, long, value_delimiter = ',', default_value = "0", value_name = "T,...")]
    pub temp: Vec<f32>,
    /// Drafters.
    #[arg(long = "drafter", value_enum, value_delimiter = ',', default_value = "model", value_name = "KIND,...")]
    pub drafter: Vec<DrafterKind>,
    /// Draft-length policies.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fixed", value_name = "MODE,...")]
    pub adaptive: Vec<AdaptiveMode>,
    /// Sequences in flight: above 1 all prompts run through continuous batching (one target
    /// decode per round for every sequence), target-only and speculative, and tok/s is the
    /// aggregate rate of the decode rounds.
    #[arg(long, value_delimiter = ',', default_value = "1", value_name = "N,...")]
    pub parallel: Vec<usize>,
    /// Generate past end-of-generation tokens: every prompt runs its full token count (the
    /// shape llama-batched-bench measures).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Prompt file (JSON Lines records as for `batch`, or .txt with one prompt per line).
    #[arg(long, value_name = "FILE", required_unless_present = "from_json")]
    pub prompts: Option<PathBuf>,
    /// Measure nothing: re-render the table, exports and plot from a saved --export-json file.
    #[arg(long, value_name = "FILE.json", conflicts_with = "write_best")]
    pub from_json: Option<PathBuf>,
    /// Tokens per prompt (a record's own max_tokens wins).
    #[arg(allow_negative_numbers = true, short = 'n', long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
    /// Repeats of every configuration (target-only and speculative interleaved).
    #[arg(allow_negative_numbers = true, long, default_value_t = 3, value_name = "N")]
    pub repeat: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Write the results as JSON (`-`: stdout), rewritten after each configuration.
    #[arg(long, value_name = "FILE")]
    pub export_json: Option<PathBuf>,
    /// Write the results as CSV (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub export_csv: Option<PathBuf>,
    /// Write the results as a Markdown table (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub export_markdown: Option<PathBuf>,
    /// Draw speed-up against draft length as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write each pair's best settings into the models file (comments and layout kept).
    #[arg(long)]
    pub write_best: bool,
    /// Also show each prompt's own speed-up, acceptance and tokens per round (terminal table
    /// and Markdown export; the JSON export always has them). One sequence at a time only.
    #[arg(long)]
    pub per_prompt: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    /// Batch sizes to measure (default: 1-10, 12, 14, 16, 17, 20, 24, 32, 33, 48, 64, within n_batch).
    #[arg(long, value_delimiter = ',', value_name = "B,...")]
    pub sizes: Vec<usize>,
    /// Sequence counts to measure in one decode, one token each (default: 2, 4, 8, 16; 1:
    /// one sequence only).
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    pub seqs: Vec<usize>,
    /// Measurements per size (the median is kept).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub repeat: usize,
    /// Print the stored curve instead of measuring.
    #[arg(long)]
    pub show: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Prompt file (JSON Lines records, or one prompt per line with --input-format txt).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Output file, one JSON object per input record (its settings go beside it, in
    /// FILE.specrun.json, for --resume).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Input format (default: by extension, `.txt` is txt; otherwise `openai` when the first
    /// record has a `custom_id` — the OpenAI Batch API's lines, answered in its output
    /// format — else specrun's JSON Lines records). Also spelled --format.
    #[arg(long, alias = "format", value_enum, value_name = "FORMAT")]
    pub input_format: Option<InputFormat>,
    /// Wrap `prompt` records (and txt lines) in the target's chat template too.
    #[arg(long)]
    pub chat: bool,
    /// Records in flight at once (continuous batching: one target decode per round for all of
    /// them), or `auto` (from the calibrated cost curve); default: the pair's `parallel`, else 1.
    /// Output stays in input order.
    #[arg(long, value_name = "N|auto", value_parser = parse_parallel)]
    pub parallel: Option<Parallel>,
    /// With --parallel: read new records' prompts inside the shared rounds, at most N prompt
    /// tokens a round beside the running records' tokens (`auto`: as many as fit a round of
    /// about half a second, by the measured cost); 0 (the default) reads each prompt alone
    /// between rounds.
    #[arg(long, default_value = "0", value_name = "N|auto", value_parser = parse_prefill_chunk)]
    pub prefill_chunk: PrefillChunk,
    /// With --parallel: a slot keeps a finished record's cells, and a record whose prompt
    /// begins like the one before it in a slot (a shared system prompt) reads only the rest.
    /// Off by default: each record's prompt is read whole, so its output does not depend on
    /// the records before it even at batch-shape near-ties.
    #[arg(long, default_value = "off", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub prompt_cache: bool,
    /// Host memory (MiB) for finished records' cells: a record whose prompt begins like an
    /// earlier one's (a shared instruction, a shared document) restores that prefix instead of
    /// reading it again. At most half the memory available at start; 0 turns it off. Greedy
    /// output may differ at batch-shape near-ties unless --deterministic. Also spelled -cram.
    #[arg(long, default_value_t = DEFAULT_CACHE_RAM_MIB, value_name = "MiB")]
    pub cache_ram: u64,
    /// The same as --cache-ram 0.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Let n-grams of earlier records' outputs propose drafts for later ones (a draft cache;
    /// verification is unchanged, so greedy output is too, up to batch-shape near-ties).
    #[arg(long)]
    pub draft_cache: bool,
    /// Continue an earlier output file: skip ids it holds, redo a line cut off by a crash.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar and no summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// Write one JSON line per round of every record this run generates to FILE (`-`:
    /// stderr), as `run --trace-rounds` does, each line with its record's `id` (records one
    /// at a time: --parallel 1).
    #[arg(long, value_name = "FILE")]
    pub trace_rounds: Option<PathBuf>,
    /// Test-only: after this many records, write half a record and abort (a simulated crash).
    #[arg(long, hide = true, value_name = "N")]
    pub debug_crash_after: Option<usize>,
    /// Process only the records whose index (0-based, in file order) is I mod N, so that N
    /// machines split one prompt file with no coordinator; check with `specrun shards`.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
}

pub use crate::settings::{FlashAttn, KvType, Parallel, PrefillChunk};

fn parse_prefill_chunk(s: &str) -> Result<PrefillChunk, String> {
    s.parse()
}

fn parse_parallel(s: &str) -> Result<Parallel, String> {
    s.parse()
}

fn parse_flash_attn(s: &str) -> Result<FlashAttn, String> {
    s.parse()
}

fn parse_kv_type(s: &str) -> Result<KvType, String> {
    s.parse()
}

/// GPU layers: a number, `all` or -1 (every layer), `auto` (every layer when this build has a
/// GPU backend, else none).
fn parse_gpu_layers(s: &str) -> Result<u32, String> {
    match s {
        "all" | "-1" => Ok(ALL_LAYERS),
        "auto" => Ok(if cfg!(any(feature = "cuda", feature = "vulkan", feature = "metal")) { ALL_LAYERS } else { 0 }),
        _ => s.parse().map_err(|_| format!("expected a number of layers, all, auto or -1, got {s:?}")),
    }
}

/// More layers than any model has: llama.cpp offloads every layer and the output layer.
pub const ALL_LAYERS: u32 = 999;

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// One of N shards of a prompt file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("expected I/N (e.g. 0/4), got {s:?}"))?;
    let index: usize = i.trim().parse().map_err(|_| format!("expected I/N with whole numbers, got {s:?}"))?;
    let count: usize = n.trim().parse().map_err(|_| format!("expected I/N with whole numbers, got {s:?}"))?;
    if count == 0 || count > 1_000_000 || index >= count {
        return Err(format!("I/N needs 0 <= I < N <= 1000000, got {s:?}"));
    }
    Ok(Shard { index, count })
}

#[derive(Debug, Clone, Args)]
pub struct ShardsArgs {
    /// The prompt file the shards were made from.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The shard outputs (`batch --shard I/N -o FILE`), in any order.
    #[arg(value_name = "OUTPUT", required = true)]
    pub outputs: Vec<PathBuf>,
    /// Input format (default: by extension).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<InputFormat>,
}

/// Which models to use and how to load them.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Pair from the models file (default: its `default_pair`). `-p` is the prompt, as in
    /// llama.cpp.
    #[arg(short = 'P', long)]
    pub pair: Option<String>,
    /// Target GGUF file (instead of a pair).
    #[arg(short = 'm', long = "model", value_name = "TARGET.gguf")]
    pub model: Option<PathBuf>,
    /// Draft GGUF file (with -m). Also spelled -md.
    #[arg(long = "model-draft", value_name = "DRAFT.gguf")]
    pub model_draft: Option<PathBuf>,
    /// The models file (default: $SPECRUN_CONFIG, ./models.toml, the user's config directory,
    /// then the built-in defaults; `specrun config path` shows which).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where relative model paths point (default: $SPECRUN_MODELS or ~/.cache/specrun/models).
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Layers of the target to offload to the GPU: N, `all` (also -1), or `auto` (all on a
    /// GPU build, none on a CPU build; the fit check refuses what does not fit). Also -ngl.
    #[arg(allow_negative_numbers = true, long = "n-gpu-layers", value_name = "N|all|auto", value_parser = parse_gpu_layers)]
    pub n_gpu_layers: Option<u32>,
    /// Layers of the draft to offload to the GPU (as --n-gpu-layers). Also spelled -ngld.
    #[arg(allow_negative_numbers = true, long = "n-gpu-layers-draft", value_name = "N|all|auto", value_parser = parse_gpu_layers)]
    pub n_gpu_layers_draft: Option<u32>,
    /// Devices for the target, by the names `specrun devices` prints (comma-separated), or
    /// `none` (CPU only). Also spelled -dev.
    #[arg(long = "device", value_delimiter = ',', value_name = "DEV,...")]
    pub device: Option<Vec<String>>,
    /// Devices for the draft (e.g. `none` to keep it on the CPU). Also spelled -devd.
    #[arg(long = "device-draft", value_delimiter = ',', value_name = "DEV,...")]
    pub device_draft: Option<Vec<String>>,
    /// Flash attention for both models: on, off or auto (bare: on). Also spelled -fa.
    #[arg(long = "flash-attn", value_name = "on|off|auto", value_parser = parse_flash_attn, num_args = 0..=1, default_missing_value = "on")]
    pub flash_attn: Option<FlashAttn>,
    /// KV cache type of the target's keys (f16, q8_0, q4_0, …). Also spelled -ctk.
    #[arg(long = "cache-type-k", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_k: Option<KvType>,
    /// KV cache type of the target's values. Also spelled -ctv.
    #[arg(long = "cache-type-v", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_v: Option<KvType>,
    /// KV cache type of the draft's keys. Also spelled -ctkd.
    #[arg(long = "cache-type-k-draft", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_k_draft: Option<KvType>,
    /// KV cache type of the draft's values. Also spelled -ctvd.
    #[arg(long = "cache-type-v-draft", value_name = "TYPE", value_parser = parse_kv_type)]
    pub cache_type_v_draft: Option<KvType>,
    /// Keep both KV caches in host memory even when layers are offloaded. Also spelled -nkvo.
    #[arg(long = "no-kv-offload")]
    pub no_kv_offload: bool,
    /// One KV buffer shared by all sequences in flight (on, the default) or one per sequence
    /// (off), for both models. Also spelled -kvu (= on).
    #[arg(long = "kv-unified", value_name = "on|off", value_parser = parse_on_off)]
    pub kv_unified: Option<bool>,
    /// Batch-invariant decoding: the target's logits for a token do not depend on what else
    /// shares the decode, so greedy speculative output is the target-only output bit for bit
    /// and identical requests get identical answers under any load. Runs the target on the
    /// CPU with flash attention; costs decode speed (docs/guide/exactness.md).
    #[arg(long)]
    pub deterministic: bool,
    /// CPU threads for both models (default: per model, else all cores).
    #[arg(allow_negative_numbers = true, short = 't', long, value_name = "N")]
    pub threads: Option<u32>,
    /// Context size for both models.
    #[arg(allow_negative_numbers = true, short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<u32>,
    /// Largest decode batch for both models.
    #[arg(allow_negative_numbers = true, short = 'b', long = "batch-size", value_name = "N")]
    pub batch_size: Option<u32>,
    /// Test-only: use deterministic mock models instead of GGUF files.
    #[arg(long, hide = true)]
    pub mock: bool,
    /// Test-only: the mock target sleeps this many milliseconds in every decode.
    #[arg(long, hide = true, value_name = "MS", requires = "mock")]
    pub mock_delay_ms: Option<u64>,
}

/// Generation settings shared by every command that generates (all unset by default: the
/// models file and the built-in defaults decide).
#[derive(Debug, Clone, Default, Args)]
pub struct GenArgs {
    /// Tokens to generate at most.
    #[arg(allow_negative_numbers = true, short = 'n', long = "max-tokens", value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Largest draft per round (default: the pair's draft_max, else 4). Also spelled
    /// --spec-draft-n-max (llama.cpp).
    #[arg(allow_negative_numbers = true, long, alias = "spec-draft-n-max", value_name = "K")]
    pub draft_max: Option<usize>,
    /// Stop drafting when the draft's top probability falls below P.
    #[arg(allow_negative_numbers = true, long, value_name = "P")]
    pub draft_p_min: Option<f32>,
    /// Target-only decoding through the same engine.
    #[arg(long)]
    pub no_draft: bool,
    /// Generate past end-of-generation tokens, always `--max-tokens` (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// What drafts (default: the pair's `drafter`, else hybrid).
    #[arg(long = "draft", value_enum, value_name = "KIND")]
    pub drafter: Option<DrafterKind>,
    /// How the draft length is chosen each round (default: the pair's, else auto).
    #[arg(long, value_enum, value_name = "MODE")]
    pub adaptive: Option<AdaptiveMode>,
    /// Drafts shorter than this are not verified.
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    pub draft_min: Option<usize>,
    /// Shortest n-gram that counts as a match.
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    pub ngram_min: Option<usize>,
    /// Longest n-gram tried first.
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    pub ngram_max: Option<usize>,
    /// Temperature (0: greedy).
    #[arg(allow_negative_numbers = true, long, value_name = "T")]
    pub temp: Option<f32>,
    /// Top-k (0: off).
    #[arg(allow_negative_numbers = true, long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Top-p (1: off).
    #[arg(allow_negative_numbers = true, long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Min-p (0: off).
    #[arg(allow_negative_numbers = true, long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Repetition penalty over the last 64 tokens (1: off).
    #[arg(allow_negative_numbers = true, long, value_name = "X")]
    pub repeat_penalty: Option<f32>,
    /// Subtracted from a token's logit for each time it occurs in the last 64 tokens, in
    /// [-2, 2] (0: off).
    #[arg(allow_negative_numbers = true, long, value_name = "X")]
    pub frequency_penalty: Option<f32>,
    /// Subtracted from the logit of every token that occurs in the last 64 tokens, in [-2, 2]
    /// (0: off).
    #[arg(allow_negative_numbers = true, long, value_name = "X")]
    pub presence_penalty: Option<f32>,
    /// Add BIAS to token ID's logit, as `ID+BIAS` or `ID-BIAS` (llama.cpp's form; -100 or
    /// less bans the token); repeatable.
    #[arg(short = 'l', long, value_name = "ID(+|-)BIAS", value_parser = parse_logit_bias)]
    pub logit_bias: Vec<(i32, f32)>,
    /// RNG seed for sampling.
    #[arg(allow_negative_numbers = true, short = 's', long, value_name = "N")]
    pub seed: Option<u64>,
    /// How the target checks drafts when sampling.
    #[arg(long, value_enum, value_name = "MODE")]
    pub verify: Option<VerifyMode>,
}

/// What the output must follow (llama.cpp's flag names; one at most).
#[derive(Debug, Clone, Default, Args)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// Output valid against this JSON schema (inline JSON). Also spelled -j.
    #[arg(short = 'j', long, value_name = "SCHEMA")]
    pub json_schema: Option<String>,
    /// Output valid against the JSON schema in FILE. Also spelled -jf.
    #[arg(long, value_name = "FILE")]
    pub json_schema_file: Option<PathBuf>,
    /// Output that is one JSON object, any keys.
    #[arg(long)]
    pub json_object: bool,
    /// Output following this grammar: llama.cpp's GBNF (`root ::= ...`) or llguidance's
    /// Lark syntax (`start: ...`).
    #[arg(long, value_name = "GRAMMAR")]
    pub grammar: Option<String>,
    /// Output following the grammar in FILE (GBNF or Lark).
    #[arg(long, value_name = "FILE")]
    pub grammar_file: Option<PathBuf>,
    /// Output matching this regular expression, whole.
    #[arg(long, value_name = "REGEX")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// The prompt (-p as in llama.cpp; the pair is -P).
    #[arg(short = 'p', long, value_name = "TEXT", conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read one (long) prompt from a file.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the target model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Run target-only and speculative on the same prompt and report the speed-up.
    #[arg(long, conflicts_with = "no_draft")]
    pub compare: bool,
    /// Print one JSON object on stdout instead of text and a stats block.
    #[arg(long)]
    pub json: bool,
    /// Write one JSON object per round of the speculative run to FILE (`-`: stderr): the
    /// draft's source and copy run, planned and drafted length, what was accepted, what the
    /// plan expected and what the round took, and the text drafted and kept.
    #[arg(long, value_name = "FILE")]
    pub trace_rounds: Option<PathBuf>,
    /// Print the prompt as the target reads it (after --chat's template) and exit without
    /// generating: what to give another tool to compare the same text.
    #[arg(long, conflicts_with_all = ["compare", "json", "trace_rounds"])]
    pub print_prompt: bool,
}

/// `specrun devices`.
#[derive(Debug, Clone, Args)]
pub struct DevicesArgs {
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `specrun serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generated at once (continuous batching: one target decode per round for all),
    /// or `auto` (from the calibrated cost curve); default: the pair's `parallel`, else 4.
    #[arg(long, value_name = "N|auto", value_parser = parse_parallel)]
    pub parallel: Option<Parallel>,
    /// Prompt tokens read a round beside the running requests' tokens: a long prompt is read in
    /// chunks while the other streams go on. `auto`: as many as fit a round of about half a
    /// second, by the measured cost of earlier prompt rounds (shorter pauses, slower prompts
    /// on a CPU); 0 reads each prompt alone between rounds (the running streams wait for it).
    #[arg(long, default_value = "256", value_name = "N|auto", value_parser = parse_prefill_chunk)]
    pub prefill_chunk: PrefillChunk,
    /// A slot keeps a finished request's cells (not those of a request whose client left), and
    /// a new request goes to the free slot that shares the longest prefix with its prompt and
    /// reads only the rest: a chat's next turn, or requests with one system prompt (as
    /// llama-server's `cache_prompt`). Greedy output may differ at batch-shape near-ties.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub prompt_cache: bool,
    /// Host memory (MiB) for finished requests' cells (llama-server's --cache-ram): a request
    /// whose prompt begins like an earlier one's restores that prefix into whichever slot it
    /// gets. At most half the memory available at start; 0 turns it off. Also spelled -cram.
    #[arg(long, default_value_t = DEFAULT_CACHE_RAM_MIB, value_name = "MiB")]
    pub cache_ram: u64,
    /// Requests that may wait for a slot; beyond that the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every route except /health (also
    /// $SPECRUN_API_KEY).
    #[arg(long, value_name = "KEY", env = "SPECRUN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub grace: u64,
    /// The model name the server lists (default: the pair's name, or the target file's stem).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// Answer 404 to a request whose `model` is not that name (by default any name is served
    /// by the one pair, as llama-server does).
    #[arg(long)]
    pub strict_model: bool,
    /// Let browser pages from ORIGIN call the API (CORS; `*` for any origin); repeatable. Off
    /// by default: a browser page elsewhere gets no answer it can read.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
}

/// `ID+BIAS` / `ID-BIAS` (llama.cpp's `--logit-bias`; `-inf` bans).
fn parse_logit_bias(s: &str) -> Result<(i32, f32), String> {
    let at = s.find(['+', '-']).filter(|&i| i > 0).ok_or_else(|| format!("expected ID+BIAS or ID-BIAS, got '{s}'"))?;
    let id = s[..at].trim().parse::<i32>().map_err(|_| format!("expected a token id before the sign, got '{}'", &s[..at]))?;
    let bias = match s[at..].trim() {
        "-inf" => specrun_core::sampling::BAN_BIAS,
        b => b.parse::<f32>().map_err(|_| format!("expected a number after the token id, got '{}'", &s[at..]))?,
    };
    if id < 0 || !bias.is_finite() {
        return Err(format!("expected a token id >= 0 and a finite bias, got '{s}'"));
    }
    Ok((id, bias))
}

fn flag<T>(v: Option<T>, name: &'static str) -> Option<Setting<T>> {
    v.map(|v| Setting::new(v, Origin::Flag(name)))
}

impl ModelArgs {
    /// The models these flags select, for [`crate::infer::plan()`].
    pub fn selection(&self) -> ModelSelection {
        ModelSelection {
            config: self.config.clone(),
            pair: self.pair.clone(),
            model: self.model.clone(),
            model_draft: self.model_draft.clone(),
            models_dir: self.models_dir.clone(),
            flags: ModelSettings {
                n_gpu_layers: flag(self.n_gpu_layers, "--n-gpu-layers"),
                n_ctx: flag(self.ctx_size, "--ctx-size"),
                threads: flag(self.threads, "--threads"),
                n_batch: flag(self.batch_size, "--batch-size"),
                devices: flag(self.device.clone(), "--device"),
                flash_attn: flag(self.flash_attn, "--flash-attn"),
                cache_type_k: flag(self.cache_type_k, "--cache-type-k"),
                cache_type_v: flag(self.cache_type_v, "--cache-type-v"),
                kv_offload: self.no_kv_offload.then(|| Setting::new(false, Origin::Flag("--no-kv-offload"))),
                kv_unified: flag(self.kv_unified, "--kv-unified"),
                deterministic: self.deterministic.then(|| Setting::new(true, Origin::Flag("--deterministic"))),
            },
            draft_flags: ModelSettings {
                n_gpu_layers: flag(self.n_gpu_layers_draft, "--n-gpu-layers-draft"),
                devices: flag(self.device_draft.clone(), "--device-draft"),
                cache_type_k: flag(self.cache_type_k_draft, "--cache-type-k-draft"),
                cache_type_v: flag(self.cache_type_v_draft, "--cache-type-v-draft"),
                ..ModelSettings::default()
            },
            mock: self.mock,
            mock_delay: self.mock_delay_ms.map(std::time::Duration::from_millis),
        }
    }
}

impl GenArgs {
    /// The generation settings these flags set, each tagged with its flag.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            max_tokens: flag(self.max_tokens, "--max-tokens"),
            draft_max: flag(self.draft_max, "--draft-max"),
            draft_p_min: flag(self.draft_p_min, "--draft-p-min"),
            draft_min: flag(self.draft_min, "--draft-min"),
            drafter: flag(self.drafter, "--draft"),
            adaptive: flag(self.adaptive, "--adaptive"),
            ngram_min: flag(self.ngram_min, "--ngram-min"),
            ngram_max: flag(self.ngram_max, "--ngram-max"),
            temp: flag(self.temp, "--temp"),
            top_k: flag(self.top_k, "--top-k"),
            top_p: flag(self.top_p, "--top-p"),
            min_p: flag(self.min_p, "--min-p"),
            repeat_penalty: flag(self.repeat_penalty, "--repeat-penalty"),
            frequency_penalty: flag(self.frequency_penalty, "--frequency-penalty"),
            presence_penalty: flag(self.presence_penalty, "--presence-penalty"),
            logit_bias: (!self.logit_bias.is_empty())
                .then(|| Setting::new(crate::settings::LogitBias(self.logit_bias.clone()), Origin::Flag("--logit-bias"))),
            seed: flag(self.seed, "--seed"),
            verify: flag(self.verify, "--verify"),
            no_draft: self.no_draft.then(|| Setting::new(true, Origin::Flag("--no-draft"))),
            ignore_eos: self.ignore_eos.then(|| Setting::new(true, Origin::Flag("--ignore-eos"))),
        }
    }
}

impl ConstraintArgs {
    /// The constraint asked for, read, parsed and compiled once without a model (files are
    /// read here); errors name the flag.
    pub fn grammar(&self) -> anyhow::Result<Option<crate::constraint::Grammar>> {
        use crate::constraint::Grammar;
        use anyhow::anyhow;
        let read = |flag: &str, p: &PathBuf| crate::io::read_text(p, 16 << 20).map_err(|e| anyhow!("{flag} {e}"));
        let (grammar, origin) = if let Some(s) = &self.json_schema {
            (Grammar::schema_from_text(s), "--json-schema".to_string())
        } else if let Some(p) = &self.json_schema_file {
            (Grammar::schema_from_text(&read("--json-schema-file", p)?), format!("--json-schema-file {}", p.display()))
        } else if self.json_object {
            (Ok(Grammar::JsonObject), "--json-object".to_string())
        } else if let Some(g) = &self.grammar {
            (Grammar::from_text(g), "--grammar".to_string())
        } else if let Some(p) = &self.grammar_file {
            (Grammar::from_text(&read("--grammar-file", p)?), format!("--grammar-file {}", p.display()))
        } else if let Some(r) = &self.regex {
            (Ok(Grammar::Regex(r.clone())), "--regex".to_string())
        } else {
            return Ok(None);
        };
        let grammar = grammar.and_then(|g| g.check().map(|()| g)).map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(Some(grammar))
    }
}

/// llama.cpp flags specrun has no counterpart for, refused by name (clap would read `-hf` as
/// `-h -f` and print help, or `-ot` as `-o t`).
const UNSUPPORTED: [&str; 26] = [
    "-hf",
    "-hfr",
    "-hfd",
    "-hff",
    "--hf-repo",
    "--hf-file",
    "-ot",
    "--override-tensor",
    "-sm",
    "--split-mode",
    "-ts",
    "--tensor-split",
    "-mg",
    "--main-gpu",
    "-ub",
    "--ubatch-size",
    "-cd",
    "--ctx-size-draft",
    "-td",
    "--threads-draft",
    "-tb",
    "--threads-batch",
    "--mlock",
    "--no-mmap",
    "--spec-type",
    "-cnv",
];

/// `--cache-ram`'s default, llama-server's (an upper bound: entries are kept as they come).
pub const DEFAULT_CACHE_RAM_MIB: u64 = 8192;

/// An argument that is a llama.cpp flag specrun does not support, with the one line to say.
pub fn unsupported_flag(args: &[std::ffi::OsString]) -> Option<String> {
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .map(|a| a.split('=').next().unwrap_or(a))
        .find(|a| UNSUPPORTED.contains(a))
        .map(|a| format!("error: {a} is a llama.cpp flag specrun does not support (see `specrun help` for what it has)"))
}

/// Map llama.cpp's single-dash long flags onto specrun's.
pub fn normalize_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-np") => "--parallel".into(),
            Some("-md") => "--model-draft".into(),
            Some("-ngl") => "--n-gpu-layers".into(),
            Some("-ngld") => "--n-gpu-layers-draft".into(),
            Some("-dev") => "--device".into(),
            Some("-devd") => "--device-draft".into(),
            Some("-fa") => "--flash-attn".into(),
            Some("-ctk") => "--cache-type-k".into(),
            Some("-ctv") => "--cache-type-v".into(),
            Some("-ctkd") => "--cache-type-k-draft".into(),
            Some("-ctvd") => "--cache-type-v-draft".into(),
            Some("-nkvo") => "--no-kv-offload".into(),
            Some("-kvu") => "--kv-unified=on".into(),
            Some("-jf") => "--json-schema-file".into(),
            Some("-cram") => "--cache-ram".into(),
            _ => a,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn llama_cpp_spellings_are_accepted() {
        let args = normalize_args(["specrun", "run", "-m", "t.gguf", "-md", "d.gguf", "-ngl", "99", "--prompt", "x"].map(Into::into));
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert_eq!(r.models.model_draft.as_deref(), Some(std::path::Path::new("d.gguf")));
        assert_eq!(r.models.n_gpu_layers, Some(99));
    }
}
