//! The registry under test: one started as a child process (`--spawn`), or one already
//! running (`--registry`). Its CPU time and resident memory are read from `/proc/<pid>`
//! through sysinfo.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use sfc_client::error::{Error, Result};

/// How long a spawned registry may take to print its listening line (the first start also
/// generates development certificates).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A registry started by the bench. It is killed (by its PID) when dropped.
pub(super) struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl Spawned {
    /// Starts `sfc registry` from this very binary on `listen` with a fresh data directory.
    /// `extra` flags are passed on (`--store memory`, `--missed-reports 2`, ...).
    pub fn start(listen: &str, data_dir: PathBuf, extra: Vec<String>) -> Result<Spawned> {
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::write_file(&data_dir, e))?;
        let (child, addr) = launch(listen, &data_dir, &extra)?;
        Ok(Spawned {
            child,
            addr,
            data_dir,
            extra,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("tls").join(sfc_registry::certs::CA)
    }

    /// Kills the registry (SIGKILL, as in a crash) and starts a new one on the same address.
    /// Returns when the new one is listening.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let (child, addr) = launch(&self.addr.to_string(), &self.data_dir, &self.extra)?;
        if addr != self.addr {
            return Err(Error::invalid(
                "--spawn",
                format!("restarted registry listens on {addr}, not {}", self.addr),
            ));
        }
        self.child = child;
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn launch(
    listen: &str,
    data_dir: &std::path::Path,
    extra: &[String],
) -> Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let log = data_dir.join("registry.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::write_file(&log, e))?;
    let mut child = Command::new(&exe)
        .arg("registry")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        // Per-connection logging would be measured along with the registry.
        .env(
            "RUST_LOG",
            std::env::var("SFC_BENCH_REGISTRY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "cannot start {} registry: {e}",
                exe.display()
            )))
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Io(std::io::Error::other("registry stdout is not piped")))?;
    let (tx, rx) = mpsc::channel();
    // Keeps draining stdout so the registry never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = tx.take() {
                let _ = t.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout(format!(
                "spawned registry printed no listening line within {}s (log: {})",
                READY_TIMEOUT.as_secs(),
                log.display()
            )));
        }
    };
    match parse_listening(&line) {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::invalid(
                "registry output",
                format!("{line:?} is not \"sfc registry listening on ADDR (tls)\""),
            ))
        }
    }
}

/// Reads ADDR from `sfc registry listening on ADDR (tls)`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("sfc registry listening on ")?;
    let (addr, mode) = rest.split_once(' ')?;
    (mode == "(tls)").then_some(())?;
    addr.parse().ok()
}

/// CPU time and resident memory of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcSample {
    pub at: Instant,
    pub cpu_ms: u64,
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>` (through sysinfo) on demand.
pub(super) struct ProcWatch {
    pid: Pid,
    sys: Option<System>,
}

impl ProcWatch {
    pub fn new(pid: u32) -> ProcWatch {
        ProcWatch {
            pid: Pid::from_u32(pid),
            sys: System::new().ok(),
        }
    }

    pub fn sample(&mut self) -> Option<ProcSample> {
        let sys = self.sys.as_mut()?;
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let p = sys.process(self.pid)?;
        Some(ProcSample {
            at: Instant::now(),
            cpu_ms: p.accumulated_cpu_time(),
            rss_bytes: p.memory(),
        })
    }
}

/// CPU use between two samples, in percent of one core (200 = both cores of a 2-core machine).
pub(super) fn cpu_percent(a: &ProcSample, b: &ProcSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64() * 1000.0;
    if wall <= 0.0 {
        return 0.0;
    }
    b.cpu_ms.saturating_sub(a.cpu_ms) as f64 / wall * 100.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            super::parse_listening("sfc registry listening on 127.0.0.1:4242 (tls)"),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(
            super::parse_listening("sfc registry listening on 127.0.0.1:4242 (plaintext)"),
            None
        );
        assert_eq!(super::parse_listening("hello"), None);
    }
}
