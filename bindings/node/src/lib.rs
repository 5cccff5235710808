//! The client addon of the `service-fleet-control` npm package: napi-rs classes over
//! `sfc-client` (linked directly, not through the C ABI). It holds no registry code: the
//! embedded `Registry` lives in a second addon (`registry/`, package `sfc-node-registry`) that
//! the JavaScript side loads only when a `Registry` is first created.
//!
//! # Layout
//! - [`client`]: `NativeClient`, a core [`sfc_client::Client`] on its own runtime thread.
//! - [`logging`]: native log output for `DEBUG=SFC,SFC_client,SFC_registry`.
//! - `boundary`, `filter`: what both addons share (each compiles these files).
//!
//! The JavaScript side (`index.js`, `compat.js`) wraps these classes in EventEmitters, checks
//! option types and turns `InvalidArg` errors into `TypeError`s. Records and events cross the
//! boundary as JSON text in the core's public snake_case shape; callbacks are weak thread-safe
//! functions, so nothing here keeps the Node.js process alive, and no call blocks the event loop
//! on the network.

// napi-rs registers exports only outside `cfg(test)`; unit tests see them as unused.
#![cfg_attr(test, allow(dead_code))]

mod boundary;
mod client;
mod filter;
mod logging;

/// The version of this package's native part (the core's version).
#[napi_derive::napi]
pub fn native_version() -> String {
    sfc_client::VERSION.to_string()
}
