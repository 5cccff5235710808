//! `NativeRegistry`: the core registry embedded in a Node.js process. It is configured exactly
//! like `sfc registry` (the same [`RegistryOptions`], so development certificates, mTLS and limits
//! behave the same) and served on a tokio runtime that runs on a thread the addon owns, never
//! on the event loop. Transitions reach JavaScript through a weak thread-safe function.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use sfc_registry::http::prometheus::MetricsInstances;
use sfc_registry::model::Filter;
use sfc_registry::server::RegistryOptions;
use sfc_registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::oneshot;

use crate::boundary::{deliver, from_json, invalid, to_json, to_napi, JsonCallback};
use crate::filter::NativeFilter;

/// Options of `Registry` (`sfc registry`'s flags); durations are milliseconds. Defaults are
/// those of `sfc registry`. (`Registry` also takes PEM material as a Buffer.)
#[napi(object)]
pub struct NativeRegistryOptions {
    /// `host:port`; port 0 picks a free one (read it from `address`). Default 127.0.0.1:7480.
    pub listen: Option<String>,
    /// Development certificates are created in `<dataDir>/tls/` when no `tlsCert` is given.
    /// Default ./sfc-data.
    pub data_dir: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Ask clients for certificates. Default off.
    #[napi(ts_type = "'off' | 'optional' | 'required'")]
    pub mtls: Option<String>,
    pub client_ca: Option<String>,
    pub insecure_plaintext: Option<bool>,
    /// Intervals without a frame before an instance goes offline (1 ..= 100); default 3.
    pub missed_reports: Option<u32>,
    /// Milliseconds offline and left records are kept; default 24 h.
    pub retention: Option<f64>,
    pub handshake_timeout: Option<f64>,
    pub max_connections: Option<u32>,
    pub max_frame: Option<u32>,
    /// Bytes one session (or HTTP watch) may have queued for its peer, at least 65536; past it
    /// the peer is closed with `slow-consumer`. Default 32 MiB.
    pub max_outbound: Option<i64>,
    /// Bytes of event history kept (in memory and in the SQLite store), at least 65536; the
    /// oldest events go first. Default 256 MiB.
    pub max_history_bytes: Option<i64>,
    /// Records held at most, of any status (at least 1); a new identity past it is refused
    /// with `too-many-instances`. Default 200 000.
    pub max_instances: Option<i64>,
    /// Records one group holds at most (at least 1). Default 200 000.
    pub max_group_instances: Option<i64>,
    /// Records made by legacy (original wire format) documents, in all (at least 1).
    /// Default 10 000.
    pub max_legacy_instances: Option<i64>,
    /// Legacy records one group holds at most (at least 1). Default 1000.
    pub max_legacy_group_instances: Option<i64>,
    /// Accept documents in the original `service_fleet_control` wire format
    /// (`sfc registry --legacy on|off`). Default true.
    pub legacy: Option<bool>,
    /// Where to serve the HTTP API and `/metrics` (`host:port`; port 0 picks a free port, read
    /// it from `httpAddress`). Unlike `sfc registry`, the embedded registry serves no HTTP
    /// unless asked (`--http`).
    pub http: Option<String>,
    /// Which instances get per-instance `sfc_instance_*` series in `/metrics`: `'none'` (the
    /// default), `'all'`, or at most this many, the first by id (`--metrics-instances`).
    #[napi(ts_type = "number | 'none' | 'all'")]
    pub metrics_instances: Option<Either<i64, String>>,
}

/// A registry that is serving.
struct Live {
    registry: Registry,
    handle: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    address: String,
    http_address: Option<String>,
}

