//! Every message of protocol v1. On the wire each is one JSON object with a `type` field
//! (kebab-case) naming the message; see PROTOCOL.md for the full contract.

use serde::{Deserialize, Serialize};

use crate::model::{Event, Filter, Health, InstanceRecord, Metrics, Registration};

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A service instance that registers and reports.
    #[default]
    Service,
    /// An operator tool or peer that only queries and watches.
    Observer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub id: u64,
    #[serde(default)]
    pub role: Role,
    /// Codecs the client can speak, most preferred first. v1 registries speak `json`.
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    /// Requested report interval in ms. Outside the documented limits the registry refuses the
    /// hello with `invalid-field`.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Identity and description; required for `role: service`.
    #[serde(default)]
    pub registration: Option<Registration>,
    /// Client library name and version, for logs (`sfc-rust/0.1.0`).
    #[serde(default)]
    pub client: Option<String>,
    /// Frame compressions the client can read, most preferred first (`zstd`); empty or absent
    /// means none. Omitted from JSON when empty, so a v1 hello is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<String>,
}

fn default_codecs() -> Vec<String> {
    vec!["json".to_string()]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The `id` of the hello this answers.
    pub id: u64,
    pub protocol: u16,
    pub codec: String,
    /// Registry-assigned session number, unique for the registry's lifetime.
    pub session: u64,
    /// Registry software and version (`sfc/0.1.0`).
    pub registry: String,
    /// The report interval the registry expects, in ms.
    pub interval_ms: u64,
    /// How many intervals may pass without a frame before the session is declared offline.
    pub missed_reports: u32,
    /// `interval_ms * missed_reports`.
    pub liveness_ms: u64,
    /// Largest frame payload the registry accepts, in bytes.
    pub max_frame: u32,
    /// Registry clock, Unix ms.
    pub server_time: u64,
    /// `<group>/<instance_id>` for services.
    #[serde(default)]
    pub instance: Option<String>,
    /// The frame compression the registry picked from the hello's `compression` list; absent
    /// means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Report {
    /// Client-side sequence number, increasing per session.
    #[serde(default)]
    pub seq: u64,
    /// Client clock at send, Unix ms (informational only).
    #[serde(default)]
    pub sent_at: Option<u64>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub health_note: Option<String>,
    #[serde(default)]
    pub metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Leave {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub id: u64,
    pub server_time: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub id: u64,
    #[serde(default)]
    pub filter: Filter,
}

/// Answer to `query` and `watch` (the watch's initial snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub id: u64,
    pub instances: Vec<InstanceRecord>,
    /// Sequence number of the newest event in the registry's history when the answer was made.
    #[serde(default)]
    pub cursor: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// Correlation id; also names the watch in later `event` and `unwatch` messages.
    pub id: u64,
    #[serde(default)]
    pub filter: Filter,
    /// Also deliver a `report` event for every report of a matching instance.
    #[serde(default)]
    pub reports: bool,
    /// Resume: also replay the history events after this cursor (from an earlier `result` or
    /// `event`), so a reconnecting watcher misses nothing the registry still remembers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unwatch {
    pub id: u64,
    /// The `id` of the watch to cancel.
    pub watch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// The `id` of the watch this event matches.
    pub watch: u64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Registry-assigned; the instance answers with the same id.
    pub command_id: u64,
    /// `shutdown`, or an application-defined name.
    pub name: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Who asked for it (operator token name, certificate subject, or `api`).
    #[serde(default)]
    pub issued_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: u64,
    pub ok: bool,
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// Stable error codes. The strings are the contract; never reuse one for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadPreamble,
    UnsupportedVersion,
    FrameTooLarge,
    EmptyFrame,
    BadJson,
    UnknownMessage,
    InvalidMessage,
    UnexpectedMessage,
    UnsupportedCodec,
    HandshakeTimeout,
    LivenessTimeout,
    Superseded,
    InvalidField,
    RateLimited,
    TooManyConnections,
    NotAuthorized,
    UnknownInstance,
    NotOnline,
    UnknownWatch,
    CommandTimeout,
    Lagged,
    ShuttingDown,
    Internal,
    /// Sent by a client when it does not know the command.
    UnknownCommand,
    /// Registry: the session's outbound queue went over its byte budget (`--max-outbound`):
    /// the peer does not read fast enough. Fatal; the queue is dropped.
    SlowConsumer,
    /// Registry: registering one more identity would pass `--max-instances`, the per-group
    /// cap, or the cap on legacy records. Fatal in hello.
    TooManyInstances,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadPreamble => "bad-preamble",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::EmptyFrame => "empty-frame",
            ErrorCode::BadJson => "bad-json",
            ErrorCode::UnknownMessage => "unknown-message",
            ErrorCode::InvalidMessage => "invalid-message",
            ErrorCode::UnexpectedMessage => "unexpected-message",
            ErrorCode::UnsupportedCodec => "unsupported-codec",
            ErrorCode::HandshakeTimeout => "handshake-timeout",
            ErrorCode::LivenessTimeout => "liveness-timeout",
            ErrorCode::Superseded => "superseded",
            ErrorCode::InvalidField => "invalid-field",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::TooManyConnections => "too-many-connections",
            ErrorCode::NotAuthorized => "not-authorized",
            ErrorCode::UnknownInstance => "unknown-instance",
            ErrorCode::NotOnline => "not-online",
            ErrorCode::UnknownWatch => "unknown-watch",
            ErrorCode::CommandTimeout => "command-timeout",
            ErrorCode::Lagged => "lagged",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Internal => "internal",
            ErrorCode::UnknownCommand => "unknown-command",
            ErrorCode::SlowConsumer => "slow-consumer",
            ErrorCode::TooManyInstances => "too-many-instances",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// The `id` of the request this answers, when there is one.
    #[serde(default)]
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
    /// True when the registry closes the connection after this frame.
    #[serde(default)]
    pub fatal: bool,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Report(Report),
    Leave(Leave),
    Ping(Ping),
    Pong(Pong),
    Query(Query),
    Result(QueryResult),
    Watch(Watch),
    Unwatch(Unwatch),
    Event(EventMessage),
    Command(Command),
    CommandResult(CommandResult),
    Error(ErrorMessage),
}

impl Message {
    /// The wire name of this message (`hello`, `report`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Report(_) => "report",
            Message::Leave(_) => "leave",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Query(_) => "query",
            Message::Result(_) => "result",
            Message::Watch(_) => "watch",
            Message::Unwatch(_) => "unwatch",
            Message::Event(_) => "event",
            Message::Command(_) => "command",
            Message::CommandResult(_) => "command-result",
            Message::Error(_) => "error",
        }
    }

    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>, fatal: bool) -> Self {
        Message::Error(ErrorMessage { id, code, message: message.into(), fatal })
    }
}

/// Every message type name, in PROTOCOL.md order.
pub const MESSAGE_TYPES: &[&str] = &[
    "hello", "welcome", "report", "leave", "ping", "pong", "query", "result", "watch", "unwatch",
    "event", "command", "command-result", "error",
];

/// A decoding failure, with the code that goes into the error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError { code, message: message.into() }
    }
}
