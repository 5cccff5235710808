//! The registry addon of the `service-fleet-control` npm package: `NativeRegistry`, the
//! `sfc-registry` registry served from a thread the addon owns. The JavaScript side loads it only
//! when a `Registry` is first created, so a service that only runs a `Client` never maps it.
//!
//! `boundary`, `filter` and `logging` are the client addon's files (`../src/`), compiled here
//! too: each addon is its own shared library, with its own copy of the tracing statics.

// napi-rs registers exports only outside `cfg(test)`; unit tests see them as unused.
#![cfg_attr(test, allow(dead_code))]

#[path = "../src/boundary.rs"]
mod boundary;
#[path = "../src/filter.rs"]
mod filter;
#[path = "../src/logging.rs"]
mod logging;
mod registry;
