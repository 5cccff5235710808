//! `sfc_client`: a running client, its blocking calls and its pull-style event queue.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ::sfc_client::model::{Filter, Health};
use ::sfc_client::{Client, ClientEvent, LookupOptions};
use tokio::sync::{broadcast, watch};

use crate::arg::{into_c_string, json_arg, millis, opt_str_arg, out_arg, ref_arg, str_arg};
use crate::config::sfc_config;
use crate::error::{run, run_or, sfc_status, FfiError};
use crate::event::sfc_event;
use crate::watch::sfc_watch;

/// Health values for `sfc_client_set_health`. The numbers are never reused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sfc_health {
    Passing = 0,
    Warning = 1,
    Critical = 2,
}

/// A running client. Opaque; every function taking it may be called from any thread.
#[allow(non_camel_case_types)]
pub struct sfc_client {
    pub(crate) client: Client,
    /// Subscribed at start, so nothing that happens after `sfc_client_start` returns is missed.
    events: Mutex<broadcast::Receiver<ClientEvent>>,
    /// Wakes a blocked `sfc_client_next_event` when the client is stopped.
    stopped: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `timeout_ms` that means "no time limit" for the calls that wait for an event
/// (`sfc_client_next_event`, `sfc_watch_next`): the thread sleeps on the event itself, with no
/// timer and no periodic wake-up.
pub const SFC_WAIT_FOREVER: u64 = u64::MAX;

/// Runs `f` on the client's runtime for at most `timeout_ms` (`SFC_WAIT_FOREVER`: no limit);
/// None when the time ran out.
pub(crate) fn block_on_for<F: std::future::Future>(
    client: &Client,
    timeout_ms: u64,
    f: F,
) -> Option<F::Output> {
    if timeout_ms == SFC_WAIT_FOREVER {
        return Some(client.block_on(f));
    }
    // The timer is made inside the future: it needs the runtime's context.
    client
        .block_on(async { tokio::time::timeout(Duration::from_millis(timeout_ms), f).await })
        .ok()
}

/// The C ABI's gauge-name rule: what the client library refuses (empty, over 128 bytes, `/`,
/// control and invisible characters), and also `"` and `\`, which a C host would have to
/// escape wherever it prints or parses the name again.
pub(crate) fn check_gauge_name(name: &str) -> Result<(), FfiError> {
    ::sfc_client::limits::check_gauge(name, 0.0)?;
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '"' | '\\' | '/') || c.is_control())
    {
        return Err(FfiError::Invalid {
            what: "gauge name",
            why: format!("{name:?} contains {c:?}"),
        });
    }
    Ok(())
}

/// Serializes a value handed to C as JSON text.
pub(crate) fn to_json<T: serde::Serialize>(v: &T, what: &'static str) -> Result<String, FfiError> {
    serde_json::to_string(v).map_err(|e| FfiError::Invalid {
        what,
        why: e.to_string(),
    })
}

/// Starts a client from `config` and writes it to `*out_client`. Never waits on the network:
/// connecting, reconnecting and failover happen in the background and show up as events.
/// Fails at once on bad settings: a missing group, a bad address, an unreadable CA, certificate
/// or key file (`SFC_STATUS_FILE`), unusable TLS material (`SFC_STATUS_TLS`).
///
/// The client runs on a runtime thread of its own (named `sfc-client`), started here and ended
/// by `sfc_client_free`.
///
/// Ownership: `config` is only read (the caller still owns it and may free it at once).
/// On success the caller owns `*out_client` and frees it with `sfc_client_free`; on failure
/// `*out_client` is left untouched. NULL `config` or `out_client`: `SFC_STATUS_NULL_ARGUMENT`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_start(
    config: *const sfc_config,
    out_client: *mut *mut sfc_client,
) -> sfc_status {
    run(|| {
        let config = ref_arg(config, "config")?;
        let out = out_arg(out_client, "out_client")?;
        let name = config
            .client_name
            .clone()
            .unwrap_or_else(|| format!("sfc-c/{}", crate::VERSION));
        let built = config.builder.clone().client_name(name).build()?;
        let client = Client::start_detached(built)?;
        let events = Mutex::new(client.subscribe());
        let (stopped, _) = watch::channel(false);
        *out = Box::into_raw(Box::new(sfc_client {
            client,
            events,
            stopped,
        }));
        Ok(())
    })
}

