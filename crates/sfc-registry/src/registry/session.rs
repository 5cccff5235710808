//! One connection to the registry: TLS, the preamble (or a legacy document), the handshake,
//! then the session loop. The loop owns the session's liveness timer: every frame resets it,
//! and when it fires the instance goes offline with reason `missed-reports`, without waiting
//! for any other traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, OptionFuture};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::state::{Outbound, OutboundTx, SessionRef};
use super::Registry;
use crate::model::{Event, EventKind, Filter, InstanceRecord, OfflineReason};
use crate::protocol::connection::{FrameReader, FrameWriter, ReadError};
use crate::protocol::frame::{self, PREAMBLE_LEN};
use crate::protocol::{
    legacy, Codec, Compression, Connection, ErrorCode, Hello, Message, Pong, ProtocolError, QueryResult, Role,
    Welcome,
};

/// Outbound queue length per session. A watcher that falls this far behind stalls its own
/// session only; its event subscription then lags and it is told to resync.
const OUTBOUND_QUEUE: usize = 1024;
/// Default interval asked of observers that do not choose one.
const OBSERVER_INTERVAL: Duration = Duration::from_secs(10);

/// Handles one accepted TCP connection until it ends.
pub(crate) async fn run(reg: Registry, tcp: TcpStream, peer: SocketAddr, stop: broadcast::Receiver<()>) {
    let deadline = Instant::now() + reg.shared.config.handshake_timeout;
    // The handshake's state (rustls mid-handshake, hello, welcome: most of the 14 KiB this
    // future took) lives in its own allocation, freed once the session starts: the task, which
    // holds the connection for as long as it lasts, keeps only what the session loop needs
    // (BENCHMARKS.md, "Memory per connected instance").
    // The session's future is made in a block: what moves into it (the connection's reader
    // and writer) then has no second place in this future. A binding that was moved from
    // still takes room in an async fn's future until its scope ends, here past the await.
    let session = {
        let opened = Box::pin(async {
            let (stream, who) = accept_tls(&reg, tcp, peer, deadline).await?;
            open_stream(&reg, stream, peer, who, deadline).await
        })
        .await;
        let Some((Connection { reader, writer }, opened)) = opened else { return };
        run_session(&reg, reader, writer, opened, peer, stop)
    };
    session.await;
}

/// Answers a connection over `--max-connections` with an error frame, then closes it.
pub(crate) async fn refuse(reg: Registry, tcp: TcpStream, peer: SocketAddr) {
    // Boxed: the accept loop's task type is the larger of this and [`run`], so this stays small.
    Box::pin(refuse_inner(reg, tcp, peer)).await
}

async fn refuse_inner(reg: Registry, tcp: TcpStream, peer: SocketAddr) {
    // The audit line for a flood: at most one a second, with the running count, so that a
    // flood of connections does not become a flood of log lines.
    let stats = &reg.shared.stats;
    let second = crate::model::now_ms() / 1000;
    if stats.refused_connections_logged_at.swap(second, Ordering::Relaxed) != second {
        tracing::warn!(
            target: "sfc::audit",
            %peer,
            refused_so_far = stats.refused_connections_total.load(Ordering::Relaxed),
            "refused: {peer} over --max-connections ({}); at most one such line a second",
            reg.shared.config.max_connections
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2).min(reg.shared.config.handshake_timeout);
    let Some((mut stream, _)) = accept_tls(&reg, tcp, peer, deadline).await else { return };
    let max = reg.shared.config.max_connections;
    let _ = tokio::time::timeout_at(deadline, async {
        let msg = Message::error(
            None,
            ErrorCode::TooManyConnections,
            format!("the registry holds its maximum of {max} connections; try another registry or later"),
            true,
        );
        send_preamble_and_close(&mut stream, &msg, reg.shared.config.max_frame).await
    })
    .await;
}

type Stream = Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>;

/// Who is on the other end, as TLS tells: the client certificate's subject and SAN URIs.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerIdentity {
    pub subject: Option<String>,
    pub uris: Vec<String>,
}

impl PeerIdentity {
    fn describe(&self, peer: SocketAddr) -> String {
        match &self.subject {
            Some(s) => format!("{s:?} from {peer}"),
            None => format!("a client without certificate from {peer}"),
        }
    }
}

/// Checks `--policy` for a registration in `group` (None: observer). Refusals are audited.
fn authorize(reg: &Registry, who: &PeerIdentity, peer: SocketAddr, group: Option<&str>) -> Result<(), ProtocolError> {
    let Some(policy) = &reg.shared.config.policy else { return Ok(()) };
    let grant = policy.grant(who.subject.as_deref(), &who.uris);
    let refusal = match group {
        Some(g) if !grant.may_register(g) => Some(if grant.groups.is_empty() {
            format!("{} may not register instances (role {:?})", who.describe(peer), grant.role)
        } else {
            format!("{} may not register in group {g:?}; it may register in {:?}", who.describe(peer), grant.groups)
        }),
        None if !grant.may_observe() => Some(format!("{} has no grant in the policy", who.describe(peer))),
        _ => None,
    };
    match refusal {
        None => Ok(()),
        Some(why) => {
            reg.shared.stats.refused_not_authorized_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "sfc::audit", %peer, subject = ?who.subject, group = ?group, "refused: {why}");
            Err(ProtocolError::new(ErrorCode::NotAuthorized, why))
        }
    }
}

async fn accept_tls(
    reg: &Registry,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(Stream, PeerIdentity)> {
    let Some(tls) = reg.shared.config.tls.clone() else { return Some((Either::Right(tcp), PeerIdentity::default())) };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let conn = s.get_ref().1;
            let kind = match conn.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => &reg.shared.stats.tls_handshakes_resumed_total,
                _ => &reg.shared.stats.tls_handshakes_full_total,
            };
            kind.fetch_add(1, Ordering::Relaxed);
            let who = PeerIdentity { subject: crate::tls::peer_subject(conn), uris: crate::tls::peer_san_uris(conn) };
            Some((Either::Left(s), who))
        }
        Ok(Err(e)) => {
            if let Some((why, text)) = crate::tls::CertRefusal::classify(&e) {
                reg.shared.stats.refused_certificates.refuse(super::Surface::Protocol, peer, why, &text);
            } else {
                reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "sfc::registry", %peer, error = %e, "tls handshake failed");
            }
            None
        }
        Err(_) => {
            tracing::info!(target: "sfc::registry", %peer, "tls handshake timed out");
            None
        }
    }
}

