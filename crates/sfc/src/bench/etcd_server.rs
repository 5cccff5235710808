//! A real etcd (Debian's etcd-server) started by the bench on loopback ports with a fresh data
//! directory: the peer of `--peer etcd` and the shared store of `--registries N
//! --registry-arg=--store=etcd`. Stopped by PID when dropped. Its CPU and memory are read from
//! /proc; its own counters (writes, WAL fsyncs) from /metrics on the client port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sfc_client::error::{Error, Result};

/// How long etcd may take to answer /health after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct EtcdProcess {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd on PATH, or where Debian puts it (as crates/sfc/tests/etcd.rs looks for it).
fn which_etcd(flag: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::invalid(
                flag,
                "etcd is not on PATH (Debian package etcd-server; tests/setup.sh installs it)",
            )
        })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// GET `url` as text, within `timeout`; None on any failure.
pub(super) fn http_get(url: &str, timeout: Duration) -> Option<String> {
    let mut r = agent(timeout).get(url).call().ok()?;
    if r.status() != 200 {
        return None;
    }
    r.body_mut().read_to_string().ok()
}

/// etcd's own counters at one moment, from /metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EtcdCounters {
    /// Keys written (puts, including those in transactions).
    pub puts: f64,
    pub deletes: f64,
    pub txns: f64,
    pub wal_fsyncs: f64,
    pub proposals_committed: f64,
}

impl EtcdCounters {
    fn parse(text: &str) -> EtcdCounters {
        let mut c = EtcdCounters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            match name {
                "etcd_mvcc_put_total" => c.puts = v,
                "etcd_mvcc_delete_total" => c.deletes = v,
                "etcd_mvcc_txn_total" => c.txns = v,
                "etcd_disk_wal_fsync_duration_seconds_count" => c.wal_fsyncs = v,
                "etcd_server_proposals_committed_total" => c.proposals_committed = v,
                _ => {}
            }
        }
        c
    }
}

impl EtcdProcess {
    /// Starts etcd and waits (bounded) until it answers /health. `flag` names the bench flag
    /// that asked for it, for errors.
    pub fn start(flag: &str) -> Result<EtcdProcess> {
        let bin = which_etcd(flag)?;
        let dir = std::env::temp_dir().join(format!(
            "sfc-bench-etcd-{}-{}",
            std::process::id(),
            sfc_client::model::now_ms()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::write_file(&dir, e))?;
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.join("etcd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| Error::write_file(&log, e))?;
        let child = Command::new(&bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "sfc-bench",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                Error::Io(std::io::Error::other(format!(
                    "cannot start {}: {e}",
                    bin.display()
                )))
            })?;
        let mut p = EtcdProcess {
            child,
            dir,
            endpoint,
        };
        let end = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(Error::Io(std::io::Error::other(format!(
                    "etcd exited ({status}) before answering: {}",
                    tail.join("\n")
                ))));
            }
            let health = http_get(&format!("{}/health", p.endpoint), Duration::from_secs(2));
            if health.is_some_and(|h| h.contains("\"true\"")) {
                return Ok(p);
            }
            if Instant::now() >= end {
                return Err(Error::Timeout(format!(
                    "etcd at {} not healthy within {} s (log: {})",
                    p.endpoint,
                    READY_TIMEOUT.as_secs(),
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// etcd's counters now (bounded; None if /metrics does not answer).
    pub fn counters(&self) -> Option<EtcdCounters> {
        http_get(
            &format!("{}/metrics", self.endpoint),
            Duration::from_secs(5),
        )
        .map(|t| EtcdCounters::parse(&t))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_counters_it_needs() {
        let c = super::EtcdCounters::parse(
            "# HELP etcd_mvcc_put_total x\netcd_mvcc_put_total 12\netcd_disk_wal_fsync_duration_seconds_count 3\netcd_disk_wal_fsync_duration_seconds_sum 0.5\n",
        );
        assert_eq!((c.puts, c.wal_fsyncs, c.deletes), (12.0, 3.0, 0.0));
    }
}
