//! `sfc registry`: flags (each also from an `SFC_` environment variable), TLS setup with
//! development certificates on first run, signal handling.

use std::path::PathBuf;
use std::sync::Arc;
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
    /// Identity binding: which client certificate may register in which group, observe, or
    /// administer (JSON; see the README). Needs --mtls optional or required.
    #[arg(long, env = "SFC_POLICY")]
    pub policy: Option<PathBuf>,
    /// Frames per second one session may send; twice that as a burst. Beyond it frames are
    /// dropped with a rate-limited error.
    #[arg(long, env = "SFC_MAX_FRAME_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_frame_rate: u32,
    /// Where state survives restarts: sqlite (<data-dir>/registry.db), memory, or etcd
    /// (several registries share one fleet; needs --etcd-endpoints).
    #[arg(long, env = "SFC_STORE", default_value = "sqlite")]
    pub store: String,
    /// etcd endpoints for --store etcd (http://host:port or https://host:port), comma-separated.
    #[arg(long, env = "SFC_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA (PEM file or text) that signs the etcd servers' certificates.
    #[arg(long, env = "SFC_ETCD_CA")]
    pub etcd_ca: Option<String>,
    /// Client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, env = "SFC_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<String>,
    /// Client key (PEM) for etcd, with --etcd-cert.
    #[arg(long, env = "SFC_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<String>,
    /// With --store etcd: how long this registry's records outlive it in etcd when it dies.
    #[arg(long, env = "SFC_ETCD_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub etcd_lease_ttl: Duration,
    /// How often metric snapshots are written to the store (never once per report).
    #[arg(long, env = "SFC_SNAPSHOT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// How long the event history is kept in the store.
    #[arg(long, env = "SFC_HISTORY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// Address of the HTTP API, /metrics and the dashboard (default 127.0.0.1:7481), or `off`.
    /// When the default address is taken, the registry runs without HTTP and says so.
    #[arg(long, env = "SFC_HTTP_LISTEN", value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve the HTTP API over TLS with the registry's certificates (and its --mtls setting).
    #[arg(long, env = "SFC_HTTP_TLS")]
    pub http_tls: bool,
    /// Token that operators send as `Authorization: Bearer <token>` to send commands and
    /// deregister instances. Without it (or --admin-subject) those calls are refused.
    #[arg(long, env = "SFC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Client-certificate subject (full, or just the CN) that counts as an admin over HTTPS
    /// with --mtls optional|required. Repeatable or comma-separated.
    #[arg(long, env = "SFC_ADMIN_SUBJECTS", value_delimiter = ',')]
    pub admin_subject: Vec<String>,
    /// How long an HTTP command waits for the instance's result unless the request says.
    #[arg(long, env = "SFC_COMMAND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// How often /v1/watch sends a heartbeat comment.
    #[arg(long, env = "SFC_HTTP_HEARTBEAT", default_value = "15s", value_parser = parse_duration, hide = true)]
    pub http_heartbeat: Duration,
    /// Codecs sessions may negotiate after hello, comma-separated: protobuf, json. `json` alone
    /// answers every hello as a registry without the binary codec would.
    #[arg(long, env = "SFC_CODECS", value_delimiter = ',', default_value = "protobuf,json", value_parser = parse_codec)]
    pub codecs: Vec<crate::protocol::Codec>,
    /// Frame compressions sessions may negotiate, comma-separated: zstd, or none.
    #[arg(long, env = "SFC_COMPRESSION", value_delimiter = ',', default_value = "zstd")]
    pub compression: Vec<String>,
}

fn parse_codec(s: &str) -> std::result::Result<crate::protocol::Codec, String> {
    crate::protocol::Codec::from_name(s).ok_or_else(|| format!("unknown codec {s:?} (expected protobuf or json)"))
}

fn parse_compressions(list: &[String]) -> Result<Vec<crate::protocol::Compression>> {
    let mut out = Vec::new();
    for c in list {
        match c.as_str() {
            "none" => {}
            other => out.push(crate::protocol::Compression::from_name(other).ok_or_else(|| {
                Error::invalid("--compression", format!("unknown compression {other:?} (expected zstd or none)"))
            })?),
        }
    }
    Ok(out)
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
        policy: match &a.policy {
            None => None,
            Some(_) if a.mtls == MtlsMode::Off => {
                return Err(Error::invalid("--policy", "binds certificates to rights, so it needs --mtls optional or required"))
            }
            Some(p) => Some(Arc::new(crate::registry::policy::Policy::load(p)?)),
        },
        max_frame_rate: a.max_frame_rate,
        store: open_store(a)?,
        snapshot_interval: a.snapshot_interval,
        history_retention: a.history_retention,
        codecs: a.codecs.clone(),
        compression: parse_compressions(&a.compression)?,
        ..RegistryConfig::default()
    })
}

