//! `sfc registry`: its flags (each also from an `SFC_` environment variable) and signal
//! handling. What the flags mean and do lives in `sfc_registry::server`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sfc_registry::protocol::Codec;
use sfc_registry::registry::Admission;
use sfc_registry::server::RegistryOptions;
use sfc_registry::tls::MtlsMode;

use sfc_client::error::Result;
use crate::value::parse_duration;

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
    #[arg(long, env = "SFC_MAX_FRAME", default_value_t = sfc_registry::protocol::DEFAULT_MAX_FRAME, value_parser = parse_max_frame)]
    pub max_frame: usize,
    /// Time allowed for TLS, preamble and hello.
    #[arg(long, env = "SFC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Most connections held at once; more are refused with an error frame. Default: 100,000,
    /// or less when the open-file limit found at start is lower (that limit less 512 for the
    /// HTTP API, files and the store), so refusals come before EMFILE.
    #[arg(long, env = "SFC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
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
    /// With --store etcd: most metric snapshot records this registry writes to etcd per
    /// second (on average; the longest unwritten go first). Transitions are not bounded by it.
    #[arg(long, env = "SFC_ETCD_SNAPSHOT_RATE", default_value_t = 500, value_name = "RECORDS")]
    pub etcd_snapshot_rate: u32,
    /// How often metric snapshots are written to the store (never once per report).
    #[arg(long, env = "SFC_SNAPSHOT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// How long the event history is kept in the store (it also keeps at most 10,000 events
    /// and --max-history-bytes).
    #[arg(long, env = "SFC_HISTORY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// Bytes of event history the store keeps on disk (each event with its record); the
    /// oldest events beyond it are deleted. Default 256 MiB, as the history held in memory.
    #[arg(long, env = "SFC_MAX_HISTORY_BYTES", default_value_t = 256 * 1024 * 1024, value_name = "BYTES")]
    pub max_history_bytes: u64,
    /// Address of the HTTP API, /metrics and the dashboard (default 127.0.0.1:7481), or `off`.
    /// When the default address is taken, the registry runs without HTTP and says so.
    #[arg(long, env = "SFC_HTTP_LISTEN", value_name = "ADDR")]
    pub http: Option<String>,
    /// Address of the DNS interface, UDP and TCP (default 127.0.0.1:7482), or `off`. When the
    /// default address is taken, the registry runs without DNS and says so. DNS.md.
    #[arg(long, env = "SFC_DNS_LISTEN", value_name = "ADDR")]
    pub dns: Option<String>,
    /// The DNS zone every name lives under: <group>.<zone>, _<endpoint>._<proto>.<group>.<zone>,
    /// <instance_id>.<group>.<zone>.
    #[arg(long, env = "SFC_DNS_DOMAIN", default_value = "sfc.")]
    pub dns_domain: String,
    /// TTL of DNS answers, in seconds (0: resolvers do not cache, answers follow the fleet live).
    #[arg(long, env = "SFC_DNS_TTL", default_value_t = 0)]
    pub dns_ttl: u32,
    /// DNS answers include online instances whose health is warning (passing ones always).
    #[arg(long, env = "SFC_DNS_INCLUDE_WARNING")]
    pub dns_include_warning: bool,
    /// DNS queries per second one source address may send (twice that as a burst); beyond it
    /// UDP queries are dropped and TCP ones refused. 0 turns the limit off.
    #[arg(long, env = "SFC_DNS_RATE_LIMIT", default_value_t = 1000, value_name = "QPS")]
    pub dns_rate_limit: u32,
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
    pub codecs: Vec<Codec>,
    /// Frame compressions sessions may negotiate, comma-separated: zstd, or none.
    #[arg(long, env = "SFC_COMPRESSION", value_delimiter = ',', default_value = "zstd")]
    pub compression: Vec<String>,
    /// Per-instance series in /metrics: none (registry and per-group series only), all, or at
    /// most N instances (the first by id). About 10 series per instance.
    #[arg(long, env = "SFC_METRICS_INSTANCES", default_value = "none", value_name = "none|all|N")]
    pub metrics_instances: sfc_registry::http::prometheus::MetricsInstances,
    /// Bytes one session (or /v1/watch stream) may have queued for its peer; past it the peer
    /// is closed with `slow-consumer` and the queue freed.
    #[arg(long, env = "SFC_MAX_OUTBOUND", default_value_t = 32 * 1024 * 1024, value_name = "BYTES")]
    pub max_outbound: usize,
    /// Records the registry holds at most (any status); a new identity past it is refused
    /// with `too-many-instances`.
    #[arg(long, env = "SFC_MAX_INSTANCES", default_value_t = 200_000)]
    pub max_instances: usize,
    /// Records one group holds at most.
    #[arg(long, env = "SFC_MAX_GROUP_INSTANCES", default_value_t = 200_000)]
    pub max_group_instances: usize,
    /// Legacy records (the original module's wire format) held at most, in all.
    #[arg(long, env = "SFC_MAX_LEGACY_INSTANCES", default_value_t = 10_000)]
    pub max_legacy_instances: usize,
    /// Legacy records one group holds at most.
    #[arg(long, env = "SFC_MAX_LEGACY_GROUP_INSTANCES", default_value_t = 1_000)]
    pub max_legacy_group_instances: usize,
    /// Accept documents of the original module's wire format on the protocol port.
    #[arg(long, env = "SFC_LEGACY", default_value = "on", value_parser = parse_on_off, value_name = "on|off", action = clap::ArgAction::Set)]
    pub legacy: bool,
}

