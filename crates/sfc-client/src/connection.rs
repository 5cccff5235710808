//! The client's connection task: connect (with failover and backoff), handshake, then one
//! loop that reports on a timer, serves lookups, watches and queries, answers commands and
//! notices a registry that stopped answering.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::either::Either;

use super::{lock, ClientEvent, GroupCache, Shared};
use crate::error::{Error, Result};
use crate::model::{now_ms, Event, EventKind, Filter, InstanceRecord};
use crate::protocol::connection::{client_preamble, FrameReader, FrameWriter, ReadError};
use crate::protocol::{
    Codec, Command, CommandResult, Compression, Connection, ErrorCode, ErrorMessage, EventMessage, Hello, Leave, Message, Ping,
    Query, QueryResult, Report, Role, Unwatch, Watch,
    Welcome,
};

/// Requests from the [`super::Client`] handle to the task.
pub(crate) enum Control {
    /// Health changed: report now instead of at the next tick.
    ReportNow,
    /// Make sure the group is watched into the lookup cache; answer once its snapshot is in.
    WatchGroup(String, oneshot::Sender<Result<()>>),
    Query(Filter, oneshot::Sender<Result<Vec<InstanceRecord>>>),
    Watch { id: u64, filter: Filter, reports: bool, tx: mpsc::UnboundedSender<Event>, cursor: Option<u64> },
    Unwatch(u64),
    Respond(CommandResult),
    /// Answered `true` once the registry has echoed the leave, `false` when the client closed
    /// without that confirmation (no session, or the connection ended first).
    Stop(oneshot::Sender<bool>),
}

struct UserWatch {
    filter: Filter,
    reports: bool,
    tx: mpsc::UnboundedSender<Event>,
    /// Newest event seen, to resume after a reconnect.
    cursor: Option<u64>,
}

/// State that survives reconnects.
struct Task {
    shared: Arc<Shared>,
    watches: HashMap<u64, UserWatch>,
    /// Requests that arrived while disconnected.
    waiting: Vec<Control>,
    sampler: Option<crate::metrics::Sampler>,
    seq: u64,
    /// `stop()` waiting for the registry to echo our `leave` (answered once it has, or the
    /// connection ends; `stop()` bounds the wait with its own timeout).
    stop_done: Option<oneshot::Sender<bool>>,
}

type Stream = Either<crate::tls::TlsStream, TcpStream>;

/// What a connection attempt found (made once per connection: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Connected {
    /// A protocol v1 session.
    V1(Connection<Stream>, Welcome),
    /// A registry that predates protocol v1, with the legacy fallback on: a TLS connection
    /// ready for one legacy document.
    Legacy(Box<crate::tls::TlsStream>),
}

enum End {
    Stopped,
    Lost(String),
    /// Another session took over our identity: reconnecting would take it back, and the two
    /// would flap forever. The client stays down and says so.
    Superseded(String),
    /// The registry is stopping (`shutting-down`): the client moves to the next registry of
    /// its list at once, without backing off. With `--store etcd` that registry takes the
    /// session over while the stopping one still holds the record (no `offline`).
    Moved(String),
}

