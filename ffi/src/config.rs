//! `sfc_config`: the builder a C host fills in before `sfc_client_start`.

use std::ffi::c_char;

use ::sfc_client::ClientBuilder;
use ::sfc_client::model::{ApiDescription, ApiKind, Endpoint};

use crate::arg::{millis, mut_arg, opt_str_arg, str_arg};
use crate::error::{run, sfc_status, FfiError};

/// Client settings, filled in by the `sfc_config_set_*` / `sfc_config_add_*` calls. Opaque.
#[allow(non_camel_case_types)]
pub struct sfc_config {
    pub(crate) builder: ClientBuilder,
    pub(crate) client_name: Option<String>,
}

impl sfc_config {
    fn update(&mut self, f: impl FnOnce(ClientBuilder) -> ClientBuilder) {
        let b = std::mem::take(&mut self.builder);
        self.builder = f(b);
    }
}

/// Applies one change to the config behind `config`.
///
/// # Safety
/// `config` is NULL or a live `sfc_config` not used by another thread during the call.
unsafe fn with_config(
    config: *mut sfc_config,
    f: impl FnOnce(&mut sfc_config) -> Result<(), FfiError>,
) -> sfc_status {
    run(|| f(mut_arg(config, "config")?))
}

/// A new config for a service instance: no registry address (so `SFC_REGISTRY` or
/// 127.0.0.1:7480), TLS with the system roots, a 1 s interval. Settings not given fall back to
/// the `SFC_*` environment variables at `sfc_client_start` (see `sfc_config_ignore_env`).
///
/// Ownership: the caller owns the result and frees it with `sfc_config_free`. Never NULL.
#[no_mangle]
pub extern "C" fn sfc_config_new() -> *mut sfc_config {
    Box::into_raw(Box::new(sfc_config {
        builder: ClientBuilder::new(),
        client_name: None,
    }))
}

/// A new config for an observer: a client that only looks up, queries and watches, and does
/// not register an instance (group, service and the other identity settings are ignored).
///
/// Ownership: as `sfc_config_new`.
#[no_mangle]
pub extern "C" fn sfc_config_new_observer() -> *mut sfc_config {
    Box::into_raw(Box::new(sfc_config {
        builder: ClientBuilder::observer(),
        client_name: None,
    }))
}

/// Frees a config. NULL is ignored. A client started from it does not need it any more.
///
/// # Safety
/// `config` is NULL or a config from `sfc_config_new*` that is not used again.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_free(config: *mut sfc_config) {
    crate::error::run_or((), || {
        if !config.is_null() {
            drop(Box::from_raw(config));
        }
    })
}

/// Adds a registry address `host:port` (`[v6]:port` for IPv6); call again to add failover
/// addresses, tried in order. The address is checked at `sfc_client_start`.
///
/// `config` and `address` must not be NULL; `address` is copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_add_registry(
    config: *mut sfc_config,
    address: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let a = str_arg(address, "registry address")?;
        c.update(|b| b.registry(a));
        Ok(())
    })
}

/// Sets the group that instances of one service share (what peers look up). Without it the
/// service name is used. Copied; checked at `sfc_client_start`.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_group(
    config: *mut sfc_config,
    group: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(group, "group")?;
        c.update(|b| b.group(v));
        Ok(())
    })
}

/// Sets the service's display name. Without it the group is used. Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_service(
    config: *mut sfc_config,
    service: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(service, "service")?;
        c.update(|b| b.service(v));
        Ok(())
    })
}

/// Sets the instance id, unique within the group (default `<hostname>-<pid>`). Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_instance_id(
    config: *mut sfc_config,
    instance_id: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(instance_id, "instance id")?;
        c.update(|b| b.instance_id(v));
        Ok(())
    })
}

/// Overrides the hostname the instance reports. Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_hostname(
    config: *mut sfc_config,
    hostname: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(hostname, "hostname")?;
        c.update(|b| b.hostname(v));
        Ok(())
    })
}

/// Sets the report interval in milliseconds (default 1000); the accepted range is checked at
/// `sfc_client_start`.
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_interval_ms(
    config: *mut sfc_config,
    interval_ms: u64,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.interval(millis(interval_ms)));
        Ok(())
    })
}

/// Adds an endpoint the instance serves. `protocol` may be NULL (means "tcp"); the strings are
/// copied. `port` must not be 0.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_add_endpoint(
    config: *mut sfc_config,
    name: *const c_char,
    host: *const c_char,
    port: u16,
    protocol: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let name = str_arg(name, "endpoint name")?.to_string();
        let host = str_arg(host, "endpoint host")?.to_string();
        let protocol = opt_str_arg(protocol, "endpoint protocol")?
            .unwrap_or("tcp")
            .to_string();
        if port == 0 {
            return Err(FfiError::Invalid {
                what: "endpoint port",
                why: format!("0 for endpoint {name:?}"),
            });
        }
        c.update(|b| {
            b.endpoint(Endpoint {
                name,
                host,
                port,
                protocol,
            })
        });
        Ok(())
    })
}

/// Adds a tag (peers can look up by tag). Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_add_tag(
    config: *mut sfc_config,
    tag: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(tag, "tag")?;
        c.update(|b| b.tag(v));
        Ok(())
    })
}

/// Sets one metadata entry (a later call with the same key replaces it). Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_metadata(
    config: *mut sfc_config,
    key: *const c_char,
    value: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let k = str_arg(key, "metadata key")?;
        let v = str_arg(value, "metadata value")?;
        c.update(|b| b.metadata(k, v));
        Ok(())
    })
}

/// Sets the version the instance reports. Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_version(
    config: *mut sfc_config,
    version: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(version, "version")?;
        c.update(|b| b.version(v));
        Ok(())
    })
}