/// Sends leave to the registry and closes the connection, waiting up to the stop timeout
/// (default 5 s). After it, calls on the client return `SFC_STATUS_STOPPED` (events already
/// queued can still be pulled), and watches end. Returns `SFC_STATUS_TIMEOUT` when the leave
/// was not confirmed in time (the client is stopped all the same).
///
/// Stopping twice is fine: the second call does nothing and returns `SFC_STATUS_OK`.
/// It does not free the client: call `sfc_client_free` after it.
///
/// NULL `client` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_stop(client: *const sfc_client) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let r = c.client.block_on(c.client.stop());
        c.stopped.send_replace(true);
        r?;
        Ok(())
    })
}

/// Frees a client. NULL is ignored. A client that was not stopped closes its connection at
/// once, without a leave (the registry marks it offline, reason connection-lost), also while
/// watches of it are alive; call `sfc_client_stop` first for a clean leave. Joins the client's
/// runtime thread (at most about 100 ms), unless a watch of this client is still alive: the
/// runtime then lives until the last watch is freed, and the watch only reports
/// `SFC_STATUS_STOPPED`.
///
/// Must not be called while another thread is inside a call on the same client.
///
/// # Safety
/// `client` is NULL or a client from `sfc_client_start` that is not used again.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_free(client: *mut sfc_client) {
    run_or((), || {
        if !client.is_null() {
            let c = Box::from_raw(client);
            // A live watch holds a clone of the client (it keeps the runtime alive), so
            // dropping this handle alone would leave the session reporting: close it here.
            c.client.abort();
            c.stopped.send_replace(true);
            drop(c);
        }
    })
}

/// Writes the instance's id, `<group>/<instance_id>` (empty for an observer), to `*out_id`.
/// The caller frees it with `sfc_string_free`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_id(
    client: *const sfc_client,
    out_id: *mut *mut c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let out = out_arg(out_id, "out_id")?;
        *out = into_c_string(c.client.id(), "id")?;
        Ok(())
    })
}

/// Whether a session with a registry is established now. NULL gives false.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_is_connected(client: *const sfc_client) -> bool {
    run_or(false, || {
        client.as_ref().is_some_and(|c| c.client.is_connected())
    })
}

/// Blocks until a session with a registry is established, up to `timeout_ms`; returns
/// `SFC_STATUS_TIMEOUT` if not connected by then, and `SFC_STATUS_STOPPED` as soon as the client
/// is stopped (by `sfc_client_stop` on another thread, or before the call). Blocks the calling
/// thread only.
///
/// NULL `client` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_wait_connected(
    client: *const sfc_client,
    timeout_ms: u64,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        c.client
            .block_on(c.client.wait_connected(millis(timeout_ms)))?;
        Ok(())
    })
}

/// Sets the health reported from now on (one of `sfc_health`); a change is sent at once.
/// `note` may be NULL (no note); it is copied. An unknown `health` value gives
/// `SFC_STATUS_INVALID_ARGUMENT`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_set_health(
    client: *const sfc_client,
    health: c_int,
    note: *const c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let h = match health {
            0 => Health::Passing,
            1 => Health::Warning,
            2 => Health::Critical,
            other => {
                return Err(FfiError::Invalid {
                    what: "health",
                    why: format!("{other} (expected 0 passing, 1 warning or 2 critical)"),
                })
            }
        };
        let note = opt_str_arg(note, "health note")?.map(str::to_string);
        c.client.set_health(h, note)?;
        Ok(())
    })
}

/// Sets a named gauge sent with every report. `name` is copied. A bad name (empty, longer
/// than 128 bytes, or containing `/`, `"`, a backslash, a tab, a newline or any other control or
/// invisible character), a value that is not finite, or one gauge too many gives
/// `SFC_STATUS_INVALID_ARGUMENT`; the message names the gauge.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_set_gauge(
    client: *const sfc_client,
    name: *const c_char,
    value: f64,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let name = str_arg(name, "gauge name")?;
        check_gauge_name(name)?;
        c.client.set_gauge(name, value)?;
        Ok(())
    })
}

