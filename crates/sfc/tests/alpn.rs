//! ALPN `sfc/1` (PROTOCOL.md §2 and §15): the registry selects it, and clients that offer no
//! ALPN (the original module's) are served as before. Against a server that selects none (a
//! registry that predates protocol v1, here a rustls server in the test that records what each
//! connection brought) a v1-only client abandons the TLS handshake before its last flight,
//! says the registry predates protocol v1, and sends nothing; a client with the legacy
//! fallback sends one legacy document per connection, ended gracefully, and moves to v1 by
//! itself once `sfc registry` takes the port over.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sfc_client::{Client, ClientEvent};
use sfc_registry::tls::{server_config, MtlsMode, PemSource, ServerTlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);

/// What one connection brought to the legacy-style server.
#[derive(Debug, Clone)]
enum Seen {
    /// The TLS handshake did not complete.
    NoHandshake(#[allow(dead_code)] String),
    /// The handshake completed; everything read until the client ended the connection.
    Document(Result<Vec<u8>, String>),
}

/// A TLS server that selects no ALPN, as the original registry's.
struct LegacyServer {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LegacyServer {
    async fn start(certs: &sfc_registry::certs::CertPaths) -> LegacyServer {
        let cfg = server_config(&ServerTlsOptions {
            cert: PemSource::File(certs.server.clone()),
            key: PemSource::File(certs.server_key.clone()),
            mtls: MtlsMode::Off,
            client_ca: None,
        })
        .unwrap();
        let mut cfg = (*cfg).clone();
        cfg.alpn_protocols.clear();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let seen = match acceptor.accept(tcp).await {
                        Err(e) => Seen::NoHandshake(e.to_string()),
                        Ok(mut s) => {
                            assert_eq!(s.get_ref().1.alpn_protocol(), None);
                            let mut doc = Vec::new();
                            let r = s
                                .read_to_end(&mut doc)
                                .await
                                .map(|_| doc)
                                .map_err(|e| e.to_string());
                            // The original ends its side once the client has ended its own.
                            let _ = s.shutdown().await;
                            Seen::Document(r)
                        }
                    };
                    log.lock().unwrap().push(seen);
                });
            }
        });
        LegacyServer { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn dev_certs(dir: &std::path::Path) -> sfc_registry::certs::CertPaths {
    sfc_registry::certs::init(dir, &["localhost".to_string(), "127.0.0.1".to_string()]).unwrap()
}

fn service(addr: &str, ca: &std::path::Path, instance: &str) -> sfc_client::ClientBuilder {
    Client::builder()
        .ignore_env()
        .registry(addr)
        .ca(ca.display().to_string())
        .group("alpn")
        .service("alpn-test")
        .instance_id(instance)
        .hostname(instance)
        .interval(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

#[tokio::test]
async fn registry_selects_sfc_1_and_serves_clients_without_alpn() {
    let reg = RegistryProc::start(&[]);
    let tls = raw_tls(&reg, None).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"sfc/1"[..]));
    drop(tls);

    // Offering no ALPN, as the original module's client does: no ALPN, and its document counts.
    let cfg = sfc_client::tls::client_config(&sfc_client::tls::ClientTlsOptions {
        ca: Some(PemSource::File(reg.ca())),
        ..Default::default()
    })
    .unwrap();
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols.clear();
    let tcp = tokio::net::TcpStream::connect(&reg.addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sfc_proto::tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let doc = r#"{"action":"HEALTH","payload":{"serviceName":"old","groupingKey":"no-alpn","metrics":{"hostname":"old-1","updateIntervalSeconds":1}}}"#;
    s.write_all(doc.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    let obs = reg.observer();
    let rec = wait_record(&obs, "no-alpn/old-1", LIMIT, "recorded", |_| true).await;
    assert_eq!(rec.wire, "legacy");
    let _ = obs.stop().await;
}

#[tokio::test]
async fn v1_only_client_refuses_a_registry_without_alpn_and_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = dev_certs(tmp.path());
    let server = LegacyServer::start(&certs).await;
    let client = service(&server.addr.to_string(), &certs.ca, "v1-only")
        .start()
        .unwrap();
    let err = first_error(&client).await;
    assert!(err.contains("the registry predates protocol v1"), "{err}");
    assert!(err.contains("sent it nothing"), "{err}");
    let seen = eventually(LIMIT, "the abandoned connection", || {
        let s = server.seen();
        (!s.is_empty()).then_some(s)
    })
    .await;
    let _ = client.stop().await;
    for s in seen {
        assert!(
            matches!(s, Seen::NoHandshake(_)),
            "the server saw a completed handshake: {s:?}"
        );
    }
    assert!(!client.is_connected());
    server.task.abort();
}

#[tokio::test]
async fn legacy_fallback_reports_the_original_format_then_moves_to_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = dev_certs(&tmp.path().join("tls"));
    let server = LegacyServer::start(&certs).await;
    let addr = server.addr.to_string();
    let client = service(&addr, &certs.ca, "fallback-1")
        .legacy(true)
        .start()
        .unwrap();
    let mut events = client.subscribe();

    let docs = eventually(LIMIT, "two legacy documents", || {
        let s = server.seen();
        (s.len() >= 2).then_some(s)
    })
    .await;
    for s in docs {
        let Seen::Document(Ok(doc)) = s else {
            panic!("not a complete legacy document: {s:?}")
        };
        let parsed = sfc_client::protocol::legacy::parse(&doc).expect("a legacy document");
        assert_eq!(parsed.registration.group, "alpn");
        assert_eq!(parsed.registration.instance_id, "fallback-1");
        assert_eq!(parsed.interval_ms, 200);
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["action"], "HEALTH");
    }
    assert!(
        client.is_connected(),
        "reports get through: counted as connected"
    );

    // `sfc registry` takes the port over; the same client moves to v1 by itself.
    server.task.abort();
    let _ = server.task.await;
    let mut reg = RegistryProc::start_at(
        &addr,
        tmp.path(),
        &[
            "--tls-cert",
            &certs.server.display().to_string(),
            "--tls-key",
            &certs.server_key.display().to_string(),
        ],
    );
    let session = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(ClientEvent::Connected { session, .. }) = events.recv().await {
                if session > 0 {
                    return session;
                }
            }
        }
    })
    .await
    .expect("a v1 session");
    let obs = reg.observer();
    let rec = wait_record(&obs, "alpn/fallback-1", LIMIT, "online over v1", |r| {
        r.wire == "v1"
    })
    .await;
    assert_eq!(rec.status, sfc_client::model::Status::Online);
    assert!(session > 0);
    assert_eq!(client.stop().await.ok(), Some(true));
    let _ = obs.stop().await;
    reg.terminate();
}
