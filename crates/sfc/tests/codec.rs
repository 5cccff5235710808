//! Issue 9: the `protobuf` codec and per-frame compression, negotiated in hello.
//!
//! - The committed Rust code for proto/sfc/v1/sfc.proto is what prost-build makes of it today
//!   (needs `protoc`; tests/setup.sh installs it).
//! - Against the real `sfc registry` binary: a new client (protobuf + zstd), a v1 JSON-only
//!   client, and a legacy client all work against the new registry; a new client falls back to
//!   JSON against a registry that only speaks JSON (`--codecs json`, standing in for an old one).

mod common;

use std::path::PathBuf;

fn repo_root() -> PathBuf {
    // crates/sfc -> the repository root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Runs prost-build on the schema into `out` and returns the generated text.
fn generate(out: &std::path::Path) -> String {
    let root = repo_root();
    prost_build::Config::new()
        .btree_map(["."])
        .out_dir(out)
        .compile_protos(
            &[root.join("proto/sfc/v1/sfc.proto")],
            &[root.join("proto")],
        )
        .unwrap_or_else(|e| {
            panic!("prost-build on proto/sfc/v1/sfc.proto failed (is protoc installed?): {e}")
        });
    std::fs::read_to_string(out.join("sfc.v1.rs")).expect("prost-build wrote sfc.v1.rs")
}

#[test]
fn committed_protobuf_code_matches_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = generate(tmp.path());
    let committed_path = repo_root().join("crates/sfc-proto/src/protocol/pb_gen.rs");
    if std::env::var_os("SFC_REGENERATE_PB").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert!(
        committed == fresh,
        "crates/sfc-proto/src/protocol/pb_gen.rs differs from what prost-build generates from proto/sfc/v1/sfc.proto; \
         regenerate with `SFC_REGENERATE_PB=1 cargo test -p sfc --test codec committed_protobuf_code_matches_schema`"
    );
}

use std::time::Duration;

