//! SIGTERM: the registry tells every client it is shutting down, leaves the records as they
//! are (a planned restart is not the clients' fault), and restores them at the next start.

mod common;

use std::time::Duration;

use common::*;
use sfc_client::ClientEvent;
use sfc_client::model::{EventKind, Filter, OfflineReason, Status};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_shutting_down_and_keeps_records_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--missed-reports", "2"]);
    // Interval 3 s: after the next start the record is held online for 2 x 3 s.
    let c = reg.service("term", "c").interval(Duration::from_secs(3)).start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    let before = wait_record(&obs, "term/c", LIMIT, "online", |r| r.status == Status::Online).await;
    let mut w = watch_ready(&obs, Filter::group("term"), false).await;
    let last = history_until(&reg, 0, "term/c joined", |h| h.iter().any(|e| e.id == "term/c" && e.kind == EventKind::Joined))
        .await
        .last()
        .unwrap()
        .seq;
    let mut events = c.subscribe();
    let mut obs_events = obs.subscribe();

    let status = reg.terminate();
    assert!(status.success(), "sfc registry exited with {status}");
    // The client is told, with the code, before the connection ends.
    let told = tokio::time::timeout(LIMIT, async {
        let mut seen = Vec::new();
        loop {
            match events.recv().await {
                Ok(ClientEvent::Error { code, message }) => seen.push(format!("error {code:?}: {message}")),
                Ok(ClientEvent::Disconnected { reason, .. }) => {
                    seen.push(format!("disconnected: {reason}"));
                    return seen;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the client hears of the shutdown");
    assert_eq!(
        told,
        vec![
            "error Some(ShuttingDown): the registry is shutting down".to_string(),
            "disconnected: registry closed the session: shutting-down: the registry is shutting down".to_string(),
        ]
    );
    // The watcher got no transition from the shutdown: nothing went offline.
    tokio::time::timeout(LIMIT, async {
        while !matches!(obs_events.recv().await, Ok(ClientEvent::Disconnected { .. })) {}
    })
    .await
    .expect("the observer is disconnected too");
    let during: Vec<_> = std::iter::from_fn(|| w.try_next()).collect();
    assert!(during.is_empty(), "transitions broadcast by the shutdown: {during:?}");
    for line in ["signal received: shutting down", "shutting down: closing sessions"] {
        assert_eq!(reg.log_count(line), 1, "{line}: {}", reg.log());
    }
    drop(c); // this client does not come back
    drop(obs);

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &["--missed-reports", "2"]);
    let obs = reg.observer();
    let mut w = watch_after_ready(&obs, Filter::group("term"), last).await;
    // Restored exactly as it was before the shutdown: online, same session start, same status time.
    let r = obs.query(Filter::group("term")).await.unwrap().into_iter().find(|r| r.id == "term/c").expect("restored");
    assert_eq!((r.status, r.offline_reason), (Status::Online, None), "{r:?}");
    assert_eq!(r.connected_since, before.connected_since);
    assert_eq!(r.status_since, before.status_since);
    // The store has no transition from the shutdown; the first after it is the end of the
    // hold window, as after any restart.
    let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("event").expect("stream");
    assert_eq!((ev.id.as_str(), ev.kind), ("term/c", EventKind::Offline), "{ev:?}");
    assert_eq!(ev.instance.as_ref().unwrap().offline_reason, Some(OfflineReason::RegistryRestart));
    assert_eq!(ev.seq, last + 1, "the shutdown wrote no transition");
}