pub(crate) async fn run(shared: Arc<Shared>, mut ctl: mpsc::UnboundedReceiver<Control>) {
    // The registered pid: ours, or the process an agent stands for (ClientBuilder::pid).
    let sampler = (shared.config.sample_metrics && shared.config.role == Role::Service)
        .then(|| crate::metrics::Sampler::for_pid(shared.config.registration.pid));
    let mut task = Task { shared, watches: HashMap::new(), waiting: Vec::new(), sampler, seq: 0, stop_done: None };
    let n = task.shared.config.registries.len();
    let mut attempt: u32 = 0;
    let mut next = 0usize;
    let mut addr = String::new();
    // A v1 session that a legacy report's connection found (the registry was upgraded).
    let mut upgraded: Option<(Connection<Stream>, Welcome)> = None;
    loop {
        let connected = match upgraded.take() {
            Some((conn, welcome)) => Ok(Connected::V1(conn, welcome)),
            None => {
                addr = task.shared.config.registries[next % n].clone();
                next += 1;
                let shared = task.shared.clone();
                let connecting = connect(&shared, &addr);
                tokio::pin!(connecting);
                tokio::select! {
                    c = &mut connecting => c,
                    stop = task.wait_for_stop(&mut ctl) => {
                        // Stopped mid-handshake: the hello may already be at the registry,
                        // which then holds the instance online, and dropping the connection
                        // would leave it `offline (connection-lost)` instead of `left`. So the
                        // handshake finishes (bounded by connect_timeout, and `stop()` gives up
                        // after its stop_timeout) and the session's first act is the leave.
                        match connecting.await {
                            Ok(Connected::V1(conn, welcome)) => {
                                task.waiting.push(Control::Stop(stop));
                                Ok(Connected::V1(conn, welcome))
                            }
                            _ => { let _ = stop.send(false); return; }
                        }
                    }
                }
            }
        };
        match connected {
            Ok(Connected::Legacy(stream)) => {
                attempt = 0;
                match task.legacy(&addr, stream, &mut ctl).await {
                    LegacyEnd::Stopped => return,
                    LegacyEnd::Upgraded(session) => {
                        upgraded = Some(*session);
                        continue;
                    }
                    LegacyEnd::Lost(reason) => {
                        tracing::info!(target: "sfc::client", registry = %addr, %reason, "legacy report failed");
                        let _ = task.shared.events.send(ClientEvent::Disconnected { registry: addr.clone(), reason });
                        next -= 1;
                    }
                }
            }
            Ok(Connected::V1(conn, welcome)) => {
                attempt = 0;
                tracing::info!(target: "sfc::client", registry = %addr, session = welcome.session, "connected");
                if !task.shared.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    let _ = task.shared.connected.send_replace(true);
                    let _ = task.shared.events.send(ClientEvent::Connected { registry: addr.clone(), session: welcome.session });
                }
                let end = task.session(conn, &welcome, &mut ctl).await;
                let _ = task.shared.connected.send_replace(false);
                for gc in lock(&task.shared.cache).values_mut() {
                    gc.fresh = false;
                }
                match end {
                    End::Stopped => return,
                    End::Superseded(reason) => {
                        tracing::warn!(target: "sfc::client", registry = %addr, %reason,
                            "superseded by another session with the same identity: not reconnecting");
                        let _ = task.shared.events.send(ClientEvent::Disconnected { registry: addr.clone(), reason });
                        let stop = task.wait_for_stop(&mut ctl).await;
                        let _ = stop.send(false);
                        return;
                    }
                    End::Lost(reason) => {
                        tracing::info!(target: "sfc::client", registry = %addr, %reason, "disconnected");
                        let _ = task.shared.events.send(ClientEvent::Disconnected { registry: addr.clone(), reason });
                        // Try the same registry once more before failing over.
                        next -= 1;
                    }
                    End::Moved(reason) => {
                        tracing::info!(target: "sfc::client", registry = %addr, %reason, "registry stopping: moving to the next one");
                        let _ = task.shared.events.send(ClientEvent::Disconnected { registry: addr.clone(), reason });
                        // Another registry, at once: no backoff (a failed attempt there backs
                        // off as usual). With one registry only, wait for it to come back.
                        if n > 1 {
                            continue;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(target: "sfc::client", registry = %addr, error = %e, "connect failed");
                let code = match &e {
                    Error::Remote { code, .. } | Error::Protocol { code, .. } => Some(*code),
                    _ => None,
                };
                // Report each failure streak once per registry list pass, not every retry.
                if (attempt as usize).is_multiple_of(n.max(1)) {
                    let _ = task.shared.events.send(ClientEvent::Error { code, message: format!("{addr}: {e}") });
                }
            }
        }
        let cfg = &task.shared.config;
        let cap = cfg.reconnect_max.min(cfg.reconnect_min.saturating_mul(1u32 << attempt.min(16)));
        attempt = attempt.saturating_add(1);
        let delay = Duration::from_millis(rand::random_range(0..=cap.as_millis() as u64));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            stop = task.wait_for_stop(&mut ctl) => { let _ = stop.send(false); return; }
        }
    }
}

async fn connect(shared: &Shared, addr: &str) -> Result<Connected> {
    let cfg = &shared.config;
    let (host, port) = super::split_host_port(addr)?;
    let tcp = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| Error::Unreachable(format!("{addr}: connect timed out")))?
        .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let mut stream: Stream = match &shared.tls {
            Some(tls) => {
                // One config for every connection: its session store resumes this one.
                let tls = tls.clone();
                let name = sfc_proto::tls::server_name(&host)?;
                // ALPN tells a v1 registry from one that predates v1, before our last
                // handshake flight: see `crate::tls::connect`.
                match crate::tls::connect(tls, name, tcp, cfg.legacy)
                    .await
                    .map_err(|e| Error::Tls(format!("handshake with {addr} failed: {e}")))?
                {
                    crate::tls::Handshake::V1(s) => Either::Left(s),
                    crate::tls::Handshake::Legacy(s) => return Ok(Connected::Legacy(Box::new(s))),
                    crate::tls::Handshake::Predates => return Err(predates_v1()),
                }
            }
            None => Either::Right(tcp),
        };
        // With TLS 1.3 the registry's verdict on our certificate arrives as an alert on the
        // first read, after the handshake seemed to succeed.
        client_preamble(&mut stream, cfg.max_frame).await.map_err(|e| tls_refusal(addr, e))?;
        // Answers (query results over a large fleet) may be far larger than what we send.
        let mut conn = Connection::new(stream, cfg.max_frame.saturating_mul(64));
        let hello = Message::Hello(Hello {
            id: 1,
            role: cfg.role,
            codecs: cfg.codecs.iter().map(|c| c.name().to_string()).collect(),
            interval_ms: Some(cfg.interval.as_millis() as u64),
            registration: (cfg.role == Role::Service).then(|| cfg.registration.clone()),
            client: Some(cfg.client_name.clone()),
            compression: cfg.compression.iter().map(|c| c.name().to_string()).collect(),
        });
        conn.writer.send(&hello).await?;
        match conn.reader.next().await {
            Some(Ok(Message::Welcome(w))) => {
                // hello and welcome are JSON; every later frame uses what welcome announced.
                // A registry from before the codec field answers `json` and no compression.
                let codec = Codec::from_name(&w.codec).filter(|c| cfg.codecs.contains(c)).ok_or_else(|| {
                    Error::Protocol {
                        code: ErrorCode::UnsupportedCodec,
                        message: format!("registry picked codec {:?}, which this client did not offer", w.codec),
                    }
                })?;
                let compression = match w.compression.as_deref() {
                    None => None,
                    Some(name) => Some(Compression::from_name(name).filter(|c| cfg.compression.contains(c)).ok_or_else(
                        || Error::Protocol {
                            code: ErrorCode::UnsupportedCodec,
                            message: format!("registry picked compression {name:?}, which this client did not offer"),
                        },
                    )?),
                };
                conn.set_wire(codec, compression);
                Ok(Connected::V1(conn, w))
            }
            Some(Ok(Message::Error(e))) => Err(Error::Remote { code: e.code, message: e.message }),
            Some(Ok(other)) => Err(Error::Protocol {
                code: ErrorCode::UnexpectedMessage,
                message: format!("expected welcome, got {}", other.name()),
            }),
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Unreachable(format!("{addr} closed the connection during the handshake"))),
        }
    };
    tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout(format!("handshake with {addr}")))?
}

