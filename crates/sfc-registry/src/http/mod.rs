//! The registry's HTTP surface (feature `server`): the JSON API v1 with a Server-Sent Events
//! watch, Prometheus `/metrics`, `/healthz` and `/readyz`, and the embedded dashboard at `/`.
//!
//! [`serve`] takes a bound listener and a shutdown future, like [`crate::registry::serve`], so
//! tests bind `127.0.0.1:0`. Plain HTTP or, with [`HttpConfig::tls`], HTTPS with the registry's
//! certificates; with mTLS the client certificate's subject can make a caller an admin
//! ([`access`]). The routes and the committed OpenAPI description (`openapi.json`) come from
//! one table, [`route_table`], which a test compares with the description.
//!
//! - [`api`]: the JSON and SSE handlers.
//! - [`access`]: who may send commands and deregister.
//! - [`prometheus`]: the text exposition.
//! - [`dashboard`]: the page and its script, compiled into the binary.
//! - [`error`]: the error body and status codes.

pub mod access;
pub mod api;
pub mod dashboard;
pub mod error;
pub mod lists;
pub mod prometheus;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::handler::Handler;
use axum::http::{Method, Request};
use axum::routing::{on, MethodFilter};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::registry::Registry;
pub use access::{Access, Peer};
pub use error::{ApiCode, ApiError};

/// The default address of the HTTP API.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7481";

/// The OpenAPI 3 description, committed next to this file and served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// HTTP settings. `Default` gives plain HTTP, no admin credential, the documented timeouts.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// None: plain HTTP. The registry's rustls config is reused with ALPN `http/1.1`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub access: Access,
    /// How long a command waits for the instance's result unless the request asks otherwise.
    pub command_timeout: Duration,
    /// The longest wait a request may ask for.
    pub max_command_timeout: Duration,
    /// How often `/v1/watch` sends a heartbeat comment.
    pub heartbeat: Duration,
    /// Most HTTP connections held at once.
    pub max_connections: usize,
    /// Most HTTP connections held at once from one client address: one client's idle sockets
    /// cannot take the others' (`/healthz`, `/metrics`, the dashboard).
    pub max_connections_per_client: usize,
    /// How long a connection may sit without a complete request head (a new connection, or
    /// an idle keep-alive one) before it is closed.
    pub idle_timeout: Duration,
    /// Which instances get per-instance series in `/metrics` (`--metrics-instances`).
    pub metrics_instances: prometheus::MetricsInstances,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            tls: None,
            access: Access::default(),
            command_timeout: Duration::from_secs(10),
            max_command_timeout: Duration::from_secs(120),
            heartbeat: Duration::from_secs(15),
            max_connections: 1024,
            max_connections_per_client: 128,
            idle_timeout: Duration::from_secs(5),
            metrics_instances: prometheus::MetricsInstances::None,
        }
    }
}

/// The registry's own figures, sampled once a second for `/metrics` and the dashboard.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SelfFigures {
    pub reports_per_second: f64,
    pub cpu_percent: Option<f64>,
    pub resident_bytes: Option<u64>,
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub config: Arc<HttpConfig>,
    pub figures: Arc<Mutex<SelfFigures>>,
    /// Cancelled at shutdown: watches end and `/readyz` answers 503.
    pub shutdown: CancellationToken,
    pub ready: Arc<AtomicBool>,
    /// Set when the API listens on a loopback address: requests must then name a loopback
    /// host (`localhost`, `127.x.x.x`, `[::1]`), so a web page that rebinds a DNS name to
    /// 127.0.0.1 cannot read the fleet through the operator's browser.
    pub loopback_only: bool,
}

impl AppState {
    pub fn new(registry: Registry, config: HttpConfig) -> AppState {
        AppState {
            registry,
            config: Arc::new(config),
            figures: Arc::default(),
            shutdown: CancellationToken::new(),
            ready: Arc::new(AtomicBool::new(false)),
            loopback_only: false,
        }
    }

