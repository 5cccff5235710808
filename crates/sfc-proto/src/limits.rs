//! Documented limits on what an instance may register and report. The registry enforces them
//! and answers `invalid-field` naming the field; the client checks them before sending.

use crate::error::Error;
use crate::model::Registration;

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 128;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_LEN: usize = 128;
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
pub const MAX_ENDPOINTS: usize = 32;
pub const MAX_GAUGES: usize = 256;
pub const MAX_NOTE_LEN: usize = 1024;
pub const MAX_URL_LEN: usize = 2048;
/// Shortest report interval the registry accepts.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest report interval the registry accepts (1 hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Longest string inside `metrics` (`host.hostname`, `os_name`, `os_version`, `kernel`,
/// `arch`, `process.user`).
pub const MAX_METRIC_STRING_LEN: usize = 256;

/// Whether `c` may not appear in an identifier: control characters (C0, DEL, C1), bidi
/// controls and marks, zero-width and other invisible format characters, separators other
/// than ASCII space, and non-characters. These make lookalike ids (`web\u{200b}-1` beside
/// `web-1`), reorder what a terminal shows (U+202E), or reach an operator's terminal as
/// escapes (`ESC[2J`).
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                    // combining grapheme joiner
            | '\u{061C}'                    // arabic letter mark (bidi)
            | '\u{115F}' | '\u{1160}'       // hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'       // mongolian selectors, vowel separator
            | '\u{2000}'..='\u{200F}'       // spaces, zero-width, LRM/RLM
            | '\u{2028}'..='\u{202F}'       // line/paragraph separators, bidi embeddings/overrides
            | '\u{205F}'..='\u{206F}'       // word joiner, invisible operators, bidi isolates
            | '\u{3000}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'       // variation selectors
            | '\u{FEFF}'                    // BOM / zero-width no-break space
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFF}'       // specials, non-characters
            | '\u{E0000}'..='\u{E0FFF}'     // tags, variation selectors supplement
        )
}

/// The one identifier grammar, for `group`, `instance_id`, `service`, gauge names and (when
/// not empty) `hostname`: 1..=128 bytes of UTF-8, no `/`, no character that
/// [`is_forbidden_char`] refuses, not `.` or `..`, no leading or trailing space. Every
/// binding calls this function (through the client library); the registry enforces it with
/// `invalid-field` (rejected, never truncated).
pub fn check_identifier(what: &str, v: &str) -> Result<(), Error> {
    if v.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if v.len() > MAX_NAME_LEN {
        return Err(Error::invalid(what, format!("is {} bytes long; the limit is {MAX_NAME_LEN}", v.len())));
    }
    if v == "." || v == ".." {
        return Err(Error::invalid(what, format!("{v:?} is not a valid identifier")));
    }
    if let Some(c) = v.chars().find(|&c| c == '/' || is_forbidden_char(c)) {
        return Err(Error::invalid(
            what,
            format!("{:?} contains {}", v.escape_default().to_string(), describe_char(c)),
        ));
    }
    if v.starts_with(' ') || v.ends_with(' ') {
        return Err(Error::invalid(what, format!("{v:?} begins or ends with a space")));
    }
    Ok(())
}

fn describe_char(c: char) -> String {
    if c == '/' {
        "'/'".to_string()
    } else if c.is_control() {
        format!("the control character U+{:04X}", c as u32)
    } else {
        format!("the invisible or bidi character U+{:04X}", c as u32)
    }
}

fn check_name(what: &str, v: &str) -> Result<(), Error> {
    check_identifier(what, v)
}

/// A free-text string (tags, metadata, health note, metric strings): a byte limit, and no
/// control characters (they reach terminals and logs).
fn check_text(what: &str, v: &str, max: usize) -> Result<(), Error> {
    check_len(what, v, max)?;
    if let Some(c) = v.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(Error::invalid(what, format!("contains the control character U+{:04X}", c as u32)));
    }
    Ok(())
}

/// Checks a report (or the report part of a legacy document) against every limit: the metric
/// strings, the gauges and the health note. The registry drops a report that fails with
/// `invalid-field` (rejected, never truncated); the client library checks the same before it
/// sends.
pub fn check_report_parts(metrics: &crate::model::Metrics, health_note: Option<&str>) -> Result<(), Error> {
    let h = &metrics.host;
    if let Some(v) = &h.hostname {
        if !v.is_empty() {
            check_identifier("metrics.host.hostname", v)?;
        }
    }
    for (what, v) in [
        ("metrics.host.os_name", &h.os_name),
        ("metrics.host.os_version", &h.os_version),
        ("metrics.host.kernel", &h.kernel),
        ("metrics.host.arch", &h.arch),
        ("metrics.process.user", &metrics.process.user),
    ] {
        if let Some(v) = v {
            check_text(what, v, MAX_METRIC_STRING_LEN)?;
        }
    }
    for (what, map) in [("metrics.custom", &metrics.custom), ("metrics.runtime", &metrics.runtime)] {
        if map.len() > MAX_GAUGES {
            return Err(Error::invalid(what, format!("{} entries; the limit is {MAX_GAUGES}", map.len())));
        }
        for (name, value) in map {
            check_gauge(name, *value)?;
        }
    }
    if let Some(n) = health_note {
        check_health_note(n)?;
    }
    Ok(())
}

