//! `NativeClient`: one service instance, backed by a core [`Client`] started with
//! [`Client::start_detached`], so it runs on a small runtime thread of its own and never borrows
//! or blocks the Node.js event loop. Promises are settled from that thread through napi
//! deferreds; events and watch updates reach JavaScript through weak thread-safe functions.
//!
//! A client may be started again after `stop()`: every start makes a new core client (a new
//! session) from the same configuration, and the health and gauges set so far carry over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use sfc_client::{Client, ClientConfig, ClientEvent, LookupOptions};
use sfc_client::model::{ApiDescription, ApiKind, Endpoint, Health};
use sfc_client::tls::{ClientTlsOptions, PemSource};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::AbortHandle;

use crate::boundary::{clean_message, deliver, failure, from_json, invalid, to_json, to_napi, JsonCallback};
use crate::filter::NativeFilter;

/// One endpoint the instance serves.
#[napi(object)]
pub struct EndpointOptions {
    pub name: String,
    pub host: String,
    pub port: u32,
    /// Default `tcp`.
    pub protocol: Option<String>,
}

/// Where the instance's API is described.
#[napi(object)]
pub struct ApiOptions {
    /// `openapi`, `graphql` or `other`.
    pub kind: String,
    pub url: String,
}

/// Options of `NativeClient`; durations are milliseconds.
#[napi(object)]
pub struct NativeClientOptions {
    pub registry: Option<Vec<String>>,
    pub service: Option<String>,
    pub group: Option<String>,
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub interval: Option<f64>,
    pub endpoints: Option<Vec<EndpointOptions>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<HashMap<String, String>>,
    pub version: Option<String>,
    pub api: Option<ApiOptions>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub insecure_plaintext: Option<bool>,
    pub connect_timeout: Option<f64>,
    pub stop_timeout: Option<f64>,
    pub sample_metrics: Option<bool>,
    /// Legacy fallback: report in the original format to a registry that predates protocol v1.
    pub legacy: Option<bool>,
}

/// Narrows a lookup.
#[napi(object)]
pub struct NativeLookupOptions {
    pub healthy_only: Option<bool>,
    pub service: Option<String>,
    pub tag: Option<String>,
}

struct Running {
    client: Client,
    forwarder: AbortHandle,
    watches: HashMap<u32, AbortHandle>,
}

impl Running {
    fn abort_tasks(&mut self) {
        self.forwarder.abort();
        for (_, w) in self.watches.drain() {
            w.abort();
        }
    }
}

struct State {
    running: Option<Running>,
    health: (Health, Option<String>),
    gauges: BTreeMap<String, f64>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A service instance in the fleet. Wrapped by the JavaScript `Client` class.
#[napi]
pub struct NativeClient {
    config: ClientConfig,
    state: Arc<Mutex<State>>,
    next_watch: AtomicU32,
}

fn millis(what: &str, v: Option<f64>) -> Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(ms) if ms.is_finite() && ms > 0.0 && ms < 1e12 => {
            Ok(Some(Duration::from_millis(ms.round() as u64)))
        }
        Some(ms) => Err(invalid(
            what,
            format!("{ms} is not a positive number of milliseconds"),
        )),
    }
}

