//! The sfc registry: it holds the fleet's state and serves it.
//!
//! # Layout
//! - [`registry`]: the [`Registry`] (fleet state, liveness timers, events, commands) and the
//!   protocol server: [`serve`] takes a listener and a shutdown future, and runs one session
//!   task per connection (`registry::session`).
//! - [`store`]: where state survives restarts: SQLite (the default), memory, or etcd (feature
//!   `etcd`, several registries sharing one fleet).
//! - [`http`]: the HTTP API, `/metrics` for Prometheus, the server-sent-event watch and the
//!   dashboard.
//! - [`server`]: [`RegistryOptions`], what `sfc registry` and the Node.js `Registry` accept, and
//!   [`server::run`], which binds both listeners and serves until shut down.
//! - `listener`: the one accept loop that the protocol port and the HTTP API share.
//! - [`dns`]: the DNS interface (`--dns`, hickory-server): names of healthy instances.
//! - [`certs`]: development certificates (rcgen).
//! - [`tls`]: the registry's rustls configuration and client-certificate checks.
//!
//! # The path of a report
//! A client's session task (`sfc-client`) writes a `report` frame. The registry's session task
//! for that connection decodes it (`sfc-proto`), checks it against the limits, and applies it to
//! the state under one short lock: the record's metrics and last-report time, and, when its
//! health or status changed, a transition. A transition is committed to the store before it is
//! broadcast; every watcher session (and `/v1/watch` stream) whose filter matches receives it.
//! Plain reports reach only watchers that asked for them.

pub mod certs;
pub mod dns;
pub mod http;
mod listener;
pub mod registry;
pub mod server;
pub mod store;
pub mod tls;

pub use registry::{bind, serve, Registry, RegistryConfig};
pub use server::RegistryOptions;
pub use sfc_proto::{duration, error, limits, model, protocol, Error, Result, VERSION};