/// A registry that selected no ALPN `sfc/1`, with the legacy fallback off.
fn predates_v1() -> Error {
    Error::Protocol {
        code: ErrorCode::UnsupportedVersion,
        message: "the registry predates protocol v1: it selected no ALPN \"sfc/1\" in the TLS handshake, so the \
                  client abandoned the handshake and sent it nothing (upgrade it to `sfc registry`, or turn on the \
                  client's legacy option to report to it in the original service_fleet_control format)"
            .into(),
    }
}

/// Turns a TLS alert surfacing as an I/O error into a TLS error that says what to fix.
fn tls_refusal(addr: &str, e: ReadError) -> Error {
    if let ReadError::Io(io) = &e {
        if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            let hint = match tls {
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                    " (the registry requires a client certificate: set cert and key)"
                }
                // A certificate from another CA with the same name as the trusted one (two
                // `sfc certs init` directories) fails its signature check: `decrypt_error`.
                rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::DecryptError,
                ) => " (the registry does not trust this client certificate)",
                _ => "",
            };
            return Error::Tls(format!("{addr} refused the connection: {tls}{hint}"));
        }
    }
    e.into()
}

/// What a request id on the current connection is waiting for.
enum Pending {
    Query(oneshot::Sender<Result<Vec<InstanceRecord>>>),
    Group(String, Vec<oneshot::Sender<Result<()>>>),
    User(u64),
    Ack,
    Ping,
}

