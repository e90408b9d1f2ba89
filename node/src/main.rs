//! `swarmlet`: one binary, the node daemon and its command-line client.

use clap::Parser;
use swarmlet::cli;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// `SWARMLET_LOG` as `level` or `level,target=level,…` (e.g.
/// `info,swarmlet=debug`). `Targets` parses it without pulling in regex.
fn log_filter() -> Targets {
    let default = || Targets::new().with_default(Level::INFO);
    match std::env::var("SWARMLET_LOG") {
        Ok(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("SWARMLET_LOG={spec:?} is not a log filter ({e}); logging at info");
            default()
        }),
        Err(_) => default(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if !cli.is_daemon() {
        // A client's stdout may be a pipe that closes early (`service ps X |
        // head`): die quietly of SIGPIPE as other CLIs do, instead of Rust's
        // default (SIGPIPE ignored, so println! panics on EPIPE). The daemon
        // keeps SIGPIPE ignored: a client hanging up must never kill it.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(log_filter())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
