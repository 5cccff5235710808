//! Client settings, set through [`ClientBuilder`] with environment fallbacks:
//! `SFC_REGISTRY` (comma-separated addresses), `SFC_CA`, `SFC_CERT`, `SFC_KEY`, `SFC_GROUP`,
//! `SFC_SERVICE`, `SFC_INSTANCE_ID`. An explicit builder call wins over the environment.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::{ApiDescription, Endpoint, Registration};
use crate::protocol::Role;
use crate::tls::{ClientTlsOptions, PemSource};

/// Where the registry listens by default.
pub const DEFAULT_REGISTRY: &str = "127.0.0.1:7480";

/// Everything a client needs; made by [`ClientBuilder::build`].
#[derive(Clone)]
pub struct ClientConfig {
    pub registries: Vec<String>,
    pub role: Role,
    /// For services; empty identity for observers.
    pub registration: Registration,
    pub interval: Duration,
    /// None: plaintext (must be asked for explicitly).
    pub tls: Option<ClientTlsOptions>,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_frame: usize,
    /// Sample host and process metrics into every report.
    pub sample_metrics: bool,
    /// How long `stop()` may take.
    pub stop_timeout: Duration,
    /// Client library name and version sent in hello (`sfc-rust/0.1.0`, `sfc-node/0.1.0`).
    pub client_name: String,
    /// Codecs offered in hello, most preferred first; a registry without the first falls
    /// back to the next (every registry speaks `json`).
    pub codecs: Vec<crate::protocol::Codec>,
    /// Frame compressions offered in hello; empty offers none.
    pub compression: Vec<crate::protocol::Compression>,
    /// Legacy fallback: with a registry that selects no ALPN `sfc/1` (one that predates protocol
    /// v1, such as the original `service_fleet_control` registry), report in the original wire
    /// format (one TLS connection per report) instead of failing, and move to v1 by itself once
    /// a report's connection finds an upgraded registry. Services over TLS only.
    pub legacy: bool,
}

/// Codecs a client offers unless told otherwise.
pub const DEFAULT_CODECS: &[crate::protocol::Codec] = &[
    crate::protocol::Codec::Protobuf,
    crate::protocol::Codec::Json,
];
/// Compressions a client offers unless told otherwise (frames above the threshold only).
pub const DEFAULT_COMPRESSION: &[crate::protocol::Compression] =
    &[crate::protocol::Compression::Zstd];

/// Builds a [`ClientConfig`] or starts a [`super::Client`].
#[derive(Default, Clone)]
pub struct ClientBuilder {
    registries: Vec<String>,
    role: Role,
    group: Option<String>,
    service: Option<String>,
    instance_id: Option<String>,
    hostname: Option<String>,
    pid: Option<u32>,
    endpoints: Vec<Endpoint>,
    tags: Vec<String>,
    metadata: std::collections::BTreeMap<String, String>,
    version: Option<String>,
    api: Option<ApiDescription>,
    interval: Option<Duration>,
    ca: Option<PemSource>,
    cert: Option<PemSource>,
    key: Option<PemSource>,
    insecure_plaintext: bool,
    connect_timeout: Option<Duration>,
    reconnect: Option<(Duration, Duration)>,
    sample_metrics: Option<bool>,
    stop_timeout: Option<Duration>,
    client_name: Option<String>,
    codecs: Option<Vec<crate::protocol::Codec>>,
    compression: Option<Vec<crate::protocol::Compression>>,
    legacy: bool,
    no_env: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ClientBuilder {
    pub fn new() -> Self {
        ClientBuilder::default()
    }

    /// A client that only queries and watches (operator tools).
    pub fn observer() -> Self {
        ClientBuilder {
            role: Role::Observer,
            ..Default::default()
        }
    }

    /// Adds a registry address (`host:port`); call again for failover addresses.
    pub fn registry(mut self, addr: impl Into<String>) -> Self {
        self.registries.push(addr.into());
        self
    }

    pub fn registries<I: IntoIterator<Item = S>, S: Into<String>>(mut self, addrs: I) -> Self {
        self.registries.extend(addrs.into_iter().map(Into::into));
        self
    }

    pub fn group(mut self, v: impl Into<String>) -> Self {
        self.group = Some(v.into());
        self
    }

    pub fn service(mut self, v: impl Into<String>) -> Self {
        self.service = Some(v.into());
        self
    }

    pub fn instance_id(mut self, v: impl Into<String>) -> Self {
        self.instance_id = Some(v.into());
        self
    }

    /// Overrides the hostname reported (the legacy `hostName` option).
    pub fn hostname(mut self, v: impl Into<String>) -> Self {
        self.hostname = Some(v.into());
        self
    }

    /// The process this instance stands for, when it is not the caller's own (`sfc agent`
    /// registers a process that embeds no client): reported as the instance's pid, used in the
    /// default instance id, and the process whose figures are sampled. Default: our own pid.
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = Some(pid);
        self
    }