/// Where a watch id on the current connection delivers.
#[derive(Clone)]
enum Target {
    Group(String),
    User(u64),
}

struct Conn {
    /// The registry's inbound frame limit (welcome): a command result beyond it would end the
    /// session, so it is answered as an error result instead.
    max_frame: usize,
    writer: FrameWriter<tokio::io::WriteHalf<Stream>>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    targets: HashMap<u64, Target>,
    /// The first watch of a resync after `lagged`, until its answer arrives. A `lagged` that
    /// comes before that answer was sent before the registry saw the resync, which already
    /// covers it: resyncing again for it would replay the same history once more, and a
    /// burst of such errors would multiply the replay into a backlog that never drains.
    resyncing: Option<u64>,
}

impl Conn {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Task {
    /// While disconnected: queue requests, return on stop.
    async fn wait_for_stop(&mut self, ctl: &mut mpsc::UnboundedReceiver<Control>) -> oneshot::Sender<bool> {
        loop {
            match ctl.recv().await {
                Some(Control::Stop(tx)) => return tx,
                Some(Control::Unwatch(id)) => {
                    self.watches.remove(&id);
                }
                Some(Control::Watch { id, filter, reports, tx, cursor }) => {
                    self.watches.insert(id, UserWatch { filter, reports, tx, cursor });
                }
                Some(Control::ReportNow) | Some(Control::Respond(_)) => {}
                Some(other) => self.waiting.push(other),
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn build_report(&mut self) -> Report {
        let s = &self.shared;
        let mut metrics = self.sampler.as_mut().map(|x| x.sample()).unwrap_or_default();
        if !s.config.registration.hostname.is_empty() {
            metrics.host.hostname = Some(s.config.registration.hostname.clone());
        }
        metrics.custom = lock(&s.gauges).clone();
        metrics.runtime = lock(&s.runtime_metrics).clone();
        let (health, note) = lock(&s.health).clone();
        self.seq += 1;
        Report { seq: self.seq, sent_at: Some(now_ms()), health: Some(health), health_note: note, metrics }
    }

    async fn send_watch(&mut self, c: &mut Conn, target: Target) -> std::io::Result<()> {
        let id = c.id();
        let (filter, reports, after) = match &target {
            Target::Group(g) => (Filter::group(g.clone()), false, None),
            Target::User(u) => match self.watches.get(u) {
                Some(w) => (w.filter.clone(), w.reports, w.cursor),
                None => return Ok(()),
            },
        };
        c.pending.insert(id, match &target {
            Target::Group(g) => Pending::Group(g.clone(), Vec::new()),
            Target::User(u) => Pending::User(*u),
        });
        c.targets.insert(id, target);
        c.writer.send(&Message::Watch(Watch { id, filter, reports, after })).await
    }

    /// Handles one request from the handle; errors are write failures.
    async fn control(&mut self, c: &mut Conn, msg: Control) -> std::io::Result<Option<End>> {
        match msg {
            Control::ReportNow => {
                if self.shared.config.role == Role::Service {
                    let r = self.build_report();
                    c.writer.send(&Message::Report(r)).await?;
                }
            }
            Control::WatchGroup(group, reply) => {
                let fresh = lock(&self.shared.cache).get(&group).is_some_and(|g| g.fresh);
                if fresh {
                    let _ = reply.send(Ok(()));
                    return Ok(None);
                }
                // Join a watch already on its way for this group.
                for p in c.pending.values_mut() {
                    if let Pending::Group(g, waiters) = p {
                        if *g == group {
                            waiters.push(reply);
                            return Ok(None);
                        }
                    }
                }
                self.send_watch(c, Target::Group(group.clone())).await?;
                if let Some(Pending::Group(_, w)) = c.pending.get_mut(&c.next_id) {
                    w.push(reply);
                }
            }
            Control::Query(filter, reply) => {
                let id = c.id();
                c.pending.insert(id, Pending::Query(reply));
                c.writer.send(&Message::Query(Query { id, filter })).await?;
            }
            Control::Watch { id, filter, reports, tx, cursor } => {
                self.watches.insert(id, UserWatch { filter, reports, tx, cursor });
                self.send_watch(c, Target::User(id)).await?;
            }
            Control::Unwatch(uid) => {
                self.watches.remove(&uid);
                let ids: Vec<u64> =
                    c.targets.iter().filter(|(_, t)| matches!(t, Target::User(u) if *u == uid)).map(|(k, _)| *k).collect();
                for w in ids {
                    c.targets.remove(&w);
                    let id = c.id();
                    c.pending.insert(id, Pending::Ack);
                    c.writer.send(&Message::Unwatch(Unwatch { id, watch: w })).await?;
                }
            }
            Control::Respond(r) => c.writer.send(&Message::CommandResult(fit_result(r, c.max_frame))).await?,
            Control::Stop(done) => {
                let _ = c.writer.send(&Message::Leave(Leave { reason: Some("client stopped".into()) })).await;
                let _ = c.writer.shutdown().await;
                // Answered in `session` once the registry has echoed the leave: only then is
                // the instance `left` there, and a caller of `stop()` may count on it.
                self.stop_done = Some(done);
                return Ok(Some(End::Stopped));
            }
        }
        Ok(None)
    }

    async fn session(
        &mut self,
        conn: Connection<Stream>,
        welcome: &Welcome,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> End {
        let Connection { mut reader, writer } = conn;
        let mut c = Conn { max_frame: welcome.max_frame as usize, writer, next_id: 1, pending: HashMap::new(), targets: HashMap::new(), resyncing: None };
        let res = match self.resume(&mut c).await {
            Ok(None) => self.run(&mut c, &mut reader, welcome, ctl).await,
            other => other.map(|end| end.unwrap_or(End::Stopped)),
        };
        let end = res.unwrap_or_else(|e| End::Lost(format!("write failed: {e}")));
        self.finish(c, reader).await;
        end
    }

    /// On a new connection: the watches (lookup groups and the application's) again, then the
    /// requests that waited for a connection.
    async fn resume(&mut self, c: &mut Conn) -> std::io::Result<Option<End>> {
        let groups: Vec<String> = lock(&self.shared.cache).keys().cloned().collect();
        for g in groups {
            self.send_watch(c, Target::Group(g)).await?;
        }
        let users: Vec<u64> = self.watches.keys().copied().collect();
        for u in users {
            self.send_watch(c, Target::User(u)).await?;
        }
        for m in std::mem::take(&mut self.waiting) {
            if let Some(end) = self.control(c, m).await? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// The session loop: a report (or, for an observer, a ping) every interval, a ping when the
    /// registry has been quiet too long, the application's requests, and incoming frames.
    async fn run(
        &mut self,
        c: &mut Conn,
        reader: &mut FrameReader<ReadHalf<Stream>>,
        welcome: &Welcome,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> std::io::Result<End> {
        let interval = Duration::from_millis(welcome.interval_ms.max(1));
        // A registry that sends nothing for this long gets a ping; no answer within as long
        // again means it is gone (a hung host or a partition: no RST ever comes).
        let quiet = Duration::from_millis(welcome.liveness_ms).max(Duration::from_secs(10));
        let is_service = self.shared.config.role == Role::Service;
        // Reports start at once, so the registry has metrics from the first moment. One timer:
        // the tick also checks whether the registry has been quiet (a timer of its own would
        // wake the thread on its own; quiet is at least one interval, see `ticker`).
        let mut tick = crate::ticker::Ticker::new(interval);
        let mut last_rx = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(at) = ping_sent {
                        if at.elapsed() >= quiet {
                            return Ok(End::Lost(format!("registry did not answer a ping within {quiet:?}")));
                        }
                    } else if last_rx.elapsed() >= quiet {
                        let id = c.id();
                        c.pending.insert(id, Pending::Ping);
                        c.writer.send(&Message::Ping(Ping { id })).await?;
                        ping_sent = Some(Instant::now());
                    }
                    if is_service {
                        let r = self.build_report();
                        c.writer.send(&Message::Report(r)).await?;
                    } else {
                        // Observers ping every interval: the registry's liveness timer only
                        // counts frames it receives, however busy our watch is.
                        let id = c.id();
                        c.pending.insert(id, Pending::Ping);
                        c.writer.send(&Message::Ping(Ping { id })).await?;
                    }
                }
                m = ctl.recv() => match m {
                    Some(m) => if let Some(end) = self.control(c, m).await? { return Ok(end) },
                    None => return Ok(End::Stopped),
                },
                m = reader.next() => {
                    last_rx = Instant::now();
                    ping_sent = None;
                    match m {
                        None => return Ok(End::Lost("registry closed the connection".into())),
                        Some(Err(ReadError::Io(e))) => return Ok(End::Lost(format!("read failed: {e}"))),
                        Some(Err(ReadError::Protocol(e))) => {
                            let _ = c.writer.send(&Message::error(None, e.code, e.message.clone(), true)).await;
                            return Ok(End::Lost(format!("protocol error from registry: {e}")));
                        }
                        Some(Ok(msg)) => if let Some(end) = self.incoming(c, msg).await? { return Ok(end) },
                    }
                }
            }
        }
    }

    /// After the session: a stop waits for the registry's echo of `leave`; requests in flight
    /// fail (queries) or wait for the next connection (lookups).
    async fn finish(&mut self, mut c: Conn, mut reader: FrameReader<ReadHalf<Stream>>) {
        if let Some(done) = self.stop_done.take() {
            // The registry echoes `leave` after it has recorded it, then closes; an error or
            // the end of the stream ends the wait too (unconfirmed). Everything else still in
            // flight is dropped: the client is going away.
            let confirmed = loop {
                match reader.next().await {
                    Some(Ok(Message::Leave(_))) => break true,
                    Some(Err(_)) | None => break false,
                    Some(Ok(_)) => continue,
                }
            };
            let _ = done.send(confirmed);
        }
        for (_, p) in c.pending.drain() {
            match p {
                Pending::Query(tx) => {
                    let _ = tx.send(Err(Error::Unreachable("connection to the registry was lost".into())));
                }
                Pending::Group(g, waiters) => {
                    for w in waiters {
                        self.waiting.push(Control::WatchGroup(g.clone(), w));
                    }
                }
                _ => {}
            }
        }
    }

    /// One frame from the registry. Returns how the session ends, when it does.
    async fn incoming(&mut self, c: &mut Conn, msg: Message) -> std::io::Result<Option<End>> {
        match msg {
            Message::Result(r) => self.answered(c, r),
            Message::Event(e) => self.event(c, e).await?,
            Message::Command(cmd) => self.command(c, cmd).await?,
            Message::Pong(p) => {
                c.pending.remove(&p.id);
            }
            Message::Error(e) => return self.error(c, e).await,
            Message::Leave(_) => {}
            other => {
                tracing::debug!(target: "sfc::client", message = other.name(), "ignored unexpected message");
            }
        }
        Ok(None)
    }

    /// The answer to a query, a lookup group's snapshot, or a watch's acknowledgement.
    fn answered(&mut self, c: &mut Conn, r: QueryResult) {
        if c.resyncing == Some(r.id) {
            c.resyncing = None;
        }
        match c.pending.remove(&r.id) {
        Some(Pending::Query(tx)) => {
            let _ = tx.send(Ok(r.instances));
        }
        Some(Pending::Group(g, waiters)) => {
            let mut cache = lock(&self.shared.cache);
            let gc = cache.entry(g).or_default();
            gc.instances = r.instances.into_iter().map(|i| (i.id.clone(), i)).collect();
            gc.fresh = true;
            drop(cache);
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        Some(Pending::User(u)) => {
            if let Some(w) = self.watches.get_mut(&u) {
                // Keep our cursor while the replay that follows advances it; a lower
                // registry cursor means the registry restarted and numbering began again.
                w.cursor = Some(match w.cursor {
                    Some(c) if c <= r.cursor => c,
                    _ => r.cursor,
                });
            }
        }
        _ => {}
        }
    }

    /// An event of a watch: into a lookup group's cache, or to the application's watch.
    async fn event(&mut self, c: &mut Conn, e: EventMessage) -> std::io::Result<()> {
        match c.targets.get(&e.watch).cloned() {
        Some(Target::Group(g)) => {
            let mut cache = lock(&self.shared.cache);
            if let Some(gc) = cache.get_mut(&g) {
                apply_event(gc, &e.event);
            }
        }
        Some(Target::User(u)) => {
            let gone = match self.watches.get_mut(&u) {
                Some(w) => {
                    if e.event.seq > 0 {
                        w.cursor = Some(e.event.seq);
                    }
                    w.tx.send(e.event).is_err()
                }
                None => true,
            };
            if gone {
                self.control(c, Control::Unwatch(u)).await?;
            }
        }
        None => {}
        }
        Ok(())
    }

    /// A command: to the application's handler, or answered at once when there is none.
    async fn command(&mut self, c: &mut Conn, cmd: Command) -> std::io::Result<()> {
        let id = cmd.command_id;
        let name = cmd.name.clone();
        if self.shared.events.send(ClientEvent::Command(cmd)).is_err() {
            let r = CommandResult {
                command_id: id,
                ok: false,
                result: serde_json::Value::Null,
                error: Some(format!("no command handler is installed for {name:?}")),
            };
            c.writer.send(&Message::CommandResult(r)).await?;
        }
        Ok(())
    }

    /// An error frame: it fails the request it answers; `lagged` takes fresh snapshots; any
    /// other is told to the application, and a fatal one ends the session.
    async fn error(&mut self, c: &mut Conn, e: ErrorMessage) -> std::io::Result<Option<End>> {
        if e.id.is_some() && e.id == c.resyncing {
            c.resyncing = None;
        }
        let pending = e.id.and_then(|id| c.pending.remove(&id));
        match pending {
            Some(Pending::Query(tx)) => {
                let _ = tx.send(Err(Error::Remote { code: e.code, message: e.message }));
            }
            Some(Pending::Group(_, waiters)) => {
                for w in waiters {
                    let _ = w.send(Err(Error::Remote { code: e.code, message: e.message.clone() }));
                }
            }
            _ if e.code == ErrorCode::Lagged && c.resyncing.is_some() => {
                tracing::debug!(target: "sfc::client", "lagged again before the resync was answered: the resync covers it");
            }
            _ if e.code == ErrorCode::Lagged => {
                // We missed events: take fresh snapshots and resume the user watches.
                let old: Vec<u64> = c.targets.keys().copied().collect();
                for w in old {
                    let target = c.targets.remove(&w);
                    let id = c.id();
                    c.pending.insert(id, Pending::Ack);
                    c.writer.send(&Message::Unwatch(Unwatch { id, watch: w })).await?;
                    if let Some(t) = target {
                        let before = c.next_id;
                        self.send_watch(c, t).await?;
                        if c.resyncing.is_none() && c.next_id != before {
                            c.resyncing = Some(c.next_id);
                        }
                    }
                }
            }
            _ => {
                let _ = self.shared.events.send(ClientEvent::Error {
                    code: Some(e.code),
                    message: e.message.clone(),
                });
                if e.fatal && e.code == ErrorCode::Superseded {
                    return Ok(Some(End::Superseded(format!("{}: {}", e.code, e.message))));
                }
                if e.fatal && e.code == ErrorCode::ShuttingDown {
                    return Ok(Some(End::Moved(format!("registry closed the session: {}: {}", e.code, e.message))));
                }
                if e.fatal {
                    return Ok(Some(End::Lost(format!("registry closed the session: {}: {}", e.code, e.message))));
                }
            }
        }
        Ok(None)
    }
}

fn apply_event(gc: &mut GroupCache, ev: &Event) {
    match (&ev.kind, &ev.instance) {
        (EventKind::Evicted, _) => {
            gc.instances.remove(&ev.id);
        }
        (_, Some(r)) => {
            gc.instances.insert(ev.id.clone(), (**r).clone());
        }
        _ => {}
    }
}


/// How the legacy fallback ended.
enum LegacyEnd {
    Stopped,
    /// A report's connection found a registry that speaks protocol v1: this session on it.
    Upgraded(Box<(Connection<Stream>, Welcome)>),
    Lost(String),
}

impl Task {
    /// The legacy fallback (`ClientBuilder::legacy`) with a registry that predates protocol v1:
    /// every interval, one TLS connection carrying one legacy document (`first` is the
    /// connection that found the registry). Each report's connection offers ALPN `sfc/1` again,
    /// and the first one a registry accepts becomes a v1 session: the client moves to v1 by
    /// itself once the registry is replaced. The connection counts as established (an event
    /// `Connected` with session 0) while reports get through.
    async fn legacy(
        &mut self,
        addr: &str,
        first: Box<crate::tls::TlsStream>,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> LegacyEnd {
        tracing::warn!(target: "sfc::client", registry = %addr,
            "the registry predates protocol v1 (no ALPN sfc/1): reporting in the original service_fleet_control format until it is upgraded");
        let _ = self.shared.connected.send_replace(true);
        let _ = self.shared.events.send(ClientEvent::Connected { registry: addr.to_string(), session: 0 });
        let end = self.legacy_reports(addr, first, ctl).await;
        let _ = self.shared.connected.send_replace(false);
        if let LegacyEnd::Upgraded(..) = end {
            tracing::info!(target: "sfc::client", registry = %addr, "the registry speaks protocol v1 now: leaving the legacy format");
        }
        end
    }

    async fn legacy_reports(
        &mut self,
        addr: &str,
        first: Box<crate::tls::TlsStream>,
        ctl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> LegacyEnd {
        let mut stream = Some(first);
        let mut tick = tokio::time::interval(self.shared.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for m in std::mem::take(&mut self.waiting) {
                self.legacy_request(addr, m);
            }
            tokio::select! {
                _ = tick.tick() => {}
                m = ctl.recv() => match m {
                    Some(Control::Stop(done)) => {
                        // The legacy format has no leave the original registry understands
                        // (it would record the instance online): the record goes offline by
                        // its timer.
                        let _ = done.send(false);
                        return LegacyEnd::Stopped;
                    }
                    Some(Control::ReportNow) => {}
                    Some(other) => {
                        self.legacy_request(addr, other);
                        continue;
                    }
                    None => return LegacyEnd::Stopped,
                },
            }
            let report = self.build_report();
            let doc = crate::legacy::document(&self.shared.config, &report.metrics, now_ms());
            let shared = self.shared.clone();
            let ready = stream.take();
            let exchange = async move {
                let s = match ready {
                    Some(s) => s,
                    None => match connect(&shared, addr).await? {
                        Connected::V1(conn, welcome) => return Ok(Some((conn, welcome))),
                        Connected::Legacy(s) => s,
                    },
                };
                tokio::time::timeout(shared.config.connect_timeout, crate::legacy::deliver(s, &doc))
                    .await
                    .map_err(|_| Error::Timeout(format!("legacy report to {addr}")))??;
                Ok::<_, Error>(None)
            };
            let outcome = tokio::select! {
                r = exchange => r,
                stop = self.wait_for_stop(ctl) => { let _ = stop.send(false); return LegacyEnd::Stopped; }
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(session)) => return LegacyEnd::Upgraded(Box::new(session)),
                Err(e) => return LegacyEnd::Lost(format!("legacy report failed: {e}")),
            }
        }
    }

    /// A request while reporting in the legacy format, which has no lookups, queries, watches
    /// or commands: lookups and queries fail at once, watches wait for a v1 registry.
    fn legacy_request(&mut self, addr: &str, m: Control) {
        let refused = || {
            Error::Unreachable(format!(
                "the registry at {addr} predates protocol v1: lookups and queries need an upgraded registry \
                 (reports go on in the legacy format)"
            ))
        };
        match m {
            Control::Query(_, reply) => {
                let _ = reply.send(Err(refused()));
            }
            Control::WatchGroup(_, reply) => {
                let _ = reply.send(Err(refused()));
            }
            Control::Watch { id, filter, reports, tx, cursor } => {
                self.watches.insert(id, UserWatch { filter, reports, tx, cursor });
            }
            Control::Unwatch(id) => {
                self.watches.remove(&id);
            }
            Control::Stop(done) => {
                let _ = done.send(false);
            }
            Control::ReportNow | Control::Respond(_) => {}
        }
    }
}

/// A command result the registry would refuse as too large (over its `max_frame`, which would
/// close the session) becomes an error result that says so; the session stays.
fn fit_result(r: CommandResult, max_frame: usize) -> CommandResult {
    let size = serde_json::to_vec(&r.result).map_or(0, |v| v.len()) + r.error.as_ref().map_or(0, String::len) + 256;
    if max_frame == 0 || size <= max_frame {
        return r;
    }
    CommandResult {
        command_id: r.command_id,
        ok: false,
        result: serde_json::Value::Null,
        error: Some(format!(
            "the command's result is {size} bytes, over the registry's frame limit of {max_frame} bytes; not sent"
        )),
    }
}
