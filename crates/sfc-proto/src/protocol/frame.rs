//! Connection preamble and frame codec.
//!
//! A v1 connection starts with an 8-byte preamble in each direction: the magic `SFCP`, then the
//! lowest and highest protocol versions the sender speaks (u16 big-endian each). The registry
//! answers with the one version it picked in both fields. After the preamble, every frame is a
//! u32 big-endian payload length followed by that many bytes of codec-encoded message.

use bytes::Bytes;
use tokio_util::codec::LengthDelimitedCodec;

use super::message::{ErrorCode, Message, ProtocolError, MESSAGE_TYPES};

pub const MAGIC: [u8; 4] = *b"SFCP";
pub const PREAMBLE_LEN: usize = 8;
/// Versions this build speaks.
pub const PROTOCOL_MIN: u16 = 1;
pub const PROTOCOL_MAX: u16 = 1;
/// Default largest frame payload: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 4;

pub fn encode_preamble(min: u16, max: u16) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..6].copy_from_slice(&min.to_be_bytes());
    p[6..8].copy_from_slice(&max.to_be_bytes());
    p
}

/// Reads a peer's preamble: the (min, max) version range it offered.
pub fn parse_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(u16, u16), ProtocolError> {
    if p[..4] != MAGIC {
        return Err(ProtocolError::new(
            ErrorCode::BadPreamble,
            format!(
                "connection does not start with the SFCP preamble (got bytes {})",
                p[..4].iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    let min = u16::from_be_bytes([p[4], p[5]]);
    let max = u16::from_be_bytes([p[6], p[7]]);
    if min > max {
        return Err(ProtocolError::new(
            ErrorCode::BadPreamble,
            format!("preamble offers versions {min}..{max}, an empty range"),
        ));
    }
    Ok((min, max))
}

/// Picks the highest version both sides speak.
pub fn negotiate_version(min: u16, max: u16) -> Result<u16, ProtocolError> {
    let hi = max.min(PROTOCOL_MAX);
    if hi < min.max(PROTOCOL_MIN) {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol versions {min}..={max}; this registry speaks {PROTOCOL_MIN}..={PROTOCOL_MAX}"
            ),
        ));
    }
    Ok(hi)
}

/// The length-prefixed frame codec with a payload limit.
pub fn length_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(FRAME_HEADER_LEN)
        .max_frame_length(max_frame)
        .big_endian()
        .new_codec()
}

/// Message encodings that can be negotiated in hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    /// `proto/sfc/v1/sfc.proto`; frames carry the one-byte frame header (see [`Wire`]).
    Protobuf,
}

impl Codec {
    /// Every codec this build speaks, in the registry's default order.
    pub const ALL: &'static [Codec] = &[Codec::Protobuf, Codec::Json];

    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Protobuf => "protobuf",
        }
    }

    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "json" => Some(Codec::Json),
            "protobuf" => Some(Codec::Protobuf),
            _ => None,
        }
    }

    /// Picks the first codec in the client's preference list that this build speaks.
    pub fn choose(offered: &[String]) -> Option<Codec> {
        Self::choose_from(offered, Self::ALL)
    }

    /// Picks the first codec in the client's preference list that is in `allowed`.
    pub fn choose_from(offered: &[String], allowed: &[Codec]) -> Option<Codec> {
        offered.iter().find_map(|c| Codec::from_name(c).filter(|c| allowed.contains(c)))
    }

    pub fn encode(self, msg: &Message) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.encode_into(msg, &mut out);
        Bytes::from(out)
    }

    fn encode_into(self, msg: &Message, out: &mut Vec<u8>) {
        match self {
            // Serializing our own types to JSON cannot fail (no non-string map keys, no
            // failing Serialize impls); an empty object would be rejected by the peer anyway.
            Codec::Json => {
                let start = out.len();
                if serde_json::to_writer(&mut *out, msg).is_err() {
                    out.truncate(start);
                    out.extend_from_slice(b"{}");
                }
            }
            Codec::Protobuf => {
                use prost::Message as _;
                // Encoding into a Vec only fails when the buffer cannot grow.
                let _ = super::pb::to_pb(msg).encode(out);
            }
        }
    }

    pub fn decode(self, payload: &[u8]) -> Result<Message, ProtocolError> {
        if payload.is_empty() {
            return Err(ProtocolError::new(ErrorCode::EmptyFrame, "frame has length 0"));
        }
        match self {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| classify_json_error(payload, e)),
            Codec::Protobuf => super::pb::decode(payload),
        }
    }
}

