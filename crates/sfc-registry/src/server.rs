//! What an embedder or the `sfc registry` command asks of a registry ([`RegistryOptions`]),
//! and [`run`], which turns those options into a serving registry: TLS material (development
//! certificates on first use), the store, the protocol listener and the HTTP API.
//!
//! The options are plain data: the command line (clap, in the `sfc` crate) and the Node.js
//! `Registry` each fill them in their own way, and both get the same checks and defaults here.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol::{Codec, Compression};
use crate::registry::{Admission, Registry, RegistryConfig};
use crate::tls::{MtlsMode, PemSource, ServerTlsOptions};

/// Settings of a registry. `Default` gives the documented defaults of `sfc registry`; each
/// field is the flag of the same name (`listen` is `--listen`, and so on).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Address for the protocol (services, observers, legacy clients).
    pub listen: String,
    /// State directory; development certificates go in <data-dir>/tls/.
    pub data_dir: PathBuf,
    /// Server certificate chain (PEM). Without it, development certificates are used.
    pub tls_cert: Option<String>,
    /// Server key (PEM).
    pub tls_key: Option<String>,
    /// Client certificates: off, optional or required.
    pub mtls: MtlsMode,
    /// CA that signs client certificates (default with development certificates: their CA).
    pub client_ca: Option<String>,
    /// Serve without TLS. Everything, commands included, travels in clear text.
    pub insecure_plaintext: bool,
    /// Intervals without a frame before an instance goes offline (missed-reports).
    pub missed_reports: u32,
    /// How long offline and left records are kept before eviction.
    pub retention: Duration,
    /// Largest frame payload accepted, in bytes.
    pub max_frame: usize,
    /// Time allowed for TLS, preamble and hello.
    pub handshake_timeout: Duration,
    /// Most connections held at once; more are refused with an error frame.
    pub max_connections: usize,
    /// Identity binding: which client certificate may register in which group, observe, or
    /// administer (JSON; see the README). Needs --mtls optional or required.
    pub policy: Option<PathBuf>,
    /// Frames per second one session may send; twice that as a burst. Beyond it frames are
    /// dropped with a rate-limited error.
    pub max_frame_rate: u32,
    /// Where state survives restarts: sqlite (<data-dir>/registry.db), memory, or etcd
    /// (several registries share one fleet; needs --etcd-endpoints).
    pub store: String,
    /// etcd endpoints for --store etcd (http://host:port or https://host:port), comma-separated.
    pub etcd_endpoints: Vec<String>,
    /// CA (PEM file or text) that signs the etcd servers' certificates.
    pub etcd_ca: Option<String>,
    /// Client certificate (PEM) for etcd, with --etcd-key.
    pub etcd_cert: Option<String>,
    /// Client key (PEM) for etcd, with --etcd-cert.
    pub etcd_key: Option<String>,
    /// With --store etcd: how long this registry's records outlive it in etcd when it dies.
    pub etcd_lease_ttl: Duration,
    /// With --store etcd: most metric snapshot records written to etcd per second.
    pub etcd_snapshot_rate: u32,
    /// How often metric snapshots are written to the store (never once per report).
    pub snapshot_interval: Duration,
    /// How long the event history is kept in the store (it also keeps at most 10,000 events
    /// and --max-history-bytes).
    pub history_retention: Duration,
    /// Address of the HTTP API, /metrics and the dashboard (default 127.0.0.1:7481), or `off`.
    /// When the default address is taken, the registry runs without HTTP and says so.
    pub http: Option<String>,
    /// Address of the DNS interface, UDP and TCP (default 127.0.0.1:7482), or `off`. When the
    /// default address is taken, the registry runs without DNS and says so.
    pub dns: Option<String>,
    /// What the DNS interface answers: its zone (--dns-domain), TTL (--dns-ttl), whether
    /// warning instances count (--dns-include-warning) and the per-source rate limit
    /// (--dns-rate-limit).
    pub dns_options: crate::dns::DnsOptions,
    /// Serve the HTTP API over TLS with the registry's certificates (and its --mtls setting).
    pub http_tls: bool,
    /// Token that operators send as `Authorization: Bearer <token>` to send commands and
    /// deregister instances. Without it (or --admin-subject) those calls are refused.
    pub admin_token: Option<String>,
    /// Client-certificate subject (full, or just the CN) that counts as an admin over HTTPS
    /// with --mtls optional|required. Repeatable or comma-separated.
    pub admin_subject: Vec<String>,
    /// How long an HTTP command waits for the instance's result unless the request says.
    pub command_timeout: Duration,
    /// How often /v1/watch sends a heartbeat comment.
    pub http_heartbeat: Duration,
    /// Codecs sessions may negotiate after hello, comma-separated: protobuf, json. `json` alone
    /// answers every hello as a registry without the binary codec would.
    pub codecs: Vec<Codec>,
    /// Frame compressions sessions may negotiate, comma-separated: zstd, or none.
    pub compression: Vec<String>,
    /// Which instances get per-instance `sfc_instance_*` series in /metrics: none (registry and
    /// per-group series only), all, or at most N (the first by id).
    pub metrics_instances: crate::http::prometheus::MetricsInstances,
    /// Budgets (--max-outbound, --max-instances, --max-group-instances, --max-legacy-instances,
    /// --max-legacy-group-instances, --max-history-bytes) and whether legacy documents are
    /// accepted (--legacy).
    pub admission: Admission,
}

