//! Hostile input against the real binary: connection floods, a loud client, slow clients,
//! content beyond the documented limits, lying clocks, and identity binding. Each case checks
//! the error the client sees, that the registry still serves everyone else, and that no state
//! was lost.

mod common;

use std::time::Duration;

use common::*;
use sfc_client::model::{Filter, Health, OfflineReason, Status};
use sfc_client::protocol::{ErrorCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

fn error_of(m: Message) -> sfc_client::protocol::ErrorMessage {
    match m {
        Message::Error(e) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_beyond_max_connections_is_refused() {
    let reg = RegistryProc::start(&["--max-connections", "4"]);
    let mut steady = WellBehaved::start(reg.service("flood", "steady")).await;
    let obs = reg.observer(); // two of four
    obs.wait_connected(LIMIT).await.unwrap();
    let mut held = Vec::new();
    let flood = std::time::Instant::now();
    for i in 0..2 {
        let (s, w) = raw_session(&reg, Some(("flood", &format!("raw-{i}"))), None).await;
        assert!(matches!(w, Message::Welcome(_)), "{w:?}");
        held.push(s);
    }
    // Beyond the limit: an error frame, then the connection closes.
    for _ in 0..5 {
        let (mut s, answer) = raw_session(&reg, Some(("flood", "extra")), None).await;
        let e = error_of(answer);
        assert_eq!(e.code, ErrorCode::TooManyConnections);
        assert!(e.message.contains('4'), "{}", e.message);
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
            .await
            .expect("closed");
    }
    // The existing sessions are untouched.
    steady.assert_undisturbed().await;
    assert!(obs
        .query(Filter::group("flood"))
        .await
        .unwrap()
        .iter()
        .all(|r| r.instance_id != "extra"));
    // Counted, one by one: the five refused connections and nothing else.
    let metrics = metrics_text(&reg);
    assert_eq!(
        metric(&metrics, "sfc_registry_refused_connections_total"),
        Some(5.0),
        "{metrics}"
    );
    // Audited, without a line per refused connection (at most one a second).
    let span = flood.elapsed().as_secs_f64();
    let lines = log_lines_at_least(&reg, 1, |l| {
        l.contains("sfc::audit") && l.contains("over --max-connections (4)")
    })
    .await
    .len();
    let log = reg.log();
    // At most one line per second of the clock: a span of s seconds touches at most floor(s) + 2.
    assert!(
        lines >= 1 && lines as f64 <= span.floor() + 2.0,
        "{lines} audit lines for 5 refusals in {span:.2} s:\n{log}"
    );
}

/// A rate-limited error names the limit, how many frames were dropped and the first one's type:
/// returns that count and type.
fn rate_limited(e: &sfc_client::protocol::ErrorMessage, rate: u32) -> (u64, String) {
    assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
    assert!(
        !e.fatal,
        "rate limiting drops frames; it does not end the session: {e:?}"
    );
    let parsed = e
        .message
        .strip_prefix(&format!("more than {rate} frames/s: "))
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(n, rest)| {
            let noun = if n == "1" { "frame" } else { "frames" };
            let kind = rest
                .strip_prefix(&format!("{noun} dropped (the first was a "))?
                .strip_suffix(')')?;
            Some((n.parse::<u64>().ok()?, kind.to_string()))
        });
    parsed.unwrap_or_else(|| panic!("not the documented rate-limited message: {:?}", e.message))
}

/// `--max-frame-rate 20`: a client flooding reports has the frames beyond the budget dropped,
/// is told so with a non-fatal `rate-limited` error at most once a second (error frames and
/// audit lines), keeps its session, and every dropped frame is counted in
/// `sfc_registry_rate_limited_frames_total`; a well-behaved client carries on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_loud_client_is_rate_limited_and_others_are_unaffected() {
    const RATE: u32 = 20;
    let reg = RegistryProc::start(&["--max-frame-rate", &RATE.to_string()]);
    let mut quiet = WellBehaved::start(reg.service("loud", "quiet")).await;
    let (mut s, w) = raw_session(&reg, Some(("loud", "noisy")), None).await;
    assert!(matches!(w, Message::Welcome(_)));
    assert_eq!(
        metric(
            &metrics_text(&reg),
            "sfc_registry_rate_limited_frames_total"
        ),
        Some(0.0)
    );

    // One burst of 500 reports: the bucket holds 2 x 20, so the 41st is dropped and the error
    // that follows at once names exactly that one frame.
    let started = std::time::Instant::now();
    let mut burst = Vec::new();
    for seq in 0..500u64 {
        burst.extend(frame(
            format!(r#"{{"type":"report","seq":{seq}}}"#).as_bytes(),
        ));
    }
    s.write_all(&burst).await.unwrap();
    let first = error_of(read_message(&mut s).await);
    assert_eq!(
        first.message,
        "more than 20 frames/s: 1 frame dropped (the first was a report)"
    );
    assert!(!first.fatal);
    let mut errors = vec![rate_limited(&first, RATE)];

    // Then the flood goes on for about three seconds, ending with a leave (which always passes
    // and is answered, so every frame before it has been handled when the answer arrives).
    let mut sent = 500u64;
    for round in 0..12u64 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut more = Vec::new();
        for i in 0..100u64 {
            more.extend(frame(
                format!(r#"{{"type":"report","seq":{}}}"#, 1000 + round * 100 + i).as_bytes(),
            ));
        }
        s.write_all(&more).await.unwrap();
        sent += 100;
    }
    s.write_all(&frame(br#"{"type":"leave","reason":"done flooding"}"#))
        .await
        .unwrap();
    for _ in 0..10_000 {
        match read_message(&mut s).await {
            Message::Error(e) => errors.push(rate_limited(&e, RATE)),
            Message::Leave(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let span = started.elapsed().as_secs_f64();
    // At most one error a second over the measured span, each naming a report.
    assert!(
        errors.len() as f64 <= span.floor() + 1.0,
        "{} rate-limited errors in {span:.2} s, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        errors.iter().all(|(n, kind)| *n >= 1 && kind == "report"),
        "{errors:?}"
    );
    // The audit log says it as often as the client is told, no more.
    // (each line is written before its error frame is sent, so all of them are on their way)
    let audit = log_lines_at_least(&reg, errors.len(), |l| {
        l.contains("sfc::audit") && l.contains("rate limited")
    })
    .await;
    assert_eq!(
        audit.len(),
        errors.len(),
        "audit lines vs rate-limited errors:\n{}",
        audit.join("\n")
    );
    // Every dropped frame is counted. The bucket started full and refills at 20 a second, so
    // at least 500 + 1200 - 40 - 20 x span frames were dropped, and at most all but the 40;
    // the errors account for all of them but those dropped after the last error.
    let dropped = metric(
        &metrics_text(&reg),
        "sfc_registry_rate_limited_frames_total",
    )
    .expect("the counter");
    let told: u64 = errors.iter().map(|(n, _)| n).sum();
    let most = (sent - 2 * RATE as u64) as f64;
    let least = most - RATE as f64 * span - 1.0;
    assert!(
        dropped >= told as f64 && dropped >= least && dropped <= most,
        "{dropped} counted, {told} told, expected {least:.0}..={most}"
    );

    // The loud session was kept to the end: its instance left gracefully, never went offline.
    let obs = reg.observer();
    let noisy = wait_record(&obs, "loud/noisy", LIMIT, "left", |r| {
        r.status == Status::Left
    })
    .await;
    assert_eq!(noisy.offline_reason, None);
    quiet.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_by_their_timers() {
    let reg = RegistryProc::start(&["--handshake-timeout", "500ms", "--missed-reports", "2"]);
    let mut calm = WellBehaved::start(reg.service("calm", "steady")).await;
    // A slowloris that never starts TLS: the registry closes the socket.
    let mut tcp = tokio::net::TcpStream::connect(&reg.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(LIMIT, tcp.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // One that stalls in the middle of a frame after a good handshake (interval 1 s, window 2 s).
    let (mut s, w) = raw_session(&reg, Some(("slow", "staller")), None).await;
    assert!(matches!(w, Message::Welcome(_)));
    let obs = reg.observer();
    wait_record(&obs, "slow/staller", LIMIT, "online", |r| {
        r.status == Status::Online
    })
    .await;
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(br#"{"type":"#).await.unwrap();
    let e = error_of(read_message(&mut s).await);
    assert_eq!(e.code, ErrorCode::LivenessTimeout);
    let r = wait_record(&obs, "slow/staller", LIMIT, "offline", |r| {
        r.status == Status::Offline
    })
    .await;
    assert_eq!(r.offline_reason, Some(OfflineReason::MissedReports));
    calm.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_beyond_limits_is_refused_by_name() {
    let reg = RegistryProc::start(&[]);
    let mut calm = WellBehaved::start(reg.service("calm", "steady")).await;
    let obs = reg.observer();
    // 65 tags: over the documented 64.
    let tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let hello = serde_json::json!({"type":"hello","id":1,"registration":{"group":"g","instance_id":"i","service":"s","tags":tags}});
    let e = refused_hello(&reg, hello.to_string().as_bytes()).await;
    assert_eq!(e.code, ErrorCode::InvalidField);
    assert!(
        e.message.contains("tags") && e.message.contains("64"),
        "{}",
        e.message
    );
    // A metadata value over 4096 bytes names its key.
    let hello = serde_json::json!({"type":"hello","id":1,"registration":{"group":"g","instance_id":"i","service":"s",
        "metadata":{"blob":"x".repeat(5000)}}});
    let e = refused_hello(&reg, hello.to_string().as_bytes()).await;
    assert!(e.message.contains("blob"), "{}", e.message);
    // Not UTF-8.
    let mut bad = br#"{"type":"hello","id":1,"registration":{"group":"g","instance_id":""#.to_vec();
    bad.extend([0xff, 0xfe]);
    bad.extend(br#"","service":"s"}}"#);
    let e = refused_hello(&reg, &bad).await;
    assert_eq!(e.code, ErrorCode::BadJson);
    assert!(e.message.contains("UTF-8"), "{}", e.message);
    // NaN and infinity have no JSON form: a gauge carrying one is malformed.
    let (mut s, _) = raw_session(&reg, Some(("g", "nan")), None).await;
    s.write_all(&frame(
        br#"{"type":"report","seq":1,"metrics":{"custom":{"x":NaN}}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        error_of(read_message(&mut s).await).code,
        ErrorCode::BadJson
    );
    // The client library refuses them before sending, naming the gauge.
    let c = reg.service("g", "lib").start().unwrap();
    let e = c.set_gauge("latency", f64::NAN).unwrap_err().to_string();
    assert!(e.contains("latency") && e.contains("NaN"), "{e}");
    assert!(c.set_gauge("latency", f64::INFINITY).is_err());
    // Nothing of it reached the fleet.
    assert!(obs
        .query(Filter::group("g"))
        .await
        .unwrap()
        .iter()
        .all(|r| r.instance_id != "i"));
    calm.assert_undisturbed().await;
}

async fn refused_hello(reg: &RegistryProc, hello: &[u8]) -> sfc_client::protocol::ErrorMessage {
    let mut s = raw_tls(reg, None).await;
    let mut v = sfc_client::protocol::frame::encode_preamble(1, 1).to_vec();
    v.extend(frame(hello));
    s.write_all(&v).await.unwrap();
    let mut p = [0u8; 8];
    s.read_exact(&mut p).await.unwrap();
    let e = error_of(read_message(&mut s).await);
    assert!(e.fatal);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_clock_does_not_move_liveness() {
    let reg = RegistryProc::start(&[]);
    let mut calm = WellBehaved::start(reg.service("calm", "steady")).await;
    let obs = reg.observer();
    let (mut s, _) = raw_session(&reg, Some(("clock", "future")), None).await;
    // Year 2100 and year 1970: the registry keeps its own clock and says how far off the client is.
    s.write_all(&frame(
        br#"{"type":"report","seq":1,"sent_at":4102444800000,"health":"passing"}"#,
    ))
    .await
    .unwrap();
    let r = wait_record(&obs, "clock/future", LIMIT, "skew recorded", |r| {
        r.clock_skew_ms.unwrap_or(0) > 0
    })
    .await;
    let now = sfc_client::model::now_ms();
    assert!(
        r.last_report_at.unwrap() <= now && r.last_report_at.unwrap() + 60_000 > now,
        "{r:?}"
    );
    assert!(
        r.clock_skew_ms.unwrap() > 365 * 24 * 3600 * 1000,
        "{:?}",
        r.clock_skew_ms
    );
    s.write_all(&frame(
        br#"{"type":"report","seq":2,"sent_at":1000,"health":"warning"}"#,
    ))
    .await
    .unwrap();
    let r = wait_record(&obs, "clock/future", LIMIT, "past skew", |r| {
        r.health == Health::Warning
    })
    .await;
    assert!(r.clock_skew_ms.unwrap() < 0);
    assert_eq!(r.status, Status::Online);
    calm.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_policy_binds_certificates_to_groups() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let run = sfc_ok;
    run(&["certs", "init", "--dir", tls.to_str().unwrap()]);
    let issue = |name: &str, uri: &str| {
        run(&[
            "certs",
            "client",
            "--ca-dir",
            tls.to_str().unwrap(),
            "--name",
            name,
            "--uri",
            uri,
        ]);
        (
            tls.join(format!("{name}.pem")),
            tls.join(format!("{name}-key.pem")),
        )
    };
    let billing = issue("billing-svc", "sfc://group/billing");
    let orders = issue("orders-svc", "sfc://group/orders");
    let watcher = issue("watcher", "sfc://observer");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"identities": [], "anonymous": "none"}"#).unwrap();
    let reg = RegistryProc::start_at(
        "127.0.0.1:0",
        dir.path(),
        &["--mtls", "required", "--policy", policy.to_str().unwrap()],
    );
    let mut calm = WellBehaved::start(
        reg.service("billing", "steady")
            .cert(billing.0.display().to_string())
            .key(billing.1.display().to_string()),
    )
    .await;

    // A service registers in its own group.
    let (_b, w) = raw_session(&reg, Some(("billing", "b-1")), Some(billing.clone())).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    let (_o, w) = raw_session(&reg, Some(("orders", "o-1")), Some(orders.clone())).await;
    assert!(matches!(w, Message::Welcome(_)), "{w:?}");
    // It cannot register in another group, so it cannot overwrite another group's instance.
    let (_, e) = raw_session(&reg, Some(("orders", "o-1")), Some(billing.clone())).await;
    let e = error_of(e);
    assert_eq!(e.code, ErrorCode::NotAuthorized);
    assert!(
        e.message.contains("orders") && e.message.contains("billing"),
        "{}",
        e.message
    );
    // An observer certificate may watch and query, but not register.
    let (_, e) = raw_session(&reg, Some(("billing", "sneaky")), Some(watcher.clone())).await;
    assert_eq!(error_of(e).code, ErrorCode::NotAuthorized);
    let (mut s, w) = raw_session(&reg, None, Some(watcher.clone())).await;
    assert!(matches!(w, Message::Welcome(_)));
    s.write_all(&frame(br#"{"type":"query","id":2}"#))
        .await
        .unwrap();
    match read_message(&mut s).await {
        Message::Result(r) => {
            let o = r
                .instances
                .iter()
                .find(|r| r.id == "orders/o-1")
                .expect("orders/o-1 still there");
            assert_eq!(o.status, Status::Online);
            assert!(
                o.tls_identity
                    .as_deref()
                    .unwrap_or("")
                    .contains("orders-svc"),
                "owner unchanged: {o:?}"
            );
            assert!(!r.instances.iter().any(|r| r.instance_id == "sneaky"));
        }
        other => panic!("{other:?}"),
    }
    // The development client certificate carries no grant at all.
    let (_, e) = raw_session(&reg, None, Some(reg.client_cert())).await;
    assert_eq!(error_of(e).code, ErrorCode::NotAuthorized);
    // Each of the three refusals counted, and audited with the subject.
    let metrics = metrics_text(&reg);
    assert_eq!(
        metric(&metrics, "sfc_registry_refused_not_authorized_total"),
        Some(3.0),
        "{metrics}"
    );
    let log = log_lines_at_least(&reg, 3, |l| {
        l.contains("sfc::audit") && l.contains("refused: ")
    })
    .await
    .join("\n");
    for why in [
        "may not register in group \"orders\"; it may register in [\"billing\"]",
        "\"CN=watcher, O=sfc dev\" from 127.0.0.1:",
        "\"CN=sfc-dev-client, O=sfc dev\" from 127.0.0.1:",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("sfc::audit") && l.contains("refused: ") && l.contains(why)),
            "no audit line with {why:?}:\n{log}"
        );
    }
    calm.assert_undisturbed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_policy_only_admin_certificates_send_commands() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let sfc = |args: &[&str]| {
        let out = std::process::Command::new(sfc_bin())
            .args(args)
            .env_remove("SFC_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(sfc(&["certs", "init", "--dir", tls.to_str().unwrap()]).0);
    let issue = |name: &str, uri: &str| {
        assert!(
            sfc(&[
                "certs",
                "client",
                "--ca-dir",
                tls.to_str().unwrap(),
                "--name",
                name,
                "--uri",
                uri
            ])
            .0
        );
        (
            tls.join(format!("{name}.pem")).display().to_string(),
            tls.join(format!("{name}-key.pem")).display().to_string(),
        )
    };
    let svc = issue("billing-svc", "sfc://group/billing");
    let ops = issue("ops", "sfc://admin");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"identities": []}"#).unwrap();
    let reg = RegistryProc::start_at(
        "127.0.0.1:0",
        dir.path(),
        &[
            "--mtls",
            "required",
            "--policy",
            policy.to_str().unwrap(),
            "--http-tls",
        ],
    );
    let mut calm =
        WellBehaved::start(reg.service("billing", "steady").cert(&svc.0).key(&svc.1)).await;
    let c = reg
        .service("billing", "b-1")
        .cert(&svc.0)
        .key(&svc.1)
        .start()
        .unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    c.on_command(|_| Ok(serde_json::json!("pong")));
    let base = format!("https://{}", reg.http);
    let ca = reg.ca().display().to_string();

    // The service's own certificate may not command anyone (itself included).
    let (ok, _, err) = sfc(&[
        "command",
        "billing/b-1",
        "ping",
        "--http",
        &base,
        "--ca",
        &ca,
        "--cert",
        &svc.0,
        "--key",
        &svc.1,
    ]);
    assert!(!ok, "a service certificate sent a command");
    assert!(err.contains("admin"), "{err}");
    let (ok, _, err) = sfc(&[
        "deregister",
        "billing/b-1",
        "--http",
        &base,
        "--ca",
        &ca,
        "--cert",
        &svc.0,
        "--key",
        &svc.1,
    ]);
    assert!(!ok && err.contains("admin"), "{err}");
    // An admin certificate may, and the history says who did it.
    let (ok, out, err) = sfc(&[
        "command",
        "billing/b-1",
        "ping",
        "--http",
        &base,
        "--ca",
        &ca,
        "--cert",
        &ops.0,
        "--key",
        &ops.1,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("pong") && out.contains("CN=ops"), "{out}");
    c.stop().await.unwrap();
    calm.assert_undisturbed().await;
}

/// `curl` against the HTTPS API: (succeeded, stdout, stderr).
fn curl(
    url: &str,
    ca: &std::path::Path,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> (bool, String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--noproxy",
        "*",
        "--cacert",
    ])
    .arg(ca);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run curl (tests/setup.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of one sample in Prometheus text, e.g. `name{a="b"}`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// `--mtls required`: a client with no certificate, or with one from a CA the registry does not
/// trust, is refused on the protocol port and on the HTTPS API. Each refusal is written to the
/// audit log (who: the peer address and the subject the certificate claims; why: the reason)
/// and counted in `/metrics`, and a client
/// with a good certificate is served the whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals_are_audited_and_counted() {
    let reg = RegistryProc::start(&["--mtls", "required", "--http-tls"]);
    // Another CA with its own client certificate, as `sfc certs init` makes them.
    let foreign = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(sfc_bin())
        .args(["certs", "init", "--dir"])
        .arg(foreign.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "sfc certs init: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (fcert, fkey) = (
        foreign.path().join("client.pem"),
        foreign.path().join("client-key.pem"),
    );
    let (cert, key) = reg.client_cert();

    let mut good = WellBehaved::start(
        reg.service("mtls", "good")
            .cert(cert.display().to_string())
            .key(key.display().to_string()),
    )
    .await;

    // The protocol port: the client library says what happened and what to do about it.
    let bare = reg.service("mtls", "bare").start().unwrap();
    let err = first_error(&bare).await;
    assert_eq!(
        err,
        format!(
            "{0}: tls: {0} refused the connection: received fatal alert: CertificateRequired \
             (the registry requires a client certificate: set cert and key)",
            reg.addr
        ),
        "no certificate"
    );
    let stranger = reg
        .service("mtls", "stranger")
        .cert(fcert.display().to_string())
        .key(fkey.display().to_string())
        .start()
        .unwrap();
    // Its CA has the trusted one's name (both made by `sfc certs init`), so the signature check
    // is what fails: the registry answers `decrypt_error`.
    let err = first_error(&stranger).await;
    assert_eq!(
        err,
        format!(
            "{0}: tls: {0} refused the connection: received fatal alert: DecryptError \
             (the registry does not trust this client certificate)",
            reg.addr
        ),
        "foreign certificate"
    );
    assert!(!bare.is_connected() && !stranger.is_connected());
    bare.stop().await.unwrap();
    stranger.stop().await.unwrap();

    // The HTTPS API.
    let base = format!("https://{}", reg.http);
    let ca = reg.ca();
    let (ok, _, e) = curl(&format!("{base}/v1/fleet"), &ca, None);
    assert!(!ok, "HTTPS without a certificate was served");
    let (ok, _, e2) = curl(&format!("{base}/v1/fleet"), &ca, Some((&fcert, &fkey)));
    assert!(!ok, "HTTPS with a foreign certificate was served");
    eprintln!("curl without a certificate: {e}curl with a foreign one: {e2}");

    // Counted: read with the good certificate.
    let (ok, metrics, e) = curl(&format!("{base}/metrics"), &ca, Some((&cert, &key)));
    assert!(ok, "metrics with the good certificate: {e}");
    let series = |surface: &str, reason: &str| {
        format!(
            "sfc_registry_refused_certificates_total{{surface=\"{surface}\",reason=\"{reason}\"}}"
        )
    };
    for (surface, reason) in [
        ("protocol", "no-certificate"),
        ("protocol", "unknown-ca"),
        ("http", "no-certificate"),
        ("http", "unknown-ca"),
    ] {
        assert!(
            sample(&metrics, &series(surface, reason)) >= 1.0,
            "{surface} {reason} not counted:\n{metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, &series("protocol", "bad-certificate")),
        0.0
    );

    // Audited: who and why, on the audit target.
    // (The lines reach the test through a pipe: wait for all four, bounded.)
    let audited = |log: &str| {
        let audit: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("sfc::audit") && l.contains("refused: 127.0.0.1:"))
            .collect();
        [
            ("protocol", "presented no client certificate"),
            ("protocol", "(subject \"CN=sfc-dev-client, O=sfc dev\", unverified) from a CA this registry does not trust"),
            ("http", "presented no client certificate"),
            ("http", "(subject \"CN=sfc-dev-client, O=sfc dev\", unverified) from a CA this registry does not trust"),
        ]
        .iter()
        .all(|(surface, why)| audit.iter().any(|l| l.contains(why) && l.contains(&format!("surface=\"{surface}\""))))
    };
    eventually(LIMIT, "an audit line for each refused surface and reason", || audited(&reg.log()).then_some(())).await;

    // The good client was served throughout: still connected, online, and no error came to it.
    let rec = good.client.query(Filter::group("mtls")).await.unwrap();
    assert!(
        rec.iter().all(|r| r.instance_id == "good"),
        "a refused client was recorded: {rec:?}"
    );
    good.assert_undisturbed().await;
}

/// `command-result` frames pass the rate limit only as answers to commands the registry sent:
/// a flood of results that answer nothing is limited like any other traffic (the burst passes
/// and is refused as unknown, the rest is dropped and counted), while a real answer gets
/// through even when the flood has emptied the session's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_results_pass_the_rate_limit_only_as_answers() {
    const RATE: u32 = 10;
    const BURST: f64 = 2.0 * RATE as f64;
    let reg = RegistryProc::start(&[
        "--max-frame-rate",
        &RATE.to_string(),
        "--admin-token",
        "t0ken",
    ]);
    let mut calm = WellBehaved::start(reg.service("calm", "steady")).await;
    let (mut s, w) = raw_session(&reg, Some(("cr", "flooder")), None).await;
    assert!(matches!(w, Message::Welcome(_)));
    let obs = reg.observer();
    wait_record(&obs, "cr/flooder", LIMIT, "online", |r| {
        r.status == Status::Online
    })
    .await;

    // 500 results to commands never sent.
    let started = std::time::Instant::now();
    let mut burst = Vec::new();
    for id in 0..500u64 {
        burst.extend(frame(
            format!(
                r#"{{"type":"command-result","command_id":{},"ok":true}}"#,
                1_000_000 + id
            )
            .as_bytes(),
        ));
    }
    s.write_all(&burst).await.unwrap();
    let mut sent = 500u64;
    // (passed and refused as unknown before the first rate-limited error, its arrival)
    let mut first_limit: Option<(u64, f64)> = None;
    let (mut unknown, mut limited, mut told, mut last_id) = (0u64, 0u64, 0u64, 0u64);
    // A command sent over HTTP while the budget is spent: its result must still get through.
    let url = reg.url("/v1/instances/cr/flooder/commands");
    let http = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut r = agent
            .post(&url)
            .header("authorization", "Bearer t0ken")
            .send_json(serde_json::json!({"command": "ping-me", "timeout": "15s"}))
            .expect("command call");
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    for _ in 0..10_000 {
        match tokio::time::timeout(LIMIT, read_message(&mut s))
            .await
            .expect("frames from the registry")
        {
            Message::Error(e) if e.code == ErrorCode::InvalidField => {
                let id: u64 = e
                    .message
                    .strip_prefix("command ")
                    .and_then(|r| r.strip_suffix(" is unknown or no longer awaited"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{:?}", e.message));
                // In the order sent; the first burst's from its start.
                assert!(
                    (1_000_000..1_000_500).contains(&id) || (2_000_000..2_000_100).contains(&id),
                    "{id} was never sent"
                );
                assert!(id > last_id, "{id} after {last_id}");
                if unknown == 0 {
                    assert_eq!(id, 1_000_000);
                }
                last_id = id;
                unknown += 1;
            }
            Message::Error(e) if e.code == ErrorCode::RateLimited => {
                let (n, kind) = rate_limited(&e, RATE);
                assert_eq!(kind, "command-result");
                first_limit.get_or_insert((unknown, started.elapsed().as_secs_f64()));
                limited += 1;
                told += n;
            }
            Message::Command(c) => {
                // Spend the budget again first, then answer, then leave (which always passes).
                let mut out = Vec::new();
                for id in 0..100u64 {
                    out.extend(frame(
                        format!(
                            r#"{{"type":"command-result","command_id":{},"ok":true}}"#,
                            2_000_000 + id
                        )
                        .as_bytes(),
                    ));
                }
                sent += 100;
                out.extend(frame(
                    format!(
                        r#"{{"type":"command-result","command_id":{},"ok":true,"result":"pong"}}"#,
                        c.command_id
                    )
                    .as_bytes(),
                ));
                out.extend(frame(br#"{"type":"leave","reason":null}"#));
                s.write_all(&out).await.unwrap();
            }
            Message::Leave(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let span = started.elapsed().as_secs_f64();
    let (status, body) = http.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["result"].as_str()),
        (Some(true), Some("pong")),
        "{body}"
    );

    // The bucket started full: exactly the burst of 2 x 10 passed before the first drop (plus
    // what refilled at 10 a second while the registry read them, nothing when that took under
    // 100 ms). Over the whole span no more than the burst and the refill passed.
    let (before_first, at) =
        first_limit.expect("results that answer nothing were never rate-limited");
    assert!(
        before_first as f64 >= BURST && before_first as f64 <= (BURST + RATE as f64 * at).floor(),
        "{before_first} unanswerable results passed before the first rate-limited error ({at:.3} s)"
    );
    assert!(
        unknown as f64 <= (BURST + RATE as f64 * span).floor(),
        "{unknown} of {sent} passed in {span:.2} s"
    );
    // At most one rate-limited error a second.
    assert!(
        limited >= 1 && limited as f64 <= span.floor() + 1.0,
        "{limited} rate-limited errors in {span:.2} s"
    );
    // Every result that did not pass was dropped and counted, and only those.
    let metrics = metrics_text(&reg);
    let counted = metric(&metrics, "sfc_registry_rate_limited_frames_total").expect("the counter");
    assert_eq!(
        counted,
        (sent - unknown) as f64,
        "{unknown} of {sent} passed; {told} drops reported in errors"
    );
    assert!(told <= sent - unknown);
    eprintln!("{sent} unanswerable results: {unknown} refused as unknown, {} dropped ({limited} rate-limited errors) in {span:.2} s", sent - unknown);
    calm.assert_undisturbed().await;
}

/// A command handler whose result is over the registry's frame limit: the client library
/// answers with an error result (`ok: false`, naming the limit) instead of sending a frame the
/// registry would refuse (which ended the session: offline, then online again). The session
/// is the same before and after, with no transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_result_over_the_frame_limit_is_an_error_result_and_the_session_stays() {
    let reg = RegistryProc::start(&["--admin-token", "tok", "--max-frame", "65536"]);
    let mut calm = WellBehaved::start(reg.service("calm", "steady")).await;
    let svc = reg.service("cmd", "big-answer").start().unwrap();
    svc.wait_connected(LIMIT).await.unwrap();
    let obs = reg.observer();
    let before = wait_record(&obs, "cmd/big-answer", LIMIT, "online with a report", |r| {
        r.status == Status::Online && r.last_report_at.is_some()
    })
    .await;
    let mut events = svc.subscribe();
    svc.on_command(|c| match c.name.as_str() {
        "dump" => Ok(serde_json::json!({ "blob": "x".repeat(200 * 1024) })),
        _ => Ok(serde_json::json!({ "small": true })),
    });
    let url = reg.url("/v1/instances/cmd/big-answer/commands");
    let call = move |name: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let mut r = agent
                .post(&url)
                .header("authorization", "Bearer tok")
                .send_json(serde_json::json!({"command": name, "timeout": "10s"}))
                .expect("command call");
            let text = r.body_mut().read_to_string().unwrap();
            (r.status().as_u16(), serde_json::from_str::<serde_json::Value>(&text).unwrap())
        })
    };
    let (status, body) = call("dump").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("frame limit of 65536"), "{body}");
    // The same session answers the next command.
    let (status, body) = call("ping").await.unwrap();
    assert_eq!((status, &body["ok"]), (200, &serde_json::json!(true)), "{body}");
    // Still the same session, reporting a liveness window later, with no transition.
    let first = before.last_report_at.unwrap();
    let after = wait_record(&obs, "cmd/big-answer", LIMIT, "reporting a window later", |r| {
        r.last_report_at.is_some_and(|t| t >= first + 3 * before.interval_ms)
    })
    .await;
    assert_eq!(
        (after.status, after.status_since, after.connected_since),
        (Status::Online, before.status_since, before.connected_since),
        "{after:?}"
    );
    while let Ok(ev) = events.try_recv() {
        assert!(matches!(ev, sfc_client::ClientEvent::Command(_)), "the client saw {ev:?}");
    }
    calm.assert_undisturbed().await;
}
