//! The bench's observer: one session with two watches, as a dashboard would hold. Every
//! transition feeds the online count, false offline detection and the crash and hang timings;
//! per-report updates of the latency group give report-to-watcher latency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::sim::{now_us, Fleet, Phase, LAT_GROUP, SENT_GAUGE};
use sfc_client::error::{Error, Result};
use sfc_client::model::{Event, EventKind, Filter, Status};
use sfc_client::protocol::connection::client_preamble;
use sfc_client::protocol::{frame, Connection, Hello, Message, Ping, Role, Watch};

const TRANSITIONS: u64 = 2;
const REPORTS: u64 = 3;
const KEEPALIVE: Duration = Duration::from_secs(2);

/// What the observer saw.
#[derive(Default)]
pub(super) struct Observed {
    /// Offline events before the drain: client index, arrival, reason.
    pub offline: Mutex<Vec<(usize, Instant, String)>>,
    /// Report-to-watcher latencies while measuring, µs.
    pub latencies_us: Mutex<Vec<u64>>,
    /// Instances online in the registry's view.
    pub online: AtomicU64,
    /// `lagged` error frames: the registry dropped updates for this slow watcher.
    pub lagged: AtomicU64,
    pub reconnects: AtomicU64,
}

fn index_of(ev: &Event) -> Option<usize> {
    ev.id.split_once('/')?.1.strip_prefix('c')?.parse().ok()
}

type Conn = Connection<tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect(fleet: &Fleet, reports: bool) -> Result<Conn> {
    let addr = fleet.addr;
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Unreachable(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio_rustls::TlsConnector::from(fleet.tls.clone())
            .connect(fleet.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Tls(format!("handshake with {addr} failed: {e}")))?;
        client_preamble(&mut tls, frame::DEFAULT_MAX_FRAME).await?;
        let mut conn = Connection::new(tls, frame::DEFAULT_MAX_FRAME);
        conn.writer
            .send(&Message::Hello(Hello {
                id: 1,
                role: Role::Observer,
                // The fleet's codec (protobuf with --codec protobuf): the observer decodes
                // every transition and, with `reports`, every report of the latency group,
                // and in JSON that was a sixth of the load generator's instructions per
                // re-join (scripts/profile-join-path.sh).
                codecs: vec![fleet.wire.codec.name().into()],
                interval_ms: None,
                registration: None,
                client: Some(format!("sfc-bench/{}", sfc_client::VERSION)),
                compression: Vec::new(),
            }))
            .await?;
        match conn.reader.next().await {
            Some(Ok(Message::Welcome(w))) => {
                let codec = frame::Codec::from_name(&w.codec).ok_or_else(|| Error::Protocol {
                    code: sfc_client::protocol::ErrorCode::UnsupportedCodec,
                    message: format!("registry picked codec {:?} for the observer, which offered only {:?}",
                        w.codec, fleet.wire.codec.name()),
                })?;
                conn.set_wire(codec, None);
            }
            Some(Ok(Message::Error(e))) => {
                return Err(Error::Remote {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(Ok(other)) => {
                return Err(Error::Protocol {
                    code: sfc_client::protocol::ErrorCode::UnexpectedMessage,
                    message: format!("expected welcome, got {}", other.name()),
                })
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(Error::Unreachable(format!(
                    "{addr} closed the connection during the handshake"
                )))
            }
        }
        conn.writer
            .send(&Message::Watch(Watch {
                id: TRANSITIONS,
                filter: Filter::default(),
                reports: false,
                after: None,
            }))
            .await?;
        if reports {
            conn.writer
                .send(&Message::Watch(Watch {
                    id: REPORTS,
                    filter: Filter::group(LAT_GROUP),
                    reports: true,
                    after: None,
                }))
                .await?;
        }
        Ok(conn)
    };
    tokio::time::timeout(fleet.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout(format!("observer handshake with {addr}")))?
}

/// Watches until the phase is `Stop`, reconnecting when the registry goes away. `ready` fires
/// once the watches are in place. With `reports`, per-report updates of [`LAT_GROUP`] are
/// timed; that watch makes the registry build an update for every report, so `max` runs
/// without it.
pub(super) async fn run(
    fleet: Arc<Fleet>,
    seen: Arc<Observed>,
    reports: bool,
    mut phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut online: HashSet<usize> = HashSet::new();
    let mut attempt: u32 = 0;
    loop {
        let conn = tokio::select! {
            c = connect(&fleet, reports) => c,
            _ = phase.wait_for(|p| *p == Phase::Stop) => return,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                attempt = attempt.saturating_add(1);
                let cap = Duration::from_millis(100u64 << attempt.min(4));
                tokio::time::sleep(Duration::from_millis(rand::random_range(
                    0..=cap.as_millis() as u64,
                )))
                .await;
                continue;
            }
        };
        attempt = 0;
        let mut pending_results = if reports { 2 } else { 1 };
        // An observer only listens; without a frame now and then the registry would close it
        // after missed-reports x its interval.
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        let mut ping_id = 100;
        loop {
            let next = tokio::select! {
                m = conn.reader.next() => Some(m),
                _ = keepalive.tick() => None,
                _ = phase.wait_for(|p| *p == Phase::Stop) => return,
            };
            let Some(msg) = next else {
                ping_id += 1;
                if conn
                    .writer
                    .send(&Message::Ping(Ping { id: ping_id }))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            };
            let msg = match msg {
                Some(Ok(m)) => m,
                None | Some(Err(_)) => break,
            };
            let now = Instant::now();
            match msg {
                Message::Result(r) => {
                    if r.id == TRANSITIONS {
                        online = r
                            .instances
                            .iter()
                            .filter(|i| i.status == Status::Online)
                            .filter_map(|i| i.instance_id.strip_prefix('c')?.parse().ok())
                            .collect();
                        seen.online.store(online.len() as u64, Ordering::Relaxed);
                    }
                    pending_results -= 1;
                    if pending_results == 0 {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                }
                Message::Event(e) if e.watch == REPORTS && e.event.kind == EventKind::Report => {
                    if matches!(*phase.borrow(), Phase::Run | Phase::Act) {
                        let sent = e
                            .event
                            .instance
                            .as_ref()
                            .and_then(|i| i.metrics.custom.get(SENT_GAUGE).copied());
                        if let Some(sent) = sent {
                            let lat = now_us().saturating_sub(sent as u64);
                            seen.latencies_us
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(lat);
                        }
                    }
                }
                Message::Event(e) if e.watch == TRANSITIONS => {
                    let Some(index) = index_of(&e.event) else {
                        continue;
                    };
                    match e.event.kind {
                        EventKind::Joined | EventKind::Online => {
                            online.insert(index);
                        }
                        EventKind::Offline => {
                            online.remove(&index);
                            // Only while the fleet is meant to be up: the drain and the stop end it.
                            if matches!(*phase.borrow(), Phase::Ramp | Phase::Run | Phase::Act) {
                                let reason = e
                                    .event
                                    .detail
                                    .get("reason")
                                    .and_then(|r| r.as_str())
                                    .unwrap_or("")
                                    .to_string();
                                seen.offline
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((index, now, reason));
                            }
                        }
                        EventKind::Left | EventKind::Evicted => {
                            online.remove(&index);
                        }
                        _ => {}
                    }
                    seen.online.store(online.len() as u64, Ordering::Relaxed);
                }
                Message::Error(e) if e.code == sfc_client::protocol::ErrorCode::Lagged => {
                    seen.lagged.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        seen.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
