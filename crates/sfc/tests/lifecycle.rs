//! Register, report, lookup, watch, liveness and restarts against the real `sfc` binary over
//! real TLS on loopback.

mod common;

use std::time::Duration;

use common::*;
use sfc_client::{ClientEvent, LookupOptions};
use sfc_client::model::{EventKind, Filter, Health, OfflineReason, Status};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_report_lookup() {
    let reg = RegistryProc::start(&[]);
    let a = reg
        .service("billing", "b-1")
        .tag("eu")
        .metadata("zone", "a")
        .endpoint(sfc_client::model::Endpoint { name: "http".into(), host: "127.0.0.1".into(), port: 8080, protocol: "http".into() })
        .start()
        .unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    a.set_gauge("queue_depth", 7.0).unwrap();
    a.set_health(Health::Warning, Some("disk 91%".into())).unwrap();
    let b = reg.service("billing", "b-2").start().unwrap();
    b.wait_connected(LIMIT).await.unwrap();

    // A peer looks the group up: both instances, with what they registered and reported.
    let peer = reg.service("frontend", "f-1").start().unwrap();
    let obs = reg.observer();
    let rec = wait_record(&obs, "billing/b-1", LIMIT, "reporting its gauge and health", |r| {
        r.metrics.custom.get("queue_depth") == Some(&7.0) && r.health == Health::Warning
    })
    .await;
    assert_eq!(rec.status, Status::Online);
    assert_eq!(rec.health_note.as_deref(), Some("disk 91%"));
    assert_eq!(rec.tags, vec!["eu".to_string()]);
    assert_eq!(rec.metadata.get("zone").map(String::as_str), Some("a"));
    assert_eq!(rec.endpoints[0].port, 8080);
    assert_eq!(rec.pid, std::process::id());
    assert!(rec.metrics.host.cpu_count.unwrap_or(0) > 0, "host metrics are sampled");
    assert!(rec.metrics.process.resident_bytes.unwrap_or(0) > 0, "process metrics are sampled");
    assert_eq!(rec.interval_ms, 200);

    let all = peer.lookup("billing", &LookupOptions::default()).await.unwrap();
    assert!(!all.stale);
    let mut ids: Vec<_> = all.instances.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["billing/b-1", "billing/b-2"]);
    // healthy_only leaves out the instance that reports warning.
    let healthy = peer.lookup("billing", &LookupOptions { healthy_only: true, ..Default::default() }).await.unwrap();
    assert_eq!(healthy.instances.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["billing/b-2"]);

    // The cache follows transitions: b-2 leaves and the next lookup no longer counts it healthy.
    b.stop().await.unwrap();
    let left = eventually(LIMIT, "lookup cache to see b-2 leave", || {
        let l = futures_block(peer.lookup("billing", &LookupOptions { healthy_only: true, ..Default::default() }));
        l.ok().filter(|l| l.instances.is_empty())
    })
    .await;
    assert!(!left.stale);

    // The fleet grouped by group, as the original getServiceFleetStatus.
    let fleet = obs.query(Filter::default()).await.unwrap();
    assert_eq!(fleet.iter().filter(|r| r.group == "billing").count(), 2);
    a.stop().await.unwrap();
    peer.stop().await.unwrap();
}

/// Runs a future to completion from inside a sync closure on the test runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_answers_stale_from_cache_when_registry_is_gone() {
    let mut reg = RegistryProc::start(&[]);
    let a = reg.service("api", "a-1").start().unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    let peer = reg.service("web", "w-1").start().unwrap();
    let l = peer.lookup("api", &LookupOptions::default()).await.unwrap();
    assert_eq!(l.instances.len(), 1);
    assert!(!l.stale);
    reg.kill();
    let stale = eventually(LIMIT, "a stale lookup", || {
        futures_block(peer.lookup("api", &LookupOptions::default())).ok().filter(|l| l.stale)
    })
    .await;
    assert_eq!(stale.instances[0].id, "api/a-1", "the cached answer is kept");
}