/// Publishes where the instance's API is described. `kind` is "openapi", "graphql" or
/// "other". Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_api(
    config: *mut sfc_config,
    kind: *const c_char,
    url: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let k = str_arg(kind, "api kind")?;
        let url = str_arg(url, "api url")?.to_string();
        let kind: ApiKind = serde_json::from_value(serde_json::Value::String(k.to_string()))
            .map_err(|_| FfiError::Invalid {
                what: "api kind",
                why: format!("{k:?} (expected openapi, graphql or other)"),
            })?;
        c.update(|b| b.api(ApiDescription { kind, url }));
        Ok(())
    })
}

/// Sets a CA to trust besides the system roots: a PEM file path, or PEM text (a string
/// starting with "-----BEGIN"). Read and checked at `sfc_client_start`. Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_ca(
    config: *mut sfc_config,
    path_or_pem: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(path_or_pem, "ca")?;
        c.update(|b| b.ca(v));
        Ok(())
    })
}

/// Sets the client certificate for mutual TLS (path or PEM text, as `sfc_config_set_ca`);
/// needs `sfc_config_set_key`. Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_cert(
    config: *mut sfc_config,
    path_or_pem: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(path_or_pem, "client certificate")?;
        c.update(|b| b.cert(v));
        Ok(())
    })
}

/// Sets the private key of the client certificate (path or PEM text). Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_key(
    config: *mut sfc_config,
    path_or_pem: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        let v = str_arg(path_or_pem, "client key")?;
        c.update(|b| b.key(v));
        Ok(())
    })
}

/// Talks plaintext to a registry started with `--insecure-plaintext` (reports and commands
/// are not encrypted; a warning is logged). Cannot be combined with a CA or certificate.
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_insecure_plaintext(
    config: *mut sfc_config,
    yes: bool,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.insecure_plaintext(yes));
        Ok(())
    })
}

/// How long a connection attempt, a first lookup or a query may wait (default 5000 ms).
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_connect_timeout_ms(
    config: *mut sfc_config,
    timeout_ms: u64,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.connect_timeout(millis(timeout_ms)));
        Ok(())
    })
}

/// How long `sfc_client_stop` waits for the registry to confirm the leave (default 5000 ms).
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_stop_timeout_ms(
    config: *mut sfc_config,
    timeout_ms: u64,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.stop_timeout(millis(timeout_ms)));
        Ok(())
    })
}

/// Reconnect backoff: capped exponential from `min_ms` to `max_ms`, with full jitter
/// (default 100 ms to 5000 ms). Checked at `sfc_client_start`.
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_reconnect_backoff_ms(
    config: *mut sfc_config,
    min_ms: u64,
    max_ms: u64,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.reconnect_backoff(millis(min_ms), millis(max_ms)));
        Ok(())
    })
}

/// Whether reports carry sampled host and process metrics (default true).
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_sample_metrics(
    config: *mut sfc_config,
    yes: bool,
) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.sample_metrics(yes));
        Ok(())
    })
}

/// Legacy fallback (default false), for a registry that predates protocol v1 (the original
/// `service_fleet_control` registry, which selects no ALPN `sfc/1` in the TLS handshake).
///
/// Off, such a registry is refused and sent nothing after the handshake: it comes back as an
/// `SFC_EVENT_KIND_ERROR` event with `"status": "protocol"` (`SFC_STATUS_PROTOCOL`), `"code":
/// "unsupported-version"` and a message saying the registry predates protocol v1; the client
/// keeps retrying.
///
/// On, the client reports to it in the original wire format instead (one TLS connection per
/// report carrying one `{"action":"HEALTH","payload":...}` document) and checks every report's
/// connection for an upgraded registry, moving to v1 by itself once it finds one. While it
/// reports in the legacy format: `SFC_EVENT_KIND_CONNECTED` carries `"session": 0` (no v1
/// session), lookups and queries return `SFC_STATUS_UNREACHABLE`, no commands arrive, watches
/// wait for a v1 registry, and `sfc_client_stop` returns at once without a confirmed leave
/// (the legacy format has no leave: the registry marks the record offline by its timer).
///
/// Needs TLS and a service: `sfc_client_start` fails with `SFC_STATUS_INVALID_ARGUMENT`
/// (naming `legacy`) for a config with `sfc_config_set_insecure_plaintext` or one from
/// `sfc_config_new_observer`.
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_legacy(config: *mut sfc_config, yes: bool) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.legacy(yes));
        Ok(())
    })
}

/// Names the client library in the hello (default `sfc-c/<version>`; the Go binding sends
/// `sfc-go/<version>`). Copied.
///
/// NULL: a NULL handle or required string gives `SFC_STATUS_NULL_ARGUMENT` (optional ones
/// say what NULL means). Strings are borrowed for the call only. Threads: one thread at a time per config.
///
/// # Safety
/// Pointers are NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_set_client_name(
    config: *mut sfc_config,
    name: *const c_char,
) -> sfc_status {
    with_config(config, |c| {
        c.client_name = Some(str_arg(name, "client name")?.to_string());
        Ok(())
    })
}

/// Ignores the `SFC_*` environment variables (tests, hosts that configure everything).
///
/// NULL `config` gives `SFC_STATUS_NULL_ARGUMENT`. Threads: one thread at a time per config.
///
/// # Safety
/// `config` is NULL or valid for the call.
#[no_mangle]
pub unsafe extern "C" fn sfc_config_ignore_env(config: *mut sfc_config) -> sfc_status {
    with_config(config, |c| {
        c.update(|b| b.ignore_env());
        Ok(())
    })
}