    pub fn figures(&self) -> SelfFigures {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Builds the router and, from the same calls, the table of (method, path) it serves.
struct Routes {
    router: Router<AppState>,
    table: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.router = self.router.route(path, on(filter, handler));
        self.table.push((method, path));
        self
    }
}

fn routes() -> Routes {
    use api::*;
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add(Method::GET, "/", dashboard::page)
    .add(Method::GET, "/dashboard.js", dashboard::script)
    .add(Method::GET, "/dashboard.css", dashboard::style)
    .add(Method::GET, "/healthz", healthz)
    .add(Method::GET, "/readyz", readyz)
    .add(Method::GET, "/metrics", metrics)
    .add(Method::GET, "/v1/openapi.json", openapi)
    .add(Method::GET, "/v1/registry", registry_info)
    .add(Method::GET, "/v1/fleet", fleet)
    .add(Method::GET, "/v1/summary", summary)
    .add(Method::GET, "/v1/instances", instances)
    .add(Method::GET, "/v1/samples", samples)
    .add(Method::GET, "/v1/instances/{group}/{instance_id}", instance)
    .add(
        Method::DELETE,
        "/v1/instances/{group}/{instance_id}",
        deregister,
    )
    .add(
        Method::POST,
        "/v1/instances/{group}/{instance_id}/commands",
        command,
    )
    .add(Method::GET, "/v1/events", events)
    .add(Method::GET, "/v1/watch", watch)
}

/// Every (method, path) the router serves, in the OpenAPI path syntax.
pub fn route_table() -> Vec<(String, String)> {
    routes()
        .table
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect()
}

/// The whole HTTP application for `state`.
pub fn router(state: AppState) -> Router {
    let loopback_only = state.loopback_only;
    routes()
        .router
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        // Every error answer carries the JSON error body, also those axum and tower make
        // (413 for a body over the limit, rejected extractors).
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(move |req: Request<axum::body::Body>, next: axum::middleware::Next| {
            host_check(loopback_only, req, next)
        }))
        // gzip or zstd when the client accepts it; never the SSE watch (the layer's default
        // predicate leaves text/event-stream, images and small bodies alone).
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(state)
}

/// The API's code for an error status that a handler did not answer itself.
fn code_for(status: axum::http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "request-timeout",
        413 => "payload-too-large",
        415 => "unsupported-media-type",
        421 => "misdirected-request",
        429 => "too-many-requests",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "invalid-request",
    }
}

/// Rewrites an error answer that is not JSON into the API's error body, keeping its status
/// and its text as the message.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let body = serde_json::json!({ "error": { "code": code_for(status), "message": message } });
    let mut out = (status, axum::Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Whether a Host header names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| if p.chars().all(|c| c.is_ascii_digit()) { h } else { host })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// With the API on a loopback address, refuses a request whose Host is not a loopback name