fn build_config(o: NativeClientOptions) -> Result<ClientConfig> {
    let mut b = Client::builder().client_name(format!("sfc-node/{}", sfc_client::VERSION));
    if let Some(r) = o.registry {
        b = b.registries(r);
    }
    if let Some(v) = o.group {
        b = b.group(v);
    }
    if let Some(v) = o.service {
        b = b.service(v);
    }
    if let Some(v) = o.instance_id {
        b = b.instance_id(v);
    }
    if let Some(v) = o.hostname {
        b = b.hostname(v);
    }
    if let Some(d) = millis("interval", o.interval)? {
        b = b.interval(d);
    }
    if let Some(d) = millis("connectTimeout", o.connect_timeout)? {
        b = b.connect_timeout(d);
    }
    if let Some(d) = millis("stopTimeout", o.stop_timeout)? {
        b = b.stop_timeout(d);
    }
    for e in o.endpoints.unwrap_or_default() {
        let port = u16::try_from(e.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    "endpoints",
                    format!("port {} of endpoint {:?} is not 1..=65535", e.port, e.name),
                )
            })?;
        b = b.endpoint(Endpoint {
            name: e.name,
            host: e.host,
            port,
            protocol: e.protocol.unwrap_or_else(|| "tcp".into()),
        });
    }
    for t in o.tags.unwrap_or_default() {
        b = b.tag(t);
    }
    for (k, v) in o.metadata.unwrap_or_default() {
        b = b.metadata(k, v);
    }
    if let Some(v) = o.version {
        b = b.version(v);
    }
    if let Some(api) = o.api {
        let kind: ApiKind = serde_json::from_value(serde_json::Value::String(api.kind.clone()))
            .map_err(|_| {
                invalid(
                    "api",
                    format!("kind {:?} is not openapi, graphql or other", api.kind),
                )
            })?;
        b = b.api(ApiDescription { kind, url: api.url });
    }
    if let Some(v) = &o.ca {
        b = b.ca(v);
    }
    if let Some(v) = &o.cert {
        b = b.cert(v);
    }
    if let Some(v) = &o.key {
        b = b.key(v);
    }
    b = b.insecure_plaintext(o.insecure_plaintext.unwrap_or(false));
    if let Some(s) = o.sample_metrics {
        b = b.sample_metrics(s);
    }
    if let Some(l) = o.legacy {
        b = b.legacy(l);
    }
    b.build().map_err(|e| match e {
        // The core checks ca, cert and key together; name the option that is wrong.
        sfc_client::Error::Tls(_) | sfc_client::Error::File { .. } => {
            // A TypeError naming the option, whose code says file or TLS (lib/errors.js).
            let status = crate::boundary::status_of(&e);
            Error::new(Status::InvalidArg, format!("[sfc:{status}] invalid {}: {e}", tls_culprit(&o.ca, &o.key)))
        }
        other => to_napi(other),
    })
}

/// Which TLS option a TLS-material error comes from: the CA if it fails on its own, else the
/// key when the message names it, else the certificate.
fn tls_culprit(ca: &Option<String>, key: &Option<String>) -> &'static str {
    if let Some(ca) = ca {
        let alone = ClientTlsOptions {
            ca: Some(PemSource::parse(ca)),
            cert: None,
            key: None,
        };
        if sfc_client::tls::client_config(&alone).is_err() {
            return "ca";
        }
    }
    if key.is_some() {
        "cert/key"
    } else {
        "cert"
    }
}

fn event_json(ev: &ClientEvent) -> String {
    let v = match ev {
        ClientEvent::Connected { registry, session } => {
            serde_json::json!({ "type": "connected", "registry": registry, "session": session })
        }
        ClientEvent::Disconnected { registry, reason } => {
            serde_json::json!({ "type": "disconnected", "registry": registry, "reason": clean_message(reason) })
        }
        ClientEvent::Command(c) => serde_json::json!({ "type": "command", "command": c }),
        ClientEvent::Error { code, message } => serde_json::json!({
            "type": "error",
            "status": event_status(code.is_some(), message),
            "code": code,
            "message": clean_message(message),
        }),
    };
    v.to_string()
}

/// The C status name of an error event: its message is `<registry>: <core error>`, and the
/// core error's text starts with its kind (`sfc_proto::Error`'s Display).
fn event_status(has_code: bool, message: &str) -> &'static str {
    let text = message.split_once(": ").map_or(message, |(_, rest)| rest);
    let kinds = [
        ("registry unreachable: ", "unreachable"),
        ("tls: ", "tls"),
        ("timed out: ", "timeout"),
        ("io: ", "io"),
        ("registry error ", "remote"),
        ("protocol error ", "protocol"),
        ("cannot read ", "file"),
        ("invalid ", "invalid-argument"),
    ];
    match kinds.iter().find(|(prefix, _)| text.starts_with(prefix)) {
        Some((_, status)) => status,
        None if has_code => "remote",
        None => "io",
    }
}

