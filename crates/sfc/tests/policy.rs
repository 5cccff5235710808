//! The identity policy (`--policy`) under `--mtls optional`, against the real binary: what a
//! client without a certificate may do (`anonymous`), and grants given by exact certificate
//! subject in the policy file (no SAN URI). Every refusal is a `not-authorized` error frame
//! naming who and why, an audit line, and one count in `sfc_registry_refused_not_authorized_total`;
//! a well-behaved client on the same registry is undisturbed.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sfc_client::model::Status;
use sfc_client::protocol::{ErrorCode, Message};
use tokio::io::AsyncWriteExt;

/// `sfc certs init` in `<dir>/tls`, then one client certificate per name, without SAN URIs:
/// subject `CN=<name>, O=sfc dev`.
fn certificates(dir: &Path, names: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    let tls = dir.join("tls");
    let run = sfc_ok;
    run(&["certs", "init", "--dir", tls.to_str().unwrap()]);
    names
        .iter()
        .map(|name| {
            run(&[
                "certs",
                "client",
                "--ca-dir",
                tls.to_str().unwrap(),
                "--name",
                name,
            ]);
            (
                tls.join(format!("{name}.pem")),
                tls.join(format!("{name}-key.pem")),
            )
        })
        .collect()
}

fn start(dir: &Path, policy: &str) -> RegistryProc {
    let file = dir.join("policy.json");
    std::fs::write(&file, policy).unwrap();
    RegistryProc::start_at(
        "127.0.0.1:0",
        dir,
        &["--mtls", "optional", "--policy", file.to_str().unwrap()],
    )
}

fn refusal(m: Message) -> String {
    match m {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::NotAuthorized, "{e:?}");
            assert!(e.fatal, "{e:?}");
            e.message
        }
        other => panic!("expected not-authorized, got {other:?}"),
    }
}

/// `who` from 127.0.0.1:<port> `rest`: the message names the peer, whose port the OS chose.
fn assert_names(message: &str, who: &str, rest: &str) {
    let port = message
        .strip_prefix(&format!("{who} from 127.0.0.1:"))
        .and_then(|m| m.strip_suffix(rest))
        .unwrap_or_else(|| {
            panic!("expected {who:?} from 127.0.0.1:<port>{rest:?}, got {message:?}")
        });
    assert!(port.parse::<u16>().is_ok(), "{message:?}");
}

fn svc(
    c: &(PathBuf, PathBuf),
    reg: &RegistryProc,
    group: &str,
    instance: &str,
) -> sfc_client::ClientBuilder {
    reg.service(group, instance)
        .cert(c.0.display().to_string())
        .key(c.1.display().to_string())
}

