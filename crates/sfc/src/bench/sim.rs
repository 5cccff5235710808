//! One simulated service instance: a real TLS connection speaking protocol v1 and reporting a
//! realistic payload on a timer. Tens of thousands run as tasks in one process, so each keeps
//! only what a connection needs: no metrics sampler, lookup cache or command handling, which
//! are what make `sfc_client::Client` the right thing for a real service and the wrong one
//! for a load generator.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};

use sfc_client::error::{Error, Result};
use sfc_client::model::{Health, Metrics, Registration};
use sfc_client::protocol::connection::{client_preamble, FrameReader};
use sfc_client::protocol::{frame, Hello, Message, Ping, Report, Role, Welcome, Wire};

/// Group of the clients whose reports the observer times.
pub(super) const LAT_GROUP: &str = "bench-lat";
/// Group of every other client.
pub(super) const GROUP: &str = "bench";
/// Custom gauge carrying the send time, Unix µs (exact in an f64 until the year 2255).
pub(super) const SENT_GAUGE: &str = "bench_sent_us";
/// Reports a `max` client sends back to back before it waits for a pong.
pub(super) const WINDOW: u64 = 16;
const MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME;
/// Reconnect backoff, the same as `sfc_client`'s defaults: capped exponential, full jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the whole bench is; every client follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connecting; clients report at their interval.
    Ramp,
    /// Measuring.
    Run,
    /// Measuring, and the batch does the scenario's action.
    Act,
    /// Each client confirms its reports with a ping, then idles.
    Drain,
    Stop,
}

/// What the batch does when the phase turns to [`Phase::Act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    None,
    /// Drop the connection without a leave.
    Crash,
    /// Stop sending, keep the socket open.
    Hang,
    /// Drop the connection without a leave and join again at once (with the reconnect
    /// backoff's first jitter), resuming the TLS session: a re-join storm.
    Rejoin,
}

/// Settings and counters shared by every simulated client.
pub(super) struct Fleet {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Source addresses to bind, round-robin by client index; empty: let the OS pick.
    pub sources: Vec<IpAddr>,
    pub interval: Duration,
    /// `max`: send windows of reports back to back while measuring.
    pub blast: bool,
    pub action: Action,
    pub batch: Range<usize>,
    /// Every `lat_stride`-th client is in [`LAT_GROUP`].
    pub lat_stride: usize,
    pub metrics: Metrics,
    pub connect_timeout: Duration,
    pub epoch: Instant,
    pub counters: Counters,
    pub marks: Marks,
    /// Codec and compression the clients offer (`--codec`, `--compression`) and must get.
    pub wire: Wire,
}

#[derive(Default)]
pub(super) struct Counters {
    /// Connections up right now.
    pub connected: AtomicU64,
    pub handshakes: AtomicU64,
    /// Of `handshakes`, those whose TLS handshake resumed a session (rustls' `handshake_kind`).
    pub resumed: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Connections that ended without the bench asking.
    pub lost: AtomicU64,
    pub error_frames: AtomicU64,
    /// `rate-limited` error frames: the registry dropped frames over its `--max-frame-rate`.
    pub rate_limited: AtomicU64,
    pub sent: AtomicU64,
    pub sent_in_phase: AtomicU64,
    /// Reports sent while measuring that a later pong proved the registry had processed.
    pub confirmed: AtomicU64,
    /// When the last confirmation arrived, µs after `epoch`.
    pub last_confirm_us: AtomicU64,
    /// Clients whose drain ping was answered.
    pub drained: AtomicU64,
    /// TCP bytes written by all clients (TLS records included).
    pub bytes_written: Arc<AtomicU64>,
    /// `liveness_ms` from the registry's welcome.
    pub liveness_ms: AtomicU64,
}

/// Instants that the results are computed from.
#[derive(Default)]
pub(super) struct Marks {
    pub crashed_at: Mutex<Vec<(usize, Instant)>>,
    pub hung_last_sent: Mutex<Vec<(usize, Instant)>>,
    pub welcomes: Mutex<Vec<Instant>>,
}

impl Fleet {
    pub fn instance_id(index: usize) -> String {
        format!("c{index}")
    }

