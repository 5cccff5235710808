//! Service Fleet Control's shared language: what the client and the registry both speak.
//!
//! # Layout
//! - [`model`]: instances, states, health, filters and events.
//! - [`protocol`]: protocol v1 (preamble, frames, messages, the JSON and protobuf codecs, zstd)
//!   and the legacy format of the module sfc replaces.
//! - [`limits`]: the documented limits on names, tags, metadata and gauges.
//! - [`duration`]: the `500ms` / `1s` / `24h` duration syntax.
//! - [`tls`]: PEM sources and loaders that the client's and the registry's TLS configs share.
//! - [`error`]: the error type every sfc crate returns.
//!
//! Nothing here opens a socket or starts a runtime: framing works over any
//! `AsyncRead`/`AsyncWrite`. `sfc-client` and `sfc-registry` build on this crate.

pub mod duration;
pub mod error;
pub mod limits;
pub mod model;
pub mod protocol;
pub mod tls;

pub use error::{Error, Result};

/// The version of sfc, as reported in hello/welcome, by `sfc --version` and by the C ABI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
