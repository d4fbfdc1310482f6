//! The `specrun` binary: parse the command line, dispatch, turn errors into one line and an
//! exit code (see `specrun::commands` for the policy). A broken pipe ends quietly with 0.

use clap::Parser;
use specrun::cli::{normalize_args, Cli};
use specrun::commands::{dispatch, EXIT_ERROR, EXIT_INTERRUPTED};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(line) = specrun::cli::unsupported_flag(&args) {
        specrun::io::note(line);
        return ExitCode::from(EXIT_ERROR);
    }
    // the version says which llama.cpp and backends this build has
    if args.len() == 2 && matches!(args[1].to_str(), Some("--version" | "-V")) {
        println!("specrun {}", specrun::commands::long_version());
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse_from(normalize_args(args)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    if cli.command.writes_stdout() && specrun::io::stdout_was_closed() {
        specrun::io::note("error: standard output is closed; nothing could be written (redirect it to a file or /dev/null)");
        return ExitCode::from(EXIT_ERROR);
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) if specrun::io::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<specrun::infer::Interrupted>().is_some() => {
            specrun::io::note("interrupted");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            specrun::io::note(format!("error: {e:#}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
