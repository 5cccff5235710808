//! What crosses the boundary between Rust and JavaScript, shared by both addons (the client's
//! and the registry's, each compiles this file): JSON callbacks, JSON text in and out, and the
//! mapping of core errors to napi errors.

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};

/// A JavaScript callback that receives one JSON document per call. Weak: it never keeps the
/// process alive; callee-handled off: the callback gets the value, not `(err, value)`.
pub type JsonCallback = ThreadsafeFunction<String, (), String, Status, false, true>;

/// Queues `json` for the JavaScript callback; never blocks the calling (runtime) thread.
pub fn deliver(cb: &JsonCallback, json: String) {
    let _ = cb.call(json, ThreadsafeFunctionCallMode::NonBlocking);
}

/// Maps a core error to a napi error. `Invalid` becomes `InvalidArg`, which the JavaScript side
/// throws as a `TypeError`; the setting is renamed to the JavaScript option that carries it.
pub fn to_napi(e: sfc_proto::Error) -> Error {
    match e {
        sfc_proto::Error::Invalid { what, why } => invalid(&option_name(&what), why),
        other => Error::new(Status::GenericFailure, other.to_string()),
    }
}

/// An `InvalidArg` error naming `what`.
pub fn invalid(what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, format!("invalid {what}: {why}"))
}

/// The JavaScript option name of a core setting name (`instance_id` -> `instanceId`,
/// `--listen` -> `listen`, `client key` -> `key`).
pub fn option_name(what: &str) -> String {
    match what {
        "registry address" => return "registry".into(),
        "client key" => return "key".into(),
        "client certificate" => return "cert".into(),
        "tag" => return "tags".into(),
        _ => {}
    }
    let what = what.trim_start_matches("--");
    if what.contains(' ') {
        return what.to_string();
    }
    let mut out = String::with_capacity(what.len());
    let mut upper = false;
    for c in what.chars() {
        if c == '_' || c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Serializes a core value for the JavaScript side. The core's types always serialize.
pub fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize: {e}\"}}"))
}

/// Parses JSON text handed over by the JavaScript side (`what` names it in the error).
pub fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(what, e))
}

#[cfg(test)]
mod tests {
    use super::option_name;

    #[test]
    fn core_settings_map_to_javascript_option_names() {
        assert_eq!(option_name("instance_id"), "instanceId");
        assert_eq!(option_name("--listen"), "listen");
        assert_eq!(option_name("--missed-reports"), "missedReports");
        assert_eq!(option_name("registry address"), "registry");
        assert_eq!(option_name("client key"), "key");
        assert_eq!(option_name("gauge name"), "gauge name");
    }
}
