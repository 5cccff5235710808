//! The library's error type. Messages are lowercase, say what failed and with which value, and
//! are passed unchanged to the CLI, the C ABI, Node.js and Go.

use crate::protocol::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value or argument is wrong; `what` names it.
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS material or a TLS handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The registry (or the peer) answered with an error frame.
    #[error("registry error {code}: {message}")]
    Remote { code: ErrorCode, message: String },
    /// The local side broke the protocol or received something it could not decode.
    #[error("protocol error {code}: {message}")]
    Protocol { code: ErrorCode, message: String },
    /// No registry could be reached.
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// The client or registry has been stopped.
    #[error("stopped")]
    Stopped,
}

impl Error {
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), why: why.into() }
    }

    pub fn read_file(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::File { action: "cannot read", path: path.display().to_string(), source }
    }

    pub fn write_file(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::File { action: "cannot write", path: path.display().to_string(), source }
    }
}

impl From<crate::protocol::ProtocolError> for Error {
    fn from(e: crate::protocol::ProtocolError) -> Self {
        Error::Protocol { code: e.code, message: e.message }
    }
}

impl From<crate::protocol::connection::ReadError> for Error {
    fn from(e: crate::protocol::connection::ReadError) -> Self {
        match e {
            crate::protocol::connection::ReadError::Io(e) => Error::Io(e),
            crate::protocol::connection::ReadError::Protocol(p) => p.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