/// Removes a gauge (no error if there was none).
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_remove_gauge(
    client: *const sfc_client,
    name: *const c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        c.client.remove_gauge(str_arg(name, "gauge name")?);
        Ok(())
    })
}

/// Replaces the runtime figures the host supplies (heap size, GC pauses...): a JSON object of
/// names to numbers, e.g. `{"heap_bytes": 1048576}`. `{}` clears them. Copied. Names follow
/// the gauge-name rules of `sfc_client_set_gauge`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_set_runtime_metrics(
    client: *const sfc_client,
    metrics_json: *const c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let text = str_arg(metrics_json, "runtime metrics")?;
        let m: BTreeMap<String, f64> = json_arg(text, "runtime metrics")?;
        for name in m.keys() {
            check_gauge_name(name)?;
        }
        c.client.set_runtime_metrics(m)?;
        Ok(())
    })
}

/// Looks up the instances of `group`, answered from a local cache that a watch keeps current.
/// The first lookup of a group waits for the registry (up to the connect timeout); later ones
/// do not wait. With the registry unreachable the cached answer comes back with
/// `*out_stale = true`; with nothing cached either, `SFC_STATUS_UNREACHABLE`.
///
/// Filters: `healthy_only` keeps online instances whose health is passing; `service` and
/// `tag` may be NULL (no filter). A `group` that `sfc_client_start` would refuse (empty, too
/// long, containing `/` or a control character) gives `SFC_STATUS_INVALID_ARGUMENT`.
///
/// Output: `*out_json` is a JSON array of instance records (fields as in the registry's
/// HTTP API: id, group, service, instance_id, status, health, endpoints, tags, metadata,
/// metrics...). The caller frees it with `sfc_string_free`. `out_stale` may be NULL.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_lookup(
    client: *const sfc_client,
    group: *const c_char,
    healthy_only: bool,
    service: *const c_char,
    tag: *const c_char,
    out_json: *mut *mut c_char,
    out_stale: *mut bool,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let group = str_arg(group, "group")?;
        // The rule `sfc_client_start` applies to a group: a name it would refuse to register
        // in is refused here too, rather than looked up and found empty.
        ::sfc_client::limits::check_identifier("group", group)?;
        let opts = LookupOptions {
            healthy_only,
            service: opt_str_arg(service, "service")?.map(str::to_string),
            tag: opt_str_arg(tag, "tag")?.map(str::to_string),
        };
        let out = out_arg(out_json, "out_json")?;
        let l = c.client.block_on(c.client.lookup(group, &opts))?;
        let text = into_c_string(to_json(&l.instances, "lookup")?, "lookup")?;
        *out = text;
        if !out_stale.is_null() {
            *out_stale = l.stale;
        }
        Ok(())
    })
}

/// Asks the registry directly (no cache) for every record matching `filter_json`, a JSON
/// object with any of `group`, `service`, `status` ("online", "offline", "left"), `health`,
/// `tag`; NULL or `{}` matches everything. Waits up to the connect timeout.
///
/// Output: `*out_json`, a JSON array of instance records, freed with `sfc_string_free`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_query(
    client: *const sfc_client,
    filter_json: *const c_char,
    out_json: *mut *mut c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let filter = parse_filter(filter_json)?;
        let out = out_arg(out_json, "out_json")?;
        let records = c.client.block_on(c.client.query(filter))?;
        *out = into_c_string(to_json(&records, "query")?, "query")?;
        Ok(())
    })
}

/// # Safety
/// `filter_json` is NULL or a valid C string.
pub(crate) unsafe fn parse_filter(filter_json: *const c_char) -> Result<Filter, FfiError> {
    match opt_str_arg(filter_json, "filter")? {
        None => Ok(Filter::default()),
        Some(t) => json_arg(t, "filter"),
    }
}