/// Queries over a raw session and returns the instances of the answer.
async fn query(s: &mut RawTls) -> Vec<sfc_client::model::InstanceRecord> {
    s.write_all(&frame(br#"{"type":"query","id":2}"#))
        .await
        .unwrap();
    match read_message(s).await {
        Message::Result(r) => r.instances,
        other => panic!("expected a result, got {other:?}"),
    }
}

/// `"anonymous": "observer"`: a client without a certificate may query and watch, and may not
/// register. Subjects listed in the file get their role: a service in its groups only, an
/// observer, an admin everywhere. A certificate the file does not list has no grant at all,
/// even though anonymous clients have one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_observers_and_subject_grants_under_mtls_optional() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path(), &["billing-1", "ops", "reader", "stranger"]);
    let (billing, ops, reader, stranger) = (&certs[0], &certs[1], &certs[2], &certs[3]);
    let reg = start(
        dir.path(),
        r#"{ "identities": [
            { "subject": "CN=billing-1, O=sfc dev", "role": "service", "groups": ["billing"] },
            { "subject": "CN=ops, O=sfc dev", "role": "admin" },
            { "subject": "CN=reader, O=sfc dev", "role": "observer" } ],
          "anonymous": "observer" }"#,
    );
    let mut calm = WellBehaved::start(svc(billing, &reg, "billing", "steady")).await;

    // Without a certificate: an observer, who sees the fleet...
    let (mut anon, w) = raw_session(&reg, None, None).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    assert!(query(&mut anon)
        .await
        .iter()
        .any(|r| r.id == "billing/steady" && r.status == Status::Online));
    // ... and watches it...
    anon.write_all(&frame(
        br#"{"type":"watch","id":3,"filter":{"group":"billing"}}"#,
    ))
    .await
    .unwrap();
    match read_message(&mut anon).await {
        Message::Result(r) => assert_eq!(r.id, 3),
        other => panic!("expected the watch's snapshot, got {other:?}"),
    }
    // ... but may not register.
    let (_, e) = raw_session(&reg, Some(("billing", "anon")), None).await;
    assert_names(
        &refusal(e),
        "a client without certificate",
        " may not register instances (role Observer)",
    );

    // By subject: a service in its group, and nowhere else.
    let (_b, w) = raw_session(&reg, Some(("billing", "b-1")), Some(billing.clone())).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    let (_, e) = raw_session(&reg, Some(("orders", "b-2")), Some(billing.clone())).await;
    assert_names(
        &refusal(e),
        "\"CN=billing-1, O=sfc dev\"",
        " may not register in group \"orders\"; it may register in [\"billing\"]",
    );
    // An admin subject may register in any group.
    let (_o, w) = raw_session(&reg, Some(("orders", "o-1")), Some(ops.clone())).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    // An observer subject may query, not register.
    let (mut r, w) = raw_session(&reg, None, Some(reader.clone())).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    let fleet = query(&mut r).await;
    let b1 = fleet
        .iter()
        .find(|r| r.id == "billing/b-1")
        .expect("billing/b-1 registered");
    assert_eq!(b1.tls_identity.as_deref(), Some("CN=billing-1, O=sfc dev"));
    let o1 = fleet
        .iter()
        .find(|r| r.id == "orders/o-1")
        .expect("orders/o-1 registered");
    assert_eq!(o1.tls_identity.as_deref(), Some("CN=ops, O=sfc dev"));
    assert!(
        !fleet
            .iter()
            .any(|r| r.instance_id == "anon" || r.id == "orders/b-2"),
        "{fleet:?}"
    );
    let (_, e) = raw_session(&reg, Some(("billing", "r-1")), Some(reader.clone())).await;
    assert_names(
        &refusal(e),
        "\"CN=reader, O=sfc dev\"",
        " may not register instances (role Observer)",
    );
    // A certificate nobody listed: no grant, not even the anonymous one.
    let (_, e) = raw_session(&reg, None, Some(stranger.clone())).await;
    assert_names(
        &refusal(e),
        "\"CN=stranger, O=sfc dev\"",
        " has no grant in the policy",
    );

    // Four refusals, each counted once and audited.
    let metrics = metrics_text(&reg);
    assert_eq!(
        metric(&metrics, "sfc_registry_refused_not_authorized_total"),
        Some(4.0),
        "{metrics}"
    );
    let audit = log_lines_at_least(&reg, 4, |l| {
        l.contains("sfc::audit") && l.contains("refused: ")
    })
    .await;
    assert_eq!(audit.len(), 4, "{}", audit.join("\n"));
    calm.assert_undisturbed().await;
}

/// Without `anonymous` in the file (the default, `none`), a client without a certificate may
/// do nothing under `--mtls optional`: not observe, not register. A certificate whose subject
/// the file lists is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_anonymous_grant_a_client_without_certificate_may_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path(), &["calm"]);
    let reg = start(
        dir.path(),
        r#"{ "identities": [ { "subject": "CN=calm, O=sfc dev", "role": "service", "groups": ["calm"] } ] }"#,
    );
    let mut calm = WellBehaved::start(svc(&certs[0], &reg, "calm", "steady")).await;

    let (_, e) = raw_session(&reg, None, None).await;
    assert_names(
        &refusal(e),
        "a client without certificate",
        " has no grant in the policy",
    );
    let (_, e) = raw_session(&reg, Some(("calm", "anon")), None).await;
    assert_names(
        &refusal(e),
        "a client without certificate",
        " may not register instances (role None)",
    );
    let metrics = metrics_text(&reg);
    assert_eq!(
        metric(&metrics, "sfc_registry_refused_not_authorized_total"),
        Some(2.0),
        "{metrics}"
    );

    // The client library reports the registry's refusal as it is.
    let lib = reg.service("calm", "lib").start().unwrap();
    let err = first_error(&lib).await;
    let text = err
        .strip_prefix(&format!("{}: registry error not-authorized: ", reg.addr))
        .unwrap_or_else(|| panic!("{err:?}"));
    assert_names(
        text,
        "a client without certificate",
        " may not register instances (role None)",
    );
    lib.stop().await.unwrap();

    let fleet = calm
        .client
        .query(sfc_client::model::Filter::default())
        .await
        .unwrap();
    assert_eq!(
        fleet.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["calm/steady"]
    );
    calm.assert_undisturbed().await;
}
