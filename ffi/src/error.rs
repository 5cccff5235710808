//! The status enum every fallible export returns, the thread-local last error message, and the
//! guard that keeps panics from crossing the boundary.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a call did. `SFC_STATUS_OK` (0) is success; every other value is a failure whose text
/// `sfc_last_error_message()` returns. The numbers are part of the ABI: a value is never
/// reused for another meaning, and new values are only ever added at the end.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sfc_status {
    /// Success; the call wrote its outputs.
    Ok = 0,
    /// A required pointer argument was NULL (the message names it).
    NullArgument = 1,
    /// A string argument was not valid UTF-8 (the message names it).
    InvalidUtf8 = 2,
    /// A setting or argument has a wrong value (the message names it and says why).
    InvalidArgument = 3,
    /// A JSON argument could not be parsed (the message names it and says why).
    InvalidJson = 4,
    /// A file (CA, certificate, key) could not be read; the message names the path.
    File = 5,
    /// TLS material was unusable.
    Tls = 6,
    /// An operating-system I/O error.
    Io = 7,
    /// The registry answered with an error.
    Remote = 8,
    /// The registry broke the protocol.
    Protocol = 9,
    /// No registry could be reached and nothing was cached.
    Unreachable = 10,
    /// Something did not finish in time (for `sfc_client_stop`: the leave was not confirmed,
    /// but the client is stopped all the same).
    Timeout = 11,
    /// The client (or the watch's client) has been stopped.
    Stopped = 12,
    /// No event arrived within the timeout; not an error, call again.
    NoEvent = 13,
    /// A bug inside libsfc was caught before it could cross into the caller.
    Panic = 14,
}

/// Why an export failed; its `Display` is the text `sfc_last_error_message()` returns.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FfiError {
    #[error("null argument: {0}")]
    Null(&'static str),
    #[error("invalid {0}: not utf-8")]
    Utf8(&'static str),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("invalid {what}: {why}")]
    Json { what: &'static str, why: String },
    #[error(transparent)]
    Core(#[from] ::sfc_client::Error),
    #[error("no event within {0} ms")]
    NoEvent(u64),
    #[error("panic in libsfc: {0}")]
    Panic(String),
}

impl FfiError {
    pub(crate) fn status(&self) -> sfc_status {
        use ::sfc_client::Error as E;
        match self {
            FfiError::Null(_) => sfc_status::NullArgument,
            FfiError::Utf8(_) => sfc_status::InvalidUtf8,
            FfiError::Invalid { .. } => sfc_status::InvalidArgument,
            FfiError::Json { .. } => sfc_status::InvalidJson,
            FfiError::NoEvent(_) => sfc_status::NoEvent,
            FfiError::Panic(_) => sfc_status::Panic,
            FfiError::Core(e) => match e {
                E::Invalid { .. } => sfc_status::InvalidArgument,
                E::File { .. } => sfc_status::File,
                E::Tls(_) => sfc_status::Tls,
                E::Io(_) => sfc_status::Io,
                E::Remote { .. } => sfc_status::Remote,
                E::Protocol { .. } => sfc_status::Protocol,
                E::Unreachable(_) => sfc_status::Unreachable,
                E::Timeout(_) => sfc_status::Timeout,
                E::Stopped => sfc_status::Stopped,
            },
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // Messages come from Display impls; a NUL inside one would truncate it, never fail.
    let c = CString::new(message.replace('\0', "?")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; losing the text is fine then.
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    LAST_ERROR
        .try_with(|l| l.borrow().as_ptr())
        .unwrap_or(EMPTY.as_ptr() as *const c_char)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Runs the body of a fallible export: a failure or a caught panic becomes a status plus the
/// thread's last error message.
pub(crate) fn run(body: impl FnOnce() -> Result<(), FfiError>) -> sfc_status {
    let e = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return sfc_status::Ok,
        Ok(Err(e)) => e,
        Err(p) => FfiError::Panic(panic_text(&*p)),
    };
    let status = e.status();
    set_last_error(e.to_string());
    status
}

/// Runs the body of an export that cannot report failure (frees, getters): a panic yields
/// `fallback` instead of unwinding into C.
pub(crate) fn run_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(p) => {
            set_last_error(FfiError::Panic(panic_text(&*p)).to_string());
            fallback
        }
    }
}
