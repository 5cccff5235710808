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
    Fd(tokio::io::unix::AsyncFd<Timer>),
    Tokio(tokio::time::Interval),
}

/// nix's timerfd, with the raw fd tokio's `AsyncFd` registers.
#[cfg(target_os = "linux")]
struct Timer(nix::sys::timerfd::TimerFd);

#[cfg(target_os = "linux")]
impl std::os::fd::AsRawFd for Timer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
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
        match timerfd(period) {
            Ok(fd) => return Ticker { period, inner: Inner::Fd(fd) },
            Err(e) => tracing::debug!(target: "sfc::client", error = %e, "no timerfd; using tokio's timer"),
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
                    let read = match fd.readable().await {
                        // A read gives the number of expirations since the last one (`wait`
                        // drops it: any number is one tick); on this non-blocking fd it is
                        // EAGAIN, which `try_io` takes as "not readable after all".
                        Ok(mut guard) => match guard.try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from)) {
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
fn timerfd(period: Duration) -> std::io::Result<tokio::io::unix::AsyncFd<Timer>> {
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
    // The first expiration at once (1 ns: zero would disarm it), then every period.
    fd.set(
        Expiration::IntervalDelayed(Duration::from_nanos(1).into(), period.into()),
        TimerSetTimeFlags::empty(),
    )?;
    // SAFETY: the fd is the TimerFd's own (private, closed only when it drops), so it stays open
    // and the same for as long as the AsyncFd owns the Timer, and `as_raw_fd` always returns it.
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(Timer(fd), tokio::io::Interest::READABLE) }?;
    Ok(fd)
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
        // The first tick comes at once (no upper bound is asserted: the machine may be slow);
        // the next three never come early.
        t.tick().await;
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
        t.tick().await;
        // A wait cancelled by select! (as the session loop does) leaves the next tick intact.
        // Biased to the sleep: should the machine stall past the next period, both are ready
        // and the sleep wins; only a tick within 1 ms of the last one would panic.
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            _ = t.tick() => panic!("ticked before its period"),
        }
        t.tick().await;
    }

    /// Counts ticks, asserts no timing: at most one tick per period, and however many periods
    /// passed unseen, one read takes them all (one tick, not a burst).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn timerfd_ticks_once_per_period_and_one_read_takes_every_expiration() {
        let period = Duration::from_millis(50);
        let mut t = Ticker::new(period);
        assert!(matches!(t.inner, Inner::Fd(_)), "a timerfd on Linux");
        // While 4 periods pass: the tick at once, one per period, never more (a tick that is
        // always ready runs into the loop's bound).
        let window = tokio::time::sleep(period * 4);
        tokio::pin!(window);
        let mut ticks = 0;
        while ticks < 100 {
            tokio::select! {
                // The window first: once it is over, no tick counts (on a loaded machine a
                // stall adds at most one tick, since a read takes every expiration).
                biased;
                _ = &mut window => break,
                _ = t.tick() => ticks += 1,
            }
        }
        assert!((1..=6).contains(&ticks), "{ticks} ticks while 4 periods passed");
        // 5 periods pass while the thread is busy: the kernel counts 5 expirations.
        std::thread::sleep(period * 5);
        t.tick().await;
        // The read took them all: no tick is ready now (one may be, should a fresh period
        // start during this loop on a loaded machine; 4 would be left without the drain).
        let mut more = 0;
        for _ in 0..10 {
            tokio::select! {
                biased;
                _ = t.tick() => more += 1,
                // Defers its wake until the runtime has polled the reactor once.
                _ = tokio::task::yield_now() => break,
            }
        }
        assert!(more <= 1, "{more} more ticks ready after the one that took 5 missed periods");
    }

    /// The fallback on tokio's paused clock (virtual time, exact): a tick at once, one per
    /// period, and missed periods are one tick with the next a full period after it.
    #[tokio::test(start_paused = true)]
    async fn fallback_ticks_once_per_period_and_skips_missed_ones() {
        let period = Duration::from_secs(1);
        let mut t = Ticker { period, inner: tokio_interval(period) };
        let start = tokio::time::Instant::now();
        t.tick().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        t.tick().await;
        assert_eq!(start.elapsed(), period);
        // 3.5 periods pass unseen: one tick at once, not three.
        tokio::time::advance(period * 7 / 2).await;
        t.tick().await;
        assert_eq!(start.elapsed(), period * 9 / 2);
        t.tick().await;
        assert_eq!(start.elapsed(), period * 11 / 2);
    }
}