#[tokio::test]
async fn watch_sees_joined_offline_and_left() {
    let reg = RegistryProc::start(&[]);
    let obs = reg.observer();
    obs.wait_connected(LIMIT).await.unwrap();
    // Established (acknowledged by the registry) before the first transition.
    let mut w = watch_ready(&obs, Filter::group("orders"), false).await;

    let c = reg.service("orders", "o-1").start().unwrap();
    let joined = next_kind(&mut w, EventKind::Joined).await;
    assert_eq!(joined.id, "orders/o-1");
    assert_eq!(joined.instance.as_ref().unwrap().status, Status::Online);

    c.stop().await.unwrap();
    let left = next_kind(&mut w, EventKind::Left).await;
    assert_eq!(left.instance.as_ref().unwrap().status, Status::Left);
    assert!(left.seq > joined.seq);

    // Back again, then the process disappears without a leave: offline.
    let svc = ServiceProc::start(&reg, "orders", "o-1", "200ms");
    let online = next_kind(&mut w, EventKind::Online).await;
    assert_eq!(online.id, "orders/o-1");
    drop(svc);
    let off = next_kind(&mut w, EventKind::Offline).await;
    assert_eq!(off.instance.as_ref().unwrap().offline_reason, Some(OfflineReason::ConnectionLost));
}

/// `stop()` called while the client is still in its handshake (its hello is at the registry,
/// the welcome not yet back) still ends with a leave: the record goes `left`, never
/// `offline (connection-lost)`, and `stop()` says the leave was confirmed. A relay on loopback
/// holds the registry's welcome until the stop has been requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_the_handshake_still_leaves() {
    let reg = RegistryProc::start(&[]);
    let obs = reg.observer();
    obs.wait_connected(LIMIT).await.unwrap();
    let mut w = watch_ready(&obs, Filter::group("orders"), false).await;
    let relay = HoldingRelay::start(&reg.addr).await;
    let c = sfc_client::Client::builder()
        .ignore_env()
        .registry(&relay.addr)
        .ca(reg.ca().display().to_string())
        .group("orders")
        .instance_id("o-hs")
        .interval(Duration::from_millis(200))
        .start()
        .unwrap();
    // The registry has the hello (and holds the instance online); the welcome waits in the relay.
    let joined = next_kind(&mut w, EventKind::Joined).await;
    assert_eq!(joined.id, "orders/o-hs");
    assert!(!c.is_connected(), "the welcome is held, so the client is still in its handshake");
    let stopping = {
        let c = c.clone();
        tokio::spawn(async move { c.stop().await })
    };
    for _ in 0..100_000 {
        if c.is_stopped() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(c.is_stopped(), "stop() was requested");
    relay.release.notify_one();
    let confirmed = tokio::time::timeout(LIMIT, stopping).await.expect("stop in time").unwrap();
    assert!(confirmed.expect("stop"), "the registry confirmed the leave");
    let next = loop {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("event in time").expect("stream open");
        if ev.id == "orders/o-hs" {
            break ev;
        }
    };
    assert_eq!(next.kind, EventKind::Left, "after joined: {next:?}");
}