impl From<RegistryArgs> for RegistryOptions {
    fn from(a: RegistryArgs) -> Self {
        RegistryOptions {
            listen: a.listen,
            data_dir: a.data_dir,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            mtls: a.mtls,
            client_ca: a.client_ca,
            insecure_plaintext: a.insecure_plaintext,
            missed_reports: a.missed_reports,
            retention: a.retention,
            max_frame: a.max_frame,
            handshake_timeout: a.handshake_timeout,
            max_connections: a.max_connections.unwrap_or(RegistryOptions::default().max_connections),
            policy: a.policy,
            max_frame_rate: a.max_frame_rate,
            store: a.store,
            etcd_endpoints: a.etcd_endpoints,
            etcd_ca: a.etcd_ca,
            etcd_cert: a.etcd_cert,
            etcd_key: a.etcd_key,
            etcd_lease_ttl: a.etcd_lease_ttl,
            etcd_snapshot_rate: a.etcd_snapshot_rate,
            snapshot_interval: a.snapshot_interval,
            history_retention: a.history_retention,
            http: a.http,
            dns: a.dns,
            dns_options: sfc_registry::dns::DnsOptions {
                domain: a.dns_domain,
                ttl: a.dns_ttl,
                include_warning: a.dns_include_warning,
                rate_limit: a.dns_rate_limit,
            },
            http_tls: a.http_tls,
            admin_token: a.admin_token,
            admin_subject: a.admin_subject,
            command_timeout: a.command_timeout,
            http_heartbeat: a.http_heartbeat,
            codecs: a.codecs,
            compression: a.compression,
            metrics_instances: a.metrics_instances,
            admission: Admission {
                max_outbound: a.max_outbound,
                max_instances: a.max_instances,
                max_group_instances: a.max_group_instances,
                max_legacy_instances: a.max_legacy_instances,
                max_legacy_group_instances: a.max_legacy_group_instances,
                legacy: a.legacy,
                max_history_bytes: a.max_history_bytes,
            },
        }
    }
}

fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

fn parse_codec(s: &str) -> std::result::Result<Codec, String> {
    Codec::from_name(s).ok_or_else(|| format!("unknown codec {s:?} (expected protobuf or json)"))
}

fn parse_max_frame(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !(1024..=64 * 1024 * 1024).contains(&n) {
        return Err(format!("{n} is outside 1024..=67108864 bytes"));
    }
    Ok(n)
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

/// Runs `sfc registry` until SIGINT or SIGTERM.
pub fn run(a: RegistryArgs) -> Result<()> {
    let nofile = sfc_registry::server::raise_nofile();
    let chosen = a.max_connections;
    let mut opts = RegistryOptions::from(a);
    if chosen.is_none() {
        if let Some(limit) = nofile {
            opts.max_connections = sfc_registry::server::connections_within(limit, opts.max_connections);
        }
    }
    super::runtime()?.block_on(sfc_registry::server::run(&opts, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: RegistryArgs,
    }

    /// The flags' defaults (in clap's attributes) are the library's, so `sfc registry` and an
    /// embedded registry (Node.js) start alike.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let matches = Flags::command()
            .mut_args(|a| a.env(None))
            .try_get_matches_from(["sfc-registry"])
            .unwrap();
        let flags = Flags::from_arg_matches(&matches).unwrap().args;
        assert_eq!(
            format!("{:?}", RegistryOptions::from(flags)),
            format!("{:?}", RegistryOptions::default())
        );
    }
}