/// Per-frame compressions that can be negotiated in hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
}

/// Frame-header flag: the body is the codec's bytes as they are.
pub const FLAG_PLAIN: u8 = 0x00;
/// Frame-header flag: the body is one zstd frame holding the codec's bytes.
pub const FLAG_ZSTD: u8 = 0x01;
/// Bodies at or below this many bytes are never compressed (see BENCHMARKS.md, "Codecs and
/// compression": zstd does not pay for a typical report).
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 2048;
/// zstd level used for frames: the fastest levels already win most of the bytes on JSON and
/// protobuf records.
pub const ZSTD_LEVEL: i32 = 1;

impl Compression {
    pub const ALL: &'static [Compression] = &[Compression::Zstd];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Picks the first compression in the client's preference list that is in `allowed`.
    pub fn choose_from(offered: &[String], allowed: &[Compression]) -> Option<Compression> {
        offered.iter().find_map(|c| Compression::from_name(c).filter(|c| allowed.contains(c)))
    }
}

/// How frames after `welcome` are encoded: the negotiated codec and compression.
///
/// With codec `json` and no compression a frame payload is the bare JSON object (protocol v1
/// as it always was). Otherwise every payload starts with a one-byte frame header: `0x00` the
/// rest is the codec's bytes, `0x01` the rest is a zstd frame holding them. Other values are an
/// error (`invalid-message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub codec: Codec,
    pub compression: Option<Compression>,
    /// Compress only bodies larger than this.
    pub threshold: usize,
}

impl Default for Wire {
    fn default() -> Self {
        Wire::JSON
    }
}

impl Wire {
    /// Bare JSON frames: the handshake, and every frame of a session that negotiated nothing else.
    pub const JSON: Wire = Wire { codec: Codec::Json, compression: None, threshold: DEFAULT_COMPRESS_THRESHOLD };

    pub fn new(codec: Codec, compression: Option<Compression>) -> Wire {
        Wire { codec, compression, threshold: DEFAULT_COMPRESS_THRESHOLD }
    }

    /// Whether payloads carry the one-byte frame header.
    pub fn has_header(&self) -> bool {
        self.codec != Codec::Json || self.compression.is_some()
    }

    pub fn encode(&self, msg: &Message) -> Bytes {
        if !self.has_header() {
            return self.codec.encode(msg);
        }
        let mut out = Vec::with_capacity(256);
        out.push(FLAG_PLAIN);
        self.codec.encode_into(msg, &mut out);
        if let Some(Compression::Zstd) = self.compression {
            if out.len() - 1 > self.threshold {
                if let Ok(z) = zstd::bulk::compress(&out[1..], ZSTD_LEVEL) {
                    if z.len() < out.len() - 1 {
                        let mut c = Vec::with_capacity(z.len() + 1);
                        c.push(FLAG_ZSTD);
                        c.extend_from_slice(&z);
                        return Bytes::from(c);
                    }
                }
            }
        }
        Bytes::from(out)
    }

