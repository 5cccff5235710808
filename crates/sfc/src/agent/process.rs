//! The process an agent stands for: a child it started (`-- COMMAND`) or an existing process
//! it watches (`--pid`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use sfc_client::error::{Error, Result};

/// How a watched process that is not our child is polled when the kernel has no pidfd.
const POLL: Duration = Duration::from_millis(250);

/// How a process ended, as far as the agent can tell.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Status(ExitStatus),
    /// The status cannot be read; says why.
    Unknown(&'static str),
}

pub enum Proc {
    Child(tokio::process::Child),
    /// `readable`: whether the kernel shows us its exit status (see [`Proc::watch`]).
    Watched { pid: u32, fd: Option<AsyncFd<OwnedFd>>, readable: bool },
}

impl Proc {
    /// Starts `argv` in a process group of its own, so that only the signals the agent forwards
    /// reach it (not a terminal's ^C to the agent's group as well).
    pub fn spawn(argv: &[String]) -> Result<Proc> {
        let (prog, args) = argv.split_first().ok_or_else(|| Error::invalid("command", "empty"))?;
        let child = tokio::process::Command::new(prog)
            .args(args)
            .process_group(0)
            // If the agent itself fails, the process does not outlive it unsupervised.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::invalid("command", format!("cannot start {prog:?}: {e}")))?;
        Ok(Proc::Child(child))
    }

    /// Watches the existing process `pid` (a pidfd when the kernel has them, else polling).
    pub fn watch(pid: u32) -> Result<Proc> {
        let p = i32::try_from(pid).ok().filter(|p| *p > 0).ok_or_else(|| Error::invalid("--pid", format!("{pid} is not a process id")))?;
        if let Err(e) = kill(Pid::from_raw(p), None) {
            if e != nix::errno::Errno::EPERM {
                return Err(Error::invalid("--pid", format!("no process {pid}: {e}")));
            }
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
        let fd = (fd >= 0)
            // SAFETY: a descriptor the kernel has just returned, owned by nobody else.
            .then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
            // SAFETY: the OwnedFd stays open, and the same descriptor, for as long as the
            // AsyncFd that owns it. (Called on the agent's runtime: it has a reactor.)
            .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok());
        // The kernel shows a zombie's exit code only to who may ptrace-read it (and 0 to others,
        // which would pass for a clean exit); that is the same check as opening `environ`.
        let readable = std::fs::File::open(format!("/proc/{pid}/environ")).is_ok();
        Ok(Proc::Watched { pid, fd, readable })
    }

    pub fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id().unwrap_or(0),
            Proc::Watched { pid, .. } => *pid,
        }
    }

    pub fn is_child(&self) -> bool {
        matches!(self, Proc::Child(_))
    }

    pub fn signal(&self, sig: Signal) {
        let pid = self.pid() as i32;
        if pid > 0 {
            if let Err(e) = kill(Pid::from_raw(pid), sig) {
                tracing::warn!(target: "sfc::agent", pid, "cannot send {sig}: {e}");
            }
        }
    }

    /// Waits until the process has ended. Cancel-safe.
    pub async fn wait(&mut self) -> Ending {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(s) => Ending::Status(s),
                Err(e) => {
                    tracing::warn!(target: "sfc::agent", "cannot wait for the child: {e}");
                    Ending::Unknown("the agent could not wait for it")
                }
            },
            Proc::Watched { pid, fd, readable } => {
                let pid = *pid;
                match fd {
                    // Readable once the process has terminated.
                    Some(fd) => {
                        let _ = fd.readable().await;
                    }
                    None => loop {
                        match zombie_status(pid) {
                            Some(Some(_)) | None => break,
                            Some(None) => tokio::time::sleep(POLL).await,
                        }
                    },
                }
                match zombie_status(pid) {
                    _ if !*readable => Ending::Unknown("another user's process: the kernel does not show the agent its exit status"),
                    Some(Some(s)) => Ending::Status(s),
                    _ => Ending::Unknown("not the agent's child, and already reaped by its parent"),
                }
            }
        }
    }
}

/// From `/proc/<pid>/stat`: `None` when the process is gone, `Some(None)` while it runs,
/// `Some(Some(status))` for a zombie (terminated, not yet reaped by its parent), whose
/// `exit_code` field (the 52nd, Linux 3.5+) holds its wait status.
fn zombie_status(pid: u32) -> Option<Option<ExitStatus>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return Some(None);
    }
    Some(fields.get(49).and_then(|v| v.parse::<i32>().ok()).map(ExitStatus::from_raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_status_reads_the_exit_code() {
        let mut c = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let pid = c.id();
        // Unreaped: a zombie once it has exited.
        let mut seen = None;
        for _ in 0..400 {
            if let Some(Some(s)) = zombie_status(pid) {
                seen = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.and_then(|s| s.code()), Some(3));
        c.wait().unwrap();
        assert!(zombie_status(pid).is_none());
        assert_eq!(zombie_status(std::process::id()).map(|s| s.is_none()), Some(true));
    }
}
