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

fn check_name(what: &str, v: &str) -> Result<(), Error> {
    if v.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if v.len() > MAX_NAME_LEN {
        return Err(Error::invalid(what, format!("is {} bytes long; the limit is {MAX_NAME_LEN}", v.len())));
    }
    if v.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::invalid(what, format!("{v:?} contains '/' or a control character")));
    }
    Ok(())
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
    check_len("hostname", &r.hostname, MAX_NAME_LEN)?;
    if r.tags.len() > MAX_TAGS {
        return Err(Error::invalid("tags", format!("{} tags; the limit is {MAX_TAGS}", r.tags.len())));
    }
    for t in &r.tags {
        check_len("tag", t, MAX_TAG_LEN)?;
    }
    if r.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!("{} entries; the limit is {MAX_METADATA_ENTRIES}", r.metadata.len()),
        ));
    }
    for (k, v) in &r.metadata {
        check_len("metadata key", k, MAX_METADATA_KEY_LEN)?;
        check_len(&format!("metadata value of {k:?}"), v, MAX_METADATA_VALUE_LEN)?;
    }
    if r.endpoints.len() > MAX_ENDPOINTS {
        return Err(Error::invalid(
            "endpoints",
            format!("{} endpoints; the limit is {MAX_ENDPOINTS}", r.endpoints.len()),
        ));
    }
    for e in &r.endpoints {
        check_len("endpoint name", &e.name, MAX_NAME_LEN)?;
        check_len("endpoint host", &e.host, MAX_NAME_LEN)?;
    }
    if let Some(v) = &r.version {
        check_len("version", v, MAX_NAME_LEN)?;
    }
    if let Some(api) = &r.api {
        check_len("api url", &api.url, MAX_URL_LEN)?;
    }
    Ok(())
}

/// Checks a gauge name and value (no NaN or infinities: they have no JSON form).
pub fn check_gauge(name: &str, value: f64) -> Result<(), Error> {
    check_len("gauge name", name, MAX_NAME_LEN)?;
    if name.is_empty() {
        return Err(Error::invalid("gauge name", "must not be empty"));
    }
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
