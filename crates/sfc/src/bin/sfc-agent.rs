//! `sfc-agent`: `sfc agent` as a binary of its own. It holds the client and the agent and
//! nothing of the registry, the HTTP API or `sfc bench`, so the process that stands for a
//! service without a binding maps and touches less code (BENCHMARKS.md, "`sfc agent`
//! footprint"). Same flags, same behaviour: `sfc-agent --help`.

#[path = "../agent/mod.rs"]
mod agent;
#[path = "../cli/connect.rs"]
#[allow(dead_code)] // `observer()` serves the operator commands only.
mod connect;
#[path = "../value.rs"]
mod value;

/// The path `agent` uses for its connection options, as in the `sfc` binary.
mod cli {
    pub use super::connect::ConnectArgs;
}

use clap::Parser;

#[derive(Parser)]
#[command(name = "sfc-agent", version, about = "Put a process that embeds no sfc client in the fleet: sfc agent on its own")]
struct Cli {
    #[command(flatten)]
    agent: agent::AgentArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    match agent::run(cli.agent) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
