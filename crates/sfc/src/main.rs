//! `sfc`: the registry and the operator commands, a thin layer over `sfc-registry` and
//! `sfc-client`; see `sfc --help`.
//!
//! # Layout
//! - `cli`: the argument definitions (clap) and one module per command.
//! - `bench`: `sfc bench`, simulated fleets against a registry.
//! - `agent`: `sfc agent`, the client for a process that embeds none.
//! - `value`: parsers for flag values that several commands share.

mod agent;
mod bench;
mod cli;
mod value;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
