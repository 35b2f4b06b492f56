//! `warren`: one binary, every role. See `warren --help`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    warren_core::telemetry::init_logging(args.global.log_format.into());
    // Handler panics are caught and reported per job; keep them to one log line.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.global.threads {
        rt.worker_threads(n.into());
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