/// Checks a health note: ≤ [`MAX_NOTE_LEN`] bytes, no control characters but tab and newlines.
pub fn check_health_note(note: &str) -> Result<(), Error> {
    check_text("health_note", note, MAX_NOTE_LEN)
}

/// Cuts a sampled metric string to what [`check_report_parts`] accepts: control characters
/// dropped, at most [`MAX_METRIC_STRING_LEN`] bytes (on a character boundary). For what a
/// client samples from its OS, which it does not choose.
pub fn fit_metric_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(MAX_METRIC_STRING_LEN));
    for c in v.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_METRIC_STRING_LEN {
            break;
        }
        out.push(c);
    }
    out
}

fn check_len(what: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.len() > max {
        return Err(Error::invalid(what, format!("is {} bytes long; the limit is {max}", v.len())));
    }
    Ok(())
}

/// Checks a registration against every limit.
pub fn check_registration(r: &Registration) -> Result<(), Error> {
    check_name("group", &r.group)?;
    check_name("instance_id", &r.instance_id)?;
    check_name("service", &r.service)?;
    if !r.hostname.is_empty() {
        check_identifier("hostname", &r.hostname)?;
    }
    if r.tags.len() > MAX_TAGS {
        return Err(Error::invalid("tags", format!("{} tags; the limit is {MAX_TAGS}", r.tags.len())));
    }
    for t in &r.tags {
        check_text("tag", t, MAX_TAG_LEN)?;
    }
    if r.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!("{} entries; the limit is {MAX_METADATA_ENTRIES}", r.metadata.len()),
        ));
    }
    for (k, v) in &r.metadata {
        check_text("metadata key", k, MAX_METADATA_KEY_LEN)?;
        check_text(&format!("metadata value of {k:?}"), v, MAX_METADATA_VALUE_LEN)?;
    }
    if r.endpoints.len() > MAX_ENDPOINTS {
        return Err(Error::invalid(
            "endpoints",
            format!("{} endpoints; the limit is {MAX_ENDPOINTS}", r.endpoints.len()),
        ));
    }
    for e in &r.endpoints {
        check_text("endpoint name", &e.name, MAX_NAME_LEN)?;
        check_text("endpoint host", &e.host, MAX_NAME_LEN)?;
        check_text("endpoint protocol", &e.protocol, MAX_NAME_LEN)?;
    }
    if let Some(v) = &r.version {
        check_text("version", v, MAX_NAME_LEN)?;
    }
    if let Some(api) = &r.api {
        check_text("api url", &api.url, MAX_URL_LEN)?;
    }
    Ok(())
}

/// Checks a gauge name and value (no NaN or infinities: they have no JSON form).
pub fn check_gauge(name: &str, value: f64) -> Result<(), Error> {
    check_identifier("gauge name", name)?;
    if !value.is_finite() {
        return Err(Error::invalid(format!("gauge {name:?}"), format!("value {value} is not a finite number")));
    }
    Ok(())
}

/// Checks a requested report interval.
pub fn check_interval_ms(ms: u64) -> Result<(), Error> {
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
        return Err(Error::invalid(
            "interval",
            format!("{ms} ms is outside {MIN_INTERVAL_MS} ms ..= {MAX_INTERVAL_MS} ms"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identifier_grammar_refuses_lookalikes_escapes_and_dots() {
        for ok in ["web-1", "a.b", "..x", "billing_eu", "überall", "web 1", &"x".repeat(128)] {
            assert!(check_identifier("id", ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "", ".", "..", "a/b", "web\u{200b}-1", "web\u{202e}1-", "a\u{1b}[2J", "a\u{7f}", "a\u{85}",
            "\u{feff}web", "a\u{2066}b", "a\u{200d}b", " web", "web ", "a\u{e0001}", &"x".repeat(129),
        ] {
            assert!(check_identifier("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn report_strings_and_gauge_names_are_bounded() {
        let mut m = crate::model::Metrics::default();
        m.host.kernel = Some("k".repeat(MAX_METRIC_STRING_LEN));
        assert!(check_report_parts(&m, None).is_ok());
        m.process.user = Some("u".repeat(MAX_METRIC_STRING_LEN + 1));
        let e = check_report_parts(&m, None).unwrap_err().to_string();
        assert!(e.contains("metrics.process.user") && e.contains("256"), "{e}");
        m.process.user = None;
        m.host.hostname = Some("h\u{1b}]0;pwned\u{7}".into());
        assert!(check_report_parts(&m, None).unwrap_err().to_string().contains("metrics.host.hostname"));
        m.host.hostname = None;
        m.custom.insert("..".into(), 1.0);
        assert!(check_report_parts(&m, None).unwrap_err().to_string().contains("gauge name"));
        assert!(check_health_note("line\nline").is_ok());
        assert!(check_health_note("\u{1b}[2J").is_err());
        let long = format!("{}é", "x".repeat(MAX_METRIC_STRING_LEN - 1));
        let fitted = fit_metric_string(&format!("a\u{1b}{long}"));
        assert!(fitted.len() <= MAX_METRIC_STRING_LEN && !fitted.contains('\u{1b}'));
    }
}
