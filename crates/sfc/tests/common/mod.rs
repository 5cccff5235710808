//! Shared harness for the integration tests: the real `sfc` binary on loopback ports the OS
//! assigns, real TLS with the development certificates it creates, and child processes stopped
//! by PID.
#![allow(dead_code)]

pub mod dns_resolver;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sfc_client::model::{Filter, InstanceRecord};
use sfc_client::{Client, ClientBuilder};

pub fn sfc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sfc"))
}

/// The example service binary, built by `cargo build --workspace` (the Makefile does).
pub fn example_bin() -> PathBuf {
    let p = sfc_bin().with_file_name("sfc-example-service");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A registry process started by the test.
pub struct RegistryProc {
    pub child: Child,
    pub addr: String,
    /// The HTTP API's address (always bound, on a port the OS assigns).
    pub http: String,
    /// The DNS interface's address, when the test asked for one with `--dns ADDR` (otherwise
    /// the harness passes `--dns off`).
    pub dns: Option<std::net::SocketAddr>,
    pub data_dir: PathBuf,
    /// Everything the registry wrote to stderr (its log), also echoed to ours.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl RegistryProc {
    /// Starts `sfc registry` on 127.0.0.1:0 with a fresh data dir and extra flags.
    pub fn start(extra: &[&str]) -> RegistryProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut r = Self::start_at("127.0.0.1:0", &dir, extra);
        r._tmp = Some(tmp);
        r
    }

    /// Starts on a given address and data dir (restarts reuse both).
    pub fn start_at(listen: &str, data_dir: &Path, extra: &[&str]) -> RegistryProc {
        let http_flags: &[&str] = if extra.contains(&"--http") {
            &[]
        } else {
            &["--http", "127.0.0.1:0"]
        };
        let dns_value = extra.iter().position(|a| *a == "--dns").and_then(|i| extra.get(i + 1));
        let dns_flags: &[&str] = if dns_value.is_some() { &[] } else { &["--dns", "off"] };
        let http_off = extra.windows(2).any(|w| w == ["--http", "off"]);
        let mut child = Command::new(sfc_bin())
            .args(["registry", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(http_flags)
            .args(dns_flags)
            .args(extra)
            .env_remove("SFC_ADMIN_TOKEN")
            .env("RUST_LOG", "sfc=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sfc registry");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut next = |prefix: &str| {
            let line = lines
                .next()
                .expect("registry printed too little")
                .expect("read stdout");
            line.strip_prefix(prefix)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_string()
        };
        let addr = next("sfc registry listening on ");
        let http = if http_off {
            String::new()
        } else {
            next("sfc http listening on ")
        };
        let dns = match dns_value {
            Some(&v) if v != "off" => Some(next("sfc dns listening on ").parse().expect("DNS address")),
            _ => None,
        };
        // Keep draining stdout so the registry never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        RegistryProc {
            child,
            addr,
            http,
            dns,
            data_dir: data_dir.to_path_buf(),
            log,
            _tmp: None,
        }
    }

    /// The registry's log so far (stderr, one line per event).
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `http://<http address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.data_dir.join("tls").join("client.pem"),
            self.data_dir.join("tls").join("client-key.pem"),
        )
    }

    /// A service client builder pointed at this registry, trusting its CA.
    pub fn service(&self, group: &str, instance: &str) -> ClientBuilder {
        Client::builder()
            .ignore_env()
            .registry(&self.addr)
            .ca(self.ca().display().to_string())
            .group(group)
            .instance_id(instance)
            .interval(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    }

    pub fn observer(&self) -> Client {
        ClientBuilder::observer()
            .ignore_env()
            .registry(&self.addr)
            .ca(self.ca().display().to_string())
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .start()
            .expect("observer")
    }

    /// Stops the registry gracefully (SIGTERM) and returns its exit status once it has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), "TERM");
        self.child.wait().expect("wait for the registry to exit")
    }

    /// How many lines of the registry's log so far contain `needle`.
    /// The log once `done` holds on it, for at most 20 s (blocking; async tests use
    /// [`log_lines_at_least`] or [`eventually`]): the log reaches the test through a pipe and
    /// a reader thread, so a line written before an answer the test has read may still be on
    /// its way.
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let limit = Duration::from_secs(20);
        let start = Instant::now();
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what} in:\n{log}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Stops the registry abruptly (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal to a process this test started.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Polls `f` until it returns Some, for at most `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Queries until `pred` holds on the record `id`, for at most `limit`.
pub async fn wait_record(
    obs: &Client,
    id: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&InstanceRecord) -> bool,
) -> InstanceRecord {
    poll_record(obs, id, limit, Duration::from_millis(25), what, pred).await
}

/// Queries through `client` every `every` until `pred` holds on the record `id`.
async fn poll_record(
    client: &Client,
    id: &str,
    limit: Duration,
    every: Duration,
    what: &str,
    pred: impl Fn(&InstanceRecord) -> bool,
) -> InstanceRecord {
    let start = Instant::now();
    loop {
        if let Ok(rs) = client.query(Filter::default()).await {
            if let Some(r) = rs.into_iter().find(|r| r.id == id) {
                if pred(&r) {
                    return r;
                }
            }
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {id} to be {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A watch that the registry has set up. A session handles its frames in order, and the
/// client sends its requests in the order they were made (also when they wait for a
/// connection), so the answer to a query sent after the watch is the acknowledgement that the
/// watch is in place: every transition after it reaches the stream.
pub async fn watch_ready(obs: &Client, filter: Filter, reports: bool) -> sfc_client::WatchStream {
    let w = obs.watch(filter, reports).expect("watch");
    ack(obs).await;
    w
}

/// Like [`watch_ready`], resuming after `cursor`.
pub async fn watch_after_ready(
    obs: &Client,
    filter: Filter,
    cursor: u64,
) -> sfc_client::WatchStream {
    let w = obs.watch_after(filter, false, cursor).expect("watch");
    ack(obs).await;
    w
}

/// Waits for the answer to a query: everything this client asked for before is in place.
async fn ack(obs: &Client) {
    let start = Instant::now();
    loop {
        match obs.query(Filter::group("-ack-")).await {
            Ok(_) => return,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "no answer from the registry: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The registry's event history after `cursor`, replayed by a fresh observer, collected until
/// `done` holds on what has arrived. Fails (never returns short) when it does not within 30 s.
pub async fn history_until(
    reg: &RegistryProc,
    cursor: u64,
    what: &str,
    done: impl Fn(&[sfc_client::model::Event]) -> bool,
) -> Vec<sfc_client::model::Event> {
    let limit = Duration::from_secs(30);
    let obs = reg.observer();
    let mut w = obs
        .watch_after(Filter::default(), false, cursor)
        .expect("watch");
    let mut out = Vec::new();
    let start = Instant::now();
    while !done(&out) {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(ev)) => out.push(ev),
            _ => panic!(
                "history after {cursor}: timed out after {limit:?} waiting for {what}; got {out:?}"
            ),
        }
    }
    out
}

/// The history after `cursor` up to and including event `seq`.
pub async fn history_through(
    reg: &RegistryProc,
    cursor: u64,
    seq: u64,
) -> Vec<sfc_client::model::Event> {
    history_until(reg, cursor, &format!("event {seq}"), |h| {
        h.last().is_some_and(|e| e.seq >= seq)
    })
    .await
}

/// An example service process (a real client in another process).
pub struct ServiceProc {
    pub child: Child,
}

impl ServiceProc {
    pub fn start(reg: &RegistryProc, group: &str, instance: &str, interval: &str) -> ServiceProc {
        let child = Command::new(example_bin())
            .args([
                "--group",
                group,
                "--instance-id",
                instance,
                "--interval",
                interval,
            ])
            .env("SFC_REGISTRY", &reg.addr)
            .env("SFC_CA", reg.ca())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start example service");
        ServiceProc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TLS connection to the registry, speaking bytes rather than the client library.
pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a raw TLS connection, optionally with a client certificate.
pub async fn raw_tls(reg: &RegistryProc, cert: Option<(PathBuf, PathBuf)>) -> RawTls {
    let cfg = sfc_client::tls::client_config(&sfc_client::tls::ClientTlsOptions {
        ca: Some(sfc_client::tls::PemSource::File(reg.ca())),
        cert: cert
            .as_ref()
            .map(|c| sfc_client::tls::PemSource::File(c.0.clone())),
        key: cert
            .as_ref()
            .map(|c| sfc_client::tls::PemSource::File(c.1.clone())),
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(&reg.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(sfc_proto::tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// One frame: a u32 big-endian length, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Reads one frame and decodes it.
pub async fn read_message<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> sfc_client::protocol::Message {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut len))
        .await
        .expect("frame in time")
        .expect("frame");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.expect("frame body");
    sfc_client::protocol::Codec::Json
        .decode(&body)
        .expect("decodable frame")
}

/// Preamble and hello for `group/instance` (or an observer when None); returns after welcome.
pub async fn raw_session(
    reg: &RegistryProc,
    who: Option<(&str, &str)>,
    cert: Option<(PathBuf, PathBuf)>,
) -> (RawTls, sfc_client::protocol::Message) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(reg, cert).await;
    let hello = match who {
        Some((g, i)) => serde_json::json!({"type": "hello", "id": 1, "interval_ms": 1000,
            "registration": {"group": g, "instance_id": i, "service": g}}),
        None => serde_json::json!({"type": "hello", "id": 1, "role": "observer"}),
    };
    let mut v = sfc_client::protocol::frame::encode_preamble(1, 1).to_vec();
    v.extend(frame(hello.to_string().as_bytes()));
    s.write_all(&v).await.unwrap();
    let mut p = [0u8; 8];
    s.read_exact(&mut p).await.unwrap();
    let answer = read_message(&mut s).await;
    (s, answer)
}

/// The message of the first error event a client reports from now on.
#[allow(dead_code)]
pub async fn first_error(c: &sfc_client::Client) -> String {
    let mut ev = c.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(sfc_client::ClientEvent::Error { message, .. }) = ev.recv().await {
                return message;
            }
        }
    })
    .await
    .expect("an error event")
}

/// A well-behaved service client kept running through a hostile test. RELIABILITY.md promises
/// that such a client, on the same registry, keeps reporting without a single transition:
/// [`WellBehaved::assert_undisturbed`] checks that it is still online in the same session
/// (`status_since` and `connected_since` unchanged), that the registry took a report from it
/// since the start, and that its client library saw no event at all (no disconnect, no
/// reconnect, no error).
pub struct WellBehaved {
    pub client: Client,
    id: String,
    events: tokio::sync::broadcast::Receiver<sfc_client::ClientEvent>,
    start: InstanceRecord,
}

impl WellBehaved {
    /// Starts `builder`'s client and waits until its record is online with a report.
    pub async fn start(builder: ClientBuilder) -> WellBehaved {
        let client = builder.start().expect("start the well-behaved client");
        client
            .wait_connected(Duration::from_secs(20))
            .await
            .expect("the well-behaved client connects");
        let mut events = client.subscribe();
        let id = client.id();
        let start = own_record(&client, &id, "online with a report", |r| {
            r.status == sfc_client::model::Status::Online && r.last_report_at.is_some()
        })
        .await;
        // The first `Connected` is sent just after `wait_connected` can return: it may be
        // here already (once at most). Anything else is a disturbance.
        let mut connected = 0;
        loop {
            match events.try_recv() {
                Ok(sfc_client::ClientEvent::Connected { .. }) if connected == 0 => connected += 1,
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                other => panic!("the well-behaved {id} saw {other:?} while starting"),
            }
        }
        WellBehaved {
            client,
            id,
            events,
            start,
        }
    }

    /// Asserts the promise; call it at the end of the test, after the hostile part. It waits
    /// (bounded) for a report taken at least three intervals after the first one, so that the
    /// client is watched over at least one whole liveness window (`--missed-reports` 3).
    pub async fn assert_undisturbed(&mut self) {
        let first = self.start.last_report_at.unwrap_or(0);
        let window = 3 * self.start.interval_ms;
        let now = own_record(
            &self.client,
            &self.id,
            "reporting a liveness window later",
            |r| r.last_report_at.is_some_and(|t| t >= first + window),
        )
        .await;
        assert_eq!(
            now.status,
            sfc_client::model::Status::Online,
            "the well-behaved {} is not online: {now:?}",
            self.id
        );
        assert_eq!(
            (now.status_since, now.connected_since),
            (self.start.status_since, self.start.connected_since),
            "the well-behaved {} had a transition or a new session: {now:?}",
            self.id
        );
        assert!(
            self.client.is_connected(),
            "the well-behaved {} is not connected",
            self.id
        );
        match self.events.try_recv() {
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {}
            other => panic!("the well-behaved {} saw {other:?}", self.id),
        }
    }
}

/// Queries through `client` itself (any role may query) until `pred` holds on record `id`.
/// Polls at most ten times a second, well within any rate limit a test sets.
async fn own_record(
    client: &Client,
    id: &str,
    what: &str,
    pred: impl Fn(&InstanceRecord) -> bool,
) -> InstanceRecord {
    poll_record(
        client,
        id,
        Duration::from_secs(20),
        Duration::from_millis(100),
        what,
        pred,
    )
    .await
}

/// The value of one sample in Prometheus text, e.g. `name` or `name{a="b"}`; None when absent.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `GET /metrics` over plain HTTP (the harness's `--http`), as text.
pub fn metrics_text(reg: &RegistryProc) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    agent
        .get(&reg.url("/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics body")
}

/// A raw observer session with one watch (id 1) on `filter` (JSON, e.g. `{"group":"g"}`),
/// returned once the registry has answered the watch with its snapshot: every transition
/// from then on reaches it.
pub async fn raw_watch(reg: &RegistryProc, filter: serde_json::Value) -> RawTls {
    use tokio::io::AsyncWriteExt;
    let (mut s, welcome) = raw_session(reg, None, None).await;
    assert!(
        matches!(welcome, sfc_client::protocol::Message::Welcome(_)),
        "{welcome:?}"
    );
    let watch = serde_json::json!({"type": "watch", "id": 1, "filter": filter});
    s.write_all(&frame(watch.to_string().as_bytes()))
        .await
        .unwrap();
    loop {
        match read_message(&mut s).await {
            sfc_client::protocol::Message::Result(r) if r.id == 1 => return s,
            sfc_client::protocol::Message::Error(e) => panic!("the watch was refused: {e:?}"),
            _ => continue,
        }
    }
}

/// The next event a raw watch delivers (any other frame fails the test).
pub async fn next_event<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> sfc_client::model::Event {
    match read_message(s).await {
        sfc_client::protocol::Message::Event(e) => e.event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// `GET /v1/instances` over plain HTTP: every record the registry holds.
pub fn http_instances(reg: &RegistryProc) -> Vec<InstanceRecord> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let body = agent
        .get(&reg.url("/v1/instances"))
        .call()
        .expect("GET /v1/instances")
        .body_mut()
        .read_to_string()
        .expect("instances body");
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/v1/instances is not a list of records ({e}): {body}"))
}

impl WellBehaved {
    /// Like [`WellBehaved::start`], without its race: the client library raises its
    /// `connected` flag before it sends the `Connected` event, so a subscription taken after
    /// `wait_connected` may still receive that first event. `start` returns once the client's
    /// own query was answered, which its session does only after that event was sent; what
    /// is pending then may only be that `Connected`, and it is drained.
    pub async fn start_settled(builder: ClientBuilder) -> WellBehaved {
        let mut w = WellBehaved::start(builder).await;
        while let Ok(ev) = w.events.try_recv() {
            assert!(
                matches!(ev, sfc_client::ClientEvent::Connected { .. }),
                "the well-behaved {} saw {ev:?} while starting",
                w.id
            );
        }
        w
    }
}

/// The registry's log lines that match `pred`, once there are at least `at_least` of them
/// (bounded wait): the log reaches the test through a pipe and a reader thread, so a line
/// written before a frame the test has already read may still be on its way.
pub async fn log_lines_at_least(
    reg: &RegistryProc,
    at_least: usize,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let limit = Duration::from_secs(20);
    let start = Instant::now();
    loop {
        let lines: Vec<String> = reg
            .log()
            .lines()
            .filter(|l| pred(l))
            .map(String::from)
            .collect();
        if lines.len() >= at_least {
            return lines;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {at_least} such log lines, have {}:\n{}",
            lines.len(),
            reg.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `sfc ARGS...` to completion and fails the test, with its stderr, if it fails.
pub fn sfc_ok(args: &[&str]) {
    let out = Command::new(sfc_bin())
        .args(args)
        .output()
        .expect("run sfc");
    assert!(
        out.status.success(),
        "sfc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP client for the registry's API: statuses are answers, not errors; no proxy; 20 s.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// A GET with extra request headers: (status, headers, raw body bytes, up to 64 MiB).
pub fn get_raw(url: &str, headers: &[(&str, &str)]) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
    let mut req = http_agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.call().expect("http request");
    let status = r.status().as_u16();
    let head = r.headers().clone();
    let body = r.body_mut().with_config().limit(64 << 20).read_to_vec().expect("body");
    (status, head, body)
}
