//! Host and process sampling with sysinfo.
//!
//! A [`Sampler`] is created once per client and [`Sampler::sample`] is called on every report
//! tick, so it is built to be cheap: static host facts are read once; each tick refreshes only
//! the process's CPU and memory (and the global CPU line); host memory, swap, load, uptime and
//! the process's thread and fd counts are re-read at most every [`SLOW_REFRESH`] (10 s). It
//! never reads the whole process table, disks or networks.
//!
//! On Linux a tick reads two files, `/proc/<pid>/stat` (parsed here) and the global CPU line
//! of `/proc/stat` (through sysinfo); sysinfo's own process refresh would open five.
//!
//! measured (before that change): 35 µs per sample on a 2-core machine, `cargo bench -p sfc-client --bench metrics`
//! (29-48 µs over five runs, with the machine's load; samples back to back: warm caches, and
//! the /proc/stat re-read, ~5 µs, only every 200 ms).
//! With 250 ms between samples, thread CPU time per sample on that machine (a firecracker VM)
//! was 0.4-1.5 ms, but there a lone /proc/loadavg read after idling costs 120-360 µs against
//! 3 µs warm: that is the machine's cost of waking up, paid by any work per tick. A sample
//! makes 9 /proc accesses and no allocation-heavy work; users are resolved once, in `new`.
//!
//! CPU figures are rates, so they need two readings at least
//! [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] (200 ms on Linux) apart: until such a window exists
//! they are `None`, never a made-up 0. The baseline reading is taken in [`Sampler::new`], so a
//! sample taken one report interval later already has real values.

use std::sync::OnceLock;
use std::time::Instant;

use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System, Users,
    MINIMUM_CPU_UPDATE_INTERVAL,
};

use crate::model::{HostMetrics, Metrics, ProcessMetrics};

/// Samples host and process figures. Create once, call [`sample`](Sampler::sample) every
/// report interval.
///
/// Refreshes only what is reported (memory, global CPU usage, and CPU and memory of one pid),
/// because this runs in every client on every tick.
pub struct Sampler {
    pid: u32,
    /// None only where sysinfo does not support the platform: host facts that need no
    /// `System` are still reported.
    sys: Option<System>,
    /// Hostname, OS, kernel, arch and CPU count: read once, cloned into every sample.
    static_host: HostMetrics,
    /// Resolved once: looking users up means parsing the user database, too costly per tick.
    user: Option<String>,
    /// Taken just after the baseline `/proc/stat` reading, so once a full interval has passed
    /// by this clock it has by sysinfo's too, and its next refresh really re-reads.
    host_cpu_baseline: Instant,
    /// Set once sysinfo has read the global CPU times again a full interval after the
    /// baseline; before that its global usage is meaningless.
    host_cpu_ready: bool,
    /// Start of the current process CPU window: (when, accumulated CPU ms).
    proc_cpu_base: Option<(Instant, u64)>,
    /// Last complete process CPU window, reported until the next one completes.
    proc_cpu_percent: Option<f64>,
    /// Slow-moving figures (host memory, swap, load, uptime; the process's thread and fd
    /// counts) and when they were read: re-read at most every [`SLOW_REFRESH`].
    slow: Option<(Instant, SlowFigures)>,
    /// Linux: `/proc/<pid>/stat`, the one file a tick reads for the process (see [`proc_stat`]).
    #[cfg(target_os = "linux")]
    stat_path: String,
    /// The process's start time (seconds since the epoch), read once.
    start_time: Option<u64>,
}

/// How often the slow-moving figures are re-read. Every /proc read costs a wake-up on a
/// virtual machine (0.1-0.4 ms measured after idling), and these figures feed a fleet view,
/// not an alert: ten seconds keeps a one-second report cheap.
pub const SLOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Default)]
struct SlowFigures {
    load_average: Option<[f64; 3]>,
    memory_total_bytes: Option<u64>,
    memory_used_bytes: Option<u64>,
    memory_available_bytes: Option<u64>,
    swap_total_bytes: Option<u64>,
    swap_used_bytes: Option<u64>,
    uptime_seconds: Option<u64>,
    threads: Option<u32>,
    open_fds: Option<u64>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler for the current process.
    pub fn new() -> Self {
        Self::for_pid(std::process::id())
    }