#[derive(Default)]
struct State {
    /// The thread that owns the runtime, from start() until stop() has joined it.
    thread: Option<JoinHandle<()>>,
    live: Option<Live>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An embedded registry. Wrapped by the JavaScript `Registry` class.
#[napi]
pub struct NativeRegistry {
    options: RegistryOptions,
    state: Arc<Mutex<State>>,
}

fn millis(what: &str, v: Option<f64>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(ms) if ms.is_finite() && ms > 0.0 && ms < 1e13 => {
            Ok(Duration::from_millis(ms.round() as u64))
        }
        Some(ms) => Err(invalid(
            what,
            format!("{ms} is not a positive number of milliseconds"),
        )),
    }
}

/// A count or size option: the default, or a non-negative integer (`RegistryOptions::check`
/// then checks its range).
fn count(what: &str, v: Option<i64>, default: usize) -> Result<usize> {
    match v {
        None => Ok(default),
        Some(n) => usize::try_from(n).map_err(|_| invalid(what, format!("{n} is not a non-negative integer"))),
    }
}

fn build_options(o: NativeRegistryOptions) -> Result<RegistryOptions> {
    let mut a = RegistryOptions::default();
    if let Some(listen) = o.listen {
        a.listen = listen;
    }
    if let Some(dir) = o.data_dir {
        a.data_dir = PathBuf::from(dir);
    }
    a.tls_cert = o.tls_cert;
    a.tls_key = o.tls_key;
    if let Some(m) = &o.mtls {
        a.mtls = m
            .parse()
            .map_err(|_| invalid("mtls", format!("{m:?} is not one of off, optional, required")))?;
    }
    a.client_ca = o.client_ca;
    a.insecure_plaintext = o.insecure_plaintext.unwrap_or(a.insecure_plaintext);
    a.missed_reports = o.missed_reports.unwrap_or(a.missed_reports);
    a.retention = millis("retention", o.retention, a.retention)?;
    a.max_frame = o.max_frame.map_or(a.max_frame, |n| n as usize);
    a.handshake_timeout = millis("handshakeTimeout", o.handshake_timeout, a.handshake_timeout)?;
    a.max_connections = o.max_connections.map_or(a.max_connections, |n| n as usize);
    let b = &mut a.admission;
    b.max_outbound = count("maxOutbound", o.max_outbound, b.max_outbound)?;
    b.max_history_bytes = count("maxHistoryBytes", o.max_history_bytes, b.max_history_bytes as usize)? as u64;
    b.max_instances = count("maxInstances", o.max_instances, b.max_instances)?;
    b.max_group_instances = count("maxGroupInstances", o.max_group_instances, b.max_group_instances)?;
    b.max_legacy_instances = count("maxLegacyInstances", o.max_legacy_instances, b.max_legacy_instances)?;
    b.max_legacy_group_instances =
        count("maxLegacyGroupInstances", o.max_legacy_group_instances, b.max_legacy_group_instances)?;
    b.legacy = o.legacy.unwrap_or(b.legacy);
    a.http = o.http.filter(|h| h != "off");
    a.metrics_instances = match o.metrics_instances {
        None => a.metrics_instances,
        Some(Either::A(n)) => match usize::try_from(n) {
            Ok(0) => MetricsInstances::None,
            Ok(n) => MetricsInstances::Max(n),
            Err(_) => return Err(invalid("metricsInstances", format!("{n} is not 'none', 'all' or a non-negative integer"))),
        },
        Some(Either::B(s)) => match s.as_str() {
            "none" => MetricsInstances::None,
            "all" => MetricsInstances::All,
            _ => return Err(invalid("metricsInstances", format!("{s:?} is not 'none', 'all' or a non-negative integer"))),
        },
    };
    // The same checks as `sfc registry`; the error names the JavaScript option (to_napi).
    a.check().map_err(to_napi)?;
    Ok(a)
}

fn not_running() -> Error {
    crate::boundary::failure("stopped", None, "registry is not running: call start() first")
}

fn filter_of(f: Option<NativeFilter>) -> Result<Filter> {
    f.map(NativeFilter::into_filter)
        .transpose()
        .map(Option::unwrap_or_default)
}