use common::*;
use sfc_client::model::{Filter, Health, Metrics};
use sfc_client::protocol::{Codec, Compression, ErrorCode, Message, Ping, Query, Report, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

/// Preamble and a JSON hello with the given offers (None: the field is left out, as a v1
/// client from before these fields sends it); returns the connection and the welcome, read as
/// JSON text so the test can see which fields the registry sent.
async fn raw_hello(
    reg: &RegistryProc,
    registration: Option<serde_json::Value>,
    codecs: Option<&[&str]>,
    compression: Option<&[&str]>,
) -> (RawTls, serde_json::Value) {
    let (s, welcome) = raw_answer(reg, registration, codecs, compression).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (s, welcome)
}

/// As [`raw_hello`], returning whatever the registry answered the hello with.
async fn raw_answer(
    reg: &RegistryProc,
    registration: Option<serde_json::Value>,
    codecs: Option<&[&str]>,
    compression: Option<&[&str]>,
) -> (RawTls, serde_json::Value) {
    let mut s = raw_tls(reg, None).await;
    let mut hello = match registration {
        Some(r) => {
            serde_json::json!({"type": "hello", "id": 1, "interval_ms": 1000, "registration": r})
        }
        None => serde_json::json!({"type": "hello", "id": 1, "role": "observer"}),
    };
    if let Some(c) = codecs {
        hello["codecs"] = serde_json::json!(c);
    }
    if let Some(c) = compression {
        hello["compression"] = serde_json::json!(c);
    }
    let mut v = sfc_client::protocol::frame::encode_preamble(1, 1).to_vec();
    v.extend(frame(hello.to_string().as_bytes()));
    s.write_all(&v).await.unwrap();
    let mut p = [0u8; 8];
    s.read_exact(&mut p).await.unwrap();
    assert_eq!(&p[..4], b"SFCP");
    let body = read_payload(&mut s).await;
    let welcome: serde_json::Value = serde_json::from_slice(&body)
        .expect("the answer to hello is JSON whatever the codec offers");
    (s, welcome)
}

async fn read_payload(s: &mut RawTls) -> Vec<u8> {
    let mut len = [0u8; 4];
    tokio::time::timeout(LIMIT, s.read_exact(&mut len))
        .await
        .expect("frame in time")
        .expect("frame");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.expect("frame body");
    body
}

async fn send(s: &mut RawTls, wire: &Wire, msg: &Message) {
    s.write_all(&frame(&wire.encode(msg))).await.unwrap();
    s.flush().await.unwrap();
}

/// Reads frames until one that is not an event (a watch may be open).
async fn recv(s: &mut RawTls, wire: &Wire) -> (Vec<u8>, Message) {
    let body = read_payload(s).await;
    let msg = wire
        .decode(&body, 64 << 20)
        .unwrap_or_else(|e| panic!("undecodable frame {body:02x?}: {e}"));
    (body, msg)
}

fn report(seq: u64) -> Report {
    let mut metrics = Metrics::default();
    metrics.custom.insert("queue_depth".into(), 17.5);
    metrics.host.cpu_count = Some(8);
    metrics.host.load_average = Some([0.5, 0.25, 0.125]);
    metrics.process.resident_bytes = Some(123_456_789);
    Report {
        seq,
        sent_at: Some(1),
        health: Some(Health::Warning),
        health_note: Some("disk 91%".into()),
        metrics,
    }
}

/// A new client (protobuf, zstd) against the new registry: welcome is JSON and names both;
/// afterwards every frame is a protobuf Frame behind the one-byte header, and a large answer
/// arrives zstd-compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_client_negotiates_protobuf_and_zstd() {
    let reg = RegistryProc::start(&[]);
    let big: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|i| {
            (
                format!("doc-{i:02}"),
                serde_json::json!(format!("section {i}: {}", "lorem ipsum ".repeat(12))),
            )
        })
        .collect();
    let (mut s, welcome) = raw_hello(
        &reg,
        Some(serde_json::json!({"group": "pb", "instance_id": "pb-1", "service": "pb", "metadata": big})),
        Some(&["protobuf", "json"]),
        Some(&["zstd"]),
    )
    .await;
    assert_eq!(welcome["codec"], "protobuf", "{welcome}");
    assert_eq!(welcome["compression"], "zstd", "{welcome}");
    let wire = Wire::new(Codec::Protobuf, Some(Compression::Zstd));

    send(&mut s, &wire, &Message::Report(report(1))).await;
    send(&mut s, &wire, &Message::Ping(Ping { id: 9 })).await;
    let (body, pong) = recv(&mut s, &wire).await;
    assert_eq!(body[0], 0x00, "a small frame is not compressed");
    assert!(
        matches!(pong, Message::Pong(ref p) if p.id == 9),
        "{pong:?}"
    );

    // The record with ~6 KB of metadata makes the answer larger than the threshold.
    let (body, result) = loop {
        send(
            &mut s,
            &wire,
            &Message::Query(Query {
                id: 2,
                filter: Filter::group("pb"),
            }),
        )
        .await;
        let (body, msg) = recv(&mut s, &wire).await;
        let Message::Result(r) = &msg else {
            panic!("expected result, got {msg:?}")
        };
        if r.instances
            .first()
            .is_some_and(|i| i.last_report_at.is_some())
        {
            break (body, r.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body[0], 0x01, "a large answer is zstd-compressed");
    let rec = &result.instances[0];
    assert_eq!(rec.id, "pb/pb-1");
    assert_eq!(rec.metadata.len(), 40);
    assert_eq!(rec.health, Health::Warning);
    assert_eq!(rec.health_note.as_deref(), Some("disk 91%"));
    assert_eq!(rec.metrics.custom.get("queue_depth"), Some(&17.5));
    assert_eq!(rec.metrics.host.load_average, Some([0.5, 0.25, 0.125]));
    assert_eq!(rec.metrics.process.resident_bytes, Some(123_456_789));
    let json_len = Codec::Json.encode(&Message::Result(result.clone())).len();
    assert!(
        body.len() < json_len / 2,
        "compressed protobuf {} bytes vs JSON {json_len}",
        body.len()
    );

    // A body that is not a protobuf Frame gets an error frame (in protobuf) naming it.
    s.write_all(&frame(&[0x00, 0x0a, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    let (_, err) = recv(&mut s, &wire).await;
    let Message::Error(e) = err else {
        panic!("expected an error, got {err:?}")
    };
    assert_eq!(e.code, ErrorCode::InvalidMessage, "{}", e.message);
    assert!(e.message.contains("protobuf"), "{}", e.message);

    // The real client with its defaults (protobuf, zstd) registers and reports; an observer
    // with the same defaults reads it back.
    let c = reg.service("pb", "pb-2").start().unwrap();
    c.set_gauge("answers", 42.0).unwrap();
    let obs = reg.observer();
    let r = wait_record(&obs, "pb/pb-2", LIMIT, "reporting its gauge", |r| {
        r.metrics.custom.get("answers") == Some(&42.0)
    })
    .await;
    assert_eq!(r.group, "pb");
    c.stop().await.unwrap();
    obs.stop().await.unwrap();
}

/// A v1 JSON client (no codecs or compression fields) against the new registry: welcome says
/// json, carries no compression field, and frames stay bare JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_json_client_is_unchanged_on_the_new_registry() {
    let reg = RegistryProc::start(&[]);
    let (mut s, welcome) = raw_hello(
        &reg,
        Some(serde_json::json!({"group": "v1", "instance_id": "v1-1", "service": "v1"})),
        None,
        None,
    )
    .await;
    assert_eq!(welcome["codec"], "json", "{welcome}");
    assert!(welcome.get("compression").is_none(), "{welcome}");
    let wire = Wire::JSON;
    send(&mut s, &wire, &Message::Report(report(1))).await;
    s.write_all(&frame(br#"{"type":"ping","id":5}"#))
        .await
        .unwrap();
    let (body, pong) = recv(&mut s, &wire).await;
    assert_eq!(
        body[0],
        b'{',
        "bare JSON: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        matches!(pong, Message::Pong(ref p) if p.id == 5),
        "{pong:?}"
    );

    // The real client told to offer only JSON works too, and a default observer sees it.
    let c = reg
        .service("v1", "v1-2")
        .codecs([Codec::Json])
        .compression([])
        .start()
        .unwrap();
    c.set_gauge("g", 1.0).unwrap();
    let obs = reg.observer();
    wait_record(&obs, "v1/v1-1", LIMIT, "reporting", |r| {
        r.health == Health::Warning
    })
    .await;
    wait_record(&obs, "v1/v1-2", LIMIT, "reporting its gauge", |r| {
        r.metrics.custom.get("g") == Some(&1.0)
    })
    .await;
    c.stop().await.unwrap();
    obs.stop().await.unwrap();
}

/// The original module's format on the same port still lands in the fleet, seen by a new
/// (protobuf) observer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_works_on_the_new_registry() {
    let reg = RegistryProc::start(&[]);
    let doc = serde_json::json!({"action": "HEALTH", "payload": {
        "serviceName": "legacy-svc", "groupingKey": "legacy", "time": "2026-01-01T00:00:00Z",
        "metrics": {"rss": 1000, "heapTotal": 2000, "heapUsed": 1500, "external": 10, "hostname": "old-host",
            "numCpus": 2, "freemem": 1234, "loadadv": [0.5, 0.25, 0.1], "user": "node", "uptime": 42,
            "updateIntervalSeconds": 1}}});
    let mut s = raw_tls(&reg, None).await;
    s.write_all(doc.to_string().as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let obs = reg.observer();
    let r = wait_record(&obs, "legacy/old-host", LIMIT, "registered", |_| true).await;
    assert_eq!(r.wire, "legacy");
    assert_eq!(r.service, "legacy-svc");
    assert_eq!(r.metrics.host.load_average, Some([0.5, 0.25, 0.1]));
    obs.stop().await.unwrap();
}

/// A new client against a registry that speaks only JSON (`--codecs json --compression none`,
/// as a registry from before this codec): it falls back to bare JSON frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_client_falls_back_to_json_on_an_old_registry() {
    let reg = RegistryProc::start(&["--codecs", "json", "--compression", "none"]);
    let (mut s, welcome) =
        raw_hello(&reg, None, Some(&["protobuf", "json"]), Some(&["zstd"])).await;
    assert_eq!(welcome["codec"], "json", "{welcome}");
    assert!(welcome.get("compression").is_none(), "{welcome}");
    s.write_all(&frame(br#"{"type":"ping","id":3}"#))
        .await
        .unwrap();
    let (body, pong) = recv(&mut s, &Wire::JSON).await;
    assert_eq!(body[0], b'{');
    assert!(
        matches!(pong, Message::Pong(ref p) if p.id == 3),
        "{pong:?}"
    );

    // Offering only protobuf is refused with a clear error naming what the registry speaks.
    let (_, refused) = raw_answer(&reg, None, Some(&["protobuf"]), None).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unsupported-codec", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("speaks json"),
        "{refused}"
    );

    // The real client and observer with default offers work against it.
    let c = reg.service("old", "o-1").start().unwrap();
    c.set_gauge("g", 2.0).unwrap();
    let obs = reg.observer();
    wait_record(&obs, "old/o-1", LIMIT, "reporting its gauge", |r| {
        r.metrics.custom.get("g") == Some(&2.0)
    })
    .await;
    c.stop().await.unwrap();
    obs.stop().await.unwrap();
}

/// Frames above 2 KiB are compressed, frames at or below it are not (when zstd was negotiated
/// in hello), and nothing is compressed on a session that did not negotiate it. The answer to
/// a query for one record is tuned, through the record's metadata, to a JSON body of exactly
/// 2048 and 2049 bytes; the frame header byte says what the registry did with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_applies_only_above_two_kib() {
    const THRESHOLD: usize = 2048;
    let reg = RegistryProc::start(&[]);
    let (mut obs, welcome) = raw_hello(&reg, None, Some(&["json"]), Some(&["zstd"])).await;
    assert_eq!(
        (welcome["codec"].as_str(), welcome["compression"].as_str()),
        (Some("json"), Some("zstd")),
        "{welcome}"
    );
    let wire = Wire::new(Codec::Json, Some(Compression::Zstd));
    let (mut plain, welcome) = raw_hello(&reg, None, Some(&["json"]), None).await;
    assert!(welcome.get("compression").is_none(), "{welcome}");

    // Records that do not change: no reports, a one-hour interval. Groups of one length, so
    // that only the padding changes the size of an answer.
    let mut held = Vec::new();
    let register = |group: &'static str, pad: usize| {
        let reg = &reg;
        async move {
            let registration = serde_json::json!({"group": group, "instance_id": "pad", "service": "svc",
                "metadata": {"pad": "x".repeat(pad)}});
            let mut s = raw_tls(reg, None).await;
            let hello = serde_json::json!({"type": "hello", "id": 1, "interval_ms": 3_600_000, "registration": registration});
            let mut v = sfc_client::protocol::frame::encode_preamble(1, 1).to_vec();
            v.extend(frame(hello.to_string().as_bytes()));
            s.write_all(&v).await.unwrap();
            let mut p = [0u8; 8];
            s.read_exact(&mut p).await.unwrap();
            let answer: serde_json::Value =
                serde_json::from_slice(&read_payload(&mut s).await).unwrap();
            assert_eq!(answer["type"], "welcome", "{answer}");
            s
        }
    };
    // (flag byte, length of the JSON body, the answer)
    async fn ask(s: &mut RawTls, wire: &Wire, id: u64, group: &str) -> (u8, usize, Message) {
        let q = Message::Query(Query {
            id,
            filter: Filter::group(group),
        });
        send(s, wire, &q).await;
        let (body, msg) = recv(s, wire).await;
        let len = match body[0] {
            0x00 => body.len() - 1,
            0x01 => zstd::bulk::decompress(&body[1..], 1 << 20)
                .expect("a zstd body")
                .len(),
            _ => body.len(), // bare JSON (no header): a session without compression
        };
        let Message::Result(r) = &msg else {
            panic!("expected a result, got {msg:?}")
        };
        assert_eq!(r.instances.len(), 1, "{msg:?}");
        (body[0], len, msg)
    }

    held.push(register("thr-p", 100).await);
    let (flag, probe, _) = ask(&mut obs, &wire, 2, "thr-p").await;
    assert_eq!(flag, 0x00, "a {probe}-byte answer is not compressed");
    assert!(probe < THRESHOLD, "{probe}");
    held.push(register("thr-a", 100 + THRESHOLD - probe).await);
    held.push(register("thr-b", 100 + THRESHOLD + 1 - probe).await);

    let (flag, len, at) = ask(&mut obs, &wire, 3, "thr-a").await;
    assert_eq!(len, THRESHOLD, "the padding did not give the intended size");
    assert_eq!(flag, 0x00, "a body of exactly 2048 bytes is sent as it is");
    let (flag, len, over) = ask(&mut obs, &wire, 4, "thr-b").await;
    assert_eq!(
        len,
        THRESHOLD + 1,
        "the padding did not give the intended size"
    );
    assert_eq!(flag, 0x01, "a body of 2049 bytes is zstd-compressed");
    let (Message::Result(at), Message::Result(over)) = (at, over) else {
        unreachable!()
    };
    assert_eq!(
        at.instances[0].metadata["pad"].len(),
        100 + THRESHOLD - probe
    );
    assert_eq!(
        over.instances[0].metadata["pad"].len(),
        101 + THRESHOLD - probe
    );

    // Without compression negotiated, the same 2049-byte answer is bare JSON.
    let (flag, len, _) = ask(&mut plain, &Wire::JSON, 4, "thr-b").await;
    assert_eq!((flag, len), (b'{', THRESHOLD + 1));
    drop(held);
}
