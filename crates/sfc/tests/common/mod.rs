//! Shared harness for the integration tests: the real `sfc` binary on loopback ports the OS
//! assigns, real TLS with the development certificates it creates, and child processes stopped
//! by PID.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sfc_client::{Client, ClientBuilder};
use sfc_client::model::{Filter, InstanceRecord};

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
        let mut child = Command::new(sfc_bin())
            .args(["registry", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(http_flags)
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
        let http = if extra.contains(&"off") {
            String::new()
        } else {
            next("sfc http listening on ")
        };
        // Keep draining stdout so the registry never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        RegistryProc {
            child,
            addr,
            http,
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
    let start = Instant::now();
    loop {
        if let Ok(rs) = obs.query(Filter::default()).await {
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
pub async fn read_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> sfc_client::protocol::Message {
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
