//! The SQLite store: what the registry acknowledged survives a restart and a SIGKILL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sfc_client::model::{EventKind, Filter, OfflineReason, Status};

const LIMIT: Duration = Duration::from_secs(20);

/// True once `h` holds an event of `kind` for `id`.
fn has(h: &[sfc_client::model::Event], id: &str, kind: EventKind) -> bool {
    h.iter().any(|e| e.id == id && e.kind == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_records_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let stays = reg.service("shop", "gone").start().unwrap();
    let leaves = reg.service("shop", "left").start().unwrap();
    stays.wait_connected(LIMIT).await.unwrap();
    leaves.wait_connected(LIMIT).await.unwrap();
    leaves.stop().await.unwrap();
    let obs = reg.observer();
    wait_record(&obs, "shop/left", LIMIT, "left", |r| r.status == Status::Left).await;
    drop(stays); // the process side goes away without leave: offline, connection-lost
    wait_record(&obs, "shop/gone", LIMIT, "offline", |r| r.status == Status::Offline).await;
    let before = history_until(&reg, 0, "both joined, one left, one offline", |h| {
        has(h, "shop/gone", EventKind::Joined)
            && has(h, "shop/left", EventKind::Joined)
            && has(h, "shop/left", EventKind::Left)
            && has(h, "shop/gone", EventKind::Offline)
    })
    .await;
    drop(obs);
    drop(reg); // SIGKILL

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let obs = reg.observer();
    let all = obs.query(Filter::group("shop")).await.unwrap();
    let by_id: HashMap<_, _> = all.iter().map(|r| (r.id.as_str(), r)).collect();
    assert_eq!(by_id["shop/left"].status, Status::Left);
    assert_eq!(by_id["shop/gone"].status, Status::Offline);
    assert_eq!(by_id["shop/gone"].offline_reason, Some(OfflineReason::ConnectionLost));
    let after = history_through(&reg, 0, before.last().unwrap().seq).await;
    for ev in &before {
        assert!(after.iter().any(|e| e.seq == ev.seq && e.kind == ev.kind && e.id == ev.id), "lost {ev:?}");
    }
    // Numbering continues: cursors that watchers saved stay valid.
    let c = reg.service("shop", "new").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    let newest = history_until(&reg, before.last().unwrap().seq, "shop/new joined", |h| has(h, "shop/new", EventKind::Joined)).await;
    assert!(newest.iter().all(|e| e.seq > before.last().unwrap().seq));
}

/// "Held online for one window" after a restart, by states and event order: right after the
/// restart both records are online exactly as the store had them; the client that comes back
/// takes its record over without a single event; the one that does not stays online until its
/// window (2 x 3 s) ends, and then its one and only event is `offline (registry-restart)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_instances_wait_one_window_then_go_offline_registry_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--missed-reports", "2"]);
    let addr = reg.addr.clone();
    // One client comes back after the restart, one does not.
    let back = reg.service("pool", "back").interval(Duration::from_secs(3)).start().unwrap();
    let gone = ServiceProc::start(&reg, "pool", "gone", "3s");
    back.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    let was = wait_record(&obs, "pool/gone", LIMIT, "online", |r| r.status == Status::Online).await;
    let last = history_until(&reg, 0, "both joined", |h| has(h, "pool/gone", EventKind::Joined) && has(h, "pool/back", EventKind::Joined))
        .await
        .last()
        .unwrap()
        .seq;
    drop(obs);
    drop(reg); // SIGKILL: both records are online in the store
    drop(gone); // this one never returns

    let reg = RegistryProc::start_at(&addr, dir.path(), &["--missed-reports", "2"]);
    let obs = reg.observer();
    // Every event since the kill, in order (a replay, then live).
    let mut w = watch_after_ready(&obs, Filter::group("pool"), last).await;
    let held = obs.query(Filter::group("pool")).await.unwrap();
    let gone_rec = held.iter().find(|r| r.id == "pool/gone").expect("restored");
    assert_eq!((gone_rec.status, gone_rec.offline_reason), (Status::Online, None), "held online: {gone_rec:?}");
    assert_eq!(gone_rec.status_since, was.status_since, "restored as it was");
    let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("an event after the window").expect("stream");
    assert_eq!((ev.id.as_str(), ev.kind), ("pool/gone", EventKind::Offline), "the first event after the restart: {ev:?}");
    assert_eq!(ev.instance.as_ref().unwrap().offline_reason, Some(OfflineReason::RegistryRestart));
    let r = wait_record(&obs, "pool/back", LIMIT, "online", |r| r.status == Status::Online).await;
    assert!(back.is_connected());
    assert!(r.last_report_at.is_some());
    // The client that came back never flapped offline: the history since the kill holds the
    // one offline event of pool/gone and nothing for pool/back.
    let since = history_through(&reg, last, ev.seq).await;
    assert!(since.iter().all(|e| e.id != "pool/back"), "{since:?}");
    while let Some(ev) = w.try_next() {
        assert!(!(ev.id == "pool/back" && ev.kind == EventKind::Offline), "{ev:?}");
    }
}

