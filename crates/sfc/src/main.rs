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

/// jemalloc, not glibc's malloc: measured with 10,000 connections, the registry takes ~1 KiB
/// less per connected instance (glibc keeps more of the memory it freed), and ~5 % less CPU
/// per report (BENCHMARKS.md, "Memory per connected instance (issue 16 point 2)"). Only this
/// binary: the libraries leave the allocator to the program that embeds them.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
