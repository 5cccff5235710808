//! Inputs that made a fuzz target (`fuzz/`) fail, fed again to the real `sfc` binary on
//! loopback. Each input is read from the committed seed corpus, where the fuzz targets replay
//! it on every `make fuzz` too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{frame, raw_session, read_message, RegistryProc};
use sfc_client::protocol::Message;
use tokio::io::AsyncWriteExt;

/// A report whose `sent_at` is 2^63 ms: the registry's clock-skew subtraction overflowed and
/// the session task panicked (debug builds) or stored a wrapped skew (release builds).
const SENT_AT_2POW63: &[u8] =
    include_bytes!("../../../fuzz/corpus/message_decode/regress-sent-at-2pow63.json");

/// `http_command` input: the path `/v1/instances/<group>/known/commands` where the group is
/// not UTF-8 once percent-decoded; axum answered with a plain-text 400, not the JSON error body.
const PATH_NOT_UTF8: &[u8] = include_bytes!("../../../fuzz/corpus/http_command/regress-path-not-utf8");

#[tokio::test]
async fn report_with_a_clock_past_i64_max_keeps_the_session() {
    let reg = RegistryProc::start(&[]);
    let (mut s, welcome) = raw_session(&reg, Some(("fuzzreg", "a")), None).await;
    assert!(matches!(welcome, Message::Welcome(_)), "{welcome:?}");
    let mut out = frame(SENT_AT_2POW63);
    out.extend(frame(
        br#"{"type":"query","id":5,"filter":{"group":"fuzzreg"}}"#,
    ));
    s.write_all(&out).await.unwrap();
    // The session survives and answers the query; the record took the report.
    let record = loop {
        match read_message(&mut s).await {
            Message::Result(r) if r.id == 5 => {
                break r.instances.into_iter().next().expect("the instance")
            }
            Message::Error(e) => panic!("the registry refused the report: {e:?}"),
            _ => continue,
        }
    };
    assert_eq!(record.id, "fuzzreg/a");
    assert!(record.last_report_at.is_some(), "{record:?}");
    // 2^63 ms minus the registry's clock: far in the future, so a huge positive skew (a wrapped
    // subtraction made it negative; a missing one would hide the bug).
    let skew = record
        .clock_skew_ms
        .expect("a report with sent_at has a clock skew");
    assert!(
        skew > i64::MAX / 2,
        "a clock in the far future has a huge positive skew, got {skew}"
    );
}

#[test]
fn command_path_that_is_not_utf8_gets_the_json_error_body() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::sfc_bin())
        .args([
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--admin-token",
            "tok",
            "--data-dir",
        ])
        .arg(tmp.path())
        .env_remove("SFC_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sfc registry");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let http = lines
        .by_ref()
        .take(4)
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("sfc http listening on ")
                .and_then(|r| r.split(' ').next())
                .map(str::to_string)
        })
        .expect("the registry prints its HTTP address");
    std::thread::spawn(move || for _ in lines {});

    // As the fuzz target builds the request: before the newline is the group (no '/', so the
    // instance is `known`), percent-encoded byte by byte; after it, the body.
    let nl = PATH_NOT_UTF8.iter().position(|&b| b == b'\n').unwrap();
    let group: String = PATH_NOT_UTF8[..nl]
        .iter()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let body = &PATH_NOT_UTF8[nl + 1..];
    let mut req = format!(
        "POST /v1/instances/{group}/known/commands HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer tok\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let mut tcp = std::net::TcpStream::connect(&http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(&req).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();

    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
    assert_eq!(v["error"]["code"], "invalid-request", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("group") && message.contains("UTF-8"),
        "the message names what was wrong: {message}"
    );
}
