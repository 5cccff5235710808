//! Command-line surface of the `sfc` binary: argument definitions and one module per command.

pub mod admin;
mod connect;
pub mod http;
pub mod observe;
pub mod registry;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use sfc_client::error::Result;

pub use connect::ConnectArgs;

#[derive(Parser)]
#[command(name = "sfc", version, about = "Service Fleet Control: service discovery and health status for a fleet of microservices")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: boxing the registry's many flags would buy nothing. The variant
// `Command` is the `sfc command` subcommand: clap names subcommands after their variants.
#[allow(clippy::large_enum_variant, clippy::enum_variant_names)]
#[derive(Subcommand)]
pub enum Command {
    /// Run a registry.
    Registry(registry::RegistryArgs),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print the fleet: a table, or the records as a JSON array with --json.
    Status(observe::StatusArgs),
    /// Stream fleet events.
    Watch(observe::WatchArgs),
    /// Load a registry with simulated clients and measure it.
    Bench(crate::bench::BenchArgs),
    /// Ask an instance to shut down (HTTP API, admin token from SFC_ADMIN_TOKEN) and print its result.
    Shutdown(admin::ShutdownArgs),
    /// Send a custom command to an instance (HTTP API, admin token) and print its result.
    Command(admin::CommandArgs),
    /// Remove an offline or left instance's record (HTTP API, admin token).
    Deregister(admin::DeregisterArgs),
    /// Print the registry's event history (HTTP API).
    Events(admin::EventsArgs),
    /// Put a process that embeds no client in the fleet: register it, check its health, answer
    /// its commands (`-- COMMAND` to start it, `--pid` to watch one).
    Agent(crate::agent::AgentArgs),
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Write a development CA, a server certificate and a client certificate.
    Init {
        /// Where to write ca.pem, server.pem, server-key.pem, client.pem, client-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// Names and addresses the server certificate covers.
        #[arg(long, value_delimiter = ',', default_values_t = sfc_registry::certs::default_hosts())]
        hosts: Vec<String>,
    },
    /// Issue a client certificate from the development CA (ca.pem and ca-key.pem in --ca-dir).
    Client {
        /// Folder holding ca.pem and ca-key.pem (as `certs init` writes them).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Common name; the files are <out>/<name>.pem and <out>/<name>-key.pem.
        #[arg(long)]
        name: String,
        /// SAN URIs, e.g. sfc://group/billing, sfc://observer, sfc://admin (see --policy).
        #[arg(long, value_delimiter = ',')]
        uri: Vec<String>,
        /// Where to write (default: --ca-dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Logs to stderr; `RUST_LOG` filters by target (`RUST_LOG=sfc::registry=debug`). The
/// registry logs at info by default, the operator commands only warnings.
pub fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let default = match cli.command {
        // hickory-server logs every DNS query at info: its warnings only.
        Command::Registry(_) => "info,hickory_server=warn",
        Command::Agent(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Registry(a) => registry::run(a),
        Command::Certs(CertsCommand::Init { dir, hosts }) => {
            let p = sfc_registry::certs::init(&dir, &hosts)?;
            println!("wrote {}, {}, {}, {}, {}", p.ca.display(), p.server.display(), p.server_key.display(),
                p.client.display(), p.client_key.display());
            println!("server certificate covers: {}", hosts.join(", "));
            Ok(())
        }
        Command::Certs(CertsCommand::Client { ca_dir, name, uri, out }) => {
            let (cert, key) = sfc_registry::certs::issue_client(&ca_dir, out.as_deref().unwrap_or(&ca_dir), &name, &uri)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Status(a) => observe::status(a),
        Command::Watch(a) => observe::watch(a),
        Command::Bench(a) => crate::bench::run(a),
        Command::Shutdown(a) => admin::shutdown(a),
        Command::Command(a) => admin::command(a),
        Command::Deregister(a) => admin::deregister(a),
        Command::Events(a) => admin::events(a),
        Command::Agent(a) => crate::agent::run(a),
    }
}

/// A multi-threaded runtime for the commands.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| sfc_client::Error::Io(std::io::Error::other(format!("cannot start the runtime: {e}"))))
}