/// Writes our preamble and one (fatal) message, then closes. For refusals before a session.
async fn send_preamble_and_close<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &Message,
    max_frame: usize,
) -> std::io::Result<()> {
    stream.write_all(&frame::encode_preamble(frame::PROTOCOL_MIN, frame::PROTOCOL_MAX)).await?;
    let mut w = FrameWriter::new(&mut *stream, max_frame);
    w.send(msg).await?;
    w.shutdown().await
}

/// Everything before the session loop: the preamble (or a legacy document, served here), the
/// handshake and welcome. Some: the connection, switched to the negotiated wire, and its session.
async fn open_stream<S>(
    reg: &Registry,
    mut stream: S,
    peer: SocketAddr,
    who: PeerIdentity,
    deadline: Instant,
) -> Option<(Connection<S>, Opened)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = match sniff(&mut stream, peer, deadline).await {
        Some(Sniffed::Legacy(byte)) => {
            serve_legacy(reg, stream, byte, peer, who, deadline).await;
            return None;
        }
        Some(Sniffed::V1(byte)) => byte,
        None => return None,
    };
    let version = negotiate_version(reg, &mut stream, first, peer, deadline).await?;
    let mut conn = Connection::new(stream, reg.shared.config.max_frame);
    let (hello, codec, interval) = handshake(reg, &mut conn.reader, &mut conn.writer, &who, peer, deadline).await?;
    let opened = open_session(reg, &mut conn.writer, hello, version, codec, interval, &who, peer).await?;
    // hello and welcome are JSON; every later frame uses what welcome announced.
    conn.set_wire(codec, opened.compression);
    Some((conn, opened))
}

/// What the first byte of a connection says it is.
enum Sniffed {
    /// A legacy client's JSON document (`{`, or whitespace before it); the byte is kept.
    Legacy(u8),
    /// Anything else must be the v1 preamble; its first byte.
    V1(u8),
}

/// Reads the first byte within the handshake deadline. None: the connection closed or stayed
/// silent, which is logged and needs no answer.
async fn sniff<S: AsyncRead + Unpin>(stream: &mut S, peer: SocketAddr, deadline: Instant) -> Option<Sniffed> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return None, // closed before saying anything
        Err(_) => {
            tracing::info!(target: "sfc::registry", %peer, "connection sent nothing before the handshake timeout");
            return None;
        }
    }
    Some(if first[0] == b'{' || first[0].is_ascii_whitespace() { Sniffed::Legacy(first[0]) } else { Sniffed::V1(first[0]) })
}

fn refusal(e: ProtocolError) -> Message {
    Message::error(None, e.code, e.message, true)
}

/// Reads the rest of the preamble and answers with ours for the version both sides speak. A
/// bad or late preamble is answered with an error after our preamble, and the connection closed.
async fn negotiate_version<S: AsyncRead + AsyncWrite + Unpin>(
    reg: &Registry,
    stream: &mut S,
    first: u8,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<u16> {
    let mut preamble = [0u8; PREAMBLE_LEN];
    preamble[0] = first;
    let version = match tokio::time::timeout_at(deadline, stream.read_exact(&mut preamble[1..])).await {
        Ok(Ok(_)) => frame::parse_preamble(&preamble).and_then(|(lo, hi)| frame::negotiate_version(lo, hi)),
        Ok(Err(_)) => Err(ProtocolError::new(ErrorCode::BadPreamble, "connection closed inside the preamble")),
        Err(_) => Err(ProtocolError::new(
            ErrorCode::HandshakeTimeout,
            "the preamble did not arrive within the handshake timeout",
        )),
    };
    match version {
        Ok(v) => stream.write_all(&frame::encode_preamble(v, v)).await.ok().map(|_| v),
        Err(e) => {
            reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "sfc::registry", %peer, error = %e, "refused connection");
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                send_preamble_and_close(stream, &refusal(e), reg.shared.config.max_frame),
            )
            .await;
            None
        }
    }
}

/// The first frame must be a hello, within the handshake timeout, that passes the checks and
/// the identity policy. Returns it with the codec and interval chosen; a refusal is answered
/// with its error and the connection closed.
async fn handshake<R, W>(
    reg: &Registry,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    who: &PeerIdentity,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(Hello, Codec, Duration)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = match tokio::time::timeout_at(deadline, reader.next()).await {
        Ok(Some(Ok(Message::Hello(h)))) => Ok(h),
        Ok(Some(Ok(other))) => Err(ProtocolError::new(
            ErrorCode::UnexpectedMessage,
            format!("expected hello as the first message, got {}", other.name()),
        )),
        Ok(Some(Err(ReadError::Protocol(e)))) => Err(e),
        Ok(None) | Ok(Some(Err(ReadError::Io(_)))) => return None,
        Err(_) => Err(ProtocolError::new(
            ErrorCode::HandshakeTimeout,
            format!("no hello within {}", crate::duration::format(reg.shared.config.handshake_timeout)),
        )),
    };
    let accepted = hello.and_then(|h| check_hello(reg, h)).and_then(|(h, codec, interval)| {
        authorize(reg, who, peer, h.registration.as_ref().map(|r| r.group.as_str()))?;
        Ok((h, codec, interval))
    });
    match accepted {
        Ok(x) => Some(x),
        Err(e) => {
            reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "sfc::registry", %peer, error = %e, "refused handshake");
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                writer.send(&refusal(e)).await?;
                writer.shutdown().await
            })
            .await;
            None
        }
    }
}

/// A session past its handshake: registered (when it registers an instance) and welcomed.
struct Opened {
    id: u64,
    instance: Option<String>,
    tx: OutboundTx,
    rx: mpsc::Receiver<Box<Outbound>>,
    liveness: Duration,
    compression: Option<Compression>,
}