#[napi]
impl NativeClient {
    /// Validates every option; throws `InvalidArg` naming the option that is wrong.
    #[napi(constructor)]
    pub fn new(options: NativeClientOptions) -> Result<Self> {
        Ok(NativeClient {
            config: build_config(options)?,
            state: Arc::new(Mutex::new(State {
                running: None,
                health: (Health::Passing, None),
                gauges: BTreeMap::new(),
            })),
            next_watch: AtomicU32::new(1),
        })
    }

    /// `<group>/<instanceId>` of this instance.
    #[napi(getter)]
    pub fn id(&self) -> String {
        let r = &self.config.registration;
        format!("{}/{}", r.group, r.instance_id)
    }

    #[napi(getter)]
    pub fn group(&self) -> String {
        self.config.registration.group.clone()
    }

    #[napi(getter)]
    pub fn instance_id(&self) -> String {
        self.config.registration.instance_id.clone()
    }

    /// Report interval in milliseconds.
    #[napi(getter)]
    pub fn interval(&self) -> f64 {
        self.config.interval.as_millis() as f64
    }

    /// Whether a session with a registry is established now.
    #[napi(getter)]
    pub fn connected(&self) -> bool {
        lock(&self.state)
            .running
            .as_ref()
            .is_some_and(|r| r.client.is_connected())
    }

    #[napi(getter)]
    pub fn running(&self) -> bool {
        lock(&self.state).running.is_some()
    }