    pub fn group_of(&self, index: usize) -> &'static str {
        if index.is_multiple_of(self.lat_stride) {
            LAT_GROUP
        } else {
            GROUP
        }
    }

    fn micros_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Unix time in µs.
pub(super) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The report a client sends, with the send time stamped in.
pub(super) fn encode_report(report: &mut Report, wire: &Wire) -> Bytes {
    report.seq += 1;
    let now = now_us();
    report.sent_at = Some(now / 1000);
    match report.metrics.custom.get_mut(SENT_GAUGE) {
        Some(v) => *v = now as f64,
        None => {
            report
                .metrics
                .custom
                .insert(SENT_GAUGE.to_string(), now as f64);
        }
    }
    // Encode in place: the message owns its report only while it is serialized.
    let msg = Message::Report(std::mem::take(report));
    let bytes = wire.encode(&msg);
    if let Message::Report(r) = msg {
        *report = r;
    }
    bytes
}

/// A TCP stream that counts the bytes written to it, so bytes per report on the wire are
/// measured rather than estimated.
struct Counted {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Tls = tokio_rustls::client::TlsStream<Counted>;
type Reader = FrameReader<ReadHalf<Tls>>;
/// The protocol's own frame codec; reports are encoded by the client, as a real client does.
type Writer = FramedWrite<WriteHalf<Tls>, LengthDelimitedCodec>;

/// This client's own rustls config, kept across its reconnects as `sfc_client` keeps one: its
/// session store holds the registry's tickets, so a re-join resumes. Sharing the fleet's config
/// would share one store (8 tickets per server name) among all the clients.
fn own_tls(fleet: &Fleet) -> Arc<rustls::ClientConfig> {
    let mut tls = (*fleet.tls).clone();
    tls.resumption = rustls::client::Resumption::in_memory_sessions(1);
    Arc::new(tls)
}

/// TCP (from this client's source address), TLS, preamble, hello and welcome. The bool: the
/// TLS handshake resumed a session.
async fn connect(
    fleet: &Fleet,
    tls: &Arc<rustls::ClientConfig>,
    index: usize,
    hello: &Bytes,
) -> Result<(Reader, Writer, Welcome, bool)> {
    let addr = fleet.addr;
    let handshake = async {
        let sock = TcpSocket::new_v4()?;
        if !fleet.sources.is_empty() {
            let src = fleet.sources[index % fleet.sources.len()];
            sock.bind(SocketAddr::new(src, 0)).map_err(|e| {
                Error::Unreachable(format!("cannot bind source address {src}: {e}"))
            })?;
        }
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let counted = Counted {
            inner: tcp,
            written: fleet.counters.bytes_written.clone(),
        };
        let mut tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(fleet.server_name.clone(), counted)
            .await
            .map_err(|e| Error::Tls(format!("handshake with {addr} failed: {e}")))?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        client_preamble(&mut tls, MAX_FRAME).await?;
        let (r, w) = tokio::io::split(tls);
        let mut reader = FrameReader::new(r, MAX_FRAME);
        let mut writer = FramedWrite::new(w, frame::length_codec(MAX_FRAME));
        writer.send(hello.clone()).await?;
        match reader.next().await {
            Some(Ok(Message::Welcome(w))) => {
                let got = (w.codec.as_str(), w.compression.as_deref());
                let want = (
                    fleet.wire.codec.name(),
                    fleet.wire.compression.map(|c| c.name()),
                );
                if got != want {
                    return Err(Error::Protocol {
                        code: sfc_client::protocol::ErrorCode::UnsupportedCodec,
                        message: format!("registry picked codec {:?} and compression {:?}; the bench asked for {:?} and {:?}",
                            got.0, got.1, want.0, want.1),
                    });
                }
                reader.set_codec(fleet.wire.codec);
                reader.set_compression(fleet.wire.compression);
                Ok((reader, writer, w, resumed))
            }
            Some(Ok(Message::Error(e))) => Err(Error::Remote {
                code: e.code,
                message: e.message,
            }),
            Some(Ok(other)) => Err(Error::Protocol {
                code: sfc_client::protocol::ErrorCode::UnexpectedMessage,
                message: format!("expected welcome, got {}", other.name()),
            }),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Unreachable(format!(
                "{addr} closed the connection during the handshake"
            ))),
        }
    };
    tokio::time::timeout(fleet.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout(format!("handshake with {addr}")))?
}