/// Registers the instance (superseding an older session for it) and sends welcome. None: the
/// welcome could not be written, and the instance is already marked offline again.
#[allow(clippy::too_many_arguments)]
async fn open_session<W: AsyncWrite + Unpin>(
    reg: &Registry,
    writer: &mut FrameWriter<W>,
    hello: Hello,
    version: u16,
    codec: Codec,
    interval: Duration,
    who: &PeerIdentity,
    peer: SocketAddr,
) -> Option<Opened> {
    let session_id = reg.shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = OutboundTx::channel(OUTBOUND_QUEUE);
    let missed = reg.shared.config.missed_reports;
    let liveness = interval * missed;
    let instance = hello.registration.as_ref().map(|r| crate::model::InstanceRecord::make_id(&r.group, &r.instance_id));
    let compression = Compression::choose_from(&hello.compression, &reg.shared.config.compression);
    let welcome = Message::Welcome(Welcome {
        id: hello.id,
        protocol: version,
        codec: codec.name().to_string(),
        session: session_id,
        registry: format!("sfc/{}", crate::VERSION),
        interval_ms: interval.as_millis() as u64,
        missed_reports: missed,
        liveness_ms: liveness.as_millis() as u64,
        max_frame: reg.shared.config.max_frame as u32,
        server_time: crate::model::now_ms(),
        instance: instance.clone(),
        compression: compression.map(|c| c.name().to_string()),
    });
    if let Some(reg_info) = hello.registration.clone() {
        let detail = serde_json::json!({ "session": session_id, "peer": peer.to_string() });
        let id = instance.as_deref().unwrap_or_default();
        // The quota and the registration under one lock: no two hellos both take the last slot.
        let registered = {
            let mut st = reg.state();
            match super::policy::check_quota(&st, &reg.shared.config, &reg_info.group, id, false) {
                Err(why) => Err(why),
                Ok(()) => Ok(st.register(
                    reg_info,
                    interval.as_millis() as u64,
                    Some(SessionRef { id: session_id, tx: tx.clone() }),
                    who.subject.clone(),
                    "v1",
                    detail,
                )),
            }
        };
        let done = match registered {
            Ok(done) => done,
            Err(why) => {
                reg.shared.stats.refused_instances_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "sfc::audit", %peer, subject = ?who.subject, id, "refused: {why}");
                let refusal = Message::error(None, ErrorCode::TooManyInstances, format!("{id} refused: {why}"), true);
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    writer.send(&refusal).await?;
                    writer.shutdown().await
                })
                .await;
                return None;
            }
        };
        if let Some(old) = done.superseded {
            let id = instance.as_deref().unwrap_or_default();
            tracing::warn!(target: "sfc::registry", id, old_session = old.id, new_session = session_id, %peer,
                "session superseded by a new session for the same instance");
            let _ = old.tx.try_send(Outbound::Close(Message::error(
                None,
                ErrorCode::Superseded,
                format!("session {} for {id} was superseded by session {session_id} from {peer}", old.id),
                true,
            )));
        }
    }
    // Welcome at once, not after the group commit: the client may then hear of its session
    // a moment before watchers hear of the transition (which waits for the commit), never
    // after. Lost to a crash, it reconnects and registers again.
    if writer.send(&welcome).await.is_err() {
        if let Some(id) = &instance {
            reg.state().mark_offline(id, Some(session_id), OfflineReason::ConnectionLost);
        }
        return None;
    }
    tracing::debug!(target: "sfc::registry", session = session_id, %peer, instance = ?instance,
        role = ?hello.role, client = ?hello.client, "session opened");
    Some(Opened { id: session_id, instance, tx, rx, liveness, compression })
}

/// Runs the session loop beside its writer task until the session ends, then settles the
/// instance's state by how it ended and lets the writer flush its last frames.
///
/// Not an `async fn`: its arguments would stay in its future for as long as the connection
/// lasts, the writer (moved to its task) and the reader (then passed on) included. The
/// future returned holds each part once (BENCHMARKS.md, "Memory per connected instance").
fn run_session<'a, R, W>(
    reg: &'a Registry,
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    opened: Opened,
    peer: SocketAddr,
    mut stop: broadcast::Receiver<()>,
) -> impl std::future::Future<Output = ()> + Send + 'a
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Opened { id: session_id, instance, tx, rx, liveness, .. } = opened;
    reg.shared.stats.sessions_current.fetch_add(1, Ordering::Relaxed);
    let writer_done = CancellationToken::new();
    let commands_sent = CommandsSent::default();
    let outq = Arc::new(OutQueue::new(reg.shared.config.admission.max_outbound));
    let writer_task = tokio::spawn(write_loop(writer, rx, writer_done.clone(), commands_sent.clone(), outq.clone()));
    let mut session = Session {
        outq: outq.clone(),
        slow: false,
        commands_sent,
        reg: reg.clone(),
        id: session_id,
        instance,
        tx,
        watches: Vec::new(),
        events_rx: None,
        reports_rx: None,
        limit: RateLimit::new(reg.shared.config.max_frame_rate),
    };
    async move {
        let end = session.run(&mut reader, liveness, &mut stop, &writer_done).await;
        drop((reader, stop, writer_done));
        let Session { instance, tx, watches, events_rx, reports_rx, .. } = session;
        drop((watches, events_rx, reports_rx));
        if let End::SlowConsumer = end {
            // The writer drops what is queued (the memory goes now, not when the peer reads),
            // sends `slow-consumer` if the socket takes it within a second, and closes.
            reg.shared.stats.slow_consumers_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "sfc::audit", session = session_id, %peer, instance = ?instance,
                queued = outq.queued.load(Ordering::Relaxed), budget = outq.budget,
                "slow consumer: its outbound queue went over --max-outbound; closing");
            outq.slow.cancel();
        }
        if let Some(id) = &instance {
            let mut st = reg.state();
            match end {
                End::Lost | End::SlowConsumer => st.mark_offline(id, Some(session_id), OfflineReason::ConnectionLost),
                End::Missed => st.mark_offline(id, Some(session_id), OfflineReason::MissedReports),
                End::Left | End::Shutdown => {}
            }
        }
        drop(tx);
        reg.shared.stats.sessions_current.fetch_sub(1, Ordering::Relaxed);
        // The writer ends once it has sent its last frame; don't let a stuck peer keep it forever.
        let abort = writer_task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer_task).await.is_err() {
            abort.abort();
        }
        tracing::debug!(target: "sfc::registry", session = session_id, %peer, end = ?end, "session closed");
    }
}

