//! Retention against the real binary: `--retention` evicts offline and left records once they
//! are older than it, never before and never an online one; `--history-retention` removes the
//! events older than it from the store and keeps the newer ones.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sfc_client::model::Status;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(20);

fn get(url: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .expect("GET")
        .body_mut()
        .read_to_string()
        .expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The whole history the registry serves on `/v1/events`, page by page.
fn history(reg: &RegistryProc) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let page = get(&reg.url(&format!("/v1/events?after={after}&limit=100")));
        all.extend(page["events"].as_array().expect("events").iter().cloned());
        after = page["next"].as_u64().expect("next");
        if !page["more"].as_bool().expect("more") {
            return all;
        }
    }
    panic!("more than 1000 pages of history");
}

fn event<'a>(h: &'a [Value], kind: &str, id: &str) -> Option<&'a Value> {
    h.iter().find(|e| e["kind"] == kind && e["id"] == id)
}

/// `--retention 1s`: an instance that went offline (connection lost) and one that left are
/// evicted, each no sooner than one retention after its last transition; an instance online
/// since before either of them stays, online and undisturbed, although its record is older
/// than the retention when the others are evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_evicts_offline_and_left_records_and_never_an_online_one() {
    let reg = RegistryProc::start(&["--retention", "1s"]);
    let mut online = WellBehaved::start(reg.service("ret", "online")).await;

    // One connection lost without leave, one graceful leave.
    let (mut dropped, _) = raw_session(&reg, Some(("ret", "dropped")), None).await;
    dropped.shutdown().await.unwrap();
    drop(dropped);
    let leaver = reg.service("ret", "leaver").start().unwrap();
    leaver.wait_connected(LIMIT).await.unwrap();
    leaver.stop().await.unwrap();

    let h = eventually(LIMIT, "both records evicted", || {
        let h = history(&reg);
        (event(&h, "evicted", "ret/dropped").is_some()
            && event(&h, "evicted", "ret/leaver").is_some())
        .then_some(h)
    })
    .await;
    let at = |e: &Value| e["at"].as_u64().unwrap();
    for (id, last) in [("ret/dropped", "offline"), ("ret/leaver", "left")] {
        let went = event(&h, last, id).unwrap_or_else(|| panic!("no {last} event for {id}: {h:?}"));
        if last == "offline" {
            assert_eq!(went["detail"]["reason"], "connection-lost", "{went}");
        }
        let evicted = event(&h, "evicted", id).unwrap();
        assert_eq!(evicted["detail"]["reason"], "retention", "{evicted}");
        assert!(
            at(evicted) >= at(went) + 1000,
            "{id} evicted before its retention: {went} then {evicted}"
        );
    }
    // The online instance was older than the retention when they were evicted, and stays.
    let since = online
        .client
        .query(sfc_client::model::Filter::group("ret"))
        .await
        .unwrap();
    assert_eq!(
        since.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["ret/online"],
        "{since:?}"
    );
    let first_eviction = at(event(&h, "evicted", "ret/dropped").unwrap()).min(at(event(
        &h,
        "evicted",
        "ret/leaver",
    )
    .unwrap()));
    assert!(
        since[0].status_since + 1000 <= first_eviction,
        "{:?} vs eviction at {first_eviction}",
        since[0]
    );
    assert_eq!(since[0].status, Status::Online);
    online.assert_undisturbed().await;
    let h = history(&reg);
    assert!(
        event(&h, "evicted", "ret/online").is_none(),
        "the online instance was evicted: {h:?}"
    );
}

/// `--history-retention`: the registry prunes the store's history when it starts (and every
/// minute). Events older than the retention are gone, newer ones kept: a registry started
/// afterwards (with the default 7 days, so it prunes nothing itself) serves exactly the newer
/// events on `/v1/events`, with the numbering continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_retention_prunes_old_events_and_keeps_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let come_and_go = |reg: &RegistryProc, instance: &str| {
        let c = reg.service("hist", instance).start().unwrap();
        async move {
            c.wait_connected(LIMIT).await.unwrap();
            c.stop().await.unwrap();
        }
    };
    come_and_go(&reg, "old").await;
    let old = eventually(LIMIT, "hist/old left", || {
        let h = history(&reg);
        event(&h, "left", "hist/old").is_some().then_some(h)
    })
    .await;
    assert_eq!(old.len(), 2, "{old:?}");
    let old_at = old.iter().map(|e| e["at"].as_u64().unwrap()).max().unwrap();
    // Four seconds later, two newer events.
    let gap = Duration::from_millis(4000);
    tokio::time::sleep(gap).await;
    come_and_go(&reg, "new").await;
    let all = eventually(LIMIT, "hist/new left", || {
        let h = history(&reg);
        event(&h, "left", "hist/new").is_some().then_some(h)
    })
    .await;
    assert_eq!(all.len(), 4, "{all:?}");
    let new_at = all[2]["at"].as_u64().unwrap();
    assert!(new_at >= old_at + gap.as_millis() as u64, "{all:?}");
    reg.kill();

    // Restart with a retention halfway between the two ages: the old events are older than
    // it, the new ones younger (as long as the registry starts within half the gap).
    let retention = sfc_client::model::now_ms() - (old_at + new_at) / 2;
    let reg = RegistryProc::start_at(
        "127.0.0.1:0",
        dir.path(),
        &["--history-retention", &format!("{retention}ms")],
    );
    let line = eventually(LIMIT, "the pruning's log line", || {
        reg.log()
            .lines()
            .find(|l| l.contains("pruned old events"))
            .map(String::from)
    })
    .await;
    assert!(line.contains("pruned=2"), "{line}");
    drop(reg);

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let kept = history(&reg);
    let seqs: Vec<u64> = kept.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        vec![
            all[2]["seq"].as_u64().unwrap(),
            all[3]["seq"].as_u64().unwrap()
        ],
        "{kept:?}"
    );
    assert!(kept.iter().all(|e| e["id"] == "hist/new"), "{kept:?}");
    // The numbering goes on after the kept events.
    let c = reg.service("hist", "later").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    let later = eventually(LIMIT, "hist/later joined", || {
        let h = history(&reg);
        event(&h, "joined", "hist/later").map(|e| e["seq"].as_u64().unwrap())
    })
    .await;
    assert_eq!(later, seqs[1] + 1);
    c.stop().await.unwrap();
}