/// SIGKILL while transitions are flowing: clients join, flip their health and leave in a loop,
/// and the registry is killed the moment its watcher has seen enough, with the churn still
/// running. Every transition the watcher was sent (committed before broadcast) must be in the
/// history after the restart, with the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_broadcast_transition() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--max-frame-rate", "10000"]);
    let obs = reg.observer();
    let mut obs_events = obs.subscribe();
    let mut w = watch_ready(&obs, Filter::default(), false).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut churn = Vec::new();
    for t in 0..4 {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        let b = reg.service("load", "x").interval(Duration::from_millis(100));
        churn.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let c = b.clone().instance_id(format!("t{t}-{}", n % 3)).start().unwrap();
                n += 1;
                if c.wait_connected(Duration::from_secs(5)).await.is_err() {
                    continue;
                }
                for h in [sfc_client::model::Health::Warning, sfc_client::model::Health::Critical, sfc_client::model::Health::Passing] {
                    let _ = c.set_health(h, None);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), c.stop()).await;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut seen = Vec::new();
    while seen.len() < 150 {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("transitions flowing").expect("stream");
        seen.push(ev);
    }
    let rounds_at_kill = rounds.load(Ordering::Relaxed);
    reg.kill(); // the churn is still running
    // Everything the registry sent before it died reaches the stream before the disconnect.
    tokio::time::timeout(LIMIT, async {
        while !matches!(obs_events.recv().await, Ok(sfc_client::ClientEvent::Disconnected { .. })) {}
    })
    .await
    .expect("the watcher notices the registry is gone");
    while let Some(ev) = w.try_next() {
        seen.push(ev);
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.abort();
    }
    drop(obs);
    assert!(rounds_at_kill >= 1, "the churn had not got going");
    let kinds: std::collections::HashSet<_> = seen.iter().map(|e| e.kind).collect();
    for k in [EventKind::Joined, EventKind::HealthChanged, EventKind::Left] {
        assert!(kinds.contains(&k), "no {k:?} among {} events seen", seen.len());
    }

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let newest = seen.iter().map(|e| e.seq).max().unwrap();
    let after = history_through(&reg, 0, newest).await;
    for ev in &seen {
        assert!(after.iter().any(|e| e.seq == ev.seq && e.kind == ev.kind && e.id == ev.id), "lost {ev:?}");
    }
    eprintln!("{} transitions seen before the SIGKILL, all in the history", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--store", "memory"]);
    let c = reg.service("tmp", "x").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    drop(reg);
    assert!(!dir.path().join("registry.db").exists());
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--store", "memory"]);
    let obs = reg.observer();
    assert!(obs.query(Filter::group("tmp")).await.unwrap().is_empty());
}

