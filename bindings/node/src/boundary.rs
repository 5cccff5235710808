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
/// Every other error starts with its status (`[sfc:<status>]` or `[sfc:<status>:<protocol
/// code>]`), which `lib/errors.js` turns into the error's `code` and removes from the message.
pub fn to_napi(e: sfc_proto::Error) -> Error {
    match e {
        sfc_proto::Error::Invalid { what, why } => invalid(&option_name(&what), why),
        other => failure(status_of(&other), protocol_code(&other), other.to_string()),
    }
}

/// The C status name (include/sfc.h, kebab-case) of a core error.
pub fn status_of(e: &sfc_proto::Error) -> &'static str {
    match e {
        sfc_proto::Error::Invalid { .. } => "invalid-argument",
        sfc_proto::Error::File { .. } => "file",
        sfc_proto::Error::Tls(_) => "tls",
        sfc_proto::Error::Io(_) => "io",
        sfc_proto::Error::Remote { .. } => "remote",
        sfc_proto::Error::Protocol { .. } => "protocol",
        sfc_proto::Error::Unreachable(_) => "unreachable",
        sfc_proto::Error::Timeout(_) => "timeout",
        sfc_proto::Error::Stopped => "stopped",
    }
}

/// The protocol error code (PROTOCOL.md §11) a core error carries, if any.
pub fn protocol_code(e: &sfc_proto::Error) -> Option<&'static str> {
    match e {
        sfc_proto::Error::Remote { code, .. } | sfc_proto::Error::Protocol { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

/// A `GenericFailure` whose message carries its status for `lib/errors.js`.
pub fn failure(status: &str, code: Option<&str>, message: impl std::fmt::Display) -> Error {
    let tag = match code {
        Some(c) => format!("[sfc:{status}:{c}]"),
        None => format!("[sfc:{status}]"),
    };
    Error::new(Status::GenericFailure, format!("{tag} {}", clean_message(&message.to_string())))
}

/// A message for people: without the documentation URLs that TLS errors embed, and with the
/// abrupt end of a TLS connection said plainly.
pub fn clean_message(m: &str) -> String {
    let mut out = m.to_string();
    if let Some(i) = out.find("peer closed connection without sending TLS close_notify") {
        out.truncate(i);
        out.push_str("the peer closed the connection abruptly (without a TLS close_notify)");
    }
    while let Some(i) = out.find("https://").or_else(|| out.find("http://")) {
        let end = out[i..].find(char::is_whitespace).map_or(out.len(), |n| i + n);
        let mut start = i;
        for sep in [": ", " "] {
            if out[..start].ends_with(sep) {
                start -= sep.len();
                break;
            }
        }
        out.replace_range(start..end, "");
    }
    out
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
    fn messages_lose_documentation_urls() {
        use super::clean_message;
        assert_eq!(
            clean_message("read failed: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof"),
            "read failed: the peer closed the connection abruptly (without a TLS close_notify)"
        );
        assert_eq!(clean_message("see http://x.y/z for more"), "see for more");
        assert_eq!(clean_message("plain"), "plain");
    }

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