/// How one connection ended.
enum End {
    /// The bench is stopping.
    Stop,
    /// The registry closed it or it broke: reconnect.
    Lost,
    /// This client crashed or hung on purpose: stay down.
    Down,
    /// This client dropped its connection on purpose: join again.
    Rejoin,
}

/// Runs client `index` until the bench stops: connect, report, reconnect when the connection
/// is lost.
pub(super) async fn run(fleet: Arc<Fleet>, index: usize, mut phase: watch::Receiver<Phase>) {
    let registration = Registration {
        group: fleet.group_of(index).to_string(),
        instance_id: Fleet::instance_id(index),
        service: "bench".to_string(),
        hostname: fleet.metrics.host.hostname.clone().unwrap_or_default(),
        pid: std::process::id(),
        ..Default::default()
    };
    let hello = Wire::JSON.encode(&Message::Hello(Hello {
        id: 1,
        role: Role::Service,
        codecs: vec![fleet.wire.codec.name().into()],
        interval_ms: Some(fleet.interval.as_millis() as u64),
        registration: Some(registration),
        client: Some(format!("sfc-bench/{}", sfc_client::VERSION)),
        compression: fleet
            .wire
            .compression
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
    }));
    let mut report = Report {
        seq: 0,
        sent_at: None,
        health: Some(Health::Passing),
        health_note: None,
        metrics: fleet.metrics.clone(),
    };
    let mut attempt: u32 = 0;
    let tls = own_tls(&fleet);
    // Whether this client has done the scenario's action (a re-join happens once).
    let mut acted = false;
    loop {
        if *phase.borrow() == Phase::Stop {
            return;
        }
        let connected = tokio::select! {
            c = connect(&fleet, &tls, index, &hello) => c,
            _ = stopped(&mut phase) => return,
        };
        let end = match connected {
            Ok((reader, writer, welcome, resumed)) => {
                attempt = 0;
                let c = &fleet.counters;
                c.handshakes.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    c.resumed.fetch_add(1, Ordering::Relaxed);
                }
                c.connected.fetch_add(1, Ordering::Relaxed);
                c.liveness_ms.store(welcome.liveness_ms, Ordering::Relaxed);
                fleet
                    .marks
                    .welcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
                let end = session(&fleet, index, &mut report, reader, writer, &mut phase, &mut acted).await;
                c.connected.fetch_sub(1, Ordering::Relaxed);
                if matches!(end, End::Lost) {
                    c.lost.fetch_add(1, Ordering::Relaxed);
                }
                end
            }
            Err(e) => {
                tracing::debug!(target: "sfc::bench", index, error = %e, "connect failed");
                fleet
                    .counters
                    .connect_errors
                    .fetch_add(1, Ordering::Relaxed);
                End::Lost
            }
        };
        match end {
            End::Stop => return,
            End::Down => {
                stopped(&mut phase).await;
                return;
            }
            End::Lost | End::Rejoin => {}
        }
        let cap = BACKOFF_MAX.min(BACKOFF_MIN.saturating_mul(1u32 << attempt.min(16)));
        attempt = attempt.saturating_add(1);
        let delay = Duration::from_millis(rand::random_range(0..=cap.as_millis() as u64));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut phase) => return,
        }
    }
}

/// Resolves when the phase is `Stop` (or the bench is gone).
async fn stopped(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
}