#[napi]
impl NativeRegistry {
    /// Validates the options; throws `InvalidArg` naming the option that is wrong. Nothing is
    /// bound or written before `start()`.
    #[napi(constructor)]
    pub fn new(options: NativeRegistryOptions) -> Result<Self> {
        Ok(NativeRegistry {
            options: build_options(options)?,
            state: Arc::new(Mutex::new(State::default())),
        })
    }

    /// The address the registry listens on (`host:port`), once started.
    #[napi(getter)]
    pub fn address(&self) -> Option<String> {
        lock(&self.state).live.as_ref().map(|l| l.address.clone())
    }

    /// The address of the HTTP API and `/metrics` (`host:port`), once started with `http`.
    #[napi(getter)]
    pub fn http_address(&self) -> Option<String> {
        lock(&self.state).live.as_ref().and_then(|l| l.http_address.clone())
    }

    /// Whether the registry is serving TLS.
    #[napi(getter)]
    pub fn tls(&self) -> bool {
        !self.options.insecure_plaintext
    }

    /// Binds and serves. Resolves to the bound address; `onEvent` receives every transition as
    /// JSON. Development certificates are created in `<dataDir>/tls/` if needed.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn start<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "(json: string) => void")] on_event: JsonCallback,
    ) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<String, _>()?;
        let mut st = lock(&self.state);
        if let Some(t) = &st.thread {
            if !t.is_finished() || st.live.is_some() {
                deferred.reject(Error::new(
                    Status::GenericFailure,
                    "registry is already started".to_string(),
                ));
                return Ok(promise);
            }
            // A start that failed earlier: its thread has ended.
            let _ = st.thread.take().map(JoinHandle::join);
        }
        let args = self.options.clone();
        let state = self.state.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("sfc-registry")
            .build()
            .map_err(|e| {
                Error::new(
                    Status::GenericFailure,
                    format!("cannot start the registry runtime: {e}"),
                )
            })?;
        let thread = std::thread::Builder::new()
            .name("sfc-registry".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let bound = async {
                        std::fs::create_dir_all(&args.data_dir).map_err(|e| sfc_registry::Error::write_file(&args.data_dir, e))?;
                        let cfg = sfc_registry::server::registry_config(&args)?;
                        let (listener, addr) = sfc_registry::bind(&args.listen).await?;
                        let http = match &args.http {
                            Some(h) => Some(sfc_registry::http::bind(h).await?),
                            None => None,
                        };
                        Ok::<_, sfc_registry::Error>((Registry::new(cfg), listener, addr, http))
                    };
                    let (registry, listener, addr, http) = match bound.await {
                        Ok(x) => x,
                        Err(e) => return deferred.reject(to_napi(e)),
                    };
                    let mut events = registry.subscribe();
                    let forwarder = tokio::spawn(async move {
                        loop {
                            match events.recv().await {
                                Ok(ev) => deliver(&on_event, to_json(&*ev)),
                                Err(RecvError::Lagged(n)) => {
                                    tracing::warn!(target: "sfc::registry", dropped = n, "event listener fell behind")
                                }
                                Err(RecvError::Closed) => break,
                            }
                        }
                    });
                    let (tx, rx) = oneshot::channel::<()>();
                    let address = addr.to_string();
                    // The HTTP API stops with the protocol listener (or when its sender drops).
                    let (http_tx, http_rx) = oneshot::channel::<()>();
                    let http_address = http.as_ref().map(|(_, a)| a.to_string());
                    let http_task = http.map(|(listener, haddr)| {
                        let hcfg = sfc_registry::http::HttpConfig {
                            metrics_instances: args.metrics_instances,
                            ..Default::default()
                        };
                        sfc_registry::http::warn_about_exposure(haddr, &hcfg);
                        tokio::spawn(sfc_registry::http::serve(registry.clone(), listener, hcfg, async move {
                            let _ = http_rx.await;
                        }))
                    });
                    lock(&state).live = Some(Live {
                        registry: registry.clone(),
                        handle: tokio::runtime::Handle::current(),
                        shutdown: Some(tx),
                        address: address.clone(),
                        http_address,
                    });
                    tracing::info!(target: "sfc::registry", %address, "embedded registry listening");
                    deferred.resolve(move |_| Ok(address));
                    sfc_registry::serve(registry, listener, async {
                        let _ = rx.await;
                        let _ = http_tx.send(());
                    })
                    .await;
                    if let Some(t) = http_task {
                        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
                    }
                    forwarder.abort();
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| Error::new(Status::GenericFailure, format!("cannot start the registry thread: {e}")))?;
        st.thread = Some(thread);
        Ok(promise)
    }

    /// Closes every session and stops listening. Resolves once the registry has stopped.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<(), _>()?;
        let mut st = lock(&self.state);
        if st.live.is_none() && st.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            deferred.reject(Error::new(
                Status::GenericFailure,
                "registry is still starting: await start() first",
            ));
            return Ok(promise);
        }
        if let Some(mut live) = st.live.take() {
            if let Some(tx) = live.shutdown.take() {
                let _ = tx.send(());
            }
        }
        let thread = st.thread.take();
        drop(st);
        // Join off the event loop: sessions get up to 5 s to close.
        let waiter = std::thread::Builder::new()
            .name("sfc-registry-stop".into())
            .spawn(move || {
                if let Some(t) = thread {
                    let _ = t.join();
                }
                deferred.resolve(|_| Ok(()));
            });
        if let Err(e) = waiter {
            return Err(Error::new(
                Status::GenericFailure,
                format!("cannot wait for the registry: {e}"),
            ));
        }
        Ok(promise)
    }

    /// Records grouped by group, as JSON `{ group: [record...] }`.
    #[napi]
    pub fn fleet(&self, filter: Option<NativeFilter>) -> Result<String> {
        let filter = filter_of(filter)?;
        let st = lock(&self.state);
        let live = st.live.as_ref().ok_or_else(not_running)?;
        Ok(to_json(&live.registry.fleet(&filter)))
    }

    /// Records matching `filter`, sorted by id, as a JSON array.
    #[napi]
    pub fn instances(&self, filter: Option<NativeFilter>) -> Result<String> {
        let filter = filter_of(filter)?;
        let st = lock(&self.state);
        let live = st.live.as_ref().ok_or_else(not_running)?;
        Ok(to_json(&live.registry.query(&filter)))
    }

    /// Sends a command to an online instance (`<group>/<instanceId>`) and resolves to its result
    /// as JSON `{command_id, ok, result, error}`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn send_command<'env>(
        &self,
        env: &'env Env,
        id: String,
        name: String,
        payload: Option<String>,
        reason: Option<String>,
        timeout: Option<f64>,
    ) -> Result<Object<'env>> {
        let payload: serde_json::Value = match payload {
            Some(text) => from_json("command payload", &text)?,
            None => serde_json::Value::Null,
        };
        let timeout = millis("timeout", timeout, Duration::from_secs(10))?;
        let (registry, handle) = {
            let st = lock(&self.state);
            let live = st.live.as_ref().ok_or_else(not_running)?;
            (live.registry.clone(), live.handle.clone())
        };
        let (deferred, promise) = env.create_deferred::<String, _>()?;
        handle.spawn(async move {
            match registry
                .send_command(&id, &name, reason, payload, Some("node".into()), timeout)
                .await
            {
                Ok(r) => {
                    let json = to_json(&r);
                    deferred.resolve(move |_| Ok(json));
                }
                Err(e) => deferred.reject(to_napi(e)),
            }
        });
        Ok(promise)
    }
}

impl Drop for NativeRegistry {
    fn drop(&mut self) {
        // Garbage-collected while serving: ask it to stop, but never join on the event loop.
        if let Some(mut live) = lock(&self.state).live.take() {
            if let Some(tx) = live.shutdown.take() {
                let _ = tx.send(());
            }
        }
    }
}
