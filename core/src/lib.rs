//! Service Fleet Control core: service discovery and health status for a fleet of
//! microservices.
//!
//! # Layout
//! - [`protocol`]: the v1 wire protocol (preamble, frames, messages) and the legacy format.
//! - [`model`]: instances, states, health, filters and events, shared by every part.
//! - [`tls`]: rustls configuration for the registry and the client (ring provider only).
//! - [`certs`]: development certificate generation with rcgen (feature `server`).
//! - [`metrics`]: host and process sampling with sysinfo.
//! - [`registry`]: the registry server: sessions, liveness timers, events and commands
//!   (feature `server`).
//! - [`http`]: the registry's HTTP API, Prometheus metrics and dashboard (feature `server`).
//! - [`client`]: the client library every language binding wraps.
//! - [`limits`]: the documented limits on names, tags, metadata and gauges.
//! - [`duration`]: the `500ms` / `1s` / `24h` duration syntax.
//! - [`bench`]: `sfc bench`, simulated fleets against a registry (feature `server`).
//!
//! The `sfc` binary (`src/main.rs`, feature `server`) is a thin command-line layer over this crate.

pub mod client;
pub mod duration;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod tls;

#[cfg(feature = "server")]
pub mod cli;

#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod certs;
#[cfg(feature = "server")]
pub mod registry;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod http;

pub use error::{Error, Result};

/// This crate's version, as reported in hello/welcome and by the C ABI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
