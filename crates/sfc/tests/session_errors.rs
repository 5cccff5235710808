//! Errors after the handshake that are not fatal (PROTOCOL.md §10, §11): the registry answers
//! with an error frame naming the problem, and the session is kept: it is still served, its
//! instance keeps reporting and stays online in the same session. Raw protocol frames stand in
//! for the client library where it would never produce the bad input. Also what an operator
//! sees when the instance goes away before it answers a command.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sfc_client::Client;
use sfc_client::model::{EventKind, Filter, Health, InstanceRecord, OfflineReason, Status};
use sfc_client::protocol::{ErrorCode, ErrorMessage, Message};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "t0ken";

/// Raw sessions say `interval_ms: 1000`; a hundred missed reports make their liveness window
/// 100 s, so no session of these tests ends by its timer however slow the machine.
const FLAGS: &[&str] = &["--missed-reports", "100", "--admin-token", TOKEN];

async fn send(s: &mut RawTls, v: Value) {
    s.write_all(&frame(v.to_string().as_bytes())).await.unwrap();
}

/// The next frame is a non-fatal error with `code`.
async fn non_fatal(s: &mut RawTls, code: ErrorCode) -> ErrorMessage {
    match read_message(s).await {
        Message::Error(e) => {
            assert_eq!(e.code, code, "{e:?}");
            assert!(!e.fatal, "this error must not end the session: {e:?}");
            e
        }
        other => panic!("expected a {code:?} error frame, got {other:?}"),
    }
}

/// The session is still open and served: a ping gets its pong.
async fn still_served(s: &mut RawTls, id: u64) {
    send(s, json!({"type": "ping", "id": id})).await;
    match read_message(s).await {
        Message::Pong(p) => assert_eq!(p.id, id),
        other => panic!("expected pong {id}, got {other:?}"),
    }
}

/// A service session that keeps reporting: a report carrying gauge `kept` = `n` is applied, and
/// the record is online in the very session that started it (`connected_since`, `status_since`).
async fn keeps_reporting(s: &mut RawTls, obs: &Client, start: &InstanceRecord, n: f64) -> InstanceRecord {
    send(s, json!({"type": "report", "seq": 1000 + n as u64, "metrics": {"custom": {"kept": n}}})).await;
    let r = wait_record(obs, &start.id, LIMIT, "reporting after the error", |r| r.metrics.custom.get("kept") == Some(&n)).await;
    assert_eq!(r.status, Status::Online, "{r:?}");
    assert_eq!((r.connected_since, r.status_since), (start.connected_since, start.status_since), "a new session or a transition: {r:?}");
    r
}

