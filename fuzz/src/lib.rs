//! Shared pieces of the fuzz targets in `fuzz_targets/`: a byte stream that arrives in
//! fuzzer-chosen pieces, a structured JSON generator whose keys come from the protocol's own
//! field names, and the checks every target applies to what the decoders return.
//!
//! Every target calls the same functions the registry calls on network input; a panic, an
//! abort, a hang or an error without a message is a finding.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use arbitrary::{Arbitrary, Result as ArbResult, Unstructured};
use sfc_registry::protocol::{Codec, ErrorCode, Message, ProtocolError};
use tokio::io::{AsyncRead, ReadBuf};

/// Runs `f` on this thread's current-thread tokio runtime (one per fuzzing process).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// An in-memory byte stream that hands out its bytes in pieces of varying size, so frame
/// headers and payloads are split across reads the way TCP splits them. The piece sizes come
/// from a small generator seeded by the data itself, so a seed file is just the wire bytes.
pub struct Chunked<'a> {
    data: &'a [u8],
    state: u64,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
        for &b in data.iter().take(64) {
            state = state.rotate_left(5) ^ u64::from(b);
        }
        Chunked {
            data,
            state: state | 1,
        }
    }

    fn next_size(&mut self) -> usize {
        // xorshift64: only to vary piece sizes, not for anything random.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        match self.state % 4 {
            0 => 1,
            1 => 1 + (self.state >> 8) as usize % 7,
            2 => 1 + (self.state >> 8) as usize % 300,
            _ => usize::MAX,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.next_size().min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// The codes `Codec::decode` may answer with.
pub const DECODE_CODES: &[ErrorCode] = &[
    ErrorCode::EmptyFrame,
    ErrorCode::BadJson,
    ErrorCode::UnknownMessage,
    ErrorCode::InvalidMessage,
];

/// A protocol error must carry one of the expected codes and a message that says something.
pub fn check_error(e: &ProtocolError, allowed: &[ErrorCode]) {
    assert!(
        allowed.contains(&e.code),
        "unexpected error code {} for {:?}",
        e.code,
        e.message
    );
    assert!(
        !e.message.trim().is_empty(),
        "error {} without a message",
        e.code
    );
}

/// What we decoded we must be able to send back: our own encoding of a decoded message
/// decodes again to a message of the same type.
pub fn check_round_trip(m: &Message) {
    let bytes = Codec::Json.encode(m);
    match Codec::Json.decode(&bytes) {
        Ok(again) => assert_eq!(
            again.name(),
            m.name(),
            "round trip changed the message type"
        ),
        Err(e) => panic!(
            "our own encoding of a decoded {} does not decode: {e}\n{}",
            m.name(),
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// Decodes one payload the way a session does, checks the answer, and returns the message.
pub fn decode_checked(payload: &[u8]) -> Option<Message> {
    match Codec::Json.decode(payload) {
        Ok(m) => {
            check_round_trip(&m);
            Some(m)
        }
        Err(e) => {
            check_error(&e, DECODE_CODES);
            None
        }
    }
}

/// Every field name of the protocol's messages and records (`crates/sfc-proto/src/model.rs`,
/// `crates/sfc-proto/src/protocol/message.rs`), so generated objects hit real fields most of the time.
pub const FIELD_NAMES: &[&str] = &[
    "type",
    "after",
    "api",
    "arch",
    "at",
    "client",
    "clock_skew_ms",
    "code",
    "codec",
    "codecs",
    "command_id",
    "connected_since",
    "cpu_count",
    "cpu_percent",
    "cursor",
    "custom",
    "detail",
    "endpoints",
    "error",
    "event",
    "fatal",
    "filter",
    "group",
    "health",
    "health_note",
    "host",
    "hostname",
    "id",
    "instance",
    "instance_id",
    "instances",
    "interval_ms",
    "issued_by",
    "kernel",
    "kind",
    "last_report_at",
    "liveness_ms",
    "load_average",
    "max_frame",
    "memory_available_bytes",
    "memory_total_bytes",
    "memory_used_bytes",
    "message",
    "metadata",
    "metrics",
    "missed_reports",
    "name",
    "offline_reason",
    "ok",
    "open_fds",
    "os_name",
    "os_version",
    "payload",
    "pid",
    "port",
    "process",
    "protocol",
    "reason",
    "registration",
    "registry",
    "reports",
    "resident_bytes",
    "result",
    "role",
    "runtime",
    "sent_at",
    "seq",
    "server_time",
    "service",
    "session",
    "start_time",
    "status",
    "status_since",
    "swap_total_bytes",
    "swap_used_bytes",
    "tag",
    "tags",
    "threads",
    "tls_identity",
    "uptime_seconds",
    "url",
    "user",
    "version",
    "virtual_bytes",
    "watch",
    "wire",
];

/// String values the decoders give meaning to (enum names, codecs, message types).
pub const WORDS: &[&str] = &[
    "hello",
    "welcome",
    "report",
    "leave",
    "ping",
    "pong",
    "query",
    "result",
    "watch",
    "unwatch",
    "event",
    "command",
    "command-result",
    "error",
    "json",
    "service",
    "observer",
    "passing",
    "warning",
    "critical",
    "online",
    "offline",
    "left",
    "joined",
    "evicted",
    "connection-lost",
    "missed-reports",
    "registry-restart",
    "superseded",
    "openapi",
    "graphql",
    "other",
    "v1",
    "legacy",
    "shutdown",
    "bad-json",
    "invalid-field",
    "",
    "g",
    "svc/x",
    "\u{0}",
    "\u{1b}[0m",
    "é",
    "\u{feff}",
];

/// Number literals chosen to sit on the edges of u16, u32, u64, i64 and f64.
pub const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "99",
    "100",
    "3600000",
    "3600001",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1.5",
    "0.0001",
    "1e-320",
    "1e308",
    "1e309",
    "-1e309",
    "1E2",
    "2.0",
    "0.1e1",
    "123456789012345678901234567890",
];

/// A JSON value built from fuzzer input. Rendered as text so it can hold number literals that
/// no `serde_json::Value` holds (`1e309`, `18446744073709551616`).
#[derive(Debug)]
pub enum Json {
    Null,
    Bool(bool),
    /// One of [`NUMBERS`].
    Edge(u8),
    U64(u64),
    I64(i64),
    F64(f64),
    /// One of [`WORDS`].
    Word(u8),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(Key, Json)>),
}

/// An object key: usually a real field name, sometimes anything.
#[derive(Debug)]
pub enum Key {
    Field(u8),
    Other(String),
}

const MAX_DEPTH: u32 = 6;

impl Json {
    pub fn generate(u: &mut Unstructured<'_>, depth: u32) -> ArbResult<Json> {
        let pick = if depth >= MAX_DEPTH {
            u.int_in_range(0..=8)?
        } else {
            u.int_in_range(0..=10)?
        };
        Ok(match pick {
            0 => Json::Null,
            1 => Json::Bool(u.arbitrary()?),
            2 => Json::Edge(u.arbitrary()?),
            3 => Json::U64(u.arbitrary()?),
            4 => Json::I64(u.arbitrary()?),
            5 => Json::F64(u.arbitrary()?),
            6 | 7 => Json::Word(u.arbitrary()?),
            8 => Json::Str(u.arbitrary()?),
            9 => {
                let n = u.int_in_range(0..=8)?;
                Json::Array(
                    (0..n)
                        .map(|_| Json::generate(u, depth + 1))
                        .collect::<ArbResult<_>>()?,
                )
            }
            _ => Json::Object(object_fields(u, depth + 1)?),
        })
    }

    pub fn render(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Edge(i) => out.push_str(NUMBERS[*i as usize % NUMBERS.len()]),
            Json::U64(n) => out.push_str(&n.to_string()),
            Json::I64(n) => out.push_str(&n.to_string()),
            // serde_json writes NaN and infinities as null.
            Json::F64(f) => {
                out.push_str(&serde_json::to_string(f).unwrap_or_else(|_| "null".into()))
            }
            Json::Word(i) => push_str(out, WORDS[*i as usize % WORDS.len()]),
            Json::Str(s) => push_str(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            Json::Object(fields) => render_object(fields, out),
        }
    }
}

pub fn object_fields(u: &mut Unstructured<'_>, depth: u32) -> ArbResult<Vec<(Key, Json)>> {
    let n = u.int_in_range(0..=10)?;
    (0..n)
        .map(|_| {
            let key = if u.ratio(7, 8)? {
                Key::Field(u.arbitrary()?)
            } else {
                Key::Other(u.arbitrary()?)
            };
            Ok((key, Json::generate(u, depth)?))
        })
        .collect()
}

pub fn render_object(fields: &[(Key, Json)], out: &mut String) {
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match k {
            Key::Field(i) => push_str(out, FIELD_NAMES[*i as usize % FIELD_NAMES.len()]),
            Key::Other(s) => push_str(out, s),
        }
        out.push(':');
        v.render(out);
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        Json::generate(u, 0)
    }
}

/// A registry with the documented defaults and one registered instance (`fuzz/known`, no
/// session), for the targets that apply what they decoded.
pub fn registry() -> sfc_registry::registry::Registry {
    let reg = sfc_registry::registry::Registry::new(sfc_registry::registry::RegistryConfig::default());
    let known = sfc_registry::model::Registration {
        group: "fuzz".into(),
        instance_id: "known".into(),
        service: "svc".into(),
        hostname: "host".into(),
        tags: vec!["a".into()],
        ..Default::default()
    };
    reg.state()
        .register(known, 1000, None, None, "v1", serde_json::Value::Null);
    reg
}

/// The id of the instance [`registry`] registers.
pub const KNOWN_ID: &str = "fuzz/known";

/// Does with a decoded message what a service's session does with the parts that touch shared
/// state: a hello is validated like the handshake does, a report is applied to the instance.
pub fn apply(reg: &sfc_registry::registry::Registry, m: Message) {
    match m {
        Message::Hello(h) => check_hello(reg, h),
        Message::Report(r) => {
            reg.state().apply_report(KNOWN_ID, None, r);
        }
        _ => {}
    }
}

/// The handshake's hello validation, with the checks on what it accepts.
pub fn check_hello(reg: &sfc_registry::registry::Registry, h: sfc_registry::protocol::Hello) {
    use sfc_registry::protocol::Role;
    match sfc_registry::registry::session::check_hello(reg, h) {
        Ok((h, codec, interval)) => {
            assert!(
                h.codecs.iter().any(|c| c == codec.name()),
                "picked codec {} that the hello did not offer: {:?}",
                codec.name(),
                h.codecs
            );
            let ms = interval.as_millis() as u64;
            assert!(
                (sfc_registry::limits::MIN_INTERVAL_MS..=sfc_registry::limits::MAX_INTERVAL_MS).contains(&ms),
                "accepted interval {ms} ms outside the documented limits"
            );
            match (h.role, &h.registration) {
                (Role::Service, Some(r)) => {
                    sfc_registry::limits::check_registration(r)
                        .expect("accepted registration passes the limits");
                    let _ = sfc_registry::model::InstanceRecord::make_id(&r.group, &r.instance_id);
                }
                (Role::Observer, None) => {}
                (role, r) => panic!("accepted a {role:?} hello with registration {r:?}"),
            }
            // What the welcome computes from it.
            let _liveness = interval * reg.config().missed_reports;
        }
        Err(e) => check_error(&e, &[ErrorCode::UnsupportedCodec, ErrorCode::InvalidField]),
    }
}

/// An HTTP answer must have one of the `allowed` statuses; an error answer carries the
/// documented body `{"error":{"code":"...","message":"..."}}` with a message.
pub async fn check_http_answer(resp: axum::response::Response, allowed: &[axum::http::StatusCode]) {
    let status = resp.status();
    assert!(allowed.contains(&status), "unexpected status {status}");
    if status.is_success() {
        return;
    }
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("error body");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status} answer whose body is not the JSON error body ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty() && !message.trim().is_empty(),
        "error body without code or message: {v}"
    );
}