/// A loopback TCP relay to the registry for one connection. Once the client has sent its third
/// encrypted TLS record (type 23; in TLS 1.3 its Finished, its preamble, then, after the
/// registry's preamble, its hello), what the registry sends next (the welcome) waits until
/// `release` is notified.
struct HoldingRelay {
    addr: String,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl HoldingRelay {
    async fn start(upstream: &str) -> HoldingRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let upstream = upstream.to_string();
        let gate = release.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let armed = std::sync::Arc::new(AtomicBool::new(false));
            let arm = armed.clone();
            tokio::spawn(async move {
                // TLS record headers in the client's bytes: type (1), version (2), length (2).
                let (mut header, mut skip, mut encrypted) = (Vec::with_capacity(5), 0usize, 0);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    for &b in &buf[..n] {
                        if skip > 0 {
                            skip -= 1;
                            continue;
                        }
                        header.push(b);
                        if header.len() == 5 {
                            if header[0] == 23 {
                                encrypted += 1;
                                if encrypted == 3 {
                                    arm.store(true, Ordering::SeqCst);
                                }
                            }
                            skip = u16::from_be_bytes([header[3], header[4]]) as usize;
                            header.clear();
                        }
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut held = false;
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if !held && armed.load(Ordering::SeqCst) {
                    held = true;
                    gate.notified().await;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = cw.shutdown().await;
        });
        HoldingRelay { addr, release }
    }
}

/// The next event of `kind`, skipping others.
async fn next_kind(w: &mut sfc_client::WatchStream, kind: EventKind) -> sfc_client::model::Event {
    loop {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("event in time").expect("stream open");
        if ev.kind == kind {
            return ev;
        }
    }
}

/// "At once" for a closed connection, asserted by reason and order rather than by a clock:
/// `pay/killed` is SIGKILLed at the moment `pay/hung` is SIGSTOPped. Both report every second
/// (a 3 s window). The hung one can only be noticed by the registry's timer, after its window;
/// the killed one must go `offline (connection-lost)` before that, and never by the timer.
#[tokio::test]
async fn sigkill_goes_offline_connection_lost() {
    let reg = RegistryProc::start(&["--missed-reports", "3"]);
    let obs = reg.observer();
    let mut killed = ServiceProc::start(&reg, "pay", "killed", "1s");
    let hung = ServiceProc::start(&reg, "pay", "hung", "1s");
    for id in ["pay/killed", "pay/hung"] {
        wait_record(&obs, id, LIMIT, "online", |r| r.status == Status::Online).await;
    }
    let mut w = watch_ready(&obs, Filter::group("pay"), false).await;
    signal(hung.pid(), "STOP");
    signal(killed.pid(), "KILL");
    let _ = killed.child.wait();
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("offline events").expect("stream");
        if ev.kind == EventKind::Offline {
            let reason = ev.instance.as_ref().and_then(|r| r.offline_reason);
            offline.push((ev.id.clone(), reason));
        }
    }
    assert_eq!(
        offline,
        vec![
            ("pay/killed".to_string(), Some(OfflineReason::ConnectionLost)),
            ("pay/hung".to_string(), Some(OfflineReason::MissedReports)),
        ],
        "the closed connection is noticed at once, before a liveness window could expire"
    );
    signal(hung.pid(), "CONT");
}

#[tokio::test]
async fn sigstop_goes_offline_missed_reports_then_back_after_sigcont() {
    // The only traffic is this one client: nothing else can trigger the check.
    let reg = RegistryProc::start(&["--missed-reports", "3"]);
    let svc = ServiceProc::start(&reg, "jobs", "j-1", "200ms");
    let obs = reg.observer();
    wait_record(&obs, "jobs/j-1", LIMIT, "online", |r| r.status == Status::Online).await;
    let mut w = watch_ready(&obs, Filter::group("jobs"), false).await;
    signal(svc.pid(), "STOP");
    let t0 = std::time::Instant::now();
    let off = loop {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("offline event").expect("stream");
        if ev.kind == EventKind::Offline {
            break ev;
        }
    };
    let elapsed = t0.elapsed();
    assert_eq!(off.instance.as_ref().unwrap().offline_reason, Some(OfflineReason::MissedReports));
    // Never before the window (3 x 200 ms) has passed since the last report.
    assert!(elapsed >= Duration::from_millis(350), "offline after only {elapsed:?}");
    eprintln!("missed-reports detected {elapsed:?} after SIGSTOP (window 600ms)");
    signal(svc.pid(), "CONT");
    let back = loop {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("online event").expect("stream");
        if ev.kind == EventKind::Online {
            break ev;
        }
    };
    assert_eq!(back.instance.unwrap().status, Status::Online);
}

/// The client notices the registry is gone, reconnects by itself and registers again in a
/// NEW session. The store holds restored records online for a window, so "online" alone would
/// prove nothing: the record must show a session that started after the restart, and the
/// client must have seen a disconnect followed by a second `Connected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_come_back_after_registry_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let addr = reg.addr.clone();
    let c = reg.service("cart", "c-1").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    let before = wait_record(&obs, "cart/c-1", LIMIT, "online", |r| r.status == Status::Online).await;
    let first_session = before.connected_since.expect("a session");
    drop(obs);
    // Subscribed after the first connection: only what follows the restart is seen here.
    let mut events = c.subscribe();
    reg.kill();
    let restart_ms = sfc_client::model::now_ms();
    assert!(restart_ms > first_session);
    let reg2 = RegistryProc::start_at(&addr, dir.path(), &[]);
    let mut seen = Vec::new();
    let session = tokio::time::timeout(LIMIT, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::Disconnected { .. }) => seen.push("disconnected"),
                Ok(ClientEvent::Connected { session, .. }) => {
                    seen.push("connected");
                    return session;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the client reconnects by itself");
    assert_eq!(seen.first(), Some(&"disconnected"), "{seen:?}");
    assert!(session >= 1);
    let obs = reg2.observer();
    let r = wait_record(&obs, "cart/c-1", LIMIT, "in a session opened after the restart", |r| {
        r.connected_since.is_some_and(|t| t >= restart_ms)
    })
    .await;
    assert_eq!(r.status, Status::Online);
    assert_ne!(r.connected_since, Some(first_session));
    // And it reports in that session: the registry's clock moved past the restart.
    wait_record(&obs, "cart/c-1", LIMIT, "reporting after the restart", |r| {
        r.last_report_at.is_some_and(|t| t >= restart_ms)
    })
    .await;
    c.stop().await.unwrap();
}

#[tokio::test]
async fn mtls_required_rejects_a_client_without_certificate() {
    let reg = RegistryProc::start(&["--mtls", "required"]);
    // Without a certificate: the TLS handshake is refused and the client says so as an event.
    let bare = reg.service("sec", "no-cert").start().unwrap();
    let err = first_error(&bare).await;
    // What the user reads: which registry, that TLS refused, and what to do about it.
    let prefix = format!("{}: tls: {} refused the connection: ", reg.addr, reg.addr);
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.ends_with("(the registry requires a client certificate: set cert and key)"), "{err}");
    assert!(!bare.is_connected());
    bare.stop().await.unwrap();