impl Default for RegistryOptions {
    /// The documented defaults of `sfc registry` (without its `SFC_*` environment fallbacks,
    /// which the CLI reads).
    fn default() -> Self {
        // Every setting the registry itself has takes its default from there.
        let c = RegistryConfig::default();
        RegistryOptions {
            listen: "127.0.0.1:7480".into(),
            data_dir: PathBuf::from("./sfc-data"),
            tls_cert: None,
            tls_key: None,
            mtls: MtlsMode::Off,
            client_ca: None,
            insecure_plaintext: false,
            missed_reports: c.missed_reports,
            retention: c.retention,
            max_frame: c.max_frame,
            handshake_timeout: c.handshake_timeout,
            max_connections: c.max_connections,
            policy: None,
            max_frame_rate: c.max_frame_rate,
            store: "sqlite".into(),
            etcd_endpoints: Vec::new(),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_lease_ttl: Duration::from_secs(10),
            etcd_snapshot_rate: 500,
            snapshot_interval: c.snapshot_interval,
            history_retention: c.history_retention,
            http: None,
            dns: None,
            dns_options: crate::dns::DnsOptions::default(),
            http_tls: false,
            admin_token: None,
            admin_subject: Vec::new(),
            command_timeout: Duration::from_secs(10),
            http_heartbeat: Duration::from_secs(15),
            codecs: c.codecs,
            compression: vec!["zstd".into()],
            metrics_instances: Default::default(),
            admission: c.admission,
        }
    }
}