    pub fn endpoint(mut self, e: Endpoint) -> Self {
        self.endpoints.push(e);
        self
    }

    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tags.push(t.into());
        self
    }

    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }

    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    pub fn api(mut self, api: ApiDescription) -> Self {
        self.api = Some(api);
        self
    }

    /// Report interval (default 1 s).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = Some(d);
        self
    }

    /// CA to trust besides the system roots: a PEM file path or PEM text.
    pub fn ca(mut self, v: impl AsRef<str>) -> Self {
        self.ca = Some(PemSource::parse(v.as_ref()));
        self
    }

    /// Client certificate for mutual TLS: a PEM file path or PEM text.
    pub fn cert(mut self, v: impl AsRef<str>) -> Self {
        self.cert = Some(PemSource::parse(v.as_ref()));
        self
    }

    /// Key of the client certificate: a PEM file path or PEM text.
    pub fn key(mut self, v: impl AsRef<str>) -> Self {
        self.key = Some(PemSource::parse(v.as_ref()));
        self
    }

    /// Talks to a registry started with `--insecure-plaintext`. Logs a warning.
    pub fn insecure_plaintext(mut self, yes: bool) -> Self {
        self.insecure_plaintext = yes;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Reconnect backoff: capped exponential from `min` to `max`, with full jitter.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = Some((min, max));
        self
    }

    /// Whether reports carry sampled host and process metrics (default true).
    pub fn sample_metrics(mut self, yes: bool) -> Self {
        self.sample_metrics = Some(yes);
        self
    }

    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = Some(d);
        self
    }

    /// Names the binding in hello (`sfc-node/0.1.0`).
    pub fn client_name(mut self, v: impl Into<String>) -> Self {
        self.client_name = Some(v.into());
        self
    }

    /// Codecs to offer in hello, most preferred first (default: protobuf, then json). Offer
    /// only `json` to see frames as text while debugging.
    pub fn codecs(mut self, codecs: impl IntoIterator<Item = crate::protocol::Codec>) -> Self {
        self.codecs = Some(codecs.into_iter().collect());
        self
    }

    /// Frame compressions to offer in hello (default: zstd); empty offers none.
    pub fn compression(
        mut self,
        c: impl IntoIterator<Item = crate::protocol::Compression>,
    ) -> Self {
        self.compression = Some(c.into_iter().collect());
        self
    }

    /// Legacy fallback (default off): against a registry that predates protocol v1 (it selects
    /// no ALPN `sfc/1`), report in the original `service_fleet_control` format, one TLS
    /// connection per report, and check every report's connection for an upgraded registry,
    /// moving to v1 by itself. Off, such a registry is refused with an error (and sent nothing).
    /// Needs TLS and the service role. Lookups, watches and commands wait for a v1 registry.
    pub fn legacy(mut self, yes: bool) -> Self {
        self.legacy = yes;
        self
    }

    /// Ignore `SFC_*` environment variables (tests, embedded uses).
    pub fn ignore_env(mut self) -> Self {
        self.no_env = true;
        self
    }

    fn env_var(&self, name: &str) -> Option<String> {
        if self.no_env {
            None
        } else {
            env(name)
        }
    }

    /// Validates everything and fills defaults.
    pub fn build(self) -> Result<ClientConfig> {
        let mut registries: Vec<String> = self
            .registries
            .iter()
            .map(|s| s.trim().to_string())
            .collect();
        if registries.is_empty() {
            if let Some(v) = self.env_var("SFC_REGISTRY") {
                registries = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
        }
        if registries.is_empty() {
            registries.push(DEFAULT_REGISTRY.to_string());
        }
        for r in &registries {
            split_host_port(r)?;
        }
        let interval = self.interval.unwrap_or(Duration::from_secs(1));
        crate::limits::check_interval_ms(interval.as_millis() as u64)?;
        let mut registration = Registration::default();
        if self.role == Role::Service {
            let group = self.group.clone().or_else(|| self.env_var("SFC_GROUP"));
            let service = self.service.clone().or_else(|| self.env_var("SFC_SERVICE"));
            let (group, service) = match (group, service) {
                (Some(g), Some(s)) => (g, s),
                (Some(g), None) => (g.clone(), g),
                (None, Some(s)) => (s.clone(), s),
                (None, None) => {
                    return Err(Error::invalid(
                        "group",
                        "not set: give a group or service (or SFC_GROUP / SFC_SERVICE)",
                    ))
                }
            };
            let hostname = self
                .hostname
                .clone()
                .unwrap_or_else(crate::metrics::hostname);
            let pid = self.pid.unwrap_or_else(std::process::id);
            let instance_id = self
                .instance_id
                .clone()
                .or_else(|| self.env_var("SFC_INSTANCE_ID"))
                .unwrap_or_else(|| format!("{hostname}-{pid}"));
            registration = Registration {
                group,
                instance_id,
                service,
                hostname,
                pid,
                endpoints: self.endpoints.clone(),
                tags: self.tags.clone(),
                metadata: self.metadata.clone(),
                version: self.version.clone(),
                api: self.api.clone(),
            };
            crate::limits::check_registration(&registration)?;
        }
        if self.legacy && self.role != Role::Service {
            return Err(Error::invalid(
                "legacy",
                "the legacy fallback is for services (observers need protocol v1)",
            ));
        }
        if self.legacy && self.insecure_plaintext {
            return Err(Error::invalid(
                "legacy",
                "the legacy fallback needs TLS: it tells the registries apart by ALPN, which plaintext lacks",
            ));
        }
        let tls = if self.insecure_plaintext {
            if self.ca.is_some() || self.cert.is_some() {
                return Err(Error::invalid(
                    "insecure_plaintext",
                    "cannot be combined with ca or cert",
                ));
            }
            None
        } else {
            let pick = |v: &Option<PemSource>, var: &str| {
                v.clone()
                    .or_else(|| self.env_var(var).map(|s| PemSource::parse(&s)))
            };
            let opts = ClientTlsOptions {
                ca: pick(&self.ca, "SFC_CA"),
                cert: pick(&self.cert, "SFC_CERT"),
                key: pick(&self.key, "SFC_KEY"),
            };
            // Fail now on unreadable files or mismatched cert/key, not at first connect.
            crate::tls::client_config(&opts)?;
            Some(opts)
        };
        let (reconnect_min, reconnect_max) = self
            .reconnect
            .unwrap_or((Duration::from_millis(100), Duration::from_secs(5)));
        if reconnect_min.is_zero() || reconnect_min > reconnect_max {
            return Err(Error::invalid(
                "reconnect backoff",
                "min must be > 0 and <= max",
            ));
        }
        Ok(ClientConfig {
            registries,
            role: self.role,
            registration,
            interval,
            tls,
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            reconnect_min,
            reconnect_max,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            sample_metrics: self.sample_metrics.unwrap_or(true),
            stop_timeout: self.stop_timeout.unwrap_or(Duration::from_secs(5)),
            client_name: self
                .client_name
                .unwrap_or_else(|| format!("sfc-rust/{}", crate::VERSION)),
            codecs: match self.codecs {
                Some(c) if c.is_empty() => {
                    return Err(Error::invalid("codecs", "empty: offer at least json"))
                }
                Some(c) => c,
                None => DEFAULT_CODECS.to_vec(),
            },
            compression: self
                .compression
                .unwrap_or_else(|| DEFAULT_COMPRESSION.to_vec()),
            legacy: self.legacy,
        })
    }

    /// Builds and starts the client. Never waits on the network: connection problems surface
    /// as events.
    pub fn start(self) -> Result<super::Client> {
        super::Client::start(self.build()?)
    }
}

