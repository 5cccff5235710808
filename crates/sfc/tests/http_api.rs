//! The registry's HTTP surface, end to end: the real `sfc` binary on loopback ports the OS
//! assigns, real clients over TLS, a real HTTP client (ureq), the Prometheus output read by an
//! exposition-format parser, and the operator CLI as a user runs it.

mod common;

use common::{get_raw, http_agent, RegistryProc};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sfc_client::ClientBuilder;
use sfc_client::model::Health;

const TOKEN: &str = "test-admin-token";

/// The shared registry harness, with this file's conveniences.
struct Reg(RegistryProc);

impl std::ops::Deref for Reg {
    type Target = RegistryProc;
    fn deref(&self) -> &RegistryProc {
        &self.0
    }
}

impl Reg {
    fn start(extra: &[&str]) -> Reg {
        Reg(RegistryProc::start(extra))
    }

    fn ca(&self) -> String {
        self.0.ca().display().to_string()
    }

    fn service(&self, group: &str, service: &str, instance: &str) -> ClientBuilder {
        self.0.service(group, instance).service(service)
    }
}


/// (status, JSON body) of a request.
fn call(req: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = req.expect("http request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

fn get(url: &str) -> (u16, Value) {
    call(http_agent().get(url).call())
}

fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = http_agent().post(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    call(r.send_json(body))
}

fn delete(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = http_agent().delete(url);
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    call(r.call())
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error body: {v}"))
}

/// Polls `f` until it returns Some, for at most `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_of(reg: &Reg, id: &str) -> Option<String> {
    let (_, list) = get(&reg.url("/v1/instances"));
    list.as_array()?
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["status"].as_str().unwrap_or("").to_string())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn reads_filters_commands_and_deregistration_with_who_issued_them() {
    let reg = Reg::start(&["--admin-token", TOKEN]);
    let rt = rt();
    let _g = rt.enter();
    let a = reg
        .service("web", "frontend", "a")
        .tag("blue")
        .start()
        .expect("client a");
    a.on_command(|c| Ok(json!({ "echo": c.payload, "name": c.name })));
    let b = reg
        .service("web", "frontend", "b")
        .start()
        .expect("client b");
    b.on_command(|_| Err("not today".into()));
    let mute = reg
        .service("jobs", "worker", "mute")
        .start()
        .expect("client mute");
    // Subscribed but never answering: commands to it time out.
    let _mute_events = mute.subscribe();
    for c in [&a, &b, &mute] {
        rt.block_on(c.wait_connected(Duration::from_secs(10)))
            .expect("connected");
    }
    a.set_health(Health::Warning, Some("slow disk".into()))
        .unwrap();

    let (s, h) = get(&reg.url("/healthz"));
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let (s, r) = get(&reg.url("/readyz"));
    assert_eq!((s, r["ready"].as_bool()), (200, Some(true)));

    let (s, fleet) = get(&reg.url("/v1/fleet"));
    assert_eq!(s, 200);
    assert_eq!(fleet["web"].as_array().map(Vec::len), Some(2), "{fleet}");
    assert_eq!(fleet["jobs"].as_array().map(Vec::len), Some(1), "{fleet}");

    let (_, tagged) = get(&reg.url("/v1/instances?tag=blue"));
    assert_eq!(
        tagged
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!("web/a")]
    );
    let (_, svc) = get(&reg.url("/v1/instances?service=worker&status=online"));
    assert_eq!(svc[0]["id"], "jobs/mute");
    eventually(Duration::from_secs(10), "health warning visible", || {
        let (_, w) = get(&reg.url("/v1/instances?health=warning"));
        (w.as_array()?.len() == 1 && w[0]["id"] == "web/a").then_some(())
    });
    let (s, bad) = get(&reg.url("/v1/instances?status=sleeping"));
    assert_eq!((s, error_code(&bad)), (400, "invalid-request"));
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sleeping"),
        "{bad}"
    );

    // The detail carries the sample ring, filled by reports.
    let detail = eventually(Duration::from_secs(10), "samples of web/a", || {
        let (_, d) = get(&reg.url("/v1/instances/web/a"));
        (d["samples"].as_array()?.len() >= 2).then_some(d)
    });
    assert_eq!(detail["instance"]["id"], "web/a");
    assert!(
        detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "joined"),
        "{detail}"
    );
    let (s, missing) = get(&reg.url("/v1/instances/web/nobody"));
    assert_eq!((s, error_code(&missing)), (404, "unknown-instance"));
    let (_, samples) = get(&reg.url("/v1/samples?group=web"));
    assert_eq!(
        samples
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["web/a", "web/b"]
    );

    // Mutating calls need the token.
    let cmd = reg.url("/v1/instances/web/a/commands");
    let (s, e) = post(&cmd, None, json!({ "command": "ping" }));
    assert_eq!((s, error_code(&e)), (401, "unauthorized"));
    let (s, e) = post(&cmd, Some("wrong"), json!({ "command": "ping" }));
    assert_eq!((s, error_code(&e)), (401, "unauthorized"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong admin token"),
        "{e}"
    );
    let (s, e) = post(&cmd, Some(TOKEN), json!({ "cmd": "ping" }));
    assert_eq!((s, error_code(&e)), (400, "invalid-request"));

    let (s, ok) = post(
        &cmd,
        Some(TOKEN),
        json!({ "command": "ping", "payload": { "n": 7 } }),
    );
    assert_eq!(s, 200, "{ok}");
    assert_eq!(
        (ok["ok"].as_bool(), &ok["result"]["echo"]["n"]),
        (Some(true), &json!(7))
    );
    assert_eq!(ok["by"], "token@127.0.0.1");
    let (s, refused) = post(
        &reg.url("/v1/instances/web/b/commands"),
        Some(TOKEN),
        json!({ "command": "x" }),
    );
    assert_eq!(
        (s, refused["ok"].as_bool(), refused["error"].as_str()),
        (200, Some(false), Some("not today"))
    );

    // An instance that never answers: a bounded wait and a clear error.
    let (s, slow) = post(
        &reg.url("/v1/instances/jobs/mute/commands"),
        Some(TOKEN),
        json!({ "command": "x", "timeout": "300ms" }),
    );
    assert_eq!((s, error_code(&slow)), (504, "command-timeout"));
    assert!(
        slow["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs/mute"),
        "{slow}"
    );
    let (s, unknown) = post(
        &reg.url("/v1/instances/jobs/ghost/commands"),
        Some(TOKEN),
        json!({ "command": "x" }),
    );
    assert_eq!((s, error_code(&unknown)), (404, "unknown-instance"));

    // Deregistration: refused while online, accepted once the instance left.
    let (s, e) = delete(&reg.url("/v1/instances/web/b"), Some(TOKEN));
    assert_eq!((s, error_code(&e)), (409, "instance-online"));
    rt.block_on(b.stop()).unwrap();
    eventually(Duration::from_secs(10), "web/b left", || {
        (status_of(&reg, "web/b")? == "left").then_some(())
    });
    let (s, e) = post(
        &reg.url("/v1/instances/web/b/commands"),
        Some(TOKEN),
        json!({ "command": "x" }),
    );
    assert_eq!((s, error_code(&e)), (409, "not-online"));
    let (s, e) = delete(&reg.url("/v1/instances/web/b"), None);
    assert_eq!((s, error_code(&e)), (401, "unauthorized"));
    let (s, gone) = delete(&reg.url("/v1/instances/web/b"), Some(TOKEN));
    assert_eq!((s, gone["deregistered"].as_str()), (200, Some("web/b")));
    assert_eq!(status_of(&reg, "web/b"), None);

    // The history names who issued each command and the deregistration, page by page.
    let mut all = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let (_, page) = get(&reg.url(&format!("/v1/events?after={after}&limit=3")));
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        after = page["next"].as_u64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "pages skip or repeat: {seqs:?}"
    );
    let sent: Vec<&Value> = all.iter().filter(|e| e["kind"] == "command-sent").collect();
    assert!(
        sent.len() >= 3 && sent.iter().all(|e| e["detail"]["by"] == "token@127.0.0.1"),
        "{sent:?}"
    );
    let evicted = all
        .iter()
        .find(|e| e["kind"] == "evicted" && e["id"] == "web/b")
        .expect("evicted event");
    assert_eq!(evicted["detail"]["by"], "token@127.0.0.1");
    let (s, e) = get(&reg.url("/v1/events?limit=0"));
    assert_eq!((s, error_code(&e)), (400, "invalid-request"));

    // Unknown routes and methods answer in the same error shape.
    let (s, e) = get(&reg.url("/v1/nothing"));
    assert_eq!((s, error_code(&e)), (404, "not-found"));
    let (s, e) = call(http_agent().put(&reg.url("/v1/fleet")).send_empty());
    assert_eq!((s, error_code(&e)), (405, "method-not-allowed"));
    for c in [&a, &mute] {
        let _ = rt.block_on(c.stop());
    }
}