impl RegistryOptions {
    /// The checks that need no file or network: ranges, and options that need or exclude
    /// another. Errors name the flag.
    pub fn check(&self) -> Result<()> {
        // Port 0 is fine: the OS picks one.
        if !self.listen.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            return Err(Error::invalid("--listen", format!("{:?} is not host:port", self.listen)));
        }
        if !(1..=100).contains(&self.missed_reports) {
            return Err(Error::invalid("--missed-reports", format!("{} is outside 1..=100", self.missed_reports)));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_frame) {
            return Err(Error::invalid("--max-frame", format!("{} is outside 1024..=67108864 bytes", self.max_frame)));
        }
        if self.max_frame_rate == 0 {
            return Err(Error::invalid("--max-frame-rate", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(Error::invalid("--max-connections", "must be at least 1"));
        }
        let b = &self.admission;
        if b.max_history_bytes < 64 * 1024 {
            return Err(Error::invalid(
                "--max-history-bytes",
                format!("{} is below the minimum of 65536 bytes", b.max_history_bytes),
            ));
        }
        if b.max_outbound < 64 * 1024 {
            return Err(Error::invalid("--max-outbound", format!("{} is below the minimum of 65536 bytes", b.max_outbound)));
        }
        for (flag, v) in [
            ("--max-instances", b.max_instances),
            ("--max-group-instances", b.max_group_instances),
            ("--max-legacy-instances", b.max_legacy_instances),
            ("--max-legacy-group-instances", b.max_legacy_group_instances),
        ] {
            if v == 0 {
                return Err(Error::invalid(flag, "must be at least 1"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(Error::invalid("--tls-key", "required when --tls-cert is given")),
            (None, Some(_)) => return Err(Error::invalid("--tls-cert", "required when --tls-key is given")),
            _ if self.insecure_plaintext && (self.tls_cert.is_some() || self.tls_key.is_some()) => {
                return Err(Error::invalid("--insecure-plaintext", "cannot be combined with --tls-cert or --tls-key"))
            }
            _ => {}
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err(Error::invalid("--etcd-cert", "--etcd-cert and --etcd-key go together"));
        }
        if self.dns.as_deref() != Some("off") {
            crate::dns::parse_zone(&self.dns_options.domain)?;
        }
        if self.codecs.is_empty() {
            return Err(Error::invalid("--codecs", "name at least one codec (protobuf, json)"));
        }
        Ok(())
    }
}

fn parse_compressions(list: &[String]) -> Result<Vec<Compression>> {
    let mut out = Vec::new();
    for c in list {
        match c.as_str() {
            "none" => {}
            other => out.push(Compression::from_name(other).ok_or_else(|| {
                Error::invalid("--compression", format!("unknown compression {other:?} (expected zstd or none)"))
            })?),
        }
    }
    Ok(out)
}

/// Raises the soft open-file limit to the hard limit: every session is a socket. Returns the
/// limit now in force.
pub fn raise_nofile() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(target: "sfc::registry", limit = n, "open-file limit");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(target: "sfc::registry", error = %e, "could not raise the open-file limit");
            None
        }
    }
}

/// `--max-connections` when it was not given: `wanted`, or less so that the protocol port's
/// refusals (`too-many-connections`) come before the process runs out of descriptors: the
/// open-file `limit` less 512 for the HTTP API's connections (one client holds at most 128 of
/// them) and the store, the log and the listeners (at least 1; a quarter of the limit when
/// that is all there is). With the common 20,000 that is 19,488: a 19,000-client bench fits.
pub fn connections_within(limit: u64, wanted: usize) -> usize {
    let room = limit.saturating_sub(512);
    let room = if room == 0 { (limit / 4).max(1) } else { room };
    let n = wanted.min(usize::try_from(room).unwrap_or(usize::MAX));
    if n < wanted {
        tracing::info!(target: "sfc::registry", max_connections = n, open_file_limit = limit,
            "--max-connections {n}: below the open-file limit (set it to override)");
    }
    n
}

/// Builds the registry configuration: TLS material (development certificates on first use),
/// limits, the policy and the store. It blocks (files, SQLite, etcd): from async code, call it
/// through `spawn_blocking`, as [`run`] does.
pub fn registry_config(a: &RegistryOptions) -> Result<RegistryConfig> {
    a.check()?;
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
    let mut cfg = RegistryConfig {
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
        snapshot_interval: a.snapshot_interval,
        history_retention: a.history_retention,
        codecs: a.codecs.clone(),
        compression: parse_compressions(&a.compression)?,
        admission: a.admission,
        ..RegistryConfig::default()
    };
    open_store(a, &mut cfg)?;
    Ok(cfg)
}

/// Opens the store named by --store, with its options, into `cfg`.
fn open_store(a: &RegistryOptions, cfg: &mut RegistryConfig) -> Result<()> {
    let etcd_flags = !a.etcd_endpoints.is_empty() || a.etcd_ca.is_some() || a.etcd_cert.is_some();
    if a.store != "etcd" {
        if etcd_flags {
            return Err(Error::invalid("--etcd-endpoints", format!("needs --store etcd (the store is {})", a.store)));
        }
        let budget = crate::store::HistoryBudget { events: cfg.event_history.max(1), bytes: a.admission.max_history_bytes };
        cfg.store = crate::store::open(&a.store, &a.data_dir, budget)?;
        return Ok(());
    }
    #[cfg(feature = "etcd")]
    {
        let opts = crate::store::etcd::EtcdOptions {
            endpoints: a.etcd_endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
            ca: a.etcd_ca.as_deref().map(PemSource::parse),
            cert: a.etcd_cert.as_deref().map(PemSource::parse),
            key: a.etcd_key.as_deref().map(PemSource::parse),
            lease_ttl: a.etcd_lease_ttl,
            snapshot_rate: a.etcd_snapshot_rate,
            ..Default::default()
        };
        let store = crate::store::etcd::EtcdStore::connect(&opts)?;
        cfg.cluster = Some(store.cluster());
        cfg.store = Arc::new(store);
        Ok(())
    }
    #[cfg(not(feature = "etcd"))]
    Err(Error::invalid(
        "--store",
        "this sfc was built without etcd support; build it with `cargo build --release --features etcd` (needs protoc: Debian protobuf-compiler)",
    ))
}

/// Binds the HTTP API's address. An explicit address that cannot be bound is an error; the
/// default one (127.0.0.1:7481) only a warning, so several registries can run side by side.
async fn http_listener(a: &RegistryOptions, tls: bool) -> Result<Option<(tokio::net::TcpListener, std::net::SocketAddr)>> {
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

/// Binds the DNS interface's address (UDP and TCP). As with the HTTP API, an explicit address
/// that cannot be bound is an error; the default one (127.0.0.1:7482) only a warning.
async fn dns_listener(a: &RegistryOptions) -> Result<Option<(tokio::net::UdpSocket, tokio::net::TcpListener, std::net::SocketAddr)>> {
    match a.dns.as_deref() {
        Some("off") => Ok(None),
        Some(addr) => crate::dns::bind(addr).await.map(Some),
        None => match crate::dns::bind(crate::dns::DEFAULT_DNS_ADDR).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(target: "sfc::dns", error = %e,
                    "the DNS interface is off: pass --dns ADDR (127.0.0.1:0 picks a free port) to serve it");
                Ok(None)
            }
        },
    }
}