/// The store named by --store, with its options.
fn open_store(a: &RegistryArgs) -> Result<std::sync::Arc<dyn crate::store::Store>> {
    let etcd_flags = !a.etcd_endpoints.is_empty() || a.etcd_ca.is_some() || a.etcd_cert.is_some();
    if a.store != "etcd" {
        if etcd_flags {
            return Err(Error::invalid("--etcd-endpoints", format!("needs --store etcd (the store is {})", a.store)));
        }
        return crate::store::open(&a.store, &a.data_dir);
    }
    #[cfg(feature = "etcd")]
    {
        let opts = crate::store::etcd::EtcdOptions {
            endpoints: a.etcd_endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
            ca: a.etcd_ca.as_deref().map(PemSource::parse),
            cert: a.etcd_cert.as_deref().map(PemSource::parse),
            key: a.etcd_key.as_deref().map(PemSource::parse),
            lease_ttl: a.etcd_lease_ttl,
            ..Default::default()
        };
        Ok(std::sync::Arc::new(crate::store::etcd::EtcdStore::connect(&opts)?))
    }
    #[cfg(not(feature = "etcd"))]
    Err(Error::invalid(
        "--store",
        "this sfc was built without etcd support; build it with `cargo build --release --features etcd` (needs protoc: Debian protobuf-compiler)",
    ))
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

/// Binds the HTTP API's address. An explicit address that cannot be bound is an error; the
/// default one (127.0.0.1:7481) only a warning, so several registries can run side by side.
async fn http_listener(a: &RegistryArgs, tls: bool) -> Result<Option<(tokio::net::TcpListener, std::net::SocketAddr)>> {
    if a.http_tls && !tls {
        return Err(Error::invalid("--http-tls", "needs the registry's TLS; it cannot be used with --insecure-plaintext"));
    }
    match a.http.as_deref() {
        Some("off") => Ok(None),
        Some(addr) => crate::http::bind(addr).await.map(Some),
        None => match crate::http::bind(crate::http::DEFAULT_HTTP_ADDR).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(target: "sfc::http", error = %e,
                    "the HTTP API is off: pass --http ADDR (127.0.0.1:0 picks a free port) to serve it");
                Ok(None)
            }
        },
    }
}

fn http_config(a: &RegistryArgs, tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> crate::http::HttpConfig {
    crate::http::HttpConfig {
        tls: if a.http_tls { tls } else { None },
        access: crate::http::Access::new(a.admin_token.clone(), a.admin_subject.clone()),
        command_timeout: a.command_timeout,
        heartbeat: a.http_heartbeat,
        ..Default::default()
    }
}

pub fn run(a: RegistryArgs) -> Result<()> {
    raise_nofile();
    std::fs::create_dir_all(&a.data_dir).map_err(|e| Error::write_file(&a.data_dir, e))?;
    let cfg = config(&a)?;
    let secure = cfg.tls.is_some();
    let rt = super::runtime()?;
    rt.block_on(async {
        let (listener, addr) = crate::registry::bind(&a.listen).await?;
        let http = http_listener(&a, cfg.tls.is_some()).await?;
        let registry = Registry::open(cfg)?;
        // This line is the contract tests and scripts wait for.
        println!("sfc registry listening on {addr} ({})", if secure { "tls" } else { "plaintext" });
        let stop = tokio_util::sync::CancellationToken::new();
        let http_task = http.map(|(listener, haddr)| {
            let hcfg = http_config(&a, registry.config().tls.clone());
            crate::http::warn_about_exposure(haddr, &hcfg);
            // The second line: where the HTTP API, /metrics and the dashboard are.
            println!("sfc http listening on {haddr} ({})", if hcfg.tls.is_some() { "tls" } else { "plaintext" });
            tokio::spawn(crate::http::serve(registry.clone(), listener, hcfg, stop.clone().cancelled_owned()))
        });
        let signalled = stop.clone();
        crate::registry::serve(registry, listener, async move {
            shutdown_signal().await;
            signalled.cancel();
        })
        .await;
        stop.cancel();
        if let Some(t) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        Ok(())
    })
}
