//! One module per command, each depending only on the layers below (infer, formats, settings,
//! io, the core). [`dispatch`] runs the one the command line names.
//!
//! # Exit codes (every command)
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (also when the reader of stdout went away: a broken pipe ends quietly) |
//! | 1 | ran, and the answer is "no": some batch records failed, a pair is incompatible |
//! | 2 | could not run: a bad flag, file, setting or model, a write that failed |
//! | 130 | interrupted (Ctrl-C); everything already written is whole |

pub mod batch;
mod batch_input;
pub mod bench;
pub mod calibrate;
pub mod check_pair;
pub mod config;
pub mod devices;
pub mod run;
pub mod serve;
mod serve_completion;
mod serve_text;
pub mod shards;

use crate::cli::{Cli, Command};
use anyhow::Result;
use std::process::ExitCode;

/// Exit code: the command ran and found a negative answer.
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code: the command could not run.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Log lines (specrun's and llama.cpp's) only with `-v` (`SPECRUN_LOG` overrides); errors
/// reach the user as one line from `main`. llama.cpp's last error is captured either way, so a
/// failed load can say why.
fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let default = match verbose {
        0 => "off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPECRUN_LOG").unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "llama")]
    let registry = registry.with(crate::backend::llama::ErrorCapture);
    let _ = registry.try_init();
}

/// Run the command `cli` names. `Err` is one line for the user and exit code 2.
/// `specrun --version`: specrun's version, the llama.cpp it links (the version of the
/// llama-cpp-sys-2 crate that vendors it) and the compiled backends.
pub fn long_version() -> String {
    let backends: Vec<&str> = [("llama", "cpu"), ("cuda", "cuda"), ("vulkan", "vulkan"), ("metal", "metal")]
        .into_iter()
        .filter(|(f, _)| match *f {
            "llama" => cfg!(feature = "llama"),
            "cuda" => cfg!(feature = "cuda"),
            "vulkan" => cfg!(feature = "vulkan"),
            _ => cfg!(feature = "metal"),
        })
        .map(|(_, b)| b)
        .collect();
    #[cfg(feature = "llama")]
    let system = crate::backend::llama::system_info();
    #[cfg(not(feature = "llama"))]
    let system = "built without the llama.cpp backend (cargo feature `llama`)".to_string();
    format!(
        "{}\nllama.cpp: as vendored by llama-cpp-sys-2 {}\nbackends: {}\nsystem: {system}",
        env!("CARGO_PKG_VERSION"),
        LLAMA_CPP_SYS_VERSION,
        if backends.is_empty() { "none (mock only)".to_string() } else { backends.join("+") }
    )
}

/// The llama-cpp-sys-2 version pinned in Cargo.toml (the llama.cpp build it vendors).
const LLAMA_CPP_SYS_VERSION: &str = "0.1.161";

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    init_logging(cli.verbose);
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::CheckPair(models) => check_pair::check_pair(&models),
        Command::Batch(args) => batch::batch(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Calibrate(args) => calibrate::calibrate(&args),
        Command::Shards(args) => shards::shards(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Devices(args) => devices::devices(&args),
        Command::Config(c) => config::config(&c),
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, "specrun", &mut text);
            crate::io::out(&String::from_utf8_lossy(&text))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<crate::cli::Cli as clap::CommandFactory>::command()).render(&mut page)?;
            crate::io::out(&String::from_utf8_lossy(&page))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