fn http_config(a: &RegistryOptions, tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> crate::http::HttpConfig {
    crate::http::HttpConfig {
        tls: if a.http_tls { tls } else { None },
        access: crate::http::Access::new(a.admin_token.clone(), a.admin_subject.clone()),
        command_timeout: a.command_timeout,
        heartbeat: a.http_heartbeat,
        metrics_instances: a.metrics_instances,
        ..Default::default()
    }
}


/// Serves the registry described by `a` until `shutdown` resolves: binds the protocol listener
/// and (unless off) the HTTP API, prints the two lines scripts wait for
/// (`sfc registry listening on ADDR (tls)`, `sfc http listening on ADDR (tls)`, `sfc dns
/// listening on ADDR ...`), then closes
/// every session and the HTTP server when `shutdown` completes.
pub async fn run(a: &RegistryOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir).map_err(|e| Error::write_file(&a.data_dir, e))?;
    // Blocking: reading certificates, opening SQLite, and `--store etcd` connects on a runtime
    // of its own, which must not be created or dropped inside this one.
    let opts = a.clone();
    let cfg = tokio::task::spawn_blocking(move || registry_config(&opts))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let secure = cfg.tls.is_some();
    let (listener, addr) = crate::registry::bind(&a.listen).await?;
    let http = http_listener(a, secure).await?;
    let dns = dns_listener(a).await?;
    let registry = Registry::open(cfg)?;
    // This line is the contract tests and scripts wait for.
    println!("sfc registry listening on {addr} ({})", if secure { "tls" } else { "plaintext" });
    let stop = tokio_util::sync::CancellationToken::new();
    let http_task = http.map(|(listener, haddr)| {
        let hcfg = http_config(a, registry.config().tls.clone());
        crate::http::warn_about_exposure(haddr, &hcfg);
        // The second line: where the HTTP API, /metrics and the dashboard are.
        println!("sfc http listening on {haddr} ({})", if hcfg.tls.is_some() { "tls" } else { "plaintext" });
        tokio::spawn(crate::http::serve(registry.clone(), listener, hcfg, stop.clone().cancelled_owned()))
    });
    let dns_task = dns.map(|(udp, tcp, daddr)| {
        // The third line: where the DNS interface answers (UDP and TCP). Not `println!`: a
        // supervisor that read the first two lines and closed the pipe must not stop the registry.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stdout(),
            format_args!("sfc dns listening on {daddr} (udp, tcp; zone {})\n", a.dns_options.domain),
        );
        let (r, o, s) = (registry.clone(), a.dns_options.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::dns::serve(r, udp, tcp, &o, s.cancelled_owned()).await {
                tracing::error!(target: "sfc::dns", error = %e, "the DNS interface stopped");
            }
        })
    });
    let signalled = stop.clone();
    crate::registry::serve(registry, listener, async move {
        shutdown.await;
        signalled.cancel();
    })
    .await;
    stop.cancel();
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = dns_task {
        let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
    }
    Ok(())
}