/// Validates hello; returns it with the chosen codec and interval. Public only for the fuzz
/// targets in `fuzz/`; not a stable API.
#[doc(hidden)]
pub fn check_hello(reg: &Registry, h: Hello) -> Result<(Hello, Codec, Duration), ProtocolError> {
    let allowed = &reg.shared.config.codecs;
    let codec = Codec::choose_from(&h.codecs, allowed).ok_or_else(|| {
        let speaks: Vec<&str> = allowed.iter().map(|c| c.name()).collect();
        ProtocolError::new(
            ErrorCode::UnsupportedCodec,
            format!("none of the offered codecs {:?} is supported (this registry speaks {})", h.codecs, speaks.join(", ")),
        )
    })?;
    let invalid = |e: crate::Error| ProtocolError::new(ErrorCode::InvalidField, e.to_string());
    let interval = match (h.role, h.interval_ms) {
        (_, Some(ms)) => {
            crate::limits::check_interval_ms(ms).map_err(invalid)?;
            Duration::from_millis(ms)
        }
        (Role::Service, None) => reg.shared.config.default_interval,
        (Role::Observer, None) => OBSERVER_INTERVAL,
    };
    match (&h.role, &h.registration) {
        (Role::Service, None) => {
            return Err(ProtocolError::new(ErrorCode::InvalidField, "hello with role service needs a registration"))
        }
        (Role::Service, Some(r)) => crate::limits::check_registration(r).map_err(invalid)?,
        (Role::Observer, Some(_)) => {
            return Err(ProtocolError::new(ErrorCode::InvalidField, "hello with role observer must not carry a registration"))
        }
        (Role::Observer, None) => {}
    }
    Ok((h, codec, interval))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Box<Outbound>>,
    done: CancellationToken,
    commands_sent: CommandsSent,
    outq: Arc<OutQueue>,
) {
    let _guard = done.drop_guard();
    let slow = outq.slow.clone();
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = slow.cancelled() => break 'outer,
            m = rx.recv() => match m { Some(m) => m, None => break 'outer },
        };
        let mut next = Some(first);
        // Batch whatever is already queued into one flush.
        while let Some(ob) = next.take() {
            // The message stays in its box (not moved into this future, which lives as long
            // as the connection); the rare ends run in boxed futures for the same reason.
            let res = match &*ob {
                Outbound::Send(m) => {
                    outq.sent(approx_size(m));
                    if let Message::Command(c) = m {
                        commands_sent.sent(c.command_id);
                    }
                    tokio::select! {
                        biased;
                        _ = slow.cancelled() => break 'outer,
                        r = writer.feed(m) => r,
                    }
                }
                Outbound::Close(m) => {
                    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), async {
                        let _ = writer.feed(m).await;
                        let _ = writer.shutdown().await;
                    }))
                    .await;
                    break 'outer;
                }
            };
            if res.is_err() {
                break 'outer;
            }
            next = rx.try_recv().ok();
        }
        let flushed = tokio::select! {
            biased;
            _ = slow.cancelled() => break 'outer,
            r = writer.flush() => r,
        };
        if flushed.is_err() {
            break;
        }
    }
    if slow.is_cancelled() {
        // Free the queue now: the peer is not reading it.
        rx.close();
        while rx.try_recv().is_ok() {}
        let msg = Message::error(
            None,
            ErrorCode::SlowConsumer,
            format!("this session fell behind: more than {} bytes queued for it (--max-outbound); closing", outq.budget),
            true,
        );
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), async move {
            writer.send(&msg).await?;
            writer.shutdown().await
        }))
        .await;
    }
}

/// The bytes queued for one session's peer (estimated by [`approx_size`]), against its
/// budget (`--max-outbound`). The session adds what it queues; the writer takes off what it
/// hands to the socket. Frames the state queues directly (commands, a superseded notice) are
/// not counted: they are few and small.
pub(crate) struct OutQueue {
    queued: AtomicUsize,
    budget: usize,
    /// Cancelled when the session went over its budget: the writer drops the queue.
    slow: CancellationToken,
}

impl OutQueue {
    fn new(budget: usize) -> Self {
        OutQueue { queued: AtomicUsize::new(0), budget, slow: CancellationToken::new() }
    }

    /// Counts `size` more bytes queued, unless that goes over the budget. A single frame
    /// larger than the budget passes when nothing else is queued (a query over a large fleet).
    fn admit(&self, size: usize) -> bool {
        let before = self.queued.load(Ordering::Relaxed);
        if before > 0 && before.saturating_add(size) > self.budget {
            return false;
        }
        self.queued.fetch_add(size, Ordering::Relaxed);
        true
    }

    fn sent(&self, size: usize) {
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(size)));
    }
}

/// What a message costs in memory while it waits in a queue, roughly (its records, strings
/// and JSON values; proportional to its encoded size). Cheap: no encoding.
pub(crate) fn approx_size(m: &Message) -> usize {
    const BASE: usize = 64;
    match m {
        Message::Result(r) => BASE + r.instances.iter().map(record_size).sum::<usize>(),
        Message::Event(e) => BASE + event_size(&e.event),
        Message::Command(c) => {
            BASE + c.name.len() + c.reason.as_ref().map_or(0, String::len) + json_size(&c.payload)
                + c.issued_by.as_ref().map_or(0, String::len)
        }
        Message::Error(e) => BASE + e.message.len(),
        _ => BASE,
    }
}

pub(crate) fn event_size(e: &Event) -> usize {
    96 + e.id.len() + e.group.len() + e.service.len() + e.instance.as_deref().map_or(0, record_size) + json_size(&e.detail)
}

pub(crate) fn record_size(r: &InstanceRecord) -> usize {
    let opt = |v: &Option<String>| v.as_ref().map_or(0, |s| s.len() + 24);
    let m = &r.metrics;
    let metric_strings = [&m.host.hostname, &m.host.os_name, &m.host.os_version, &m.host.kernel, &m.host.arch, &m.process.user]
        .into_iter()
        .map(opt)
        .sum::<usize>();
    let gauges = m.custom.keys().chain(m.runtime.keys()).map(|k| k.len() + 48).sum::<usize>();
    320 + r.id.len()
        + r.group.len()
        + r.service.len()
        + r.instance_id.len()
        + r.hostname.len()
        + opt(&r.health_note)
        + r.tags.iter().map(|t| t.len() + 24).sum::<usize>()
        + r.metadata.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>()
        + r.endpoints.iter().map(|e| e.name.len() + e.host.len() + e.protocol.len() + 72).sum::<usize>()
        + opt(&r.version)
        + r.api.as_ref().map_or(0, |a| a.url.len() + 24)
        + opt(&r.tls_identity)
        + r.wire.len()
        + metric_strings
        + gauges
}

pub(crate) fn json_size(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(s) => 24 + s.len(),
        Value::Array(a) => 24 + a.iter().map(json_size).sum::<usize>(),
        Value::Object(o) => 32 + o.iter().map(|(k, v)| k.len() + 32 + json_size(v)).sum::<usize>(),
    }
}

