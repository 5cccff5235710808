//! libsfc: the C ABI of the Service Fleet Control client.
//!
//! A C or C++ host links `libsfc.so` or `libsfc.a`, includes `include/sfc.h` (generated from
//! this crate by cbindgen and committed), and gets the whole Rust client: it registers,
//! reports, sets health and gauges, looks up and watches other services, and answers commands.
//!
//! # Layout
//! - [`error`]: the `sfc_status` enum, the thread-local last error, the panic guard.
//! - [`arg`]: checked conversion of the pointers callers pass in.
//! - [`config`]: `sfc_config`, the settings builder.
//! - [`client`]: `sfc_client`, its blocking calls and its pulled event queue.
//! - [`event`]: `sfc_event`, what `sfc_client_next_event` hands out.
//! - [`watch`]: `sfc_watch`, a pulled stream of fleet events.
//!
//! # Rules every export follows
//! Handles are opaque, made by `_new`/`_start`/`_watch` and freed by a `_free` that accepts
//! NULL. A fallible call returns `sfc_status` and writes its outputs only on success. Its body
//! runs under `catch_unwind`, so no panic crosses into C; NULL and non-UTF-8 arguments are
//! errors naming the argument. Strings handed to the caller are freed with `sfc_string_free`.

#![allow(clippy::missing_safety_doc)] // every unsafe export documents its contract in the header

mod arg;
pub mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod watch;

use std::ffi::{c_char, c_int, CString};

pub use client::{sfc_client, sfc_health};
pub use config::sfc_config;
pub use error::sfc_status;
pub use event::{sfc_event, sfc_event_kind};
pub use watch::sfc_watch;

/// This library's version; `sfc.h` carries the same in `SFC_VERSION`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The library's version, e.g. "0.1.0" (compare with the header's `SFC_VERSION` to catch a
/// header/library mismatch). Static: never free it.
#[no_mangle]
pub extern "C" fn sfc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The message of the last failed call on the calling thread ("" if none failed yet).
///
/// Lifetime: the text belongs to the library and stays valid until the next failing `sfc_`
/// call on the same thread; copy it to keep it. Never NULL, never free it.
#[no_mangle]
pub extern "C" fn sfc_last_error_message() -> *const c_char {
    error::run_or(std::ptr::null(), error::last_error_ptr)
}

/// A short constant name for a status value, e.g. "null-argument"; "unknown" for a value this
/// version does not know. Static: never free it.
#[no_mangle]
pub extern "C" fn sfc_status_name(status: c_int) -> *const c_char {
    let s: &'static str = match status {
        0 => "ok\0",
        1 => "null-argument\0",
        2 => "invalid-utf8\0",
        3 => "invalid-argument\0",
        4 => "invalid-json\0",
        5 => "file\0",
        6 => "tls\0",
        7 => "io\0",
        8 => "remote\0",
        9 => "protocol\0",
        10 => "unreachable\0",
        11 => "timeout\0",
        12 => "stopped\0",
        13 => "no-event\0",
        14 => "panic\0",
        _ => "unknown\0",
    };
    s.as_ptr() as *const c_char
}

/// Frees a string the library handed out (lookup and query results, watch events, ids).
/// NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string from this library that is not used again; never pass a string
/// that came from anywhere else.
#[no_mangle]
pub unsafe extern "C" fn sfc_string_free(s: *mut c_char) {
    error::run_or((), || {
        if !s.is_null() {
            drop(CString::from_raw(s));
        }
    })
}

#[cfg(test)]
mod tests;
