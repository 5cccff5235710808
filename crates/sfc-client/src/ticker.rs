//! The session's one timer: a tick every interval that costs one wake-up of the client's thread.
//!
//! tokio's timer wheel files a deadline more than 64 ms away in a coarser level, parks until
//! the start of that level's slot, moves the entry down a level, and parks again until the
//! deadline: two wake-ups of the runtime thread per tick (strace of a client reporting every
//! second: `epoll_wait(.., 973) = 0` then `epoll_wait(.., 21) = 0` before each report; a wake-up
//! is what an idle report costs most, see BENCHMARKS.md "Client footprint (Node, C)"). On
//! Linux the tick is a timerfd in the runtime's own reactor instead, which the kernel makes
//! readable once, at the deadline. Elsewhere (or if the timerfd cannot be made) it is tokio's
//! interval.

use std::time::Duration;

pub(crate) struct Ticker {
    /// For the fallback to tokio's interval, should the timerfd fail.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    period: Duration,
    inner: Inner,
}

enum Inner {
    #[cfg(target_os = "linux")]
    Fd(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
    Tokio(tokio::time::Interval),
}

fn tokio_interval(period: Duration) -> Inner {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Inner::Tokio(i)
}

impl Ticker {
    /// Ticks at once, then every `period` (at least 1 ms); ticks missed while the thread was
    /// busy are skipped, never sent in a burst. Needs a runtime with time and I/O enabled.
    pub(crate) fn new(period: Duration) -> Ticker {
        let period = period.max(Duration::from_millis(1));
        #[cfg(target_os = "linux")]
        if let Some(fd) = timerfd(period) {
            return Ticker { period, inner: Inner::Fd(fd) };
        }
        Ticker { period, inner: tokio_interval(period) }
    }

    /// Waits for the next tick. Cancel-safe: a tick that fires while the future is dropped is
    /// taken by the next call.
    pub(crate) async fn tick(&mut self) {
        loop {
            match &mut self.inner {
                #[cfg(target_os = "linux")]
                Inner::Fd(fd) => {
                    use std::os::fd::AsRawFd;
                    let read = match fd.readable().await {
                        Ok(mut guard) => match guard.try_io(|fd| {
                            // The number of expirations since the last read; any number is one tick.
                            let mut n = [0u8; 8];
                            // SAFETY: reads 8 bytes into an 8-byte buffer from an fd we own.
                            let r = unsafe { libc::read(fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
                            if r < 0 {
                                Err(std::io::Error::last_os_error())
                            } else {
                                Ok(())
                            }
                        }) {
                            Ok(Ok(())) => {
                                // A timerfd read takes every expiration so far: it is not
                                // readable until the next one (tokio keeps an expiration that
                                // came after this guard was made). Saves the next call a read
                                // that would find nothing.
                                guard.clear_ready();
                                Some(Ok(()))
                            }
                            Ok(Err(e)) => Some(Err(e)),
                            // Not readable after all (readiness cleared): wait again.
                            Err(_would_block) => None,
                        },
                        Err(e) => Some(Err(e)),
                    };
                    match read {
                        Some(Ok(())) => return,
                        None => continue,
                        Some(Err(e)) => {
                            tracing::debug!(target: "sfc::client", error = %e, "timerfd failed; using tokio's timer");
                            self.inner = tokio_interval(self.period);
                        }
                    }
                }
                Inner::Tokio(i) => {
                    i.tick().await;
                    return;
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn timerfd(period: Duration) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; the fd is owned by `OwnedFd` from here on.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ts = |d: Duration| libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ };
    // The first expiration at once (1 ns: zero would disarm it), then every period.
    let spec = libc::itimerspec { it_interval: ts(period), it_value: ts(Duration::from_nanos(1)) };
    // SAFETY: a valid timerfd and a valid itimerspec; no old value asked for.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return None;
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and the same fd) until it drops.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn ticks_at_once_then_every_period() {
        let start = Instant::now();
        let mut t = Ticker::new(Duration::from_millis(50));
        #[cfg(target_os = "linux")]
        assert!(matches!(t.inner, Inner::Fd(_)), "a timerfd on Linux");
        t.tick().await;
        assert!(start.elapsed() < Duration::from_millis(40), "first tick at once");
        for _ in 0..3 {
            t.tick().await;
        }
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(145), "3 periods of 50 ms took {e:?}");
    }

    #[tokio::test]
    async fn missed_ticks_are_one_tick_and_a_dropped_wait_loses_nothing() {
        let mut t = Ticker::new(Duration::from_millis(50));
        t.tick().await;
        // Three periods pass while nobody waits (a busy thread): one tick is ready, not three.
        std::thread::sleep(Duration::from_millis(170));
        let ready = Instant::now();
        t.tick().await;
        assert!(ready.elapsed() < Duration::from_millis(15));
        // A wait cancelled by select! (as the session loop does) leaves the next tick intact.
        tokio::select! {
            _ = t.tick() => panic!("ticked before its period"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        let before = Instant::now();
        t.tick().await;
        assert!(before.elapsed() < Duration::from_millis(60));
    }
}
