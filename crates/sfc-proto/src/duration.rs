//! Durations are written like `500ms`, `1s`, `24h` everywhere: flags, environment, bench.

use std::time::Duration;

use crate::error::Error;

/// Parses `500ms`, `1s`, `1m30s`, `24h`. `what` names the setting in the error.
pub fn parse(what: &str, text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        Error::invalid(what, format!("{text:?} is not a duration like 500ms, 1s or 24h ({e})"))
    })
}

/// Formats a duration the way `parse` reads it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_documented_forms() {
        assert_eq!(super::parse("x", "500ms").unwrap().as_millis(), 500);
        assert_eq!(super::parse("x", "24h").unwrap().as_secs(), 86400);
        let e = super::parse("--retention", "soon").unwrap_err().to_string();
        assert!(e.contains("--retention") && e.contains("soon"), "{e}");
    }
}
