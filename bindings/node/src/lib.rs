//! Native half of the `service-fleet-control` npm package: napi-rs classes over the Rust core
//! (linked directly, not through the C ABI).
//!
//! # Layout
//! - [`client`]: `NativeClient`, a core [`sfc_client::Client`] on its own runtime thread.
//! - [`registry`]: `NativeRegistry`, the core registry served from a thread the addon owns.
//! - [`logging`]: native log output for `DEBUG=SFC,SFC_client,SFC_registry`.
//!
//! The JavaScript side (`index.js`, `compat.js`) wraps these classes in EventEmitters, checks
//! option types and turns `InvalidArg` errors into `TypeError`s. Records and events cross the
//! boundary as JSON text in the core's public snake_case shape; callbacks are weak thread-safe
//! functions, so nothing here keeps the Node.js process alive, and no call blocks the event loop
//! on the network.

// napi-rs registers exports only outside `cfg(test)`; unit tests see them as unused.
#![cfg_attr(test, allow(dead_code))]

mod client;
mod logging;
mod registry;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};

/// A JavaScript callback that receives one JSON document per call. Weak: it never keeps the
/// process alive; callee-handled off: the callback gets the value, not `(err, value)`.
pub(crate) type JsonCallback = ThreadsafeFunction<String, (), String, Status, false, true>;

/// Queues `json` for the JavaScript callback; never blocks the calling (runtime) thread.
pub(crate) fn deliver(cb: &JsonCallback, json: String) {
    let _ = cb.call(json, ThreadsafeFunctionCallMode::NonBlocking);
}

/// Maps a core error to a napi error. `Invalid` becomes `InvalidArg`, which the JavaScript side
/// throws as a `TypeError`; the setting is renamed to the JavaScript option that carries it.
pub(crate) fn to_napi(e: sfc_client::Error) -> Error {
    match e {
        sfc_client::Error::Invalid { what, why } => invalid(&option_name(&what), why),
        other => Error::new(Status::GenericFailure, other.to_string()),
    }
}

/// An `InvalidArg` error naming `what`.
pub(crate) fn invalid(what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, format!("invalid {what}: {why}"))
}

/// The JavaScript option name of a core setting name (`instance_id` -> `instanceId`,
/// `--listen` -> `listen`, `client key` -> `key`).
fn option_name(what: &str) -> String {
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
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize: {e}\"}}"))
}

/// Parses JSON text handed over by the JavaScript side (`what` names it in the error).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(what, e))
}

/// The version of this package's native part (the core's version).
#[napi_derive::napi]
pub fn native_version() -> String {
    sfc_client::VERSION.to_string()
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
