//! Parsers for flag values that more than one command takes.

/// A duration flag: `500ms`, `1s`, `24h` (see `sfc_proto::duration`).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    sfc_client::duration::parse("duration", s).map_err(|e| e.to_string())
}
