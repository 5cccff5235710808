//! Connection preamble and frame codec.
//!
//! A v1 connection starts with an 8-byte preamble in each direction: the magic `SFCP`, then the
//! lowest and highest protocol versions the sender speaks (u16 big-endian each). The registry
//! answers with the one version it picked in both fields. After the preamble, every frame is a
//! u32 big-endian payload length followed by that many bytes of codec-encoded message.

use bytes::Bytes;
use tokio_util::codec::LengthDelimitedCodec;

use super::message::{ErrorCode, Message, MESSAGE_TYPES};

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
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
        }
    }

    /// Picks the first codec in the client's preference list that this build speaks.
    pub fn choose(offered: &[String]) -> Option<Codec> {
        offered.iter().find_map(|c| match c.as_str() {
            "json" => Some(Codec::Json),
            _ => None,
        })
    }

    pub fn encode(self, msg: &Message) -> Bytes {
        match self {
            // Serializing our own types to JSON cannot fail (no non-string map keys, no
            // failing Serialize impls); an empty object would be rejected by the peer anyway.
            Codec::Json => Bytes::from(serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec())),
        }
    }

    pub fn decode(self, payload: &[u8]) -> Result<Message, ProtocolError> {
        if payload.is_empty() {
            return Err(ProtocolError::new(ErrorCode::EmptyFrame, "frame has length 0"));
        }
        match self {
            Codec::Json => serde_json::from_slice(payload).map_err(|e| classify_json_error(payload, e)),
        }
    }
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
}
