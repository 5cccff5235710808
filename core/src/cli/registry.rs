//! `sfc registry`: flags (each also from an `SFC_` environment variable), TLS setup with
//! development certificates on first run, signal handling.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse_duration;
use crate::error::{Error, Result};
use crate::registry::{Registry, RegistryConfig};
use crate::tls::{MtlsMode, PemSource, ServerTlsOptions};

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Address for the protocol (services, observers, legacy clients).
    #[arg(long, env = "SFC_LISTEN", default_value = "127.0.0.1:7480")]
    pub listen: String,
    /// State directory; development certificates go in <data-dir>/tls/.
    #[arg(long, env = "SFC_DATA_DIR", default_value = "./sfc-data")]
    pub data_dir: PathBuf,
    /// Server certificate chain (PEM). Without it, development certificates are used.
    #[arg(long, env = "SFC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// Server key (PEM).
    #[arg(long, env = "SFC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Client certificates: off, optional or required.
    #[arg(long, env = "SFC_MTLS", default_value = "off")]
    pub mtls: MtlsMode,
    /// CA that signs client certificates (default with development certificates: their CA).
    #[arg(long, env = "SFC_CLIENT_CA")]
    pub client_ca: Option<String>,
    /// Serve without TLS. Everything, commands included, travels in clear text.
    #[arg(long, env = "SFC_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_plaintext: bool,
    /// Intervals without a frame before an instance goes offline (missed-reports).
    #[arg(long, env = "SFC_MISSED_REPORTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_reports: u32,
    /// How long offline and left records are kept before eviction.
    #[arg(long, env = "SFC_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, env = "SFC_MAX_FRAME", default_value_t = crate::protocol::DEFAULT_MAX_FRAME, value_parser = parse_max_frame)]
    pub max_frame: usize,
    /// Time allowed for TLS, preamble and hello.
    #[arg(long, env = "SFC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Most connections held at once; more are refused with an error frame.
    #[arg(long, env = "SFC_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
}

fn parse_max_frame(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !(1024..=64 * 1024 * 1024).contains(&n) {
        return Err(format!("{n} is outside 1024..=67108864 bytes"));
    }
    Ok(n)
}

/// Raises the soft open-file limit to the hard limit: every session is a socket.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(target: "sfc::registry", limit = n, "open-file limit"),
        Err(e) => tracing::warn!(target: "sfc::registry", error = %e, "could not raise the open-file limit"),
    }
}

/// Builds the registry configuration: TLS material and limits.
pub fn config(a: &RegistryArgs) -> Result<RegistryConfig> {
    let tls = if a.insecure_plaintext {
        tracing::warn!(target: "sfc::registry",
            "--insecure-plaintext: reports, commands and identities travel unencrypted and unauthenticated");
        if a.mtls != MtlsMode::Off {
            return Err(Error::invalid("--mtls", "needs TLS; it cannot be used with --insecure-plaintext"));
        }
        None
    } else {
        let (cert, key, dev_ca) = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => (PemSource::parse(c), PemSource::parse(k), None),
            _ => {
                let (paths, created) = crate::certs::ensure_dev_certs(&a.data_dir)?;
                if created {
                    tracing::info!(target: "sfc::registry", dir = %paths.dir.display(), "created development certificates");
                }
                tracing::info!(target: "sfc::registry", ca = %paths.ca.display(),
                    "development TLS: clients must trust this CA (SFC_CA={})", paths.ca.display());
                (PemSource::File(paths.server), PemSource::File(paths.server_key), Some(paths.ca))
            }
        };
        let client_ca = match (&a.client_ca, dev_ca) {
            (Some(c), _) => Some(PemSource::parse(c)),
            (None, Some(ca)) if a.mtls != MtlsMode::Off => Some(PemSource::File(ca)),
            _ => None,
        };
        Some(crate::tls::server_config(&ServerTlsOptions { cert, key, mtls: a.mtls, client_ca })?)
    };
    Ok(RegistryConfig {
        tls,
        missed_reports: a.missed_reports,
        retention: a.retention,
        max_frame: a.max_frame,
        handshake_timeout: a.handshake_timeout,
        max_connections: a.max_connections,
        ..RegistryConfig::default()
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!(target: "sfc::registry", "signal received: shutting down");
}

pub fn run(a: RegistryArgs) -> Result<()> {
    raise_nofile();
    std::fs::create_dir_all(&a.data_dir).map_err(|e| Error::write_file(&a.data_dir, e))?;
    let cfg = config(&a)?;
    let secure = cfg.tls.is_some();
    let rt = super::runtime()?;
    rt.block_on(async {
        let (listener, addr) = crate::registry::bind(&a.listen).await?;
        let registry = Registry::new(cfg);
        // This line is the contract tests and scripts wait for.
        println!("sfc registry listening on {addr} ({})", if secure { "tls" } else { "plaintext" });
        crate::registry::serve(registry, listener, shutdown_signal()).await;
        Ok(())
    })
}
