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
pub mod bench;
pub mod calibrate;
pub mod check_pair;
pub mod config;
pub mod devices;
pub mod run;
pub mod serve;
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
    }
}
