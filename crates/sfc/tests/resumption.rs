//! TLS 1.3 session resumption with real parts: the `sfc` registry binary (which issues session
//! tickets) and the client library (which keeps one rustls config, and so its tickets, across
//! reconnects). A loopback relay between them cuts the connection; the client comes back with
//! a resumed handshake, as the registry's `sfc_registry_tls_handshakes_total` counts, and
//! under `--mtls` its certificate identity survives resumption (the policy still grants it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

/// A loopback TCP relay to the registry: every connection accepted is forwarded; [`Relay::cut`]
/// closes all the current ones at once, which the client sees as the registry closing its
/// connection.
struct Relay {
    addr: String,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let upstream = upstream.to_string();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay { addr, conns, accept }
    }

    /// Drops every relayed connection (both sockets close).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// (full, resumed) handshakes the registry counted on its protocol port.
fn handshakes(reg: &RegistryProc) -> (f64, f64) {
    let m = metrics_text(reg);
    let kind = |k: &str| {
        metric(&m, &format!("sfc_registry_tls_handshakes_total{{kind=\"{k}\"}}"))
            .unwrap_or_else(|| panic!("no sfc_registry_tls_handshakes_total{{kind=\"{k}\"}} in /metrics"))
    };
    (kind("full"), kind("resumed"))
}

/// Cuts the client's connection at the relay `times` times; every reconnect must resume.
async fn cut_and_expect_resumed(reg: &RegistryProc, relay: &Relay, client: &sfc_client::Client, times: u32) {
    for i in 1..=times {
        let mut events = client.subscribe();
        relay.cut();
        // Back: a `Connected` event after the cut (a welcome on a new connection).
        let back = tokio::time::timeout(LIMIT, async {
            loop {
                match events.recv().await {
                    Ok(sfc_client::ClientEvent::Connected { .. }) => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("client events ended: {e}"),
                }
            }
        })
        .await;
        assert!(back.is_ok(), "the client did not reconnect after cut {i}");
        assert_eq!(
            handshakes(reg),
            (1.0, f64::from(i)),
            "after cut {i}: one full handshake (the first connection), then resumed ones only"
        );
    }
}

/// A service `g/<instance_id>` that reaches the registry through the relay, reporting every
/// 200 ms and reconnecting within 20-200 ms after a cut.
fn through_relay(reg: &RegistryProc, relay: &Relay, instance_id: &str) -> sfc_client::ClientBuilder {
    sfc_client::Client::builder()
        .ignore_env()
        .registry(&relay.addr)
        .ca(reg.ca().display().to_string())
        .group("g")
        .instance_id(instance_id)
        .interval(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_resumes_its_tls_session() {
    let reg = RegistryProc::start(&[]);
    let relay = Relay::start(&reg.addr).await;
    let client = through_relay(&reg, &relay, "resume-1").start().unwrap();
    client.wait_connected(LIMIT).await.expect("the client connects");
    assert_eq!(handshakes(&reg), (1.0, 0.0), "the first connection is a full handshake");
    cut_and_expect_resumed(&reg, &relay, &client, 3).await;
    client.stop().await.expect("stop");
}

/// Under `--mtls optional` with a policy that lets only the dev client certificate register:
/// the resumed sessions carry the certificate the first handshake verified, so the client's
/// hellos after each cut are still granted (an anonymous hello would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_the_client_certificate_identity() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{ "identities": [
            { "subject": "CN=sfc-dev-client, O=sfc dev", "role": "service", "groups": ["g"] } ],
          "anonymous": "observer" }"#,
    )
    .unwrap();
    let reg = RegistryProc::start(&["--mtls", "optional", "--policy", policy.to_str().unwrap()]);
    let relay = Relay::start(&reg.addr).await;
    let (cert, key) = reg.client_cert();
    let client = through_relay(&reg, &relay, "resume-mtls")
        .cert(cert.display().to_string())
        .key(key.display().to_string())
        .start()
        .unwrap();
    client.wait_connected(LIMIT).await.expect("the client connects");
    assert_eq!(handshakes(&reg), (1.0, 0.0), "the first connection is a full handshake");
    cut_and_expect_resumed(&reg, &relay, &client, 2).await;
    let m = metrics_text(&reg);
    assert_eq!(
        metric(&m, "sfc_registry_refused_not_authorized_total"),
        Some(0.0),
        "no hello was refused: the resumed sessions kept the certificate's identity"
    );
    client.stop().await.expect("stop");
}