/// One connection's life after the welcome.
async fn session(
    fleet: &Fleet,
    index: usize,
    report: &mut Report,
    mut reader: Reader,
    mut writer: Writer,
    phase: &mut watch::Receiver<Phase>,
    acted: &mut bool,
) -> End {
    let c = &fleet.counters;
    let in_batch = fleet.batch.contains(&index);
    // Spread the fleet's reports evenly over the interval.
    let offset = Duration::from_micros(rand::random_range(
        0..fleet.interval.as_micros().max(1) as u64,
    ));
    let mut tick = tokio::time::interval_at(Instant::now() + offset, fleet.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_sent = Instant::now();
    // Reports sent while measuring on this connection, not yet confirmed.
    let mut unconfirmed: u64 = 0;
    let mut ping_id: u64 = 0;
    let mut window_ping: Option<u64> = None;
    // A rate-limit error while a window is in flight: some of it was dropped, none counts.
    let mut window_limited = false;
    let mut drain_ping: Option<u64> = None;
    let mut hung = false;
    let mut cur = *phase.borrow_and_update();
    loop {
        if cur == Phase::Stop {
            return End::Stop;
        }
        if cur == Phase::Act && in_batch {
            match fleet.action {
                Action::Crash => {
                    // The mark comes first: taken after the close, a preempted task could
                    // record it after the observer already saw the offline event.
                    fleet
                        .marks
                        .crashed_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((index, Instant::now()));
                    // Dropping both halves closes the socket with no leave and no close_notify.
                    drop(reader);
                    drop(writer);
                    return End::Down;
                }
                Action::Rejoin if !*acted => {
                    *acted = true;
                    drop(reader);
                    drop(writer);
                    return End::Rejoin;
                }
                Action::Hang if !hung => {
                    hung = true;
                    fleet
                        .marks
                        .hung_last_sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((index, last_sent));
                }
                _ => {}
            }
        }
        let measuring = matches!(cur, Phase::Run | Phase::Act);
        let blasting = fleet.blast && measuring && !hung;
        if blasting && window_ping.is_none() {
            ping_id += 1;
            let sent = async {
                for _ in 0..WINDOW {
                    writer.feed(encode_report(report, &fleet.wire)).await?;
                }
                writer
                    .send(fleet.wire.encode(&Message::Ping(Ping { id: ping_id })))
                    .await
            };
            if sent.await.is_err() {
                return End::Lost;
            }
            last_sent = Instant::now();
            c.sent.fetch_add(WINDOW, Ordering::Relaxed);
            c.sent_in_phase.fetch_add(WINDOW, Ordering::Relaxed);
            window_ping = Some(ping_id);
        }
        // The drain ping takes the place of the next report, so the registry sees the usual
        // rate rather than a burst of pings.
        let draining = cur == Phase::Drain && drain_ping.is_none() && !hung;
        let ticking = !blasting && !hung && matches!(cur, Phase::Ramp | Phase::Run | Phase::Act);
        tokio::select! {
            _ = tick.tick(), if ticking || draining => {
                if draining {
                    ping_id += 1;
                    if writer.send(fleet.wire.encode(&Message::Ping(Ping { id: ping_id }))).await.is_err() {
                        return End::Lost;
                    }
                    drain_ping = Some(ping_id);
                    continue;
                }
                if writer.send(encode_report(report, &fleet.wire)).await.is_err() {
                    return End::Lost;
                }
                last_sent = Instant::now();
                c.sent.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    c.sent_in_phase.fetch_add(1, Ordering::Relaxed);
                    unconfirmed += 1;
                }
            }
            m = reader.next() => match m {
                None | Some(Err(_)) => return if hung { End::Down } else { End::Lost },
                Some(Ok(Message::Pong(p))) => {
                    let confirmed = if Some(p.id) == window_ping {
                        window_ping = None;
                        if std::mem::take(&mut window_limited) { 0 } else { WINDOW }
                    } else if Some(p.id) == drain_ping {
                        c.drained.fetch_add(1, Ordering::Relaxed);
                        std::mem::take(&mut unconfirmed)
                    } else {
                        0
                    };
                    if confirmed > 0 {
                        c.confirmed.fetch_add(confirmed, Ordering::Relaxed);
                        c.last_confirm_us.fetch_max(fleet.micros_since_epoch(), Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Error(e))) => {
                    c.error_frames.fetch_add(1, Ordering::Relaxed);
                    if e.code == sfc_client::protocol::ErrorCode::RateLimited {
                        c.rate_limited.fetch_add(1, Ordering::Relaxed);
                        window_limited = true;
                        // Dropped reports cannot be told apart: nothing on this connection
                        // since the last confirmation counts.
                        unconfirmed = 0;
                    }
                    tracing::debug!(target: "sfc::bench", index, code = %e.code, message = %e.message, "error frame");
                    if e.fatal {
                        return if hung { End::Down } else { End::Lost };
                    }
                }
                Some(Ok(_)) => {}
            },
            r = phase.changed() => {
                if r.is_err() {
                    return End::Stop;
                }
                cur = *phase.borrow_and_update();
            }
        }
    }
}