/// Ids of the commands the writer sent to this client and not yet answered: the reader lets
/// their results past the rate limit. Per session, and bounded: a client that never answers
/// keeps only the newest [`CommandsSent::KEEP`] (the rest are answered as ordinary frames).
#[derive(Clone, Default)]
struct CommandsSent(Arc<std::sync::Mutex<std::collections::VecDeque<u64>>>);

impl CommandsSent {
    const KEEP: usize = 256;

    fn sent(&self, id: u64) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(id);
    }

    /// Whether `id` answers a command sent here (and forgets it).
    fn answered(&self, id: u64) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match q.iter().position(|&x| x == id) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    Lost,
    /// Its outbound queue went over `--max-outbound`.
    SlowConsumer,
    Missed,
    Left,
    Shutdown,
}

struct WatchSub {
    id: u64,
    filter: Filter,
    reports: bool,
    /// Events up to this sequence number were in the snapshot.
    after: u64,
}

struct Session {
    /// Bytes queued for the peer, against `--max-outbound`.
    outq: Arc<OutQueue>,
    /// Set when a frame would have gone over the budget: the loop ends the session.
    slow: bool,
    /// Commands written to this client: each earns its `command-result` a pass past the rate limit.
    commands_sent: CommandsSent,
    reg: Registry,
    id: u64,
    instance: Option<String>,
    tx: OutboundTx,
    watches: Vec<WatchSub>,
    events_rx: Option<broadcast::Receiver<Arc<Event>>>,
    reports_rx: Option<broadcast::Receiver<Arc<Event>>>,
    limit: RateLimit,
}

/// Token bucket over the frames one session sends, so one loud client cannot take the
/// registry's time from the others.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
    warned_at: Option<Instant>,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let rate = per_second.max(1) as f64;
        RateLimit { rate, burst: 2.0 * rate, tokens: 2.0 * rate, last: Instant::now(), dropped: 0, warned_at: None }
    }

    fn allow(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// At most one warning a second, with the count dropped since the last one.
    fn warning(&mut self, now: Instant) -> Option<u64> {
        if self.warned_at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.dropped))
    }
}

/// A frame queued for the writer ([`Session::send`]): ready at once, or waiting for room.
type Queued = OptionFuture<BoxFuture<'static, ()>>;

/// What the session loop does next ([`Session::run`]).
enum Step {
    /// Wait, if need be, for room for a frame queued.
    Queued(Queued),
    /// Handle a frame (in a boxed future).
    Handle(Box<Message>),
    /// Pass an event (or a report) on to the session's watches.
    Deliver(Result<Arc<Event>, broadcast::error::RecvError>, bool),
    /// Wait for the closing frame to be queued, then end.
    Close(Queued, End),
    End(End),
}