    /// Starts reporting; `onEvent` receives every client event as JSON. Idempotent while running.
    #[napi]
    pub fn start(&self, on_event: JsonCallback) -> Result<()> {
        let mut st = lock(&self.state);
        if st.running.is_some() {
            return Ok(());
        }
        let client = Client::start_detached(self.config.clone()).map_err(to_napi)?;
        let mut rx = client.subscribe();
        let (health, note) = st.health.clone();
        client.set_health(health, note).map_err(to_napi)?;
        for (name, value) in &st.gauges {
            client.set_gauge(name, *value).map_err(to_napi)?;
        }
        let forwarder = client.handle().spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => deliver(&on_event, event_json(&ev)),
                    Err(RecvError::Lagged(n)) => deliver(
                        &on_event,
                        serde_json::json!({ "type": "error", "status": "io", "code": "lagged",
                            "message": format!("{n} client events were dropped: the event loop fell behind") })
                        .to_string(),
                    ),
                    Err(RecvError::Closed) => break,
                }
            }
        });
        st.running = Some(Running {
            client,
            forwarder: forwarder.abort_handle(),
            watches: HashMap::new(),
        });
        Ok(())
    }

    /// Sends leave and closes. Resolves to true when the registry confirmed the leave, false when
    /// the client closed without that confirmation (registry unreachable, stop timeout).
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn stop<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred::<bool, _>()?;
        let settle = move |left: bool| deferred.resolve(move |_| Ok(left));
        let running = lock(&self.state).running.take();
        match running {
            // Not started (or stopped already): no leave was sent, none confirmed.
            None => settle(false),
            Some(mut r) => {
                let handle = r.client.handle().clone();
                handle.spawn(async move {
                    let left = matches!(r.client.stop().await, Ok(true));
                    r.abort_tasks();
                    settle(left);
                    // The last clone: this ends the client's runtime thread.
                    drop(r);
                });
            }
        }
        Ok(promise)
    }

    /// Sets the reported health (`passing`, `warning`, `critical`) and an optional note.
    #[napi]
    pub fn set_health(&self, status: String, note: Option<String>) -> Result<()> {
        let health: Health = status.parse().map_err(|e| invalid("health", e))?;
        if note
            .as_ref()
            .is_some_and(|n| n.len() > sfc_client::limits::MAX_NOTE_LEN)
        {
            return Err(invalid(
                "health note",
                format!("longer than {} bytes", sfc_client::limits::MAX_NOTE_LEN),
            ));
        }
        let mut st = lock(&self.state);
        st.health = (health, note.clone());
        if let Some(r) = &st.running {
            r.client.set_health(health, note).map_err(to_napi)?;
        }
        Ok(())
    }

    /// Sets a custom gauge reported with every report.
    #[napi]
    pub fn set_gauge(&self, name: String, value: f64) -> Result<()> {
        sfc_client::limits::check_gauge(&name, value).map_err(to_napi)?;
        let mut st = lock(&self.state);
        if !st.gauges.contains_key(&name) && st.gauges.len() >= sfc_client::limits::MAX_GAUGES {
            return Err(invalid(
                "gauges",
                format!("more than {} gauges", sfc_client::limits::MAX_GAUGES),
            ));
        }
        st.gauges.insert(name.clone(), value);
        if let Some(r) = &st.running {
            r.client.set_gauge(&name, value).map_err(to_napi)?;
        }
        Ok(())
    }

    /// Replaces the Node.js runtime figures sent with every report. Ignored when not running.
    #[napi]
    pub fn set_runtime_metrics(&self, metrics: HashMap<String, f64>) -> Result<()> {
        let st = lock(&self.state);
        if let Some(r) = &st.running {
            r.client
                .set_runtime_metrics(metrics.into_iter().collect())
                .map_err(to_napi)?;
        }
        Ok(())
    }

    /// Instances of `group` as JSON `{"instances":[...],"stale":bool}`, from the cache a watch
    /// keeps current (the first lookup of a group waits for the registry).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn lookup<'env>(
        &self,
        env: &'env Env,
        group: String,
        options: NativeLookupOptions,
    ) -> Result<Object<'env>> {
        let client = self.running_client()?;
        let (deferred, promise) = env.create_deferred::<String, _>()?;
        let opts = LookupOptions {
            healthy_only: options.healthy_only.unwrap_or(false),
            service: options.service,
            tag: options.tag,
        };
        client.handle().clone().spawn(async move {
            match client.lookup(&group, &opts).await {
                Ok(l) => {
                    let json = serde_json::json!({ "instances": l.instances, "stale": l.stale })
                        .to_string();
                    deferred.resolve(move |_| Ok(json));
                }
                Err(e) => deferred.reject(to_napi(e)),
            }
        });
        Ok(promise)
    }

    /// Watches instances matching `filter`; `onEvent` receives each event as JSON. With
    /// `reports`, every report of a matching instance too. Returns an id for `unwatch`.
    #[napi]
    pub fn watch(
        &self,
        filter: NativeFilter,
        reports: bool,
        on_event: JsonCallback,
    ) -> Result<u32> {
        let filter = filter.into_filter()?;
        let mut st = lock(&self.state);
        let r = st.running.as_mut().ok_or_else(not_running)?;
        let mut stream = r.client.watch(filter, reports).map_err(to_napi)?;
        let task = r.client.handle().spawn(async move {
            while let Some(ev) = stream.next().await {
                deliver(&on_event, to_json(&ev));
            }
        });
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        r.watches.insert(id, task.abort_handle());
        Ok(id)
    }

    /// Cancels a watch. Unknown ids are ignored.
    #[napi]
    pub fn unwatch(&self, id: u32) {
        if let Some(r) = lock(&self.state).running.as_mut() {
            if let Some(w) = r.watches.remove(&id) {
                w.abort();
            }
        }
    }

    /// Answers a command: with `ok`, `result` (JSON text) is the result, else `error` the reason.
    #[napi]
    pub fn respond(
        &self,
        command_id: i64,
        ok: bool,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<()> {
        let answer = if ok {
            Ok(match result {
                Some(text) => from_json("command result", &text)?,
                None => serde_json::Value::Null,
            })
        } else {
            Err(error.unwrap_or_else(|| "command failed".to_string()))
        };
        let command_id =
            u64::try_from(command_id).map_err(|_| invalid("command id", command_id))?;
        if let Some(r) = lock(&self.state).running.as_ref() {
            r.client.respond(command_id, answer).map_err(to_napi)?;
        }
        Ok(())
    }
}

impl NativeClient {
    fn running_client(&self) -> Result<Client> {
        lock(&self.state)
            .running
            .as_ref()
            .map(|r| r.client.clone())
            .ok_or_else(not_running)
    }
}

fn not_running() -> Error {
    failure("stopped", None, "client is not running: call start() first")
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        // Garbage-collected without stop(): end the tasks; the core client closes without a
        // leave and its runtime thread ends.
        if let Some(mut r) = lock(&self.state).running.take() {
            r.abort_tasks();
        }
    }
}