    /// A sampler for the process `pid` (which need not be ours; if it goes away its process
    /// figures are reported as absent).
    pub fn for_pid(pid: u32) -> Self {
        let mut sys = System::new().ok();
        let mut static_host = HostMetrics {
            hostname: Some(hostname()),
            // Fitted to the registry's limits (sfc_proto::limits): the OS chooses these.
            os_name: System::name().ok().map(|v| crate::limits::fit_metric_string(&v)),
            os_version: System::os_version().ok().map(|v| crate::limits::fit_metric_string(&v)),
            kernel: System::kernel_version().ok().map(|v| crate::limits::fit_metric_string(&v)),
            arch: Some(crate::limits::fit_metric_string(&System::cpu_arch())),
            ..Default::default()
        };
        let mut user = None;
        let mut proc_cpu_base = None;
        let mut start_time = None;
        if let Some(sys) = sys.as_mut() {
            // Baseline for the CPU rates; the first refresh also builds the CPU list.
            sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
            // The only place the user ids are read: a process's user does not change.
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[Pid::from_u32(pid)]),
                true,
                process_kind().with_user(sysinfo::UpdateKind::OnlyIfNotSet),
            );
            if let Some(p) = sys.process(Pid::from_u32(pid)) {
                proc_cpu_base = Some((Instant::now(), p.accumulated_cpu_time()));
                start_time = Some(p.start_time());
                let uid = p.effective_user_id().or(p.user_id());
                user = uid.and_then(|uid| {
                    let users = Users::new_with_refreshed_list().ok()?;
                    users.get_user_by_id(uid).map(|u| crate::limits::fit_metric_string(u.name()))
                });
            }
            static_host.cpu_count = Some(sys.cpus().len() as u32).filter(|n| *n > 0);
        }
        if static_host.cpu_count.is_none() {
            static_host.cpu_count = std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32);
        }
        if user.is_none() && pid == std::process::id() {
            // Only meaningful for our own process: it is our environment.
            user = std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .ok()
                .map(|u| crate::limits::fit_metric_string(&u))
                .filter(|u| !u.is_empty());
        }
        Sampler {
            pid,
            sys,
            static_host,
            user,
            host_cpu_baseline: Instant::now(),
            host_cpu_ready: false,
            proc_cpu_base,
            proc_cpu_percent: None,
            slow: None,
            #[cfg(target_os = "linux")]
            stat_path: format!("/proc/{pid}/stat"),
            start_time,
        }
    }

    /// The slow-moving figures, re-read when they are older than [`SLOW_REFRESH`].
    fn slow_figures(&mut self) -> SlowFigures {
        if let Some((at, f)) = &self.slow {
            if at.elapsed() < SLOW_REFRESH {
                let mut f = f.clone();
                // Uptime moves with the clock; no need to read it.
                f.uptime_seconds = f.uptime_seconds.map(|u| u + at.elapsed().as_secs());
                return f;
            }
        }
        let mut f = SlowFigures::default();
        // sysinfo does not implement the load average on Windows (it would report zeros).
        if !cfg!(windows) {
            f.load_average = System::load_average().ok().map(|l| [l.one, l.five, l.fifteen]);
        }
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_memory_specifics(MemoryRefreshKind::everything());
            f.memory_total_bytes = Some(sys.total_memory());
            f.memory_used_bytes = Some(sys.used_memory());
            f.memory_available_bytes = Some(sys.available_memory());
            f.swap_total_bytes = Some(sys.total_swap());
            f.swap_used_bytes = Some(sys.used_swap());
        }
        f.uptime_seconds = System::uptime().ok();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            f.threads = count_dir(&format!("/proc/{}/task", self.pid)).map(|n| n as u32);
            f.open_fds = count_dir(&format!("/proc/{}/fd", self.pid));
        }
        self.slow = Some((Instant::now(), f.clone()));
        f
    }

    /// Takes one sample. `runtime` and `custom` are left empty for the client to fill.
    pub fn sample(&mut self) -> Metrics {
        let mut host = self.static_host.clone();
        let mut process = ProcessMetrics {
            pid: Some(self.pid),
            user: self.user.clone(),
            ..Default::default()
        };

        let slow = self.slow_figures();
        host.load_average = slow.load_average;
        host.memory_total_bytes = slow.memory_total_bytes;
        host.memory_used_bytes = slow.memory_used_bytes;
        host.memory_available_bytes = slow.memory_available_bytes;
        host.swap_total_bytes = slow.swap_total_bytes;
        host.swap_used_bytes = slow.swap_used_bytes;
        host.uptime_seconds = slow.uptime_seconds;
        process.threads = slow.threads;
        process.open_fds = slow.open_fds;

        if let Some(sys) = self.sys.as_mut() {
            // Checked before the refresh: only a refresh made after a full interval re-reads.
            let host_cpu_due = self.host_cpu_baseline.elapsed() >= MINIMUM_CPU_UPDATE_INTERVAL;
            // Linux: the process figures from one read of /proc/<pid>/stat, and the global CPU
            // line of /proc/stat (re-read only when the minimum interval has passed): two files
            // a tick. sysinfo's process refresh opens five (uptime, status, stat, statm and
            // /proc/stat); measured in BENCHMARKS.md "Client footprint (Node, C)".
            #[cfg(target_os = "linux")]
            let cpu_ms = {
                sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
                proc_stat(&self.stat_path).map(|st| {
                    process.resident_bytes = Some(st.resident_bytes);
                    process.virtual_bytes = Some(st.virtual_bytes);
                    process.start_time = self.start_time;
                    st.cpu_ms
                })
            };
            // Elsewhere: a process refresh with CPU also re-reads the global CPU times (only
            // when the minimum interval has passed), so no separate CPU refresh is needed.
            #[cfg(not(target_os = "linux"))]
            let cpu_ms = {
                let pid = Pid::from_u32(self.pid);
                sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, process_kind());
                sys.process(pid).map(|p| {
                    process.resident_bytes = Some(p.memory());
                    process.virtual_bytes = Some(p.virtual_memory());
                    process.start_time = Some(p.start_time());
                    p.accumulated_cpu_time()
                })
            };

            self.host_cpu_ready |= host_cpu_due;
            if self.host_cpu_ready {
                host.cpu_percent = Some(round2(sys.global_cpu_usage() as f64));
            }
            if let Some(cpu_ms) = cpu_ms {
                process.cpu_percent = self.process_cpu(cpu_ms);
            } else {
                // Gone: its window must not be carried over to a reused pid.
                self.proc_cpu_base = None;
                self.proc_cpu_percent = None;
            }
        }

        Metrics {
            host,
            process,
            ..Default::default()
        }
    }

    /// Process CPU in percent of one core (may exceed 100 on several cores), over windows of
    /// at least the minimum interval. Computed from accumulated CPU time against our own
    /// clock rather than sysinfo's per-process usage, which assumes the process and global
    /// CPU times were read over the same window and is wrong for ticks under 200 ms.
    fn process_cpu(&mut self, cpu_ms: u64) -> Option<f64> {
        let now = Instant::now();
        match self.proc_cpu_base {
            Some((at, base_ms)) => {
                let wall = now.duration_since(at);
                if wall >= MINIMUM_CPU_UPDATE_INTERVAL {
                    let max = self.static_host.cpu_count.unwrap_or(1) as f64 * 100.0;
                    let pct = cpu_ms.saturating_sub(base_ms) as f64 / wall.as_secs_f64() / 10.0;
                    self.proc_cpu_percent = Some(round2(pct.min(max)));
                    self.proc_cpu_base = Some((now, cpu_ms));
                }
            }
            None => self.proc_cpu_base = Some((now, cpu_ms)),
        }
        self.proc_cpu_percent
    }
}