#[test]
fn mutating_calls_are_forbidden_until_an_admin_credential_is_configured() {
    let reg = Reg::start(&[]);
    let (s, e) = post(
        &reg.url("/v1/instances/web/a/commands"),
        Some("anything"),
        json!({ "command": "shutdown" }),
    );
    assert_eq!((s, error_code(&e)), (403, "admin-disabled"));
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("--admin-token") && msg.contains("SFC_ADMIN_TOKEN"),
        "{msg}"
    );
    let (s, e) = delete(&reg.url("/v1/instances/web/a"), None);
    assert_eq!((s, error_code(&e)), (403, "admin-disabled"));
    let (_, info) = get(&reg.url("/v1/registry"));
    assert_eq!(info["admin_enabled"], false);

    // Both refusals are counted and audited (who, what, why).
    let mut r = http_agent().get(&reg.url("/metrics")).call().expect("metrics");
    let text = r.body_mut().read_to_string().unwrap();
    assert!(
        text.lines()
            .any(|l| l == "sfc_registry_refused_admin_calls_total 2"),
        "refusals not counted:\n{text}"
    );
    reg.wait_log("an audit line for both refusals", |log| {
        ["send a command", "deregister"].iter().all(|action| {
            log.lines().any(|l| {
                l.contains("sfc::audit")
                    && l.contains(&format!(
                        "may not {action} over HTTP: mutating calls are disabled"
                    ))
                    && l.contains("refused: 127.0.0.1:")
            })
        })
    });
}

