//! The `sluice` binary: parses the command line, loads the configuration, sets up logging
//! and runs the subcommand.
//!
//! Exit codes: 0 after a clean stop, 1 when the server cannot start or fails (data
//! directory in use, address taken), 2 for a usage or configuration error. Every failure is
//! one line on stderr that starts with `sluice:`.

mod admin;
mod cli;
mod config;
mod http;
mod kafka_auth;
mod listen;
mod lock;
mod resources;
mod rocketmq_auth;
mod serve;
mod tls;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ServeArgs};

/// Exit code for a configuration error, the same as clap's for a usage error.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Bench(args) => sluice_bench::cli::main(args),
        Command::Admin(args) => admin::main(&args),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let loaded = config::load(
        args.config.as_deref(),
        &|var| std::env::var_os(var),
        &|key| args.setting(key),
    );
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice: config error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = init_logging(&config.log_level) {
        eprintln!("sluice: config error: log.level: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match serve::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Human-readable logs on stderr, filtered by `log.level`; colored only on a terminal so
/// that tests and log collectors read plain text.
fn init_logging(level: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = EnvFilter::try_new(level)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
}