/// What a tick refreshes for the sampled process. Tasks are off: with them sysinfo lists
/// `/proc/<pid>/task` into a set on every refresh; we count threads ourselves.
fn process_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .without_tasks()
        .with_cpu()
        .with_memory()
}

/// What one read of `/proc/<pid>/stat` gives a tick.
#[cfg(target_os = "linux")]
struct ProcStat {
    /// utime + stime, in milliseconds (as sysinfo's `accumulated_cpu_time`).
    cpu_ms: u64,
    resident_bytes: u64,
    virtual_bytes: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)): after the `)` that ends the command name, field 14
/// utime and 15 stime (clock ticks), 23 vsize (bytes) and 24 rss (pages). None if the process
/// is gone or the file is not as expected.
#[cfg(target_os = "linux")]
fn proc_stat(path: &str) -> Option<ProcStat> {
    static UNITS: OnceLock<(u64, u64)> = OnceLock::new();
    let (ticks_per_s, page) = *UNITS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let (t, p) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        (if t > 0 { t as u64 } else { 100 }, if p > 0 { p as u64 } else { 4096 })
    });
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.get(text.rfind(')')? + 2..)?.split_ascii_whitespace();
    // Fields from 3 (state) on: utime is the 12th of them.
    let mut num = |skip: usize| f.nth(skip)?.parse::<u64>().ok();
    let utime = num(11)?;
    let stime = num(0)?;
    let vsize = num(7)?;
    let rss = num(0)?;
    Some(ProcStat {
        cpu_ms: (utime + stime).saturating_mul(1000) / ticks_per_s,
        resident_bytes: rss.saturating_mul(page),
        virtual_bytes: vsize,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn count_dir(path: &str) -> Option<u64> {
    std::fs::read_dir(path).ok().map(|d| d.count() as u64)
}

/// The machine's hostname (static, cached; falls back to "unknown").
pub fn hostname() -> String {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            System::host_name()
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown".to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sample_has_host_and_process_figures() {
        let mut s = Sampler::new();
        let m = s.sample();
        assert_eq!(m.host.hostname.as_deref(), Some(hostname().as_str()));
        assert!(!hostname().is_empty());
        assert!(m.host.cpu_count.unwrap() > 0);
        assert!(m.host.memory_total_bytes.unwrap() > 0);
        assert!(m.host.kernel.is_some() && m.host.arch.is_some());
        assert_eq!(m.process.pid, Some(std::process::id()));
        assert!(m.process.resident_bytes.unwrap() > 0);
        assert!(m.process.start_time.unwrap() > 0);
        assert!(m.runtime.is_empty() && m.custom.is_empty());
        if cfg!(target_os = "linux") {
            assert!(m.process.open_fds.unwrap() > 0);
            assert!(m.process.threads.unwrap() >= 1);
            assert!(m.host.load_average.is_some());
            assert!(m.host.uptime_seconds.unwrap() > 0);
        }
    }

    #[test]
    fn cpu_is_none_until_a_full_window_then_some() {
        let started = Instant::now();
        let mut s = Sampler::new();
        let first = s.sample();
        // Only checkable if the machine did not stall us past the minimum interval.
        if started.elapsed() < MINIMUM_CPU_UPDATE_INTERVAL {
            assert_eq!(first.host.cpu_percent, None);
            assert_eq!(first.process.cpu_percent, None);
        }
        // Burn a little CPU so the process figure is not trivially 0.
        let until = Instant::now() + Duration::from_millis(100);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        std::thread::sleep(Duration::from_millis(200));
        let second = s.sample();
        let p = second.process.cpu_percent.expect("process cpu after 300ms");
        assert!(
            p >= 0.0 && p <= 100.0 * second.host.cpu_count.unwrap() as f64,
            "{p}"
        );
        let h = second.host.cpu_percent.expect("host cpu after 300ms");
        assert!((0.0..=100.0).contains(&h), "{h}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_stat_agrees_with_sysinfo() {
        let pid = std::process::id();
        let mut sys = System::new().unwrap();
        let ours = proc_stat(&format!("/proc/{pid}/stat")).expect("our own /proc/<pid>/stat");
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[Pid::from_u32(pid)]),
            true,
            process_kind(),
        );
        let p = sys.process(Pid::from_u32(pid)).unwrap();
        // Read a moment apart: CPU within 50 ms, memory within 8 MiB (other tests allocate).
        assert!(p.accumulated_cpu_time().abs_diff(ours.cpu_ms) <= 50, "{} vs {}", p.accumulated_cpu_time(), ours.cpu_ms);
        assert!(p.memory().abs_diff(ours.resident_bytes) <= 8 << 20, "{} vs {}", p.memory(), ours.resident_bytes);
        assert!(p.virtual_memory().abs_diff(ours.virtual_bytes) <= 64 << 20);
        assert!(ours.resident_bytes > 0 && ours.virtual_bytes >= ours.resident_bytes);
        assert!(proc_stat("/proc/4294967294/stat").is_none());
    }

    #[test]
    fn vanished_pid_has_no_process_figures() {
        // pid_max is at most 2^22 on Linux, so this pid cannot exist.
        let mut s = Sampler::for_pid(u32::MAX - 1);
        let m = s.sample();
        assert_eq!(m.process.pid, Some(u32::MAX - 1));
        assert_eq!(m.process.resident_bytes, None);
        assert_eq!(m.process.cpu_percent, None);
        assert_eq!(m.process.user, None);
        assert!(m.host.memory_total_bytes.unwrap() > 0);
    }
}
