//! `sfc_watch`: a stream of fleet events, pulled with a timeout.

use std::ffi::c_char;
use std::sync::Mutex;

use ::sfc_client::{Client, WatchStream};
use tokio::sync::watch;

use crate::arg::{into_c_string, out_arg, ref_arg};
use crate::client::{block_on_for, to_json};
use crate::error::{run, run_or, sfc_status, FfiError};

/// A watch made by `sfc_client_watch`. Opaque.
#[allow(non_camel_case_types)]
pub struct sfc_watch {
    /// Keeps the runtime the stream is fed from alive while the watch exists.
    client: Client,
    stream: Mutex<WatchStream>,
    /// Set by `sfc_watch_cancel`; wakes a thread blocked in `sfc_watch_next`.
    cancelled: watch::Sender<bool>,
}

impl sfc_watch {
    pub(crate) fn new(client: Client, stream: WatchStream) -> sfc_watch {
        sfc_watch {
            client,
            stream: Mutex::new(stream),
            cancelled: watch::channel(false).0,
        }
    }
}

/// Waits up to `timeout_ms` for the watch's next event (0: only take one already waiting;
/// `SFC_WAIT_FOREVER`: no time limit and no timer, until an event, `sfc_watch_cancel` or the
/// client's stop).
///
/// Returns `SFC_STATUS_OK` and writes `*out_json`, one event as a JSON object (`seq`, `at`,
/// `kind` such as "joined", "online", "offline", "left", "evicted", "health-changed",
/// "report", `id`, `group`, `service`, `instance`, `detail`), which the caller frees with
/// `sfc_string_free`; `SFC_STATUS_NO_EVENT` when none came in time; `SFC_STATUS_STOPPED` once
/// the client has stopped and the watch has ended.
///
/// Threads: any thread; concurrent callers on one watch are served one at a time.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_watch_next(
    watch: *const sfc_watch,
    timeout_ms: u64,
    out_json: *mut *mut c_char,
) -> sfc_status {
    run(|| {
        let w = ref_arg(watch, "watch")?;
        let out = out_arg(out_json, "out_json")?;
        let mut stream = w.stream.lock().unwrap_or_else(|e| e.into_inner());
        let mut cancelled = w.cancelled.subscribe();
        if *cancelled.borrow() {
            return Err(::sfc_client::Error::Stopped.into());
        }
        let got = if timeout_ms == 0 {
            match stream.try_next() {
                Some(ev) => Some(ev),
                None if w.client.is_stopped() => None,
                None => return Err(FfiError::NoEvent(0)),
            }
        } else {
            let next = async {
                tokio::select! {
                    biased;
                    ev = stream.next() => ev,
                    _ = cancelled.wait_for(|c| *c) => None,
                }
            };
            match block_on_for(&w.client, timeout_ms, next) {
                Some(ev) => ev,
                None => return Err(FfiError::NoEvent(timeout_ms)),
            }
        };
        let ev = got.ok_or(::sfc_client::Error::Stopped)?;
        *out = into_c_string(to_json(&ev, "event")?, "event")?;
        Ok(())
    })
}

/// Ends a watch from any thread, also while another thread is blocked in `sfc_watch_next` on
/// it: that call returns `SFC_STATUS_STOPPED` at once, and so does every later one. The watch
/// must still be freed with `sfc_watch_free` (after the blocked call has returned). Cancelling
/// twice is fine. NULL is ignored.
///
/// # Safety
/// `watch` is NULL or a live watch.
#[no_mangle]
pub unsafe extern "C" fn sfc_watch_cancel(watch: *const sfc_watch) {
    run_or((), || {
        if let Some(w) = watch.as_ref() {
            w.cancelled.send_replace(true);
        }
    })
}

/// Cancels a watch and frees it. NULL is ignored. Must not be called while another thread is
/// inside `sfc_watch_next` on the same watch.
///
/// # Safety
/// `watch` is NULL or a watch from `sfc_client_watch` that is not used again.
#[no_mangle]
pub unsafe extern "C" fn sfc_watch_free(watch: *mut sfc_watch) {
    run_or((), || {
        if !watch.is_null() {
            drop(Box::from_raw(watch));
        }
    })
}
