//! Watchers never miss or repeat a transition: a client watch resumes after a registry restart
//! from its last sequence number (`watch` with `after`), and a watcher that falls more than the
//! registry's lag limit behind is told `lagged` and resyncs by itself.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sfc_client::model::{Event, EventKind, Filter, Status};

const LIMIT: Duration = Duration::from_secs(20);

/// The next event of the stream, failing loudly.
async fn next(w: &mut sfc_client::WatchStream) -> Event {
    tokio::time::timeout(LIMIT, w.next()).await.expect("an event in time").expect("stream open")
}

/// Every event a watcher got must be the registry's history for that range, one for one:
/// same numbers, same transitions, in order, none missing and none twice.
fn assert_same_sequence(got: &[Event], history: &[Event]) {
    let (from, to) = (got.first().unwrap().seq, got.last().unwrap().seq);
    let want: Vec<_> = history.iter().filter(|e| e.seq >= from && e.seq <= to).map(|e| (e.seq, e.kind, e.id.clone())).collect();
    let got: Vec<_> = got.iter().map(|e| (e.seq, e.kind, e.id.clone())).collect();
    assert_eq!(got, want, "the watcher's events differ from the history");
}

/// A watcher on the first registry; the registry is SIGKILLed; a second registry process on
/// another port serves the same data directory while transitions happen there (the watcher,
/// knowing only the first address, cannot see them live); then a third one comes up on the
/// first address. The watch resumes from its cursor: it gets what happened on the second
/// one from the history, then the rest live, without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_registry_restart_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let addr = reg.addr.clone();
    let obs = reg.observer();
    let mut w = watch_ready(&obs, Filter::default(), false).await;
    let a = reg.service("resume", "a").start().unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    a.set_health(sfc_client::model::Health::Warning, None).unwrap();
    let mut got = Vec::new();
    while !got.iter().any(|e: &Event| e.kind == EventKind::HealthChanged) {
        got.push(next(&mut w).await);
    }
    let mut events = obs.subscribe();
    reg.kill();
    tokio::time::timeout(LIMIT, async {
        while !matches!(events.recv().await, Ok(sfc_client::ClientEvent::Disconnected { .. })) {}
    })
    .await
    .expect("the watcher notices");

    // Meanwhile, elsewhere: a second registry process on the same store.
    let mut other = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let b = other.service("resume", "b").start().unwrap();
    b.wait_connected(LIMIT).await.unwrap();
    b.stop().await.unwrap();
    let o = other.observer();
    wait_record(&o, "resume/b", LIMIT, "left", |r| r.status == Status::Left).await;
    drop(o);
    other.kill();
    assert!(w.try_next().is_none(), "the watcher cannot have seen the other registry");

    // Back on the watcher's address.
    let reg = RegistryProc::start_at(&addr, dir.path(), &[]);
    let m = reg.service("resume", "marker").start().unwrap();
    m.wait_connected(LIMIT).await.unwrap();
    while !got.iter().any(|e| e.id == "resume/marker" && e.kind == EventKind::Joined) {
        got.push(next(&mut w).await);
    }
    for (id, kind) in [("resume/b", EventKind::Joined), ("resume/b", EventKind::Left)] {
        assert!(got.iter().any(|e| e.id == id && e.kind == kind), "{id} {kind:?} was not replayed: {got:?}");
    }
    let history = history_through(&reg, 0, got.last().unwrap().seq).await;
    assert_same_sequence(&got, &history);
    m.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// A watcher (`sfc watch --json`, the client library in a process of its own) is SIGSTOPped
/// while one instance flips its health thousands of times, more than the registry keeps queued
/// for one watcher (4,096 events plus its outbound queue). On SIGCONT the registry tells it
/// `lagged`; the client library resubscribes from its cursor, and what it prints has every
/// event exactly once: the numbers run without a gap or a repeat up to the last flip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_watcher_resyncs_without_gaps() {
    use tokio::io::AsyncWriteExt;
    // More than the ring (4,096) and the session's queue (1,024) hold, plus what the kernel's
    // socket buffers hold (a few MB on loopback: with 16 KiB of metadata in every event, a few
    // hundred), and fewer than the 10,000 events the history keeps, so the resume has no gap.
    const FLIPS: u64 = 8000;
    let reg = RegistryProc::start(&["--store", "memory", "--max-frame-rate", "1000000"]);
    let mut watcher = Command::new(sfc_bin())
        .args(["watch", "--json", "--registry", &reg.addr, "--ca"])
        .arg(reg.ca())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sfc watch");
    let pid = watcher.id();
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let out = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let ev: Event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _watcher = Kill(watcher);

    // Large events: the kernel's buffers then hold few of them, so the registry's own queue fills.
    let metadata: serde_json::Map<String, serde_json::Value> =
        (0..4).map(|i| (format!("k{i}"), serde_json::Value::String("x".repeat(4000)))).collect();
    let hello = serde_json::json!({"type": "hello", "id": 1, "interval_ms": 1000,
        "registration": {"group": "lag", "instance_id": "flipper", "service": "lag", "metadata": metadata}});
    let mut s = raw_tls(&reg, None).await;
    let mut opening = sfc_client::protocol::frame::encode_preamble(1, 1).to_vec();
    opening.extend(frame(hello.to_string().as_bytes()));
    s.write_all(&opening).await.unwrap();
    let mut preamble = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut preamble).await.unwrap();
    let welcome = read_message(&mut s).await;
    assert!(matches!(welcome, sfc_client::protocol::Message::Welcome(_)), "{welcome:?}");
    let report = |seq: u64, health: &str| frame(serde_json::json!({"type": "report", "seq": seq, "health": health}).to_string().as_bytes());
    // The watch is in place once it prints a transition of ours: flip until it does.
    let start = Instant::now();
    let mut seq = 0;
    let mut got: Vec<Event> = Vec::new();
    while got.is_empty() {
        seq += 1;
        s.write_all(&report(seq, if seq % 2 == 1 { "warning" } else { "passing" })).await.unwrap();
        got.extend(rx.recv_timeout(Duration::from_millis(200)));
        assert!(start.elapsed() < LIMIT, "sfc watch printed nothing");
    }

    signal(pid, "STOP");
    let mut burst = Vec::new();
    for _ in 0..FLIPS {
        seq += 1;
        burst.extend(report(seq, if seq % 2 == 1 { "warning" } else { "passing" }));
    }
    seq += 1;
    burst.extend(report(seq, "critical"));
    s.write_all(&burst).await.unwrap();
    // Every flip is applied (the last one is the only `critical`) before the watcher resumes.
    let obs = reg.observer();
    wait_record(&obs, "lag/flipper", Duration::from_secs(60), "critical", |r| r.health == sfc_client::model::Health::Critical).await;
    signal(pid, "CONT");

    let start = Instant::now();
    while !got.last().is_some_and(|e| e.instance.as_ref().is_some_and(|r| r.health == sfc_client::model::Health::Critical)) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(ev) => got.push(ev),
            Err(_) => assert!(start.elapsed() < Duration::from_secs(60), "the watcher stopped at {:?}", got.last().map(|e| e.seq)),
        }
    }
    assert!(reg.log_count("watcher lagged") >= 1, "the watcher never lagged, so this proved nothing: raise FLIPS");
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a repeat after {}", pair[0]);
    }
    assert!(got.len() as u64 > FLIPS, "{} events", got.len());
    let history = history_through(&reg, got[0].seq - 1, got.last().unwrap().seq).await;
    assert_same_sequence(&got, &history);
}