    /// Decodes one frame payload; a compressed body may expand to at most `max_body` bytes.
    pub fn decode(&self, payload: &[u8], max_body: usize) -> Result<Message, ProtocolError> {
        if !self.has_header() {
            return self.codec.decode(payload);
        }
        let Some((&flag, body)) = payload.split_first() else {
            return Err(ProtocolError::new(ErrorCode::EmptyFrame, "frame has length 0"));
        };
        match flag {
            FLAG_PLAIN => self.codec.decode(body),
            FLAG_ZSTD if self.compression == Some(Compression::Zstd) => {
                self.codec.decode(&decompress_zstd(body, max_body)?)
            }
            FLAG_ZSTD => Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "frame is zstd-compressed but this session negotiated no compression",
            )),
            other => Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                format!("unknown frame header 0x{other:02x} (expected 0x00 plain or 0x01 zstd)"),
            )),
        }
    }
}

/// Decompresses one zstd body, refusing to expand beyond `max` bytes.
fn decompress_zstd(body: &[u8], max: usize) -> Result<Vec<u8>, ProtocolError> {
    use std::io::Read;
    let bad = |e: std::io::Error| {
        ProtocolError::new(ErrorCode::InvalidMessage, format!("frame body is not valid zstd data: {e}"))
    };
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(bad)?;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    // One byte past the limit tells "too large" from "exactly max"; saturating, as `max` may be
    // `usize::MAX` (no limit), which once overflowed here (found by fuzzing).
    decoder.take((max as u64).saturating_add(1)).read_to_end(&mut out).map_err(bad)?;
    if out.len() > max {
        return Err(ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!("compressed frame expands beyond the maximum of {max} bytes"),
        ));
    }
    Ok(out)
}