/// Splits `host:port`, `[v6]:port`; the host is what TLS verifies.
pub fn split_host_port(addr: &str) -> Result<(String, u16)> {
    let bad = || Error::invalid("registry address", format!("{addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let c = ClientBuilder::new()
            .ignore_env()
            .group("g")
            .insecure_plaintext(true)
            .build()
            .unwrap();
        assert_eq!(c.registration.service, "g");
        assert!(c
            .registration
            .instance_id
            .ends_with(&format!("-{}", std::process::id())));
        assert_eq!(c.registries, vec![DEFAULT_REGISTRY.to_string()]);
        let e = ClientBuilder::new()
            .ignore_env()
            .insecure_plaintext(true)
            .build()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("group"), "{e}");
        let e = ClientBuilder::new()
            .ignore_env()
            .group("g")
            .registry("nope")
            .insecure_plaintext(true)
            .build();
        assert!(e.err().unwrap().to_string().contains("\"nope\""));
        let e = ClientBuilder::new()
            .ignore_env()
            .group("a/b")
            .insecure_plaintext(true)
            .build();
        assert!(e.err().unwrap().to_string().contains("group"));
        assert_eq!(
            split_host_port("[::1]:7480").unwrap(),
            ("::1".to_string(), 7480)
        );
    }

    #[test]
    fn pid_of_another_process() {
        let c = ClientBuilder::new()
            .ignore_env()
            .group("g")
            .pid(4242)
            .insecure_plaintext(true)
            .build()
            .unwrap();
        assert_eq!(c.registration.pid, 4242);
        assert!(c.registration.instance_id.ends_with("-4242"), "{}", c.registration.instance_id);
    }

    #[test]
    fn legacy_needs_tls_and_the_service_role() {
        let e = ClientBuilder::new()
            .ignore_env()
            .group("g")
            .insecure_plaintext(true)
            .legacy(true)
            .build();
        let e = e.err().expect("plaintext refused").to_string();
        assert!(e.contains("legacy") && e.contains("needs TLS"), "{e}");
        let e = ClientBuilder::observer().ignore_env().legacy(true).build();
        let e = e.err().expect("observer refused").to_string();
        assert!(e.contains("legacy") && e.contains("for services"), "{e}");
        let c = ClientBuilder::new()
            .ignore_env()
            .group("g")
            .legacy(true)
            .build()
            .unwrap();
        assert!(c.legacy);
        assert!(
            !ClientBuilder::new()
                .ignore_env()
                .group("g")
                .build()
                .unwrap()
                .legacy
        );
    }
}