/// (DNS rebinding) with 421 and the JSON error body. A request without Host passes.
async fn host_check(
    loopback_only: bool,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if loopback_only {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if let Some(host) = host.filter(|h| !is_loopback_host(h)) {
            tracing::warn!(target: "sfc::audit", host = %host.escape_debug(), "refused: an HTTP request for a host that is not loopback");
            let body = serde_json::json!({ "error": { "code": "misdirected-request", "message": format!(
                "this registry's HTTP API listens on loopback and answers only for localhost, 127.0.0.1 or [::1], not {:?}",
                host
            ) } });
            return (axum::http::StatusCode::MISDIRECTED_REQUEST, axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}

/// Binds `addr` for the HTTP API.
pub async fn bind(addr: &str) -> crate::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::invalid("--http", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Logs what a bind means for who can reach the API.
pub fn warn_about_exposure(addr: SocketAddr, config: &HttpConfig) {
    if !addr.ip().is_loopback() && config.tls.is_none() {
        tracing::warn!(target: "sfc::http", %addr,
            "the HTTP API listens on a non-loopback address without TLS: anyone on the network can read \
             the fleet, and the admin token travels in clear text; use --http-tls or bind 127.0.0.1");
    }
    if !config.access.enabled() {
        tracing::info!(target: "sfc::http", "no admin credential: commands and deregistration over HTTP are disabled \
            (set --admin-token or SFC_ADMIN_TOKEN)");
    }
}

/// Serves the HTTP API on `listener` until `shutdown` completes.
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let state = AppState::new(registry, config);
    serve_state(state, listener, shutdown).await
}

/// [`serve`] with a prepared state (tests keep a handle on it).
pub async fn serve_state(
    mut state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    state.loopback_only = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let per_client: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let (per_client_max, idle) = (state.config.max_connections_per_client.max(1), state.config.idle_timeout);
    let sampler = tokio::spawn(sample_figures(state.clone()));
    let tls = state.config.tls.as_ref().map(|c| {
        let mut c = (**c).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(c))
    });
    let app = router(state.clone());
    state.ready.store(true, Ordering::Relaxed);
    let max = state.config.max_connections;
    let tracker = crate::listener::accept_loop(&listener, max, "http", shutdown, |tcp, addr, permit| {
        let Some(permit) = permit else {
            tracing::warn!(target: "sfc::http", %addr, "too many HTTP connections; closing this one");
            return None;
        };
        let Some(slot) = ClientSlot::take(&per_client, addr.ip(), per_client_max) else {
            tracing::warn!(target: "sfc::audit", %addr, limit = per_client_max,
                "refused: too many HTTP connections from one client; closing this one");
            return None;
        };
        let (app, tls, stop) = (app.clone(), tls.clone(), state.shutdown.clone());
        let registry = state.registry.clone();
        Some(async move {
            match tls {
                None => connection(tcp, Peer { addr, subject: None, uris: Vec::new() }, app, stop, idle).await,
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let subject = crate::tls::peer_subject(stream.get_ref().1);
                        let uris = crate::tls::peer_san_uris(stream.get_ref().1);
                        connection(stream, Peer { addr, subject, uris }, app, stop, idle).await
                    }
                    Ok(Err(e)) => match crate::tls::CertRefusal::classify(&e) {
                        Some((why, text)) => registry.stats().refused_certificates.refuse(
                            crate::registry::Surface::Http,
                            addr,
                            why,
                            &text,
                        ),
                        None => tracing::debug!(target: "sfc::http", %addr, error = %e, "tls handshake failed"),
                    },
                    Err(_) => tracing::debug!(target: "sfc::http", %addr, "tls handshake timed out"),
                },
            }
            drop(permit);
            drop(slot);
        })
    })
    .await;
    state.ready.store(false, Ordering::Relaxed);
    state.shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(3), tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!(target: "sfc::http", "some HTTP connections did not close within 3s");
    }
    sampler.abort();
}

/// Serves one connection; every request carries the [`Peer`] it came from.
async fn connection<I>(io: I, peer: Peer, app: Router, stop: CancellationToken, idle: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Also the idle time of a keep-alive connection between requests (hyper starts the
        // timer whenever it waits for a request head).
        .header_read_timeout(idle);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(target: "sfc::http", error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// One connection's place in its client's count; given back when dropped.
struct ClientSlot {
    map: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl ClientSlot {
    fn take(map: &Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>, ip: std::net::IpAddr, max: usize) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { map: map.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Keeps [`SelfFigures`] current: the report rate over a 5 s window, and the registry
/// process's CPU and memory.
async fn sample_figures(state: AppState) {
    let mut sampler = sfc_client::metrics::Sampler::new();
    let mut window: VecDeque<(Instant, u64)> = VecDeque::with_capacity(8);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let total = state.registry.stats().reports_total.load(Ordering::Relaxed);
        window.push_back((Instant::now(), total));
        if window.len() > 6 {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let m = sampler.sample();
        let mut f = state.figures.lock().unwrap_or_else(|e| e.into_inner());
        f.reports_per_second = rate;
        f.cpu_percent = m.process.cpu_percent;
        f.resident_bytes = m.process.resident_bytes;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The committed OpenAPI description lists exactly the routes the router serves.
    #[test]
    fn openapi_matches_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().unwrap_or("").starts_with("3."),
            "not an OpenAPI 3 document"
        );
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = super::route_table().into_iter().collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "served but undocumented: {missing:?}; documented but not served: {extra:?}"
        );
    }
}