#[test]
fn metrics_stay_parseable_with_quotes_backslashes_and_newlines_in_labels() {
    // Per-instance series are opt-in (--metrics-instances); this test reads them.
    let reg = Reg::start(&["--metrics-instances", "all"]);
    let rt = rt();
    let _g = rt.enter();
    let service = "we\"b\\svc";
    // No newline: the identifier grammar (PROTOCOL.md §12) refuses control characters in
    // gauge names now; quotes and backslashes still need escaping in labels.
    let gauge = "line one line \"two\" \\ end";
    let c = reg
        .service("metrics-\"g\"", service, "i\\1")
        .start()
        .expect("client");
    rt.block_on(c.wait_connected(Duration::from_secs(10)))
        .expect("connected");
    c.set_gauge(gauge, 42.5).unwrap();
    c.set_runtime_metrics(BTreeMap::from([("heap_used_bytes".to_string(), 1234.0)]))
        .unwrap();

    // The join's event is counted once the group commit has written it, which may come after
    // the welcome and the first report: wait for both.
    let text = eventually(Duration::from_secs(10), "the gauge and the join's event in /metrics", || {
        let mut r = http_agent().get(&reg.url("/metrics")).call().ok()?;
        let ct = r.headers().get("content-type")?.to_str().ok()?.to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.body_mut().read_to_string().ok()?;
        let events = text
            .lines()
            .find_map(|l| l.strip_prefix("sfc_registry_events_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        (text.contains("sfc_instance_heap_used_bytes") && events.is_some_and(|n| n >= 1.0))
            .then_some(text)
    });
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e:?}\n{text}"));
    let value = |family: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let fam = parsed.families.get(family)?;
        fam.iter_samples().find_map(|s| {
            let ls = s.get_labelset().ok()?;
            labels
                .iter()
                .all(|(k, v)| ls.get_label_value(k) == Some(*v))
                .then(|| match &s.value {
                    openmetrics_parser::PrometheusValue::Gauge(n)
                    | openmetrics_parser::PrometheusValue::Unknown(n) => n.as_f64(),
                    openmetrics_parser::PrometheusValue::Counter(c) => c.value.as_f64(),
                    _ => f64::NAN,
                })
        })
    };
    let me = [
        ("group", "metrics-\"g\""),
        ("service", service),
        ("instance", "i\\1"),
    ];
    assert_eq!(value("sfc_instance_up", &me), Some(1.0), "{text}");
    assert_eq!(
        value(
            "sfc_instance_custom",
            &[me[0], me[1], me[2], ("name", gauge)]
        ),
        Some(42.5),
        "{text}"
    );
    assert_eq!(value("sfc_instance_heap_used_bytes", &me), Some(1234.0));
    assert_eq!(
        value(
            "sfc_instance_health",
            &[me[0], me[1], me[2], ("health", "passing")]
        ),
        Some(1.0)
    );
    assert!(
        value("sfc_instance_resident_bytes", &me).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert_eq!(value("sfc_registry_sessions", &[]), Some(1.0));
    assert!(value("sfc_registry_reports_total", &[]).is_some_and(|v| v >= 1.0));
    assert!(value("sfc_registry_events_total", &[]).is_some_and(|v| v >= 1.0));
    assert_eq!(
        value("sfc_registry_instances", &[("status", "online")]),
        Some(1.0)
    );
    let _ = rt.block_on(c.stop());
}

/// Reads SSE lines from `/v1/watch` until `until` says stop; returns the lines seen.
fn read_sse(
    url: &str,
    last_event_id: Option<&str>,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    read_sse_lines(open_sse(url, last_event_id), until)
}

/// Opens `/v1/watch`. The registry subscribes the watch before it answers, so once this
/// returns (the 200 head has arrived) every later transition reaches the stream.
fn open_sse(url: &str, last_event_id: Option<&str>) -> ureq::http::Response<ureq::Body> {
    let mut req = http_agent().get(url);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.call().expect("watch");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    resp
}

/// Reads the lines of an open SSE stream until `until` says stop.
fn read_sse_lines(
    resp: ureq::http::Response<ureq::Body>,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    for line in BufReader::new(resp.into_body().into_reader())
        .lines()
        .take(10_000)
    {
        lines.push(line.expect("sse line"));
        if until(&lines) {
            break;
        }
    }
    lines
}

#[test]
fn watch_streams_events_resumes_with_last_event_id_and_sends_heartbeats() {
    let reg = Reg::start(&["--http-heartbeat", "200ms"]);
    let rt = rt();
    let _g = rt.enter();
    let a = reg.service("w", "svc", "a").start().expect("a");
    rt.block_on(a.wait_connected(Duration::from_secs(10)))
        .unwrap();
    let b = reg.service("w", "svc", "b").start().expect("b");
    rt.block_on(b.wait_connected(Duration::from_secs(10)))
        .unwrap();
    let other = reg.service("elsewhere", "svc", "c").start().expect("c");
    rt.block_on(other.wait_connected(Duration::from_secs(10)))
        .unwrap();

    // From the start of the history, only group w, then at least one heartbeat comment.
    let lines = read_sse(&reg.url("/v1/watch?group=w&after=0"), None, |l| {
        l.iter().filter(|x| x.starts_with("id:")).count() >= 2
            && l.iter().any(|x| x.starts_with(": heartbeat"))
    });
    let ids: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "event: joined" || l == "event:joined"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("elsewhere/c")),
        "the group filter let another group through"
    );

    // Resuming after the first id replays the second event first, then goes live.
    let resumed = read_sse(
        &reg.url("/v1/watch?group=w"),
        Some(&ids[0].to_string()),
        |l| l.iter().any(|x| x.starts_with("id:")),
    );
    let first: u64 = resumed
        .iter()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(first, ids[1]);

    // A live transition reaches a watcher that joined before it: the 200 head is the
    // acknowledgement that the watch is subscribed.
    let stream = open_sse(&reg.url("/v1/watch?group=w"), None);
    let watcher = std::thread::spawn(move || {
        read_sse_lines(stream, |l| {
            l.iter()
                .any(|x| x.starts_with("data:") && x.contains("\"kind\":\"left\""))
        })
    });
    rt.block_on(b.stop()).unwrap();
    let live = watcher.join().expect("watcher");
    assert!(
        live.iter().any(|l| l.contains("\"id\":\"w/b\"")),
        "{live:?}"
    );

    let (s, e) = call(
        http_agent()
            .get(&reg.url("/v1/watch"))
            .header("Last-Event-ID", "yesterday")
            .call(),
    );
    assert_eq!((s, error_code(&e)), (400, "invalid-request"));
    for c in [&a, &other] {
        let _ = rt.block_on(c.stop());
    }
}