/// Reads frames from a raw session until the connection ends; returns the events among them.
async fn events_until_closed(s: &mut RawTls) -> Vec<sfc_client::model::Event> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match tokio::time::timeout(LIMIT, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return out, // the registry is gone
            Err(_) => panic!("the watcher never noticed the registry was gone"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).await.is_err() {
            return out;
        }
        if let Ok(sfc_client::protocol::Message::Event(e)) = sfc_client::protocol::Codec::Json.decode(&body) {
            out.push(e.event);
        }
    }
}

/// A query on a raw observer session: every record and the cursor, from one answer.
async fn raw_query(reg: &RegistryProc) -> (Vec<sfc_client::model::InstanceRecord>, u64) {
    use tokio::io::AsyncWriteExt;
    let (mut s, _) = raw_session(reg, None, None).await;
    let q = serde_json::json!({"type": "query", "id": 2, "filter": {}});
    s.write_all(&frame(q.to_string().as_bytes())).await.unwrap();
    loop {
        if let sfc_client::protocol::Message::Result(r) = read_message(&mut s).await {
            if r.id == 2 {
                return (r.instances, r.cursor);
            }
        }
    }
}

/// SIGKILL while the group commit's writer thread has a batch in flight: 400 sessions drop at
/// once, so their `offline` transitions queue up and are written in batches; the registry is
/// killed the moment its watcher hears of the first of them. After the restart:
/// - every transition the watcher was sent is in the history, with its number;
/// - the history is numbered without a hole (batches commit whole and in order);
/// - each record is what the last event of its history says (a record and its event commit
///   in the same transaction): `offline (connection-lost)` after an `offline`, still held
///   `online` after a `joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_batch_in_flight_keeps_a_whole_prefix_of_the_history() {
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    // A 100 s window: no session times out while the fleet connects, and the records held
    // online after the restart stay as they were while the test looks at them.
    let args = ["--missed-reports", "100"];
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &args);
    let mut sessions = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(16) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("i{i}")).collect();
        let opened = futures_util::future::join_all(ids.iter().map(|id| raw_session(&reg, Some(("burst", id)), None))).await;
        for (s, welcome) in opened {
            assert!(matches!(welcome, sfc_client::protocol::Message::Welcome(_)), "{welcome:?}");
            sessions.push(s);
        }
    }
    // The watch is answered once everything before it is committed: every `joined`.
    let mut w = raw_watch(&reg, serde_json::json!({ "group": "burst" })).await;
    drop(sessions); // every connection closes at once: N offline transitions queue up
    let first = next_event(&mut w).await;
    assert_eq!(first.kind, EventKind::Offline, "{first:?}");
    reg.kill();
    let mut seen = vec![first];
    seen.extend(events_until_closed(&mut w).await);

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &args);
    let (records, cursor) = raw_query(&reg).await;
    let history = history_through(&reg, 0, cursor).await;
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=cursor).collect::<Vec<_>>(), "the history has a hole");
    for ev in &seen {
        assert!(history.iter().any(|e| e.seq == ev.seq && e.kind == ev.kind && e.id == ev.id), "lost {ev:?}");
    }
    let burst: Vec<_> = records.iter().filter(|r| r.group == "burst").collect();
    assert_eq!(burst.len(), N);
    let mut offline = 0;
    for r in &burst {
        let last = history.iter().rev().find(|e| e.id == r.id).unwrap_or_else(|| panic!("no event for {}", r.id));
        match last.kind {
            EventKind::Offline => {
                offline += 1;
                assert_eq!((r.status, r.offline_reason), (Status::Offline, Some(OfflineReason::ConnectionLost)), "{r:?}")
            }
            EventKind::Joined => assert_eq!((r.status, r.offline_reason), (Status::Online, None), "{r:?}"),
            k => panic!("unexpected last event {k:?} for {}", r.id),
        }
    }
    eprintln!(
        "{} offline transitions seen before the SIGKILL, {offline} of {N} committed, history {cursor} events",
        seen.iter().filter(|e| e.kind == EventKind::Offline).count()
    );
}
