//! Protocol v1: preamble, frames, messages, and the legacy format accepted on the same port.
//! PROTOCOL.md at the repository root is the human-readable contract.

pub mod connection;
pub mod frame;
pub mod legacy;
pub mod message;
pub mod pb;

pub use connection::Connection;
pub use frame::{Codec, Compression, Wire, DEFAULT_MAX_FRAME, PROTOCOL_MAX, PROTOCOL_MIN};
pub use message::*;