/// A raw service session for `group/instance`, online.
async fn service(reg: &RegistryProc, obs: &Client, group: &str, instance: &str) -> (RawTls, InstanceRecord) {
    let (s, w) = raw_session(reg, Some((group, instance)), None).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    let id = format!("{group}/{instance}");
    let r = wait_record(obs, &id, LIMIT, "online", |r| r.status == Status::Online).await;
    (s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_report_is_dropped_and_the_session_kept() {
    let reg = RegistryProc::start(FLAGS);
    let mut steady = WellBehaved::start_settled(reg.service("steady", "s-1")).await;
    let obs = reg.observer();
    let (mut s, start) = service(&reg, &obs, "lim", "r-1").await;
    keeps_reporting(&mut s, &obs, &start, 1.0).await;

    // A health note over 1024 bytes, with a health that would be a transition.
    send(&mut s, json!({"type": "report", "seq": 2, "health": "critical", "health_note": "n".repeat(1025),
        "metrics": {"custom": {"kept": 2.0}}}))
    .await;
    let e = non_fatal(&mut s, ErrorCode::InvalidField).await;
    assert!(e.message.contains("report 2 dropped") && e.message.contains("health_note") && e.message.contains("1024"), "{}", e.message);
    // 257 custom gauges: over 256.
    let gauges: serde_json::Map<String, Value> = (0..257).map(|i| (format!("g{i}"), json!(1.0))).collect();
    send(&mut s, json!({"type": "report", "seq": 3, "metrics": {"custom": gauges}})).await;
    let e = non_fatal(&mut s, ErrorCode::InvalidField).await;
    assert!(e.message.contains("report 3 dropped") && e.message.contains("metrics.custom") && e.message.contains("256"), "{}", e.message);
    // A gauge name over 128 bytes.
    send(&mut s, json!({"type": "report", "seq": 4, "metrics": {"custom": {"x".repeat(129): 1.0}}})).await;
    let e = non_fatal(&mut s, ErrorCode::InvalidField).await;
    assert!(e.message.contains("report 4 dropped") && e.message.contains("gauge name") && e.message.contains("128"), "{}", e.message);

    // Frames are handled in order: after the pong, none of the dropped reports was applied.
    still_served(&mut s, 5).await;
    let r = obs.query(Filter::group("lim")).await.unwrap().into_iter().next().expect("lim/r-1");
    assert_eq!(r.metrics.custom.get("kept"), Some(&1.0), "a dropped report was applied: {r:?}");
    assert_eq!((r.health, r.health_note.as_deref()), (Health::Passing, None), "a dropped report was applied");

    let r = keeps_reporting(&mut s, &obs, &start, 6.0).await;
    assert_eq!(r.health, Health::Passing);
    steady.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_an_observer_is_refused_and_the_session_kept() {
    let reg = RegistryProc::start(FLAGS);
    let mut steady = WellBehaved::start_settled(reg.service("steady", "s-1")).await;
    let (mut s, w) = raw_session(&reg, None, None).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");

    send(&mut s, json!({"type": "report", "seq": 1, "health": "critical"})).await;
    let e = non_fatal(&mut s, ErrorCode::UnexpectedMessage).await;
    assert!(e.message.contains("observers do not send reports"), "{}", e.message);

    still_served(&mut s, 2).await;
    send(&mut s, json!({"type": "query", "id": 3, "filter": {}})).await;
    match read_message(&mut s).await {
        Message::Result(r) => {
            assert_eq!(r.id, 3);
            let ids: Vec<&str> = r.instances.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["steady/s-1"], "the observer's report created or changed a record");
            assert_eq!(r.instances[0].health, Health::Passing);
        }
        other => panic!("expected the query's result, got {other:?}"),
    }
    // The observer is still there for the next report too (refused again, not closed).
    send(&mut s, json!({"type": "report", "seq": 2})).await;
    non_fatal(&mut s, ErrorCode::UnexpectedMessage).await;
    still_served(&mut s, 4).await;
    steady.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_watch_id_is_refused_and_the_first_watch_kept() {
    let reg = RegistryProc::start(FLAGS);
    let obs = reg.observer();
    // A service that also watches (any role may).
    let (mut s, start) = service(&reg, &obs, "watcher", "w-1").await;

    send(&mut s, json!({"type": "watch", "id": 7, "filter": {"group": "dup"}})).await;
    match read_message(&mut s).await {
        Message::Result(r) => assert_eq!(r.id, 7),
        other => panic!("expected the watch's snapshot, got {other:?}"),
    }
    send(&mut s, json!({"type": "watch", "id": 7, "filter": {"group": "other"}})).await;
    let e = non_fatal(&mut s, ErrorCode::InvalidField).await;
    assert_eq!(e.id, Some(7), "{e:?}");
    assert!(e.message.contains("watch id 7 is already in use"), "{}", e.message);

    // The refused watch was not added and the first one is intact: of a join in "other" and
    // then one in "dup", the only event is dup's, on watch 7.
    let (_other, _) = service(&reg, &obs, "other", "x").await;
    let (_dup, _) = service(&reg, &obs, "dup", "a").await;
    match read_message(&mut s).await {
        Message::Event(ev) => {
            assert_eq!((ev.watch, ev.event.kind, ev.event.id.as_str()), (7, EventKind::Joined, "dup/a"), "{ev:?}")
        }
        other => panic!("expected dup/a's joined event, got {other:?}"),
    }
    still_served(&mut s, 8).await;
    keeps_reporting(&mut s, &obs, &start, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatch_of_an_unknown_watch_is_refused_and_the_session_kept() {
    let reg = RegistryProc::start(FLAGS);
    let obs = reg.observer();
    let (mut s, start) = service(&reg, &obs, "watcher", "w-1").await;

    send(&mut s, json!({"type": "watch", "id": 3, "filter": {"group": "uw"}})).await;
    match read_message(&mut s).await {
        Message::Result(r) => assert_eq!(r.id, 3),
        other => panic!("expected the watch's snapshot, got {other:?}"),
    }
    send(&mut s, json!({"type": "unwatch", "id": 4, "watch": 99})).await;
    let e = non_fatal(&mut s, ErrorCode::UnknownWatch).await;
    assert_eq!(e.id, Some(4), "{e:?}");
    assert!(e.message.contains("99"), "{}", e.message);

    // Watch 3 still delivers.
    let (_a, _) = service(&reg, &obs, "uw", "a").await;
    match read_message(&mut s).await {
        Message::Event(ev) => assert_eq!((ev.watch, ev.event.id.as_str()), (3, "uw/a"), "{ev:?}"),
        other => panic!("expected uw/a's event on watch 3, got {other:?}"),
    }
    // A real unwatch is answered; the same one again names an unknown watch.
    send(&mut s, json!({"type": "unwatch", "id": 5, "watch": 3})).await;
    match read_message(&mut s).await {
        Message::Result(r) => assert_eq!(r.id, 5),
        other => panic!("expected the unwatch's result, got {other:?}"),
    }
    send(&mut s, json!({"type": "unwatch", "id": 6, "watch": 3})).await;
    assert_eq!(non_fatal(&mut s, ErrorCode::UnknownWatch).await.id, Some(6));
    still_served(&mut s, 7).await;
    keeps_reporting(&mut s, &obs, &start, 1.0).await;
}

/// `POST /v1/instances/{group}/{instance}/commands` in a blocking task: (status, JSON body).
fn post_command(reg: &RegistryProc, id: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = reg.url(&format!("/v1/instances/{id}/commands"));
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut r = agent.post(&url).header("authorization", &format!("Bearer {TOKEN}")).send_json(body).expect("command call");
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    })
}

/// The next frame is a command; returns its id.
async fn command_frame(s: &mut RawTls, name: &str) -> u64 {
    match read_message(s).await {
        Message::Command(c) => {
            assert_eq!(c.name, name);
            c.command_id
        }
        other => panic!("expected the command, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_command_result_after_command_timeout_is_refused_and_the_session_kept() {
    let reg = RegistryProc::start(FLAGS);
    let obs = reg.observer();
    let (mut s, start) = service(&reg, &obs, "cmd", "late").await;

    let http = post_command(&reg, "cmd/late", json!({"command": "flush", "timeout": "1s"}));
    let cid = command_frame(&mut s, "flush").await;
    // The caller gives up first...
    let (status, body) = http.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "command-timeout", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("did not answer"), "{body}");
    // ...then the answer comes: refused, not fatal.
    send(&mut s, json!({"type": "command-result", "command_id": cid, "ok": true, "result": "too late"})).await;
    let e = non_fatal(&mut s, ErrorCode::InvalidField).await;
    assert!(e.message.contains(&format!("command {cid} is unknown or no longer awaited")), "{}", e.message);
    still_served(&mut s, 9).await;
    keeps_reporting(&mut s, &obs, &start, 1.0).await;

    // The history has the command sent, and no result for it.
    let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).timeout_global(Some(LIMIT)).build().into();
    let text = agent.get(&reg.url("/v1/events?after=0&limit=1000")).call().unwrap().body_mut().read_to_string().unwrap();
    let events: Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == "cmd/late")
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"command-sent"), "{kinds:?}");
    assert!(!kinds.contains(&"command-result"), "a late result reached the history: {kinds:?}");
}