/// Starts watching the events (joined, online, offline, left, health-changed...) of the
/// instances matching `filter_json` (as `sfc_client_query`; NULL matches everything). With
/// `reports`, every report of a matching instance comes too. Across reconnects the watch
/// resumes where it was. Pull its events with `sfc_watch_next`.
///
/// Ownership: the caller owns `*out_watch` and frees it with `sfc_watch_free`, which cancels
/// the watch. A watch keeps the client's runtime alive until it is freed.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_watch(
    client: *const sfc_client,
    filter_json: *const c_char,
    reports: bool,
    out_watch: *mut *mut sfc_watch,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let filter = parse_filter(filter_json)?;
        let out = out_arg(out_watch, "out_watch")?;
        let stream = c.client.watch(filter, reports)?;
        *out = Box::into_raw(Box::new(sfc_watch::new(c.client.clone(), stream)));
        Ok(())
    })
}

/// Waits up to `timeout_ms` for the next event (0: only take one that is already waiting;
/// `SFC_WAIT_FOREVER`: no time limit, and no timer either: the calling thread sleeps until an
/// event arrives or the client is stopped).
///
/// Returns `SFC_STATUS_OK` and writes `*out_event` (free it with `sfc_event_free`),
/// `SFC_STATUS_NO_EVENT` when none came in time (call again), or `SFC_STATUS_STOPPED` once
/// the client is stopped and every queued event has been taken.
///
/// Why a pull API and not callbacks: the host decides on which of its threads events are
/// handled, no library thread ever runs host code (no locking surprises, no re-entrancy, no
/// foreign threads for Go or other runtimes to adopt), and a Go binding maps it straight onto a
/// goroutine and a channel.
///
/// Threads: any thread; concurrent callers on one client are served one at a time. Events
/// are buffered from `sfc_client_start` on; a caller more than 1024 events behind gets one
/// `SFC_EVENT_KIND_LAGGED` event in place of the ones dropped.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_next_event(
    client: *const sfc_client,
    timeout_ms: u64,
    out_event: *mut *mut sfc_event,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let out = out_arg(out_event, "out_event")?;
        let mut rx = lock(&c.events);
        let mut stopped = c.stopped.subscribe();
        let got = if timeout_ms == 0 {
            match rx.try_recv() {
                Ok(ev) => Some(Ok(ev)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => None,
                Err(broadcast::error::TryRecvError::Empty) if *stopped.borrow() => None,
                Err(broadcast::error::TryRecvError::Empty) => return Err(FfiError::NoEvent(0)),
            }
        } else {
            let wait = async {
                tokio::select! {
                    biased;
                    r = rx.recv() => Some(r),
                    _ = stopped.wait_for(|s| *s) => None,
                }
            };
            match block_on_for(&c.client, timeout_ms, wait) {
                Some(r) => r,
                None => return Err(FfiError::NoEvent(timeout_ms)),
            }
        };
        let ev = match got {
            Some(Ok(ev)) => sfc_event::from_client_event(ev)?,
            Some(Err(broadcast::error::RecvError::Lagged(n))) => sfc_event::lagged(n)?,
            Some(Err(broadcast::error::RecvError::Closed)) | None => {
                return Err(::sfc_client::Error::Stopped.into())
            }
        };
        *out = Box::into_raw(ev);
        Ok(())
    })
}

/// Answers a command received as an `SFC_EVENT_KIND_COMMAND` event. With `ok`,
/// `result_or_error` is the result as JSON text (NULL means `null`); without, it is the error
/// message as plain text (NULL means "failed"). Copied. Does not wait for the registry.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: any thread, concurrently with other calls on the same client.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_client_respond(
    client: *const sfc_client,
    command_id: u64,
    ok: bool,
    result_or_error: *const c_char,
) -> sfc_status {
    run(|| {
        let c = ref_arg(client, "client")?;
        let text = opt_str_arg(result_or_error, "command result")?;
        let result = if ok {
            Ok(match text {
                None => serde_json::Value::Null,
                Some(t) => json_arg(t, "command result")?,
            })
        } else {
            Err(text.unwrap_or("failed").to_string())
        };
        c.client.respond(command_id, result)?;
        Ok(())
    })
}