/// Every operation in openapi.json answers as documented for an instance that exists and is
/// online: a read 200, a command 200 with the instance's answer, a deregistration 409
/// `instance-online`. Never a 5xx, never 404 or 405, and always a status the document lists.
#[test]
fn every_documented_route_is_served() {
    let reg = Reg::start(&["--admin-token", TOKEN]);
    let rt = rt();
    let _g = rt.enter();
    let c = reg.service("g", "svc", "i").start().expect("client g/i");
    c.on_command(|_| Ok(json!("done")));
    rt.block_on(c.wait_connected(Duration::from_secs(10)))
        .expect("connected");
    let doc: Value = get(&reg.url("/v1/openapi.json")).1;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{group}", "g").replace("{instance_id}", "i");
        for (method, op) in ops.as_object().unwrap() {
            let url = reg.url(&concrete);
            let what = format!("{} {path}", method.to_uppercase());
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{what} documents no responses"))
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let resp = match method.as_str() {
                "get" if path == "/v1/watch" => {
                    // A stream: only the head matters here.
                    http_agent().get(&url).call()
                }
                "get" => http_agent().get(&url).call(),
                "post" => http_agent()
                    .post(&url)
                    .header("Authorization", &format!("Bearer {TOKEN}"))
                    .send_json(json!({ "command": "x" })),
                "delete" => http_agent()
                    .delete(&url)
                    .header("Authorization", &format!("Bearer {TOKEN}"))
                    .call(),
                m => panic!("unexpected method {m} in openapi.json"),
            };
            let mut r = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
            let status = r.status().as_u16();
            let expected = match method.as_str() {
                "delete" => 409,
                _ => 200,
            };
            let body = if path == "/v1/watch" {
                String::new()
            } else {
                r.body_mut().read_to_string().unwrap_or_default()
            };
            assert!(
                status < 500 && status != 404 && status != 405,
                "{what} is documented but not served: {status} {body}"
            );
            assert_eq!(status, expected, "{what}: {body}");
            assert!(
                documented.contains(&status),
                "{what} answered {status}, which openapi.json does not list ({documented:?})"
            );
            if concrete.starts_with("/v1/") && path != "/v1/watch" {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
                match method.as_str() {
                    "delete" => assert_eq!(error_code(&v), "instance-online", "{what}"),
                    "post" => assert_eq!(
                        (v["ok"].as_bool(), v["result"].as_str()),
                        (Some(true), Some("done")),
                        "{what}"
                    ),
                    _ => assert!(v.get("error").is_none(), "{what}: {body}"),
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} operations in openapi.json");
    let _ = rt.block_on(c.stop());
    // The dashboard is self-contained: the page loads only its own script and style.
    let mut page = http_agent().get(&reg.url("/")).call().unwrap();
    let csp = page
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("/dashboard.js") && !html.contains("http://") && !html.contains("https://")
    );
}

/// Runs `sfc ARGS` with `env`; returns (success, stdout, stderr).
fn sfc(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(common::sfc_bin());
    cmd.args(args)
        .env_remove("SFC_ADMIN_TOKEN")
        .env_remove("SFC_HTTP")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sfc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_cli_shuts_down_deregisters_and_explains_failures() {
    let reg = Reg::start(&["--admin-token", TOKEN]);
    let base = format!("http://{}", reg.http);
    let mut svc = Command::new(common::example_bin())
        .args([
            "--group",
            "cli",
            "--instance-id",
            "one",
            "--interval",
            "200ms",
        ])
        .env("SFC_REGISTRY", &reg.addr)
        .env("SFC_CA", reg.ca())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("example service");
    eventually(Duration::from_secs(20), "cli/one online", || {
        (status_of(&reg, "cli/one")? == "online").then_some(())
    });

    let (ok, out, _) = sfc(&["status", "--http", &base], &[]);
    assert!(
        ok && out.contains("cli/one") && out.contains("online"),
        "{out}"
    );
    let (ok, out, _) = sfc(&["status", "--http", &base, "--json"], &[]);
    let records: Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert!(ok && records[0]["id"] == "cli/one");

    let (ok, _, err) = sfc(
        &["shutdown", "cli/one", "--http", &base],
        &[("SFC_ADMIN_TOKEN", "nope")],
    );
    assert!(
        !ok && err.contains("wrong admin token") && err.contains("SFC_ADMIN_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = sfc(&["shutdown", "cli/one", "--http", &base], &[]);
    assert!(
        !ok && err.contains("Bearer") && err.contains("SFC_ADMIN_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = sfc(
        &["shutdown", "cli/ghost", "--http", &base],
        &[("SFC_ADMIN_TOKEN", TOKEN)],
    );
    assert!(
        !ok && err.contains("no instance \"cli/ghost\"") && err.contains("sfc status"),
        "{err}"
    );
    let (ok, _, err) = sfc(
        &["shutdown", "noslash", "--http", &base],
        &[("SFC_ADMIN_TOKEN", TOKEN)],
    );
    assert!(!ok && err.contains("<group>/<instance_id>"), "{err}");
    // A port nobody listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _, err) = sfc(&["events", "--http", &format!("http://{dead}")], &[]);
    assert!(
        !ok && err.contains("unreachable") && err.contains("--http"),
        "{err}"
    );

    let (ok, out, err) = sfc(
        &[
            "shutdown", "cli/one", "--reason", "cli test", "--http", &base,
        ],
        &[("SFC_ADMIN_TOKEN", TOKEN)],
    );
    assert!(ok, "{err}");
    assert!(out.contains("ok") && out.contains("stopping"), "{out}");
    let exited = eventually(
        Duration::from_secs(20),
        "the example service to exit",
        || svc.try_wait().ok().flatten(),
    );
    assert!(exited.success(), "the example service exited with {exited}");
    eventually(Duration::from_secs(10), "cli/one left", || {
        (status_of(&reg, "cli/one")? == "left").then_some(())
    });

    let (ok, out, err) = sfc(
        &["deregister", "cli/one", "--http", &base, "--json"],
        &[("SFC_ADMIN_TOKEN", TOKEN)],
    );
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["deregistered"],
        "cli/one"
    );

    let (ok, out, _) = sfc(&["events", "--http", &base], &[]);
    assert!(
        ok && out.contains("command-sent") && out.contains("cli test") && out.contains("evicted"),
        "{out}"
    );
    let (ok, out, _) = sfc(&["events", "--http", &base, "--json", "--after", "1"], &[]);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert!(ok && page["events"][0]["seq"] == 2, "{page}");
}

#[test]
fn https_with_an_admin_client_certificate() {
    let reg = Reg::start(&[
        "--http-tls",
        "--mtls",
        "optional",
        "--admin-subject",
        "sfc-dev-client",
    ]);
    let base = format!("https://{}", reg.http);
    let ca = reg.ca();
    let (cert, key) = (
        reg.data_dir.join("tls/client.pem"),
        reg.data_dir.join("tls/client-key.pem"),
    );
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    // Reads work over TLS with the CA; a client without the CA is told to pass --ca.
    let (ok, out, err) = sfc(&["events", "--http", &base, "--ca", &ca, "--json"], &[]);
    assert!(ok, "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["events"].is_array());
    let (ok, _, err) = sfc(
        &["events", "--http", &base, "--data-dir", "/nonexistent"],
        &[],
    );
    assert!(!ok && err.contains("--ca"), "{err}");

    // No token accepted here; the certificate is the admin credential.
    let (ok, _, err) = sfc(&["deregister", "x/y", "--http", &base, "--ca", &ca], &[]);
    assert!(!ok && err.contains("admin client certificate"), "{err}");
    let (ok, _, err) = sfc(
        &[
            "deregister",
            "x/y",
            "--http",
            &base,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        &[],
    );
    assert!(
        !ok && err.contains("no instance \"x/y\""),
        "authorized, then unknown: {err}"
    );

    let rt = rt();
    let _g = rt.enter();
    let c = reg.service("tls", "svc", "a").start().expect("client");
    rt.block_on(c.wait_connected(Duration::from_secs(10)))
        .unwrap();
    c.on_command(|_| Ok(json!("bye")));
    let (ok, out, err) = sfc(
        &[
            "command", "tls/a", "hello", "--http", &base, "--ca", &ca, "--cert", &cert, "--key",
            &key,
        ],
        &[],
    );
    assert!(
        ok && out.contains("by cert:CN=sfc-dev-client"),
        "{out} {err}"
    );
    let _ = rt.block_on(c.stop());
}

fn ids_of(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn instances_page_by_cursor_choose_fields_search_and_answer_304_and_gzip() {
    let reg = Reg::start(&[]);
    let rt = rt();
    let _g = rt.enter();
    let names = ["i1", "i2", "i3", "i4", "i5"];
    let clients: Vec<_> = names
        .iter()
        .map(|n| reg.service("pg", "pager", n).start().expect("client"))
        .collect();
    for c in &clients {
        rt.block_on(c.wait_connected(Duration::from_secs(10)))
            .expect("connected");
    }

    // Pages of two follow the cursor to the end: every record once, in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let url = reg.url(&format!("/v1/instances?group=pg&limit=2{after}"));
        let (s, head, body) = get_raw(&url, &[]);
        assert_eq!(s, 200);
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert!(page.as_array().unwrap().len() <= 2, "{page}");
        seen.extend(ids_of(&page));
        pages += 1;
        match head.get("x-next-cursor") {
            Some(c) => after = format!("&after={}", c.to_str().unwrap()),
            None => break,
        }
        assert!(pages < 10, "the cursor never ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        names.iter().map(|n| format!("pg/{n}")).collect::<Vec<_>>()
    );

    // fields: only those (and id); an unknown one is refused; so is a limit out of range.
    let (s, slim) = get(&reg.url("/v1/instances?group=pg&fields=status,health"));
    assert_eq!(s, 200);
    for r in slim.as_array().unwrap() {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["health", "id", "status"], "{r}");
    }
    let (s, bad) = get(&reg.url("/v1/instances?fields=id,colour"));
    assert_eq!((s, error_code(&bad)), (400, "invalid-request"));
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("colour"),
        "{bad}"
    );
    let (s, bad) = get(&reg.url("/v1/instances?limit=0"));
    assert_eq!((s, error_code(&bad)), (400, "invalid-request"));

    // Search (case-insensitive) and a set of ids.
    let (_, found) = get(&reg.url("/v1/instances?q=PG/I3"));
    assert_eq!(ids_of(&found), ["pg/i3"]);
    let (_, two) = get(&reg.url("/v1/instances?ids=pg/i4,pg/i1,pg/none"));
    assert_eq!(ids_of(&two), ["pg/i1", "pg/i4"]);

    // Samples of some ids only, and only the newer ones.
    let samples = eventually(Duration::from_secs(10), "two samples of pg/i2", || {
        let (_, v) = get(&reg.url("/v1/samples?ids=pg/i2"));
        (v["pg/i2"].as_array()?.len() >= 2).then_some(v)
    });
    assert_eq!(samples.as_object().unwrap().len(), 1, "{samples}");
    let ring = samples["pg/i2"].as_array().unwrap();
    let newest = ring.last().unwrap()["at"].as_u64().unwrap();
    let (_, none_newer) = get(&reg.url(&format!(
        "/v1/samples?ids=pg/i2&since={}",
        newest + 3_600_000
    )));
    assert_eq!(none_newer["pg/i2"], json!([]), "{none_newer}");

    // ETag / If-None-Match: the same list answers 304 with no body; a change answers 200.
    let url = reg.url("/v1/instances?group=pg&fields=id,status");
    let (s, head, _) = get_raw(&url, &[]);
    assert_eq!(s, 200);
    let tag = head
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_string();
    let (s, head, body) = get_raw(&url, &[("If-None-Match", &tag)]);
    assert_eq!((s, body.len()), (304, 0));
    assert_eq!(head.get("etag").unwrap().to_str().unwrap(), tag);
    rt.block_on(clients[0].stop()).expect("stop");
    eventually(
        Duration::from_secs(10),
        "a new ETag once pg/i1 left",
        || {
            let (s, head, _) = get_raw(&url, &[("If-None-Match", &tag)]);
            (s == 200 && head.get("etag")?.to_str().ok()? != tag).then_some(())
        },
    );
    let (_, fleet_head, _) = get_raw(&reg.url("/v1/fleet?group=pg&status=left"), &[]);
    let ftag = fleet_head
        .get("etag")
        .expect("/v1/fleet has an ETag")
        .to_str()
        .unwrap()
        .to_string();
    let (s, _, _) = get_raw(
        &reg.url("/v1/fleet?group=pg&status=left"),
        &[("If-None-Match", &ftag)],
    );
    assert_eq!(s, 304);

    // Compressed when the client accepts it, plain otherwise; never the SSE stream.
    let (_, head, plain) = get_raw(&reg.url("/v1/instances"), &[]);
    assert!(head.get("content-encoding").is_none(), "{head:?}");
    let (_, head, gz) = get_raw(&reg.url("/v1/instances"), &[("Accept-Encoding", "gzip")]);
    assert_eq!(
        head.get("content-encoding").map(|v| v.to_str().unwrap()),
        Some("gzip"),
        "{head:?}"
    );
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "not a gzip stream");
    assert!(
        gz.len() < plain.len(),
        "gzip {} >= plain {}",
        gz.len(),
        plain.len()
    );
    assert!(
        head.get_all("vary").iter().any(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")),
        "{head:?}"
    );
    let sse = http_agent()
        .get(&reg.url("/v1/watch"))
        .header("Accept-Encoding", "gzip")
        .call()
        .expect("watch");
    assert!(
        sse.headers().get("content-encoding").is_none(),
        "the watch stream was compressed"
    );
    drop(sse);
    for c in &clients[1..] {
        let _ = rt.block_on(c.stop());
    }
}

#[test]
fn summary_counts_each_group_as_the_fleet_does() {
    let reg = Reg::start(&[]);
    let rt = rt();
    let _g = rt.enter();
    let a1 = reg.service("alpha", "api", "a1").start().expect("a1");
    let a2 = reg.service("alpha", "worker", "a2").start().expect("a2");
    let b1 = reg.service("beta", "api", "b1").start().expect("b1");
    for c in [&a1, &a2, &b1] {
        rt.block_on(c.wait_connected(Duration::from_secs(10)))
            .expect("connected");
    }
    a2.set_health(Health::Critical, Some("disk".into()))
        .unwrap();
    rt.block_on(b1.stop()).expect("stop b1");

    let want = |fleet: &Value, group: &str| -> Value {
        let records = fleet[group].as_array().cloned().unwrap_or_default();
        let count = |k: &str, v: &str| records.iter().filter(|r| r[k] == v).count();
        json!({
            "instances": records.len(),
            "online": count("status", "online"), "offline": count("status", "offline"), "left": count("status", "left"),
            "passing": count("health", "passing"), "warning": count("health", "warning"), "critical": count("health", "critical"),
        })
    };
    let summary = eventually(
        Duration::from_secs(10),
        "alpha critical and beta left",
        || {
            let (_, s) = get(&reg.url("/v1/summary"));
            let groups = s["groups"].as_array()?;
            let alpha = groups.iter().find(|g| g["group"] == "alpha")?;
            let beta = groups.iter().find(|g| g["group"] == "beta")?;
            (alpha["critical"] == 1 && beta["left"] == 1).then_some(s)
        },
    );
    let (_, fleet) = get(&reg.url("/v1/fleet"));
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(
        groups
            .iter()
            .map(|g| g["group"].clone())
            .collect::<Vec<_>>(),
        [json!("alpha"), json!("beta")]
    );
    for g in groups {
        let name = g["group"].as_str().unwrap();
        let mut got = g.clone();
        let obj = got.as_object_mut().unwrap();
        assert_eq!(
            obj.remove("cpu").and_then(|c| c.as_array().map(Vec::len)),
            Some(24),
            "{g}"
        );
        obj.remove("group");
        let services = obj.remove("services");
        assert_eq!(got, want(&fleet, name), "group {name}");
        assert_eq!(
            services,
            Some(json!(if name == "alpha" { 2 } else { 1 })),
            "{g}"
        );
    }
    assert_eq!(summary["totals"]["instances"], 3, "{summary}");
    assert_eq!(summary["totals"]["online"], 2, "{summary}");
    assert_eq!(summary["totals"]["groups"], 2, "{summary}");
    // The watch cursor: events are published once committed, so it may trail the records.
    assert!(
        summary["events_cursor"].as_u64().is_some_and(|c| c >= 1),
        "{summary}"
    );
    let _ = rt.block_on(a1.stop());
    let _ = rt.block_on(a2.stop());
}

#[test]
fn metrics_have_group_series_by_default_and_instance_series_only_when_asked() {
    let text_of = |reg: &Reg| {
        let mut r = http_agent().get(&reg.url("/metrics")).call().expect("metrics");
        r.body_mut().read_to_string().unwrap()
    };
    for (args, instance_lines) in [
        (&[][..], 0usize),
        (&["--metrics-instances", "2"][..], 2),
        (&["--metrics-instances", "all"][..], 3),
    ] {
        let reg = Reg::start(args);
        let rt = rt();
        let _g = rt.enter();
        let clients: Vec<_> = ["m1", "m2", "m3"]
            .iter()
            .map(|n| reg.service("metered", "svc", n).start().expect("client"))
            .collect();
        for c in &clients {
            rt.block_on(c.wait_connected(Duration::from_secs(10)))
                .expect("connected");
        }
        let text = eventually(Duration::from_secs(10), "three online in /metrics", || {
            let t = text_of(&reg);
            t.lines()
                .any(|l| l == r#"sfc_group_instances{group="metered",status="online"} 3"#)
                .then_some(t)
        });
        openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("{args:?}: the exposition does not parse: {e:?}\n{text}"));
        assert!(
            text.lines()
                .any(|l| l == r#"sfc_group_health{group="metered",health="passing"} 3"#),
            "{args:?}:\n{text}"
        );
        assert!(
            text.contains("sfc_group_process_resident_bytes_sum{group=\"metered\"}"),
            "{args:?}:\n{text}"
        );
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sfc_instance_up{"))
            .collect();
        assert_eq!(up.len(), instance_lines, "{args:?}: {up:?}");
        let omitted = format!(
            "sfc_registry_metrics_instances_omitted {}",
            3 - instance_lines
        );
        assert!(
            text.lines().any(|l| l == omitted),
            "{args:?}: no {omitted:?} in\n{text}"
        );
        if instance_lines == 0 {
            assert!(
                !text.lines().any(
                    |l| l.starts_with("sfc_instance_") || l.starts_with("# TYPE sfc_instance_")
                ),
                "{args:?}: per-instance series by default:\n{text}"
            );
        }
        for c in &clients {
            let _ = rt.block_on(c.stop());
        }
    }
}

/// openapi.json's error codes are every code the API answers: those the handlers name
/// (`ApiCode`, listed through an exhaustive match, so a new code fails to compile here until
/// it is listed) and those given to the statuses no handler answered itself (413, 421, ...).
/// Each provoked error (400, 401, 403, 404, 405, 409, 413, 421) answers a documented code,
/// and its operation lists the status.
#[test]
fn openapi_lists_every_error_code_the_api_answers() {
    use sfc_registry::http::error::ApiCode;
    let doc: Value = serde_json::from_str(sfc_registry::http::OPENAPI).unwrap();
    let documented: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("the error codes in openapi.json")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let named = |c: ApiCode| match c {
        ApiCode::InvalidRequest
        | ApiCode::Unauthorized
        | ApiCode::AdminDisabled
        | ApiCode::NotFound
        | ApiCode::UnknownInstance
        | ApiCode::MethodNotAllowed
        | ApiCode::NotOnline
        | ApiCode::InstanceOnline
        | ApiCode::CommandTimeout
        | ApiCode::ShuttingDown
        | ApiCode::StoreFailing
        | ApiCode::Internal => c.as_str(),
    };
    let handler_codes = [
        ApiCode::InvalidRequest,
        ApiCode::Unauthorized,
        ApiCode::AdminDisabled,
        ApiCode::NotFound,
        ApiCode::UnknownInstance,
        ApiCode::MethodNotAllowed,
        ApiCode::NotOnline,
        ApiCode::InstanceOnline,
        ApiCode::CommandTimeout,
        ApiCode::ShuttingDown,
        ApiCode::StoreFailing,
        ApiCode::Internal,
    ]
    .map(named);
    // The codes `http::code_for` gives to a status a handler did not answer itself.
    let status_codes = [
        "unauthorized",
        "forbidden",
        "not-found",
        "method-not-allowed",
        "request-timeout",
        "payload-too-large",
        "unsupported-media-type",
        "misdirected-request",
        "too-many-requests",
        "unavailable",
        "internal",
        "invalid-request",
    ];
    for code in handler_codes.iter().chain(status_codes.iter()) {
        assert!(
            documented.contains(code),
            "openapi.json does not list the error code {code:?}: {documented:?}"
        );
    }

    // Live: each error answered is a documented code, with a status its operation lists.
    let reg = Reg::start(&["--admin-token", TOKEN]);
    let big = vec![b'x'; 2 * 1024 * 1024 + 1024]; // just over the 2 MiB limit: written whole before the 413 (a far larger body can meet a closed socket)
    let port = reg.http.rsplit_once(':').unwrap().1.to_string();
    let commands = "/v1/instances/{group}/{instance_id}/commands";
    let cases: Vec<(&str, &str, u16, ureq::http::Response<ureq::Body>)> = vec![
        (
            "/v1/events",
            "get",
            400,
            http_agent().get(&reg.url("/v1/events?limit=0")).call().unwrap(),
        ),
        (
            commands,
            "post",
            401,
            http_agent()
                .post(&reg.url("/v1/instances/g/i/commands"))
                .send_json(json!({"command": "x"}))
                .unwrap(),
        ),
        (
            "",
            "",
            404,
            http_agent().get(&reg.url("/v1/nowhere")).call().unwrap(),
        ),
        (
            "",
            "",
            405,
            http_agent()
                .put(&reg.url("/v1/fleet"))
                .send(&b"{}"[..])
                .unwrap(),
        ),
        (
            commands,
            "post",
            413,
            http_agent()
                .post(&reg.url("/v1/instances/g/i/commands"))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .send(&big[..])
                .unwrap(),
        ),
        (
            "/v1/fleet",
            "get",
            421,
            http_agent()
                .get(&reg.url("/v1/fleet"))
                .header("host", format!("rebind.example:{port}"))
                .call()
                .unwrap(),
        ),
    ];
    for (path, method, status, mut r) in cases {
        let text = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status} is not the JSON error body ({e}): {text}"));
        let code = error_code(&v);
        assert!(
            documented.contains(&code),
            "{status} answered {code:?}, which openapi.json does not list"
        );
        if !path.is_empty() {
            let listed = &doc["paths"][path][method]["responses"];
            assert!(
                listed.get(status.to_string()).is_some(),
                "{method} {path} answers {status}, which openapi.json does not list: {listed}"
            );
        }
    }
}