/// Tells bad JSON from a well-formed message of an unknown type or with bad fields.
fn classify_json_error(payload: &[u8], err: serde_json::Error) -> ProtocolError {
    if let Err(e) = std::str::from_utf8(payload) {
        return ProtocolError::new(
            ErrorCode::BadJson,
            format!("frame is not valid UTF-8 (bad byte at offset {})", e.valid_up_to()),
        );
    }
    #[derive(serde::Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Tag>(payload) {
        Err(_) => ProtocolError::new(ErrorCode::BadJson, format!("frame is not a JSON object: {err}")),
        Ok(Tag { kind: None }) => {
            ProtocolError::new(ErrorCode::InvalidMessage, "message has no \"type\" field")
        }
        Ok(Tag { kind: Some(serde_json::Value::String(t)) }) if !MESSAGE_TYPES.contains(&t.as_str()) => {
            ProtocolError::new(ErrorCode::UnknownMessage, format!("unknown message type {t:?}"))
        }
        Ok(Tag { kind: Some(t) }) => {
            ProtocolError::new(ErrorCode::InvalidMessage, format!("invalid {t} message: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trip_and_negotiation() {
        let p = encode_preamble(1, 3);
        assert_eq!(&p, b"SFCP\x00\x01\x00\x03");
        assert_eq!(parse_preamble(&p).unwrap(), (1, 3));
        assert_eq!(negotiate_version(1, 3).unwrap(), 1);
        assert_eq!(negotiate_version(2, 9).unwrap_err().code, ErrorCode::UnsupportedVersion);
        assert_eq!(parse_preamble(b"GET / HT").unwrap_err().code, ErrorCode::BadPreamble);
    }

    #[test]
    fn decode_classifies_errors() {
        let c = Codec::Json;
        assert_eq!(c.decode(b"").unwrap_err().code, ErrorCode::EmptyFrame);
        assert_eq!(c.decode(b"{not json").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(c.decode(br#"{"type":"teleport"}"#).unwrap_err().code, ErrorCode::UnknownMessage);
        assert_eq!(c.decode(br#"{"type":"ping"}"#).unwrap_err().code, ErrorCode::InvalidMessage);
        assert_eq!(c.decode(br#"{"id":1}"#).unwrap_err().code, ErrorCode::InvalidMessage);
        let m = c.decode(br#"{"type":"ping","id":7}"#).unwrap();
        assert_eq!(m, Message::Ping(super::super::message::Ping { id: 7 }));
        assert_eq!(c.decode(&c.encode(&m)).unwrap(), m);
    }

    fn sample_messages() -> Vec<Message> {
        use super::super::message::*;
        use crate::model::*;
        let mut metrics = Metrics::default();
        metrics.host.load_average = Some([1.0, 2.0, 3.0]);
        metrics.host.hostname = Some("h".into());
        metrics.process.cpu_percent = Some(12.5);
        metrics.runtime.insert("heap".into(), 3.0);
        let registration = Registration {
            group: "g".into(),
            instance_id: "i".into(),
            service: "s".into(),
            hostname: "h".into(),
            pid: 7,
            endpoints: vec![Endpoint { name: "http".into(), host: "::1".into(), port: 8080, protocol: "tcp".into() }],
            tags: vec!["a".into()],
            metadata: [("k".to_string(), "v".to_string())].into(),
            version: Some("1.2".into()),
            api: Some(ApiDescription { kind: ApiKind::Graphql, url: "/graphql".into() }),
        };
        let record = InstanceRecord {
            id: "g/i".into(),
            group: "g".into(),
            service: "s".into(),
            instance_id: "i".into(),
            hostname: "h".into(),
            pid: 7,
            status: Status::Offline,
            offline_reason: Some(OfflineReason::MissedReports),
            health: Health::Critical,
            health_note: Some("n".into()),
            endpoints: registration.endpoints.clone(),
            tags: vec!["a".into()],
            metadata: registration.metadata.clone(),
            version: None,
            api: None,
            interval_ms: 1000,
            connected_since: Some(5),
            last_report_at: None,
            tls_identity: Some("CN=x".into()),
            metrics: metrics.clone(),
            wire: "legacy".into(),
            clock_skew_ms: Some(-4),
            status_since: 9,
        };
        let filter = Filter { group: Some("g".into()), status: Some(Status::Left), health: Some(Health::Warning), ..Default::default() };
        vec![
            Message::Hello(Hello { id: 1, role: Role::Service, codecs: vec!["protobuf".into(), "json".into()], interval_ms: Some(500),
                registration: Some(registration), client: Some("c".into()), compression: vec!["zstd".into()] }),
            Message::Welcome(Welcome { id: 1, protocol: 1, codec: "protobuf".into(), session: 3, registry: "r".into(), interval_ms: 1,
                missed_reports: 3, liveness_ms: 3, max_frame: 1024, server_time: 4, instance: None, compression: Some("zstd".into()) }),
            Message::Report(Report { seq: 2, sent_at: None, health: Some(Health::Passing), health_note: None, metrics }),
            Message::Leave(Leave { reason: Some("bye".into()) }),
            Message::Ping(Ping { id: 1 }),
            Message::Pong(Pong { id: 1, server_time: 2 }),
            Message::Query(Query { id: 1, filter: filter.clone() }),
            Message::Result(QueryResult { id: 1, instances: vec![record.clone(); 3], cursor: 77 }),
            Message::Watch(Watch { id: 1, filter, reports: true, after: Some(4) }),
            Message::Unwatch(Unwatch { id: 2, watch: 1 }),
            Message::Event(EventMessage { watch: 1, event: Event { seq: 1, at: 2, kind: EventKind::HealthChanged, id: "g/i".into(),
                group: "g".into(), service: "s".into(), instance: Some(std::sync::Arc::new(record)), detail: serde_json::json!({"from": "passing"}) } }),
            Message::Command(Command { command_id: 1, name: "drain".into(), reason: None, payload: serde_json::json!([1, "x"]), issued_by: None }),
            Message::CommandResult(CommandResult { command_id: 1, ok: false, result: serde_json::Value::Null, error: Some("no".into()) }),
            Message::error(Some(3), ErrorCode::RateLimited, "slow down", false),
        ]
    }

    #[test]
    fn every_message_round_trips_through_each_wire() {
        let wires = [
            Wire::JSON,
            Wire::new(Codec::Json, Some(Compression::Zstd)),
            Wire::new(Codec::Protobuf, None),
            Wire::new(Codec::Protobuf, Some(Compression::Zstd)),
            Wire { threshold: 0, ..Wire::new(Codec::Protobuf, Some(Compression::Zstd)) },
        ];
        let msgs = sample_messages();
        assert_eq!(msgs.len(), MESSAGE_TYPES.len(), "one sample per message type");
        for w in wires {
            for m in &msgs {
                let bytes = w.encode(m);
                assert_eq!(w.decode(&bytes, DEFAULT_MAX_FRAME).unwrap(), *m, "{w:?} {}", m.name());
                if w.has_header() {
                    assert!(bytes[0] == FLAG_PLAIN || bytes[0] == FLAG_ZSTD);
                }
            }
        }
        // Threshold 0: a result of three records is compressed.
        let w = Wire { threshold: 0, ..Wire::new(Codec::Protobuf, Some(Compression::Zstd)) };
        assert_eq!(w.encode(&msgs[7])[0], FLAG_ZSTD);
        // No limit (`usize::MAX`) on a compressed frame: the limit check once overflowed here
        // (found by the pb_decode fuzz target; its input is in fuzz/corpus/pb_decode/).
        assert_eq!(w.decode(&w.encode(&msgs[7]), usize::MAX).unwrap(), msgs[7]);
    }

    #[test]
    fn wire_decode_classifies_errors() {
        let w = Wire::new(Codec::Protobuf, Some(Compression::Zstd));
        assert_eq!(w.decode(b"", 100).unwrap_err().code, ErrorCode::EmptyFrame);
        assert_eq!(w.decode(b"\x00", 100).unwrap_err().code, ErrorCode::EmptyFrame);
        assert_eq!(w.decode(b"\x07abc", 100).unwrap_err().code, ErrorCode::InvalidMessage);
        assert_eq!(w.decode(b"\x01not zstd", 100).unwrap_err().code, ErrorCode::InvalidMessage);
        assert_eq!(w.decode(b"\x00\x0a\xff\xff", 100).unwrap_err().code, ErrorCode::InvalidMessage);
        // A frame with only a field this build does not know: unknown-message.
        assert_eq!(w.decode(b"\x00\xf8\x07\x01", 100).unwrap_err().code, ErrorCode::UnknownMessage);
        // Unknown enum value.
        assert_eq!(w.decode(b"\x00\x1a\x02\x18\x09", 100).unwrap_err().code, ErrorCode::InvalidMessage);
        // zstd without negotiating it.
        let plain = Wire::new(Codec::Protobuf, None);
        assert_eq!(plain.decode(b"\x01abc", 100).unwrap_err().code, ErrorCode::InvalidMessage);
        // A decompression bomb: 1 MiB of zeros compresses to a few bytes but exceeds the limit.
        let bomb = [vec![FLAG_ZSTD], zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap()].concat();
        assert_eq!(w.decode(&bomb, 64 * 1024).unwrap_err().code, ErrorCode::FrameTooLarge);
    }

    #[test]
    fn codec_negotiation_follows_client_order_within_allowed() {
        let offer = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Codec::choose(&offer(&["protobuf", "json"])), Some(Codec::Protobuf));
        assert_eq!(Codec::choose(&offer(&["json", "protobuf"])), Some(Codec::Json));
        assert_eq!(Codec::choose_from(&offer(&["protobuf", "json"]), &[Codec::Json]), Some(Codec::Json));
        assert_eq!(Codec::choose_from(&offer(&["protobuf"]), &[Codec::Json]), None);
        assert_eq!(Compression::choose_from(&offer(&["lz4", "zstd"]), Compression::ALL), Some(Compression::Zstd));
        assert_eq!(Compression::choose_from(&offer(&[]), Compression::ALL), None);
    }
}