    // With the development client certificate: accepted, and its subject is recorded.
    let (cert, key) = reg.client_cert();
    let ok = reg
        .service("sec", "with-cert")
        .cert(cert.display().to_string())
        .key(key.display().to_string())
        .start()
        .unwrap();
    ok.wait_connected(LIMIT).await.unwrap();
    let obs = sfc_client::ClientBuilder::observer()
        .ignore_env()
        .registry(&reg.addr)
        .ca(reg.ca().display().to_string())
        .cert(cert.display().to_string())
        .key(key.display().to_string())
        .start()
        .unwrap();
    let r = wait_record(&obs, "sec/with-cert", LIMIT, "online", |r| r.status == Status::Online).await;
    assert!(r.tls_identity.as_deref().unwrap_or("").contains("CN=sfc-dev-client"), "{:?}", r.tls_identity);
    assert!(obs.query(Filter::group("sec")).await.unwrap().iter().all(|r| r.instance_id != "no-cert"));
}

#[tokio::test]
async fn superseded_session_is_told_and_closed() {
    let reg = RegistryProc::start(&[]);
    let first = reg.service("dup", "same").start().unwrap();
    let mut ev = first.subscribe();
    first.wait_connected(LIMIT).await.unwrap();
    let second = reg.service("dup", "same").start().unwrap();
    second.wait_connected(LIMIT).await.unwrap();
    let msg = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(ClientEvent::Error { code: Some(code), message }) = ev.recv().await {
                return (code, message);
            }
        }
    })
    .await
    .expect("superseded error");
    assert_eq!(msg.0, sfc_client::protocol::ErrorCode::Superseded, "{}", msg.1);
    // The superseded client stays down instead of taking the identity back (no flapping),
    // well past its reconnect backoff (at most 500 ms here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!first.is_connected());
    assert!(second.is_connected());
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn records_are_evicted_after_retention() {
    let reg = RegistryProc::start(&["--retention", "300ms"]);
    let obs = reg.observer();
    let mut w = watch_ready(&obs, Filter::group("tmp"), false).await;
    let c = reg.service("tmp", "t-1").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    c.stop().await.unwrap();
    let ev = loop {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("evicted event").expect("stream");
        if ev.kind == EventKind::Evicted {
            break ev;
        }
    };
    assert_eq!(ev.id, "tmp/t-1");
    assert!(obs.query(Filter::group("tmp")).await.unwrap().is_empty());
}
