//! The SQLite store: what the registry acknowledged survives a restart and a SIGKILL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sfc_client::model::{EventKind, Filter, OfflineReason, Status};

const LIMIT: Duration = Duration::from_secs(20);

/// Every history event after `cursor`, replayed by a fresh observer.
async fn history(reg: &RegistryProc, cursor: u64) -> Vec<sfc_client::model::Event> {
    let obs = reg.observer();
    let mut w = obs.watch_after(Filter::default(), false, cursor).unwrap();
    let mut out = Vec::new();
    // Replay arrives right after the snapshot; stop once it has been quiet for a moment.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(700), w.next()).await {
        out.push(ev);
    }
    out
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
    let before = history(&reg, 0).await;
    assert!(before.len() >= 4, "{before:?}");
    drop(obs);
    drop(reg); // SIGKILL

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let obs = reg.observer();
    let all = obs.query(Filter::group("shop")).await.unwrap();
    let by_id: HashMap<_, _> = all.iter().map(|r| (r.id.as_str(), r)).collect();
    assert_eq!(by_id["shop/left"].status, Status::Left);
    assert_eq!(by_id["shop/gone"].status, Status::Offline);
    assert_eq!(by_id["shop/gone"].offline_reason, Some(OfflineReason::ConnectionLost));
    let after = history(&reg, 0).await;
    for ev in &before {
        assert!(after.iter().any(|e| e.seq == ev.seq && e.kind == ev.kind && e.id == ev.id), "lost {ev:?}");
    }
    // Numbering continues: cursors that watchers saved stay valid.
    let c = reg.service("shop", "new").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    let newest = history(&reg, before.last().unwrap().seq).await;
    assert!(newest.iter().any(|e| e.kind == EventKind::Joined && e.id == "shop/new"));
    assert!(newest.iter().all(|e| e.seq > before.last().unwrap().seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_instances_wait_one_window_then_go_offline_registry_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--missed-reports", "2"]);
    let addr = reg.addr.clone();
    // One client comes back after the restart, one does not.
    let back = reg.service("pool", "back").start().unwrap();
    let gone = ServiceProc::start(&reg, "pool", "gone", "300ms");
    back.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    wait_record(&obs, "pool/gone", LIMIT, "online", |r| r.status == Status::Online).await;
    drop(obs);
    drop(reg); // SIGKILL: both records are online in the store
    drop(gone); // this one never returns

    let reg = RegistryProc::start_at(&addr, dir.path(), &["--missed-reports", "2"]);
    let obs = reg.observer();
    let mut w = obs.watch(Filter::group("pool"), false).unwrap();
    let r = wait_record(&obs, "pool/gone", LIMIT, "offline after its window", |r| r.status == Status::Offline).await;
    assert_eq!(r.offline_reason, Some(OfflineReason::RegistryRestart));
    let r = wait_record(&obs, "pool/back", LIMIT, "online", |r| r.status == Status::Online).await;
    assert!(back.is_connected());
    assert!(r.last_report_at.is_some());
    // The client that came back never flapped offline.
    while let Some(ev) = w.try_next() {
        assert!(!(ev.id == "pool/back" && ev.kind == EventKind::Offline), "{ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_broadcast_transition() {
    let dir = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let obs = reg.observer();
    let mut w = obs.watch(Filter::default(), false).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Load: clients joining, reporting fast and leaving while the registry is killed.
    let mut clients = Vec::new();
    for i in 0..20 {
        let c = reg.service("load", &format!("c-{i}")).interval(Duration::from_millis(100)).start().unwrap();
        clients.push(c);
    }
    for c in clients.iter().take(10) {
        c.wait_connected(LIMIT).await.unwrap();
        c.stop().await.unwrap();
    }
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        seen.push(ev);
    }
    drop(reg); // SIGKILL while the other ten keep reporting
    assert!(seen.len() >= 20, "saw only {} events", seen.len());

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let after = history(&reg, 0).await;
    for ev in &seen {
        assert!(after.iter().any(|e| e.seq == ev.seq && e.kind == ev.kind && e.id == ev.id), "lost {ev:?}");
    }
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