async fn recv_opt(rx: &mut Option<broadcast::Receiver<Arc<Event>>>) -> Result<Arc<Event>, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut crate::protocol::connection::FrameReader<R>,
        liveness: Duration,
        stop: &mut broadcast::Receiver<()>,
        writer_done: &CancellationToken,
    ) -> End {
        let sleep = tokio::time::sleep(liveness);
        tokio::pin!(sleep);
        loop {
            // Each branch decides without awaiting, and what it decided is awaited below, out
            // of the `select!`: a frame (a `Message`, ~500 bytes) is then never held across an
            // await, and the future, which lives as long as the connection, stays small.
            // Biased, the liveness timer last: a session polled late (a busy registry) whose
            // frames already wait in the socket must read them, not time out in front of them.
            let step = tokio::select! {
                biased;
                _ = stop.recv() => Step::Close(
                    self.close(Message::error(None, ErrorCode::ShuttingDown, "the registry is shutting down", true)),
                    End::Shutdown,
                ),
                _ = writer_done.cancelled() => Step::End(End::Lost),
                m = reader.next() => match m {
                    None | Some(Err(ReadError::Io(_))) => Step::End(End::Lost),
                    Some(Err(ReadError::Protocol(e))) => {
                        self.reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(target: "sfc::registry", session = self.id, error = %e, "protocol error: closing");
                        Step::Close(self.close(Message::error(None, e.code, e.message, true)), End::Lost)
                    }
                    Some(Ok(msg)) => {
                        let now = Instant::now();
                        sleep.as_mut().reset(now + liveness);
                        self.frame(msg, now)
                    }
                },
                ev = recv_opt(&mut self.events_rx) => Step::Deliver(ev, false),
                ev = recv_opt(&mut self.reports_rx) => Step::Deliver(ev, true),
                _ = &mut sleep => {
                    // The registry itself late (paused, starved): not the client's fault.
                    if let Some(fresh) = lateness::excused(sleep.deadline(), Instant::now(), liveness) {
                        sleep.as_mut().reset(fresh);
                        continue;
                    }
                    tracing::info!(target: "sfc::registry", session = self.id, instance = ?self.instance,
                        "no frame within the liveness window: closing");
                    Step::Close(
                        self.close(Message::error(None, ErrorCode::LivenessTimeout,
                            format!("no frame for {}", crate::duration::format(liveness)), true)),
                        End::Missed,
                    )
                }
            };
            match step {
                Step::Queued(q) => {
                    q.await;
                }
                Step::Handle(msg) => {
                    let handling = Box::pin(self.handle(*msg));
                    if let Some(end) = handling.await {
                        return end;
                    }
                }
                // Boxed: delivering (events to watchers, not a service's steady traffic) holds
                // its event, frames and ids across awaits, ~300 bytes the task would keep.
                Step::Deliver(ev, reports) => Box::pin(self.deliver(ev, reports)).await,
                Step::Close(q, end) => {
                    q.await;
                    return end;
                }
                Step::End(end) => return end,
            }
            if self.slow {
                return End::SlowConsumer;
            }
        }
    }

    /// One frame from the client, past the liveness timer: the rate limit, then reports and
    /// pings (the steady traffic) at once; the rest (queries, watches) in a boxed future, so
    /// that their state is not part of the session's future either.
    fn frame(&mut self, msg: Message, now: Instant) -> Step {
        // Leave always passes, and one command result per command sent: they end work rather
        // than add it. Results beyond that (answers to nothing) are traffic like any other.
        let exempt = match &msg {
            Message::Leave(_) => true,
            Message::CommandResult(r) => self.commands_sent.answered(r.command_id),
            _ => false,
        };
        if !exempt && !self.limit.allow(now) {
            self.reg.shared.stats.rate_limited_total.fetch_add(1, Ordering::Relaxed);
            let Some(n) = self.limit.warning(now) else { return Step::Queued(None.into()) };
            tracing::warn!(target: "sfc::audit", session = self.id, instance = ?self.instance, dropped = n, "rate limited");
            let text = format!(
                "more than {} frames/s: {} {} dropped (the first was a {})",
                self.limit.rate, n, if n == 1 { "frame" } else { "frames" }, msg.name());
            return Step::Queued(self.error(None, ErrorCode::RateLimited, text));
        }
        match msg {
            Message::Report(report) => Step::Queued(self.report(report)),
            Message::Ping(p) => {
                Step::Queued(self.send(Message::Pong(Pong { id: p.id, server_time: crate::model::now_ms() })))
            }
            other => Step::Handle(Box::new(other)),
        }
    }

    /// Queues `msg` for the writer; await the result. Not an `async fn`: its future would
    /// carry the message, and every future that awaits it would too, inside the session's
    /// task for as long as the connection lasts (BENCHMARKS.md, "Memory per connected instance").
    fn send(&mut self, msg: Message) -> Queued {
        if self.slow {
            return None.into();
        }
        // Over the byte budget: the peer is not reading; the loop closes the session with
        // `slow-consumer` and the writer frees the queue.
        if !self.outq.admit(approx_size(&msg)) {
            self.slow = true;
            return None.into();
        }
        self.enqueue(Outbound::Send(msg))
    }

    fn close(&self, msg: Message) -> Queued {
        self.enqueue(Outbound::Close(msg))
    }

    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Queued {
        self.send(Message::error(id, code, message, false))
    }

    /// Into the queue at once when it has room (nearly always). A queue full by count (1024
    /// small frames) is waited on, which holds back only this session, in a boxed future made
    /// only then.
    fn enqueue(&self, ob: Outbound) -> Queued {
        match self.tx.try_send(ob) {
            Err(mpsc::error::TrySendError::Full(ob)) => {
                let tx = self.tx.clone();
                Some(Box::pin(async move {
                    let _ = tx.send(*ob).await;
                }) as BoxFuture<'static, ()>)
                .into()
            }
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None.into(),
        }
    }

    fn report(&mut self, report: crate::protocol::Report) -> Queued {
        let Some(id) = self.instance.as_deref() else {
            return self.error(None, ErrorCode::UnexpectedMessage, "observers do not send reports");
        };
        if let Err(e) = check_report(&report) {
            return self.error(None, ErrorCode::InvalidField, format!("report {} dropped: {e}", report.seq));
        }
        self.reg.shared.stats.reports_total.fetch_add(1, Ordering::Relaxed);
        self.reg.state().apply_report(id, Some(self.id), report);
        None.into()
    }

    async fn handle(&mut self, msg: Message) -> Option<End> {
        match msg {
            Message::Report(report) => {
                self.report(report).await;
            }
            Message::Leave(l) => {
                if let Some(id) = &self.instance {
                    self.reg.state().mark_left(id, Some(self.id), l.reason);
                }
                self.enqueue(Outbound::Close(Message::Leave(Default::default()))).await;
                return Some(End::Left);
            }
            Message::Ping(p) => {
                self.send(Message::Pong(Pong { id: p.id, server_time: crate::model::now_ms() })).await;
            }
            Message::Query(q) => {
                let (instances, cursor, barrier) = {
                    let st = self.reg.state();
                    (st.query(&q.filter), st.cursor(), st.barrier())
                };
                let instances = answer(instances);
                // Answered once what it shows is committed (group commit).
                if let Some(b) = barrier {
                    let _ = b.await;
                }
                self.send(Message::Result(QueryResult { id: q.id, instances, cursor })).await;
            }
            Message::Watch(w) => {
                if self.watches.iter().any(|x| x.id == w.id) {
                    self.error(Some(w.id), ErrorCode::InvalidField, format!("watch id {} is already in use", w.id)).await;
                    return None;
                }
                // A cursor from another registry of the fleet (`--store etcd`, where events
                // are numbered by etcd revision) that this one has not reached yet: wait for it.
                if let Some(after) = w.after {
                    self.reg.caught_up(after).await;
                }
                // Subscribe and snapshot under the lock that orders events, so the watcher
                // misses nothing between the two.
                let (instances, cursor, replay, barrier) = {
                    let st = self.reg.state();
                    if self.events_rx.is_none() {
                        self.events_rx = Some(self.reg.shared.events_tx.subscribe());
                    }
                    if w.reports && self.reports_rx.is_none() {
                        self.reports_rx = Some(self.reg.shared.reports_tx.subscribe());
                    }
                    // A cursor beyond ours means the registry restarted: nothing to replay.
                    let replay = match w.after {
                        Some(after) if after < st.cursor() => st.events_after(after, usize::MAX),
                        _ => Vec::new(),
                    };
                    (st.query(&w.filter), st.cursor(), replay, st.barrier())
                };
                let instances = answer(instances);
                // Answered once what it shows is committed (group commit); the transitions
                // it already shows and that come after `cursor` follow as events.
                if let Some(b) = barrier {
                    let _ = b.await;
                }
                self.send(Message::Result(QueryResult { id: w.id, instances, cursor })).await;
                for ev in replay.iter().filter(|ev| matches_event(&w.filter, ev)) {
                    if self.slow {
                        break;
                    }
                    self.send(Message::Event(crate::protocol::EventMessage { watch: w.id, event: (**ev).clone() })).await;
                }
                self.watches.push(WatchSub { id: w.id, filter: w.filter, reports: w.reports, after: cursor });
            }
            Message::Unwatch(u) => {
                let before = self.watches.len();
                self.watches.retain(|x| x.id != u.watch);
                if self.watches.len() == before {
                    self.error(Some(u.id), ErrorCode::UnknownWatch, format!("no watch with id {}", u.watch)).await;
                    return None;
                }
                if self.watches.is_empty() {
                    self.events_rx = None;
                }
                if !self.watches.iter().any(|x| x.reports) {
                    self.reports_rx = None;
                }
                let cursor = self.reg.state().cursor();
                self.send(Message::Result(QueryResult { id: u.id, instances: Vec::new(), cursor })).await;
            }
            Message::CommandResult(r) => {
                let cid = r.command_id;
                if !self.reg.state().finish_command(self.id, r) {
                    self.error(None, ErrorCode::InvalidField,
                        format!("command {cid} is unknown or no longer awaited")).await;
                }
            }
            Message::Error(e) => {
                tracing::info!(target: "sfc::registry", session = self.id, code = %e.code, message = %e.message, "client reported an error");
            }
            other => {
                self.error(None, ErrorCode::UnexpectedMessage,
                    format!("{} is not a message a client sends after the handshake", other.name())).await;
            }
        }
        None
    }

    async fn deliver(&mut self, ev: Result<Arc<Event>, broadcast::error::RecvError>, reports: bool) {
        match ev {
            Ok(ev) => {
                // Report events travel thin (no record: the broadcast ring would keep 16,384
                // of them); the current record is filled in here, for watches that want it.
                let ev = if reports && ev.kind == EventKind::Report && ev.instance.is_none() {
                    let wanted = self.watches.iter().any(|w| w.reports && w.filter.group.as_deref().is_none_or(|g| g == ev.group));
                    if !wanted {
                        return;
                    }
                    // Shared, not copied: the next report copies the record only if this
                    // frame still holds it (`Arc::make_mut` in the state).
                    let Some(record) = self.reg.current_record(&ev.id) else { return };
                    Arc::new(Event { instance: Some(record), ..(*ev).clone() })
                } else {
                    ev
                };
                let ids: Vec<u64> = self
                    .watches
                    .iter()
                    .filter(|w| (if reports { w.reports } else { ev.seq > w.after }) && matches_event(&w.filter, &ev))
                    .map(|w| w.id)
                    .collect();
                let event = |watch, event| Message::Event(crate::protocol::EventMessage { watch, event });
                let mut msgs = Vec::with_capacity(ids.len());
                if let Some((&last, rest)) = ids.split_last() {
                    msgs.extend(rest.iter().map(|&w| event(w, (*ev).clone())));
                    // The last watch takes the event itself when nobody else holds it (a
                    // report event filled in above): no second copy of the record.
                    msgs.push(event(last, Arc::unwrap_or_clone(ev)));
                }
                for msg in msgs {
                    self.send(msg).await;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(target: "sfc::registry", session = self.id, missed = n, "watcher lagged");
                let what = if reports { "report updates" } else { "events" };
                self.error(None, ErrorCode::Lagged,
                    format!("this session fell behind and missed {n} {what}; query again to resync")).await;
            }
            Err(broadcast::error::RecvError::Closed) => {
                if reports { self.reports_rx = None } else { self.events_rx = None }
            }
        }
    }
}

/// A query's records for a result frame: sorted by id and copied, after the state lock is
/// released.
fn answer(mut records: Vec<Arc<InstanceRecord>>) -> Vec<InstanceRecord> {
    super::state::sort_by_id(&mut records);
    records.into_iter().map(Arc::unwrap_or_clone).collect()
}

/// Event filters match the record carried by the event; `evicted` events carry none and match
/// on group only.
fn matches_event(f: &Filter, ev: &Event) -> bool {
    match &ev.instance {
        Some(r) => {
            // A watcher filtering on status or health still wants to hear that an instance
            // left the filtered state, so neither is applied to transitions.
            let f = Filter { status: None, health: None, ..f.clone() };
            f.matches(r)
        }
        None => f.group.as_deref().is_none_or(|g| g == ev.group),
    }
}

fn check_report(r: &crate::protocol::Report) -> Result<(), crate::Error> {
    crate::limits::check_report_parts(&r.metrics, r.health_note.as_deref())
}

/// Reads one legacy document to its end and applies it.
async fn serve_legacy<S: AsyncRead + Unpin>(
    reg: &Registry,
    mut stream: S,
    first: u8,
    peer: SocketAddr,
    who: PeerIdentity,
    deadline: Instant,
) {
    if !reg.shared.config.admission.legacy {
        reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "sfc::registry", %peer, "legacy report rejected: legacy documents are refused (--legacy off)");
        return;
    }
    let max = reg.shared.config.max_frame;
    let mut buf = vec![first];
    let read = tokio::time::timeout_at(deadline, async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(true);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > max {
                return Ok(false);
            }
        }
    })
    .await;
    let fail = |why: String| {
        reg.shared.stats.protocol_errors_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "sfc::registry", %peer, "legacy report rejected: {why}");
    };
    match read {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return fail(format!("document exceeds the maximum of {max} bytes")),
        // A TLS peer that ends the TCP stream without close_notify still delivered its bytes.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Ok(Err(e)) => return fail(format!("read failed: {e}")),
        Err(_) => return fail("the document did not end within the handshake timeout".into()),
    }
    let doc = match legacy::parse(&buf) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = crate::limits::check_registration(&doc.registration)
        .and_then(|_| crate::limits::check_interval_ms(doc.interval_ms))
        .and_then(|_| crate::limits::check_report_parts(&doc.report.metrics, doc.report.health_note.as_deref()))
    {
        return fail(e.to_string());
    }
    if let Err(e) = authorize(reg, &who, peer, Some(&doc.registration.group)) {
        return fail(e.message);
    }
    let id = crate::model::InstanceRecord::make_id(&doc.registration.group, &doc.registration.instance_id);
    let window = Duration::from_millis(doc.interval_ms) * reg.shared.config.missed_reports;
    let arm = {
        let mut st = reg.state();
        if st.instances.get(&id).is_some_and(|i| i.session.is_some()) {
            drop(st);
            return fail(format!("{id} belongs to a live v1 session"));
        }
        // A record a v1 session made stays v1: a legacy document neither revives it, nor
        // renames its service, drops its endpoints or marks it left (an operator
        // deregisters it first to hand the identity to a legacy client).
        if st.instances.get(&id).is_some_and(|i| i.record.wire != "legacy") {
            drop(st);
            return fail(format!("{id} is a v1 record; legacy documents may not change it"));
        }
        if doc.action != legacy::LegacyAction::Leave {
            if let Err(why) = super::policy::check_quota(&st, &reg.shared.config, &doc.registration.group, &id, true) {
                drop(st);
                reg.shared.stats.refused_instances_total.fetch_add(1, Ordering::Relaxed);
                return fail(format!("{id} refused: {why}"));
            }
        }
        // Counted once accepted: a rejected document is a protocol error, not a report.
        reg.shared.stats.legacy_reports_total.fetch_add(1, Ordering::Relaxed);
        reg.shared.stats.reports_total.fetch_add(1, Ordering::Relaxed);
        if doc.action == legacy::LegacyAction::Leave {
            st.mark_left(&id, None, Some("legacy LEAVE".into()));
            return;
        }
        st.register(doc.registration, doc.interval_ms, None, who.subject, "legacy",
            serde_json::json!({ "peer": peer.to_string(), "wire": "legacy" }));
        st.apply_report(&id, None, doc.report);
        let Some(inst) = st.instances.get_mut(&id) else { return };
        let deadline = Instant::now() + window;
        // A shorter interval than before: the task asleep until the old deadline would
        // notice too late, so a new one takes over (the old one ends when it wakes).
        let shorter = inst.timer_armed && inst.deadline.is_some_and(|(d, _)| deadline < d);
        inst.deadline = Some((deadline, OfflineReason::MissedReports));
        if shorter {
            inst.timer_gen += 1;
            true
        } else {
            !std::mem::replace(&mut inst.timer_armed, true)
        }
    };
    if arm {
        reg.arm_deadline(id);
    }
}

