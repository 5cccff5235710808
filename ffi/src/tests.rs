//! Drives the C ABI from Rust against a registry running in this process (real TLS on a
//! loopback port the OS picks): commands and their results, the shutdown command, and a stale
//! lookup once the registry is gone. Commands must come from the registry the client is
//! connected to, which is why these live here rather than in the C suite.

use std::ffi::{c_char, CStr, CString};
use std::ptr;
use std::time::{Duration, Instant};

use crate::client::*;
use crate::config::*;
use crate::event::*;
use crate::*;
use ::sfc_client::model::{Filter, Status};
use sfc_registry::registry::{self, Registry, RegistryConfig};
use sfc_registry::tls::{MtlsMode, PemSource, ServerTlsOptions};

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(sfc_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
fn ok(status: sfc_status) {
    assert_eq!(status, sfc_status::Ok, "last error: {}", last_error());
}

/// Takes ownership of a string the library returned.
fn take_string(p: *mut c_char) -> String {
    assert!(!p.is_null());
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    unsafe { sfc_string_free(p) };
    s
}

struct TestRegistry {
    rt: tokio::runtime::Runtime,
    registry: Registry,
    addr: String,
    ca: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let paths = sfc_registry::certs::init(dir.path(), &["127.0.0.1".to_string()]).unwrap();
        let tls = sfc_registry::tls::server_config(&ServerTlsOptions {
            cert: PemSource::File(paths.server.clone()),
            key: PemSource::File(paths.server_key.clone()),
            mtls: MtlsMode::Off,
            client_ca: None,
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::new(RegistryConfig {
            tls: Some(tls),
            ..Default::default()
        });
        let (listener, addr) = rt.block_on(registry::bind("127.0.0.1:0")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = rt.spawn(registry::serve(registry.clone(), listener, async {
            let _ = rx.await;
        }));
        TestRegistry {
            rt,
            registry,
            addr: addr.to_string(),
            ca: paths.ca.display().to_string(),
            stop: Some(tx),
            served: Some(served),
            _dir: dir,
        }
    }

    /// Stops serving: every session is closed, nothing listens any more.
    fn shut_down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.served.take() {
            let _ = self.rt.block_on(t);
        }
    }

    fn start_client(&self, group: &str, instance: &str) -> *mut sfc_client {
        unsafe {
            let cfg = sfc_config_new();
            ok(sfc_config_ignore_env(cfg));
            ok(sfc_config_add_registry(cfg, c(&self.addr).as_ptr()));
            ok(sfc_config_set_ca(cfg, c(&self.ca).as_ptr()));
            ok(sfc_config_set_group(cfg, c(group).as_ptr()));
            ok(sfc_config_set_instance_id(cfg, c(instance).as_ptr()));
            ok(sfc_config_set_stop_timeout_ms(cfg, 1000));
            ok(sfc_config_set_connect_timeout_ms(cfg, 1000));
            let mut client = ptr::null_mut();
            ok(sfc_client_start(cfg, &mut client));
            sfc_config_free(cfg);
            ok(sfc_client_wait_connected(client, 10_000));
            client
        }
    }
}

/// Pulls events until a command arrives (bounded); returns (id, name, json).
fn next_command(client: *const sfc_client) -> (u64, String, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut ev = ptr::null_mut();
        let s = unsafe { sfc_client_next_event(client, 500, &mut ev) };
        if s == sfc_status::NoEvent {
            continue;
        }
        ok(s);
        let e = unsafe { &*ev };
        let found = if e.kind == sfc_event_kind::Command {
            let name = unsafe { CStr::from_ptr(e.command_name) }
                .to_str()
                .unwrap()
                .to_string();
            let json: serde_json::Value =
                serde_json::from_str(unsafe { CStr::from_ptr(e.json) }.to_str().unwrap()).unwrap();
            Some((e.command_id, name, json))
        } else {
            None
        };
        unsafe { sfc_event_free(ev) };
        if let Some(f) = found {
            return f;
        }
    }
    panic!("no command within 10 s");
}

#[test]
fn commands_round_trip_through_the_c_abi() {
    let reg = TestRegistry::start();
    let client = reg.start_client("ffi", "cmd");

    // A command answered with a result.
    let r = reg.registry.clone();
    let pending = reg.rt.spawn(async move {
        r.send_command(
            "ffi/cmd",
            "echo",
            Some("testing".into()),
            serde_json::json!({ "x": 1 }),
            Some("test".into()),
            Duration::from_secs(10),
        )
        .await
    });
    let (id, name, json) = next_command(client);
    assert_eq!(name, "echo");
    assert_eq!(json["payload"], serde_json::json!({ "x": 1 }));
    assert_eq!(json["reason"], "testing");
    assert_eq!(json["command_id"], id);
    ok(unsafe { sfc_client_respond(client, id, true, c(r#"{"echoed": 1}"#).as_ptr()) });
    let result = reg.rt.block_on(pending).unwrap().unwrap();
    assert!(result.ok);
    assert_eq!(result.result, serde_json::json!({ "echoed": 1 }));

    // A command answered with an error.
    let r = reg.registry.clone();
    let pending = reg.rt.spawn(async move {
        r.send_command(
            "ffi/cmd",
            "compact",
            None,
            serde_json::Value::Null,
            None,
            Duration::from_secs(10),
        )
        .await
    });
    let (id, name, _) = next_command(client);
    assert_eq!(name, "compact");
    // Bad result JSON is refused and names the argument; nothing is sent.
    assert_eq!(
        unsafe { sfc_client_respond(client, id, true, c("{nope").as_ptr()) },
        sfc_status::InvalidJson
    );
    assert!(last_error().contains("command result"), "{}", last_error());
    ok(unsafe { sfc_client_respond(client, id, false, c("disk full").as_ptr()) });
    let result = reg.rt.block_on(pending).unwrap().unwrap();
    assert!(!result.ok);
    assert_eq!(result.error.as_deref(), Some("disk full"));

    // shutdown: the host answers, stops (leave), and the registry records it as left.
    let r = reg.registry.clone();
    let pending = reg.rt.spawn(async move {
        r.send_command(
            "ffi/cmd",
            "shutdown",
            Some("deploy".into()),
            serde_json::Value::Null,
            None,
            Duration::from_secs(10),
        )
        .await
    });
    let (id, name, _) = next_command(client);
    assert_eq!(name, "shutdown");
    ok(unsafe { sfc_client_respond(client, id, true, ptr::null()) });
    assert!(reg.rt.block_on(pending).unwrap().unwrap().ok);
    ok(unsafe { sfc_client_stop(client) });
    ok(unsafe { sfc_client_stop(client) });
    // stop returns once the leave is written; the registry applies it a moment later.
    let start = Instant::now();
    loop {
        let rec = reg
            .registry
            .query(&Filter::group("ffi"))
            .into_iter()
            .find(|r| r.id == "ffi/cmd")
            .unwrap();
        if rec.status == Status::Left {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never left: {rec:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { sfc_client_free(client) };
}

#[test]
fn lookup_turns_stale_when_the_registry_is_gone() {
    let mut reg = TestRegistry::start();
    let client = reg.start_client("ffi-stale", "one");
    let lookup = |client| {
        let mut json = ptr::null_mut();
        let mut stale = false;
        ok(unsafe {
            sfc_client_lookup(
                client,
                c("ffi-stale").as_ptr(),
                false,
                ptr::null(),
                ptr::null(),
                &mut json,
                &mut stale,
            )
        });
        (take_string(json), stale)
    };
    let (json, stale) = lookup(client);
    assert!(!stale);
    assert!(json.contains(r#""id":"ffi-stale/one""#), "{json}");

    reg.shut_down();
    let deadline = Instant::now() + Duration::from_secs(10);
    while unsafe { sfc_client_is_connected(client) } && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!unsafe { sfc_client_is_connected(client) });
    let (json, stale) = lookup(client);
    assert!(stale, "the answer comes from the cache");
    assert!(json.contains(r#""id":"ffi-stale/one""#), "{json}");

    // The leave cannot be delivered: stop says so, and the client is stopped all the same.
    let s = unsafe { sfc_client_stop(client) };
    assert!(
        s == sfc_status::Ok || s == sfc_status::Timeout,
        "{s:?}: {}",
        last_error()
    );
    assert_eq!(
        unsafe { sfc_client_set_gauge(client, c("x").as_ptr(), 1.0) },
        sfc_status::Stopped
    );
    unsafe { sfc_client_free(client) };
}

#[test]
fn status_names_cover_every_status() {
    let all = [
        (sfc_status::Ok, "ok"),
        (sfc_status::NullArgument, "null-argument"),
        (sfc_status::InvalidUtf8, "invalid-utf8"),
        (sfc_status::InvalidArgument, "invalid-argument"),
        (sfc_status::InvalidJson, "invalid-json"),
        (sfc_status::File, "file"),
        (sfc_status::Tls, "tls"),
        (sfc_status::Io, "io"),
        (sfc_status::Remote, "remote"),
        (sfc_status::Protocol, "protocol"),
        (sfc_status::Unreachable, "unreachable"),
        (sfc_status::Timeout, "timeout"),
        (sfc_status::Stopped, "stopped"),
        (sfc_status::NoEvent, "no-event"),
        (sfc_status::Panic, "panic"),
    ];
    for (i, (status, name)) in all.iter().enumerate() {
        assert_eq!(
            *status as i32, i as i32,
            "statuses are numbered in order and never reused"
        );
        let got = unsafe { CStr::from_ptr(sfc_status_name(*status as i32)) }
            .to_str()
            .unwrap();
        assert_eq!(got, *name);
    }
    assert_eq!(
        unsafe { CStr::from_ptr(sfc_status_name(all.len() as i32)) }
            .to_str()
            .unwrap(),
        "unknown"
    );
    assert_eq!(
        unsafe { CStr::from_ptr(sfc_version()) }.to_str().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
}

/// An error event's `status` comes from the text of the core error it reports: pinned here
/// against each variant's real `Display`, so that a changed message cannot silently turn a
/// TLS failure into "unreachable".
#[test]
fn error_events_carry_the_status_of_their_error() {
    use crate::event::error_event_status;
    use ::sfc_client::protocol::ErrorCode;
    use ::sfc_client::Error as E;
    let cases = [
        (
            E::Tls("handshake with 127.0.0.1:1 failed: invalid peer certificate".into()),
            sfc_status::Tls,
        ),
        (E::Io(std::io::Error::other("broken pipe")), sfc_status::Io),
        (
            E::Remote {
                code: ErrorCode::NotAuthorized,
                message: "no".into(),
            },
            sfc_status::Remote,
        ),
        (
            E::Protocol {
                code: ErrorCode::UnexpectedMessage,
                message: "x".into(),
            },
            sfc_status::Protocol,
        ),
        (
            E::Unreachable("127.0.0.1:1: connection refused".into()),
            sfc_status::Unreachable,
        ),
        (
            E::Timeout("handshake with 127.0.0.1:1".into()),
            sfc_status::Timeout,
        ),
        (
            E::invalid("address", "no port"),
            sfc_status::InvalidArgument,
        ),
    ];
    for (e, want) in cases {
        // How the client's reconnect loop words a failed connection (connection.rs).
        let text = format!("127.0.0.1:7480: {e}");
        assert_eq!(error_event_status(false, &text), want, "{text}");
    }
    // An error frame inside a session: the registry's own message, with its code.
    assert_eq!(
        error_event_status(true, "group \"a\" is not yours"),
        sfc_status::Remote
    );
    // The codes of the registry's budgets (issue 15), as an error frame inside a session and
    // as a refused hello, and a registry that predates protocol v1 (issue 17): the status the
    // header documents for each.
    let coded = [
        (
            E::Remote {
                code: ErrorCode::TooManyInstances,
                message: "registering web/9 would pass --max-group-instances (2)".into(),
            },
            "too-many-instances",
            sfc_status::Remote,
        ),
        (
            E::Remote {
                code: ErrorCode::SlowConsumer,
                message: "outbound queue over --max-outbound (1048576 bytes)".into(),
            },
            "slow-consumer",
            sfc_status::Remote,
        ),
        (
            E::Protocol {
                code: ErrorCode::UnsupportedVersion,
                message: "the registry predates protocol v1".into(),
            },
            "unsupported-version",
            sfc_status::Protocol,
        ),
    ];
    for (e, name, want) in coded {
        let code = match &e {
            E::Remote { code, .. } | E::Protocol { code, .. } => *code,
            _ => unreachable!(),
        };
        assert_eq!(code.as_str(), name);
        let text = format!("127.0.0.1:7480: {e}");
        assert_eq!(error_event_status(true, &text), want, "{text}");
        if let E::Remote { message, .. } = &e {
            assert_eq!(error_event_status(true, message), want, "{message}");
        }
    }
}
