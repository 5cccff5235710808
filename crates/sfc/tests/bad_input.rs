//! Garbage, oversized frames, bad JSON, unknown messages, a wrong version and a report before
//! hello: each gets an error frame naming the problem and is closed, while a well-behaved
//! client on the same registry carries on.

mod common;

use std::time::Duration;

use common::*;
use sfc_client::model::{Filter, Status};
use sfc_client::protocol::frame::{encode_preamble, PREAMBLE_LEN};
use sfc_client::protocol::{Codec, ErrorCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

async fn raw(reg: &RegistryProc) -> RawTls {
    raw_tls(reg, None).await
}

/// Sends `bytes`, reads until the registry closes, and returns the error frame it sent.
async fn refused(reg: &RegistryProc, bytes: &[u8]) -> sfc_client::protocol::ErrorMessage {
    let mut s = raw(reg).await;
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    // Reading to the end proves the registry closed the connection.
    let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.expect("registry closed in time");
    if let Err(e) = read {
        // A close without close_notify still leaves what was sent.
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    assert!(got.len() > PREAMBLE_LEN + 4, "no error frame, got {got:02x?}");
    assert_eq!(&got[..4], b"SFCP");
    let len = u32::from_be_bytes(got[8..12].try_into().unwrap()) as usize;
    match Codec::Json.decode(&got[12..12 + len]).unwrap() {
        Message::Error(e) => {
            assert!(e.fatal, "{e:?}");
            e
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn preamble() -> Vec<u8> {
    encode_preamble(1, 1).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_an_error_and_others_carry_on() {
    let reg = RegistryProc::start(&["--max-frame", "65536"]);
    let good = reg.service("steady", "s-1").start().unwrap();
    good.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    let mut watch = obs.watch(Filter::group("steady"), false).unwrap();
    let before = wait_record(&obs, "steady/s-1", LIMIT, "reporting", |r| r.last_report_at.is_some()).await;

    let e = refused(&reg, b"\x16\x03garbage garbage garbage").await;
    assert_eq!(e.code, ErrorCode::BadPreamble, "{}", e.message);

    let e = refused(&reg, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(e.code, ErrorCode::BadPreamble, "{}", e.message);

    let mut v = encode_preamble(2, 5).to_vec();
    v.extend(frame(b"{}"));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    assert!(e.message.contains("2..=5"), "{}", e.message);

    let mut v = preamble();
    v.extend((1_000_000u32).to_be_bytes());
    v.extend(vec![b'x'; 4096]);
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::FrameTooLarge);
    assert!(e.message.contains("65536"), "{}", e.message);

    let mut v = preamble();
    v.extend(frame(b"{not json"));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::BadJson, "{}", e.message);

    let mut v = preamble();
    v.extend(frame(br#"{"type":"teleport","id":1}"#));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::UnknownMessage);
    assert!(e.message.contains("teleport"), "{}", e.message);

    let mut v = preamble();
    v.extend(frame(br#"{"type":"report","seq":1}"#));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::UnexpectedMessage);
    assert!(e.message.contains("hello") && e.message.contains("report"), "{}", e.message);

    let mut v = preamble();
    v.extend(frame(b""));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::EmptyFrame);

    // A hello with a bad field names the field.
    let mut v = preamble();
    v.extend(frame(br#"{"type":"hello","id":1,"registration":{"group":"a/b","instance_id":"i","service":"s"}}"#));
    let e = refused(&reg, &v).await;
    assert_eq!(e.code, ErrorCode::InvalidField);
    assert!(e.message.contains("group"), "{}", e.message);

    // An unknown message after a good handshake is an error too.
    let mut s = raw(&reg).await;
    let mut v = preamble();
    v.extend(frame(br#"{"type":"hello","id":1,"role":"observer"}"#));
    s.write_all(&v).await.unwrap();
    let mut p = [0u8; PREAMBLE_LEN];
    s.read_exact(&mut p).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut welcome = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut welcome).await.unwrap();
    assert!(matches!(Codec::Json.decode(&welcome).unwrap(), Message::Welcome(_)));
    s.write_all(&frame(br#"{"type":"dance"}"#)).await.unwrap();
    match read_message(&mut s).await {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::UnknownMessage),
        other => panic!("{other:?}"),
    }

    // The well-behaved client never noticed: still online, still reporting, no transition.
    let after = wait_record(&obs, "steady/s-1", LIMIT, "still reporting", |r| {
        r.last_report_at > before.last_report_at
    })
    .await;
    assert_eq!(after.status, Status::Online);
    assert!(good.is_connected());
    assert!(watch.try_next().is_none(), "the steady client had a transition");
}

/// Silent connections, each closed by the handshake timeout (PROTOCOL.md §6), while a
/// well-behaved client on the same registry carries on:
/// - a TCP connection that never starts TLS is closed (no TLS, so no frame can be read);
/// - a TLS connection that sends nothing at all after the handshake is closed without a byte
///   (the registry cannot know whether a v1 or a legacy client is there);
/// - one that sends its preamble and then nothing gets `handshake-timeout` after the registry's
///   preamble.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_connections() {
    let reg = RegistryProc::start(&["--handshake-timeout", "300ms"]);
    let mut steady = WellBehaved::start_settled(reg.service("steady", "s-1")).await;

    // Silent at TCP level.
    let mut tcp = tokio::net::TcpStream::connect(&reg.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(buf.is_empty(), "bytes to a client that never started TLS: {buf:02x?}");
    eventually(LIMIT, "the TLS timeout in the log", || reg.log().contains("tls handshake timed out").then_some(())).await;

    // Silent after the TLS handshake: not one byte written.
    let mut s = raw(&reg).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.expect("closed in time");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    assert!(got.is_empty(), "a connection that said nothing got {got:02x?}");
    eventually(LIMIT, "the silent connection in the log", || {
        reg.log().contains("connection sent nothing before the handshake timeout").then_some(())
    })
    .await;

    // A preamble, then silence: the error frame follows the registry's preamble.
    let mut s = raw(&reg).await;
    s.write_all(&preamble()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut got)).await.expect("closed in time");
    assert!(got.len() > PREAMBLE_LEN + 4, "no error frame, got {got:02x?}");
    assert_eq!(&got[..4], b"SFCP");
    let len = u32::from_be_bytes(got[8..12].try_into().unwrap()) as usize;
    match Codec::Json.decode(&got[12..12 + len]).unwrap() {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::HandshakeTimeout, "{e:?}");
            assert!(e.fatal && e.message.contains("no hello within 300ms"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    steady.assert_undisturbed().await;
}