/// The registry's own health, after Lifeguard's "local health": when the registry itself is
/// late (the process was paused, or starved of CPU), a client's liveness deadline that passes
/// meanwhile is not charged to the client. Lateness is seen two ways: the sweeper's 100 ms
/// clock tick arrives more than [`lateness::SLACK`] late, or a deadline timer wakes more than
/// that after its deadline. Then every deadline that passes within one window of the moment
/// the registry resumed is moved to that moment plus the instance's window: reports that
/// waited in the accept queue or the socket buffers during the pause get their chance.
pub(crate) mod lateness {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::time::Instant;

    /// The sweeper's clock tick.
    pub(crate) const TICK: Duration = Duration::from_millis(100);
    /// How late a tick or a timer may be before the registry counts itself late.
    pub(crate) const SLACK: Duration = Duration::from_millis(500);

    /// When the registry last resumed from being late.
    static RESUMED: Mutex<Option<Instant>> = Mutex::new(None);

    fn note_late(now: Instant, by: Duration) {
        let mut r = RESUMED.lock().unwrap_or_else(|e| e.into_inner());
        let new_episode = r.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(1));
        *r = Some(now);
        if new_episode {
            tracing::warn!(target: "sfc::registry", late_ms = by.as_millis() as u64,
                "the registry itself was late (paused or starved): liveness deadlines that pass now get one more window");
        }
    }

    /// Called by the sweeper on every tick of its [`TICK`] clock.
    pub(crate) fn observe_tick(last: Instant, now: Instant) {
        let gap = now.saturating_duration_since(last);
        if gap > TICK + SLACK {
            note_late(now, gap - TICK);
        }
    }

    /// For a deadline found passed at `now`: Some(new deadline) when the registry was late,
    /// so the client is not charged; None when the deadline stands.
    pub(crate) fn excused(deadline: Instant, now: Instant, window: Duration) -> Option<Instant> {
        let late_by = now.saturating_duration_since(deadline);
        if late_by > SLACK {
            note_late(now, late_by);
        }
        let resumed = (*RESUMED.lock().unwrap_or_else(|e| e.into_inner()))?;
        let fresh = resumed + window;
        (fresh > now && fresh > deadline).then_some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{EventKind, Filter};
    use crate::registry::{bind, serve, Registry, RegistryConfig};

    /// The task that holds a connection keeps only what its session loop needs: the
    /// handshake's state (rustls mid-handshake, hello, welcome) is boxed and freed once the
    /// session starts, the loop never holds a frame across an await, the writer keeps
    /// queued frames in their boxes, the reader and writer have one place each in the futures
    /// (not one per async fn they pass through) and delivering events to watches is boxed
    /// (BENCHMARKS.md, "Memory per connected instance"). Future sizes are the compiler's; the
    /// bounds leave room for it to vary, and sit below what the code took before (debug
    /// build: the connection's future was 14,184 bytes, then 2,416, now 1,224; the writer's
    /// 1,072, now 536).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        const BOUND_RUN: usize = 1400;
        const BOUND_REFUSE: usize = 256;
        const BOUND_WRITER: usize = 768;
        let reg = Registry::new(RegistryConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _c1 = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (tcp1, peer) = listener.accept().await.expect("accept");
        let _c2 = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (tcp2, _) = listener.accept().await.expect("accept");
        let (_stop_tx, stop) = tokio::sync::broadcast::channel(1);
        let run = super::run(reg.clone(), tcp1, peer, stop);
        let refuse = super::refuse(reg.clone(), tcp2, peer);
        let (a, _b) = tokio::io::duplex(64);
        let conn = crate::protocol::Connection::new(a, 1 << 20);
        let (_tx, rx) = super::OutboundTx::channel(4);
        let writer = super::write_loop(conn.writer, rx, Default::default(), Default::default(),
            std::sync::Arc::new(super::OutQueue::new(1)));
        let sizes = [("run", std::mem::size_of_val(&run)), ("refuse", std::mem::size_of_val(&refuse)),
            ("write_loop", std::mem::size_of_val(&writer))];
        eprintln!("future sizes: {sizes:?}");
        for ((what, size), bound) in sizes.into_iter().zip([BOUND_RUN, BOUND_REFUSE, BOUND_WRITER]) {
            assert!(size <= bound, "the {what} future is {size} bytes, over its bound of {bound}");
        }
    }

    /// Two report watches in one session each get every report with the instance's current
    /// record, taken shared from the registry and copied into the frame off the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn report_watches_get_each_report_with_the_current_record() {
        let reg = Registry::new(RegistryConfig::default());
        let (listener, addr) = bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(reg.clone(), listener, async {
            let _ = stopped.await;
        }));
        let client = |b: sfc_client::ClientBuilder| {
            b.ignore_env().registry(addr.to_string()).insecure_plaintext(true).start().expect("client")
        };
        let obs = client(sfc_client::ClientBuilder::observer());
        let mut first = obs.watch(Filter::group("g"), true).expect("watch");
        let mut second = obs.watch(Filter::group("g"), true).expect("watch");
        // The query's answer comes after both watches are in place (frames are handled in order).
        obs.query(Filter::default()).await.expect("query");
        let svc = client(sfc_client::Client::builder().group("g").instance_id("a").service("svc").interval(Duration::from_millis(100)));
        svc.set_gauge("mark", 7.0).expect("gauge");
        for w in [&mut first, &mut second] {
            let found = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(ev) = w.next().await {
                    if ev.kind != EventKind::Report {
                        continue;
                    }
                    let r = ev.instance.expect("a report event carries the record");
                    assert_eq!((r.id.as_str(), ev.id.as_str()), ("g/a", "g/a"));
                    if r.metrics.custom.get("mark") == Some(&7.0) {
                        return true;
                    }
                }
                false
            })
            .await;
            assert_eq!(found, Ok(true), "a report with the gauge reached the watch");
        }
        let _ = svc.stop().await;
        let _ = stop.send(());
        let _ = server.await;
    }
}
