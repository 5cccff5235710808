//! The fleet's data model: what an instance is, what state it is in, and the events that
//! describe its transitions. Shared by the registry, the client and every binding, and
//! serialized with snake_case field names everywhere (protocol, HTTP, CLI `--json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Liveness of an instance, as decided by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Online,
    Offline,
    Left,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Left => "left",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online" => Ok(Status::Online),
            "offline" => Ok(Status::Offline),
            "left" => Ok(Status::Left),
            other => Err(format!("unknown status {other:?} (expected online, offline or left)")),
        }
    }
}

/// Why an instance is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineReason {
    /// The connection closed without a leave: detected at once.
    ConnectionLost,
    /// No frame for `missed_reports` x interval: detected by the registry's own timer.
    MissedReports,
    /// The registry restarted and the instance did not come back within one liveness window.
    RegistryRestart,
    /// Another session took over this identity (not used as a final state: the new session is online).
    Superseded,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::ConnectionLost => "connection-lost",
            OfflineReason::MissedReports => "missed-reports",
            OfflineReason::RegistryRestart => "registry-restart",
            OfflineReason::Superseded => "superseded",
        }
    }
}

/// Health that the application reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    #[default]
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "passing" => Ok(Health::Passing),
            "warning" => Ok(Health::Warning),
            "critical" => Ok(Health::Critical),
            other => Err(format!("unknown health {other:?} (expected passing, warning or critical)")),
        }
    }
}

/// A network endpoint that the instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// Kind of API description an instance publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiKind {
    Openapi,
    Graphql,
    Other,
}

/// Where the instance's API is described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiDescription {
    pub kind: ApiKind,
    pub url: String,
}

/// The identity and static description an instance registers with (sent in `hello`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Registration {
    pub group: String,
    pub instance_id: String,
    pub service: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiDescription>,
}

/// Host figures sampled by the client (sysinfo). Every field is optional: a client reports
/// what its OS tells, and a legacy client reports a subset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<[f64; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
}

/// Figures about the reporting process itself (sysinfo).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_fds: Option<u64>,
    /// OS user the process runs as (the legacy module reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Everything measured about an instance in one report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(default)]
    pub host: HostMetrics,
    #[serde(default)]
    pub process: ProcessMetrics,
    /// Figures a language binding supplies (Node.js heap, event-loop delay, Go GC...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime: BTreeMap<String, f64>,
    /// Gauges the application sets by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, f64>,
}

/// An instance as the registry knows it. Field names are the public JSON contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// `<group>/<instance_id>`.
    pub id: String,
    pub group: String,
    pub service: String,
    pub instance_id: String,
    pub hostname: String,
    pub pid: u32,
    pub status: Status,
    pub offline_reason: Option<OfflineReason>,
    pub health: Health,
    pub health_note: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub version: Option<String>,
    pub api: Option<ApiDescription>,
    pub interval_ms: u64,
    /// Unix milliseconds, registry clock. None for legacy instances (no connection).
    pub connected_since: Option<u64>,
    /// Unix milliseconds, registry clock.
    pub last_report_at: Option<u64>,
    /// Subject of the client certificate, when the client presented one.
    pub tls_identity: Option<String>,
    pub metrics: Metrics,
    /// How the instance talks to us: `v1` or `legacy`.
    #[serde(default = "default_wire")]
    pub wire: String,
    /// Client clock minus registry clock at the last report, in ms. The registry never uses the
    /// client's clock for liveness; this is informational.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// Unix milliseconds, registry clock, of the last status change.
    #[serde(default)]
    pub status_since: u64,
}

fn default_wire() -> String {
    "v1".to_string()
}

impl InstanceRecord {
    pub fn make_id(group: &str, instance_id: &str) -> String {
        format!("{group}/{instance_id}")
    }
}

/// Selects instances, for queries, lookups and watches. Empty fields match everything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl Filter {
    pub fn group(group: impl Into<String>) -> Self {
        Filter { group: Some(group.into()), ..Default::default() }
    }

    pub fn matches(&self, r: &InstanceRecord) -> bool {
        self.group.as_deref().is_none_or(|g| g == r.group)
            && self.service.as_deref().is_none_or(|s| s == r.service)
            && self.status.is_none_or(|s| s == r.status)
            && self.health.is_none_or(|h| h == r.health)
            && self.tag.as_deref().is_none_or(|t| r.tags.iter().any(|x| x == t))
    }
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// First registration of an identity the registry did not know.
    Joined,
    /// A known identity is online again (reconnect, or a takeover by a new session).
    Online,
    Offline,
    Left,
    /// A record was removed after `--retention`, or deregistered by an operator.
    Evicted,
    HealthChanged,
    CommandSent,
    CommandResult,
    /// A per-report update; only sent to watchers that opted in.
    Report,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Online => "online",
            EventKind::Offline => "offline",
            EventKind::Left => "left",
            EventKind::Evicted => "evicted",
            EventKind::HealthChanged => "health-changed",
            EventKind::CommandSent => "command-sent",
            EventKind::CommandResult => "command-result",
            EventKind::Report => "report",
        }
    }
}

/// One transition, as delivered to watchers and kept in the event history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the registry's event history; strictly increasing. 0 for `report` events,
    /// which are not kept in the history.
    pub seq: u64,
    /// Unix milliseconds, registry clock.
    pub at: u64,
    pub kind: EventKind,
    /// `<group>/<instance_id>`.
    pub id: String,
    pub group: String,
    pub service: String,
    /// The record after the transition (absent for `evicted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<std::sync::Arc<InstanceRecord>>,
    /// Kind-specific details: the offline reason, the command and its result, who issued it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