/// An instance that goes offline (its connection closes) or leaves while a command waits for it:
/// the operator's call fails at once with `not-online` naming what happened, over HTTP and in
/// `sfc command`, and the record goes offline `connection-lost` (or `left`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gone_before_it_answers_fails_the_command_with_not_online() {
    let reg = RegistryProc::start(FLAGS);
    let obs = reg.observer();

    // Over HTTP, the connection closing.
    let (mut s, _) = service(&reg, &obs, "cmd", "gone").await;
    let http = post_command(&reg, "cmd/gone", json!({"command": "flush", "timeout": "60s"}));
    command_frame(&mut s, "flush").await;
    drop(s);
    let (status, body) = http.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not-online", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("went offline before answering") && message.contains("flush"), "{body}");
    let r = wait_record(&obs, "cmd/gone", LIMIT, "offline", |r| r.status != Status::Online).await;
    assert_eq!((r.status, r.offline_reason), (Status::Offline, Some(OfflineReason::ConnectionLost)));

    // Over HTTP, the instance leaving.
    let (mut s, _) = service(&reg, &obs, "cmd", "leaver").await;
    let http = post_command(&reg, "cmd/leaver", json!({"command": "flush", "timeout": "60s"}));
    command_frame(&mut s, "flush").await;
    send(&mut s, json!({"type": "leave", "reason": "bye"})).await;
    let (status, body) = http.await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("not-online")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("left before answering"), "{body}");

    // `sfc command`, as an operator runs it.
    let (mut s, _) = service(&reg, &obs, "cmd", "gone-cli").await;
    let http = format!("http://{}", reg.http);
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(sfc_bin())
            .args(["command", "cmd/gone-cli", "flush", "--wait", "60s", "--http", &http, "--admin-token", TOKEN])
            .env_remove("SFC_ADMIN_TOKEN")
            .output()
            .expect("run sfc command")
    });
    command_frame(&mut s, "flush").await;
    drop(s);
    let out = cli.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sfc command succeeded for an instance that went away: {stderr}");
    assert!(stderr.contains("went offline before answering"), "{stderr}");
    assert!(!stderr.contains("answered flush"), "the operator is told the instance answered: {stderr}");
}
