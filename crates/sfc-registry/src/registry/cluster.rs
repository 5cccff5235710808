//! `--store etcd`: how one registry takes part in a fleet served by several.
//!
//! - **Reads.** At start the registry loads every instance record from etcd, then an etcd
//!   watch on `/sfc/v1/` keeps its cache current. Records other registries own live in
//!   [`State`](super::state::State) as remote instances (no session, no local liveness timer).
//! - **Events** are numbered by the etcd revision that wrote them and published in revision
//!   order from the watch, this registry's own included (once the watch reaches them), so a
//!   cursor is valid on every registry of the fleet.
//! - **Planned stop.** [`Cluster::hand_over`] keeps the records alive until their clients
//!   have registered on another registry.
//! - **Ownership.** Records this registry owns are written under its lease, which a task
//!   keeps alive. If the lease is lost anyway (etcd unreachable for longer than its TTL), the
//!   task takes a new one and writes every record it owns again. The newest write of a key
//!   wins: when another registry writes a record this one holds a session for, the client
//!   has moved there, and the session here is closed as superseded.
//! - **Commands** for an instance another registry owns go through etcd: this registry puts
//!   `commands/<owner>/<self>/<id>`, the owner sends the command to its session and puts
//!   `results/<self>/<id>`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, WatchOptions, WatchResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::state::Outbound;
use super::{Registry, Shared};
use crate::error::{Error, Result};
use crate::model::Status;
use crate::protocol::{Command, CommandResult, ErrorCode, Message};
use crate::store::etcd::{EtcdInner, InstanceValue, COMMANDS, INSTANCES, PREFIX, REGISTRIES, RESULTS};

/// Most watch batches applied after one wait for this registry's own writes.
const MAX_BATCHES_AT_ONCE: usize = 64;

/// Records written back at once after the lease was lost.
const WRITE_BACK_AT_ONCE: usize = 512;

/// A command on its way to the registry that owns the instance.
#[derive(Debug, Serialize, Deserialize)]
struct CommandValue {
    instance: String,
    command: Command,
    timeout_ms: u64,
}

/// What the owner answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok(CommandResult),
    Err { code: ErrorCode, message: String },
}

pub(crate) struct Cluster {
    etcd: Arc<EtcdInner>,
    /// The registry's runtime: commands run there (they write to the store, which waits on
    /// the etcd runtime).
    main: tokio::runtime::Handle,
    shared: Weak<Shared>,
    /// Registries whose `registries/` key exists.
    live: Mutex<HashSet<String>>,
    /// Forwarded commands waiting for their result, by local command id.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Told after each batch of watched records: a planned stop waits on it for its
    /// instances to move ([`Cluster::hand_over`]).
    changed: tokio::sync::Notify,
    /// The newest etcd revision this registry has applied (its cursor: events are numbered
    /// by revision), for watchers that resume here with a cursor from another registry.
    revision: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the etcd side hands to the registry side.
///
/// Threading: etcd calls run on the store's runtime, and the registry calls the store while
/// it holds its state lock, waiting for that runtime. So nothing on the store's runtime ever
/// takes the state lock: watch results cross over to a task on the registry's runtime.
enum Batch {
    Events(WatchResponse),
    /// Everything, read again (at start, and after the watch fell behind a compaction).
    Load {
        registries: Vec<KeyValue>,
        instances: Vec<KeyValue>,
        revision: i64,
        announce: bool,
    },
}

/// Loads the fleet and starts the watch and the lease keepalive. Called by
/// [`Registry::open`] inside the registry's runtime.
pub(crate) fn start(reg: &Registry, etcd: Arc<EtcdInner>) -> Result<Arc<Cluster>> {
    let cluster = Arc::new(Cluster {
        etcd: etcd.clone(),
        main: tokio::runtime::Handle::current(),
        shared: Arc::downgrade(&reg.shared),
        live: Mutex::new(HashSet::new()),
        waiting: Mutex::new(HashMap::new()),
        changed: tokio::sync::Notify::new(),
        revision: tokio::sync::watch::Sender::new(0),
    });
    let e = etcd.clone();
    let first =
        crate::store::etcd::wait(&etcd.handle, etcd.op_timeout * 2, &etcd.endpoints, "load the fleet", async move {
            fetch(&e, false).await
        })?;
    let Batch::Load { revision, .. } = &first else { unreachable!("fetch returns a load") };
    let from = revision + 1;
    cluster.apply_batch(first);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = cluster.clone();
    // This registry's writes that etcd may have shown to the watch are recorded (with their
    // revisions) before a batch is applied (registry::numbered).
    let gate = reg.state().numbered_gate();
    let issued = gate.clone();
    cluster.main.spawn(async move {
        // Every batch that queued up meanwhile is applied after one wait: applying one batch
        // per wave written would bound the watch by the writer's pace.
        while let Some(first) = rx.recv().await {
            let mut batches = vec![first];
            while batches.len() < MAX_BATCHES_AT_ONCE {
                match rx.try_recv() {
                    Ok(b) => batches.push(b),
                    Err(_) => break,
                }
            }
            if let Some(g) = &gate {
                let through = batches.iter().map(|(issued, _)| *issued).max().unwrap_or(0);
                g.settled_through(through).await;
            }
            for (_, batch) in batches {
                c.apply_batch(batch);
            }
        }
    });
    let issued_now = move || issued.as_ref().map_or(0, |g| g.issued());
    etcd.handle.spawn(cluster.clone().watch_loop(from, tx, issued_now));
    etcd.handle.spawn(cluster.clone().keepalive_loop());
    Ok(cluster)
}

/// Reads every registry key and instance record.
async fn fetch(etcd: &EtcdInner, announce: bool) -> Result<Batch, etcd_client::Error> {
    let get = |prefix: &'static str| {
        etcd.retry(move |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
    };
    let mut regs = get(REGISTRIES).await?;
    let mut resp = get(INSTANCES).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok(Batch::Load { registries: regs.take_kvs(), instances: resp.take_kvs(), revision, announce })
}

impl Cluster {
    fn registry(&self) -> Option<Registry> {
        self.shared.upgrade().map(|shared| Registry { shared })
    }

    fn apply_batch(self: &Arc<Self>, batch: Batch) {
        match batch {
            Batch::Events(resp) => self.apply(&resp),
            Batch::Load { registries, instances, revision, announce } => {
                self.load(&registries, &instances, announce, revision);
                tracing::info!(target: "sfc::store", revision, records = instances.len(), "fleet loaded from etcd");
            }
        }
    }

    /// Applies every record and live registry; remote records that are gone are removed.
    /// The changes found have no revision of their own: they are applied without events
    /// (watchers learn of them from a query), and the history continues from `revision`.
    fn load(&self, registries: &[KeyValue], instances: &[KeyValue], announce: bool, revision: i64) {
        {
            let mut live = lock(&self.live);
            live.clear();
            for kv in registries {
                if let Ok(k) = kv.key_str() {
                    live.insert(k.trim_start_matches(REGISTRIES).to_string());
                }
            }
        }
        let Some(reg) = self.registry() else { return };
        let me = self.etcd.id.as_str();
        let mut present = HashSet::new();
        let mut closes = Vec::new();
        {
            let mut st = reg.state();
            for kv in instances {
                let Some(v) = parse_value(kv.key(), kv.value()) else { continue };
                present.insert(v.record.id.clone());
                if v.owner == me {
                    continue;
                }
                {
                    let mut own = lock(&self.etcd.own_rev);
                    if own.get(&v.record.id).is_some_and(|r| *r >= kv.mod_revision()) || st.writing(&v.record.id) {
                        continue;
                    }
                    own.remove(&v.record.id);
                }
                let (owner, id) = (v.owner.clone(), v.record.id.clone());
                if let Some(s) = st.apply_remote(&v.owner, v.record, None, announce, None) {
                    closes.push((id, owner, s));
                }
            }
            let gone: Vec<String> = st
                .instances
                .iter()
                .filter(|(id, i)| i.remote.is_some() && !present.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                st.remove_remote(&id, serde_json::json!({ "reason": "gone-from-etcd" }), None);
            }
            let rev = u64::try_from(revision).unwrap_or(0);
            st.loaded_at(rev);
            self.revision.send_replace(st.cursor());
        }
        close_superseded(closes);
    }

    /// Sends each batch with the number of this registry's transition waves issued when it
    /// arrived (`issued_now`): the writes of ours it can show.
    async fn watch_loop(
        self: Arc<Self>,
        mut from: i64,
        tx: mpsc::UnboundedSender<(u64, Batch)>,
        issued_now: impl Fn() -> u64 + Send + 'static,
    ) {
        let mut backoff = Duration::from_millis(100);
        while self.shared.strong_count() > 0 {
            let mut c = self.etcd.client.clone();
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            match c.watch(PREFIX, Some(opts)).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            backoff = Duration::from_millis(100);
                            if resp.canceled() || resp.compact_revision() > 0 {
                                // Fell behind a compaction (or etcd dropped the watch): read
                                // everything again and watch from there.
                                tracing::warn!(target: "sfc::store", reason = resp.cancel_reason(),
                                    compact_revision = resp.compact_revision(), "etcd watch restarted; reloading the fleet");
                                match fetch(&self.etcd, true).await {
                                    Ok(batch) => {
                                        if let Batch::Load { revision, .. } = &batch {
                                            from = revision + 1;
                                        }
                                        if tx.send((issued_now(), batch)).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(target: "sfc::store", error = %e, "reloading the fleet failed")
                                    }
                                }
                                break;
                            }
                            if let Some(last) =
                                resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max()
                            {
                                from = from.max(last + 1);
                            }
                            if tx.send((issued_now(), Batch::Events(resp))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(target: "sfc::store", error = %e, revision = from, "etcd watch broke; watching again");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(target: "sfc::store", error = %e, "cannot watch etcd; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Applies one batch of watch events. Registries first: a lease that expired deletes the
    /// registry key and its records in the same revision, and the records' reason depends on it.
    fn apply(self: &Arc<Self>, resp: &WatchResponse) {
        self.apply_registries(resp);
        self.apply_instances(resp);
        self.apply_commands(resp);
        // Everything up to the batch's newest revision is applied: that is the cursor now.
        let newest = resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
        if let (Some(rev), Some(reg)) = (newest.and_then(|r| u64::try_from(r).ok()), self.registry()) {
            let mut st = reg.state();
            st.seen_through(rev);
            self.revision.send_replace(st.cursor());
        }
    }

    /// Waits (at most one etcd operation timeout) until this registry has applied revision
    /// `cursor`: a watcher resuming here with a cursor another registry gave it then gets
    /// exactly the events after it.
    pub(crate) async fn caught_up(&self, cursor: u64) {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(self.etcd.op_timeout, rx.wait_for(|r| *r >= cursor)).await;
    }

    /// Keeps the set of live registries.
    fn apply_registries(&self, resp: &WatchResponse) {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            if let Some(id) = key.strip_prefix(REGISTRIES) {
                match ev.event_type() {
                    EventType::Put => lock(&self.live).insert(id.to_string()),
                    EventType::Delete => lock(&self.live).remove(id),
                };
            }
        }
    }

    /// Applies other registries' records; a deletion of one of ours whose client is still
    /// connected here is written back.
    fn apply_instances(&self, resp: &WatchResponse) {
        let me = self.etcd.id.clone();
        let Some(reg) = self.registry() else { return };
        let mut closes = Vec::new();
        let mut reput = Vec::new();
        {
            let mut st = reg.state();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let Some(id) = key.strip_prefix(INSTANCES) else { continue };
                let rev = kv.mod_revision();
                let seq = u64::try_from(rev).unwrap_or(0);
                // A transition of this registry's own, written at this revision: published now,
                // in revision order with everyone else's.
                if st.publish_through(seq) {
                    continue;
                }
                match ev.event_type() {
                    EventType::Put => {
                        let Some(v) = parse_value(kv.key(), kv.value()) else { continue };
                        if v.owner == me {
                            continue;
                        }
                        {
                            let mut own = lock(&self.etcd.own_rev);
                            // Older than this registry's own write of the key (written, or
                            // queued: it lands later): stale. Its event still goes into the
                            // history, as on every registry.
                            if own.get(id).is_some_and(|r| *r >= rev) || st.writing(id) {
                                drop(own);
                                if let Some(t) = v.event {
                                    st.publish_remote_only(&v.owner, &v.record, t, seq);
                                }
                                continue;
                            }
                            own.remove(id);
                        }
                        let owner = v.owner.clone();
                        if let Some(s) = st.apply_remote(&v.owner, v.record, v.event, true, Some(seq)) {
                            closes.push((id.to_string(), owner, s));
                        }
                    }
                    EventType::Delete => {
                        if lock(&self.etcd.own_rev).get(id).is_some_and(|r| *r > rev) || st.writing(id) {
                            continue;
                        }
                        // Who owned it, from the cache (asking etcd for previous values
                        // would double the watch traffic, snapshots included).
                        let prev_owner = st.instances.get(id).map(|i| i.remote.clone().unwrap_or_else(|| me.clone()));
                        if let Some(i) = st.instances.get(id) {
                            if i.remote.is_none() && i.record.status == Status::Online {
                                // One of ours, and its client is connected here: it stays.
                                reput.push(i.record.clone());
                                continue;
                            }
                        }
                        let reason = match &prev_owner {
                            Some(o) if *o == me => "deleted-in-etcd",
                            Some(o) if !lock(&self.live).contains(o) => "owner-expired",
                            _ => "evicted",
                        };
                        lock(&self.etcd.own_rev).remove(id);
                        st.remove_remote(id, serde_json::json!({ "reason": reason, "registry": prev_owner }), Some(seq));
                    }
                }
            }
        }
        close_superseded(closes);
        self.changed.notify_one();
        if !reput.is_empty() {
            let etcd = self.etcd.clone();
            self.etcd.handle.spawn(async move {
                for r in reput {
                    if let Err(e) = etcd.put_record(&r, None).await {
                        tracing::warn!(target: "sfc::store", id = %r.id, error = %e, "cannot write a record back to etcd");
                    }
                }
            });
        }
    }

    /// Commands for instances here (run, and their outcome put), and results of commands sent
    /// from here (handed to the waiting caller).
    fn apply_commands(self: &Arc<Self>, resp: &WatchResponse) {
        let me = &self.etcd.id;
        let cmd_prefix = format!("{COMMANDS}{me}/");
        let res_prefix = format!("{RESULTS}{me}/");
        for ev in resp.events() {
            if ev.event_type() != EventType::Put {
                continue;
            }
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            if let Some(rest) = key.strip_prefix(&cmd_prefix) {
                let Some((sender, cid)) = rest.split_once('/') else { continue };
                match serde_json::from_slice::<CommandValue>(kv.value()) {
                    Ok(v) => {
                        let this = self.clone();
                        let (key, sender, cid) = (key.to_string(), sender.to_string(), cid.to_string());
                        self.main.spawn(async move { this.execute(key, sender, cid, v).await });
                    }
                    Err(e) => tracing::warn!(target: "sfc::store", key, error = %e, "unreadable forwarded command"),
                }
            } else if let Some(cid) = key.strip_prefix(&res_prefix) {
                let outcome = serde_json::from_slice::<Outcome>(kv.value());
                let waiter = cid.parse::<u64>().ok().and_then(|cid| lock(&self.waiting).remove(&cid));
                match (waiter, outcome) {
                    (Some(tx), Ok(o)) => {
                        let _ = tx.send(o);
                    }
                    (_, Err(e)) => tracing::warn!(target: "sfc::store", key, error = %e, "unreadable command result"),
                    (None, _) => {}
                }
                let mut c = self.etcd.client.clone();
                let key = key.to_string();
                self.etcd.handle.spawn(async move {
                    let _ = c.delete(key, None).await;
                });
            }
        }
    }

    /// Runs a command another registry forwarded, and puts its outcome.
    async fn execute(self: Arc<Self>, key: String, sender: String, cid: String, v: CommandValue) {
        let Some(reg) = self.registry() else { return };
        let timeout = Duration::from_millis(v.timeout_ms.clamp(1, 3_600_000));
        let sender_cid = v.command.command_id;
        let c = v.command;
        let sent = match reg.new_command(&c.name, c.reason, c.payload, c.issued_by) {
            Ok(cmd) => reg.send_command_here(&v.instance, cmd, timeout).await,
            Err(e) => Err(e),
        };
        let outcome = match sent {
            Ok(r) => Outcome::Ok(CommandResult { command_id: sender_cid, ..r }),
            Err(Error::Remote { code, message }) => Outcome::Err { code, message },
            Err(e) => Outcome::Err { code: ErrorCode::Internal, message: e.to_string() },
        };
        let etcd = self.etcd.clone();
        let value = serde_json::to_vec(&outcome).unwrap_or_default();
        let done = self
            .etcd
            .handle
            .spawn(async move {
                let lease_id = etcd.lease();
                let rkey = format!("{RESULTS}{sender}/{cid}");
                etcd.retry(|mut c| {
                    let (rkey, value) = (rkey.clone(), value.clone());
                    async move { c.put(rkey, value, Some(PutOptions::new().with_lease(lease_id))).await }
                })
                .await?;
                etcd.retry(|mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await?;
                Ok::<_, etcd_client::Error>(())
            })
            .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(target: "sfc::store", error = %e, "cannot return a forwarded command's result");
        }
    }

    /// Sends a command to an instance that `owner` holds, through etcd, and waits for the
    /// outcome (the owner applies `timeout`; this side waits a little longer).
    pub(crate) async fn forward(
        self: &Arc<Self>,
        owner: &str,
        instance: &str,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, Error> {
        let cid = command.command_id;
        let name = command.name.clone();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(cid, tx);
        let key = format!("{COMMANDS}{owner}/{}/{cid}", self.etcd.id);
        let value = CommandValue { instance: instance.to_string(), command, timeout_ms: timeout.as_millis() as u64 };
        let value = serde_json::to_vec(&value).unwrap_or_default();
        let etcd = self.etcd.clone();
        let k = key.clone();
        let put = self
            .etcd
            .handle
            .spawn(async move {
                let lease_id = etcd.lease();
                let put = etcd.retry(|mut c| {
                    let (k, value) = (k.clone(), value.clone());
                    async move { c.put(k, value, Some(PutOptions::new().with_lease(lease_id))).await }
                });
                tokio::time::timeout(etcd.op_timeout, put).await
            })
            .await;
        let put_err = match put {
            Ok(Ok(Ok(_))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(_)) => Some("timed out".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = put_err {
            lock(&self.waiting).remove(&cid);
            return Err(Error::Unreachable(format!(
                "cannot forward command {name:?} for {instance:?} to registry {owner} through etcd at {}: {e}",
                self.etcd.endpoints
            )));
        }
        let r = tokio::time::timeout(timeout + Duration::from_secs(2), rx).await;
        lock(&self.waiting).remove(&cid);
        let etcd = self.etcd.clone();
        self.etcd.handle.spawn(async move {
            let _ = etcd
                .retry(|mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await;
        });
        match r {
            Ok(Ok(Outcome::Ok(r))) => Ok(r),
            Ok(Ok(Outcome::Err { code, message })) => Err(Error::Remote { code, message }),
            _ => Err(Error::Remote {
                code: ErrorCode::CommandTimeout,
                message: format!(
                    "instance {instance:?} (connected to registry {owner}) did not answer command {name:?} within {}",
                    crate::duration::format(timeout)
                ),
            }),
        }
    }

    /// A planned stop (SIGTERM), once every session was told `shutting-down`: waits until the
    /// instances online here have registered on another registry (their record is then
    /// written under that registry's lease), for at most one lease TTL. Until then their
    /// records stay in etcd, online, under this registry's lease, which is kept alive: no
    /// registry sees them go. Those that did not move in time go when the lease is revoked at
    /// exit (`evicted`, reason `owner-expired`, as after a crash).
    pub(crate) async fn hand_over(&self, reg: &Registry) {
        let window = self.etcd.lease_ttl;
        let started = tokio::time::Instant::now();
        let waiting = || {
            reg.state().instances.values().filter(|i| i.remote.is_none() && i.record.status == Status::Online).count()
        };
        let before = waiting();
        if before == 0 {
            return;
        }
        tracing::info!(target: "sfc::registry", instances = before, window = ?window,
            "handing sessions over: waiting for their clients to register on another registry");
        let mut left = before;
        while left > 0 {
            if tokio::time::timeout_at(started + window, self.changed.notified()).await.is_err() {
                break;
            }
            left = waiting();
        }
        let ms = started.elapsed().as_millis() as u64;
        if left == 0 {
            tracing::info!(target: "sfc::registry", instances = before, ms, "handed over every session to another registry");
        } else {
            tracing::warn!(target: "sfc::registry", moved = before - left, stayed = left, ms,
                "handover window passed: the records of clients that did not move go with this registry's lease");
        }
    }

    /// Keeps the lease alive; when it is lost anyway, takes a new one and writes again every
    /// record this registry owns.
    async fn keepalive_loop(self: Arc<Self>) {
        let period = (self.etcd.lease_ttl / 3).max(Duration::from_millis(500));
        while self.shared.strong_count() > 0 {
            let lease = self.etcd.lease();
            let mut c = self.etcd.client.clone();
            let lost = match c.lease_keep_alive(lease).await {
                Ok((mut keeper, mut stream)) => loop {
                    if keeper.keep_alive().await.is_err() {
                        break false;
                    }
                    match tokio::time::timeout(self.etcd.op_timeout, stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => break true,
                        _ => break false,
                    }
                    if self.shared.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(period).await;
                },
                Err(e) => {
                    tracing::warn!(target: "sfc::store", error = %e, "etcd lease keepalive failed; retrying");
                    false
                }
            };
            // A keep-alive that failed or timed out (etcd slow, or unreachable for a while)
            // may have let the lease expire: renewing it then fails for ever ("lease not
            // found"), and every write under it too. Ask etcd.
            let lost = lost || self.etcd.lease_gone(lease).await;
            if lost {
                tracing::error!(target: "sfc::store", lease,
                    "etcd lease expired: this registry's records were removed from etcd; writing them again");
                self.renew_lease().await;
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn renew_lease(&self) {
        let ttl = self.etcd.lease_ttl.as_secs() as i64;
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut c = self.etcd.client.clone();
            match c.lease_grant(ttl, None).await {
                Ok(r) => {
                    self.etcd.set_lease(r.id());
                    break;
                }
                Err(e) => tracing::warn!(target: "sfc::store", error = %e, "cannot get a new etcd lease; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if let Err(e) = self.etcd.announce().await {
            tracing::warn!(target: "sfc::store", error = %e, "cannot announce this registry in etcd");
        }
        let Some(reg) = self.registry() else { return };
        // The state lock is taken on the registry's runtime, never on this one.
        let Ok(records) = self.main.spawn(async move { reg.state().local_records() }).await else { return };
        // Concurrently, a bounded number at a time (etcd batches them): one by one, 17,000
        // records take about a minute here.
        let mut failed = 0usize;
        for chunk in records.chunks(WRITE_BACK_AT_ONCE) {
            let puts = chunk.iter().map(|r| self.etcd.put_record(r, None));
            for (r, res) in chunk.iter().zip(futures_util::future::join_all(puts).await) {
                if let Err(e) = res {
                    failed += 1;
                    if failed <= 5 {
                        tracing::warn!(target: "sfc::store", id = %r.id, error = %e, "cannot write a record back to etcd");
                    }
                }
            }
        }
        tracing::warn!(target: "sfc::store", records = records.len(), failed, "records written back to etcd under the new lease");
    }
}

fn parse_value(key: &[u8], value: &[u8]) -> Option<InstanceValue> {
    match serde_json::from_slice::<InstanceValue>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(target: "sfc::store", key = %String::from_utf8_lossy(key), error = %e,
                "skipping an unreadable instance record in etcd");
            None
        }
    }
}

/// Closes the sessions whose instance another registry now holds.
fn close_superseded(closes: Vec<(String, String, super::state::SessionRef)>) {
    for (id, owner, s) in closes {
        tracing::warn!(target: "sfc::registry", id, owner, session = s.id,
            "instance connected to another registry; closing its session here");
        let _ = s.tx.try_send(Outbound::Close(Message::error(
            None,
            ErrorCode::Superseded,
            format!("{id} is now connected to registry {owner}"),
            true,
        )));
    }
}

#[cfg(test)]
mod tests {
    //! The hooks etcd mode adds to the fleet state; the whole path runs against a real etcd
    //! in crates/sfc/tests/etcd.rs.
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::broadcast;

    use crate::model::{EventKind, Filter, InstanceRecord, Registration, Status};
    use crate::registry::state::{OutboundTx, SessionRef, State};
    use crate::store::RemoteTransition;

    fn state() -> (State, broadcast::Receiver<Arc<crate::model::Event>>) {
        let (events, rx) = broadcast::channel(64);
        let (reports, _) = broadcast::channel(64);
        (State::new(100, events, reports, Arc::new(crate::store::MemoryStore)), rx)
    }

    fn registration(instance: &str) -> Registration {
        serde_json::from_value(serde_json::json!({ "group": "g", "instance_id": instance, "service": "svc" })).unwrap()
    }

    /// A record as another registry would have written it.
    fn remote_record(instance: &str) -> InstanceRecord {
        let (mut other, _) = state();
        other.register(registration(instance), 1000, None, None, "v1", serde_json::json!({}));
        InstanceRecord::clone(&other.instances[&format!("g/{instance}")].record)
    }

    #[test]
    fn remote_records_are_served_and_their_transitions_reach_watchers() {
        let (mut st, mut rx) = state();
        let t = RemoteTransition { kind: EventKind::Joined, at: 7, detail: serde_json::json!({ "session": 3 }) };
        assert!(st.apply_remote("r2", remote_record("a"), Some(t), true, None).is_none());
        assert_eq!(st.query(&Filter::default()).len(), 1);
        assert_eq!(st.remote_owner("g/a"), Some(("r2".to_string(), Status::Online)));
        let ev = rx.try_recv().unwrap();
        assert_eq!((ev.kind, ev.id.as_str(), ev.at, ev.seq), (EventKind::Joined, "g/a", 7, 1));
        assert_eq!(ev.detail["registry"], "r2");
        assert_eq!(ev.detail["session"], 3);
        // A metric snapshot updates the record without an event.
        let mut r = remote_record("a");
        r.last_report_at = Some(r.last_report_at.unwrap() + 1000);
        st.apply_remote("r2", r, None, true, None);
        assert!(rx.try_recv().is_err());
        assert_eq!(st.instances["g/a"].samples.len(), 2);
        assert!(st.local_records().is_empty());
    }

    #[test]
    fn retention_leaves_remote_records_to_their_owner() {
        let (mut st, _rx) = state();
        let mut r = remote_record("a");
        r.status = Status::Offline;
        r.status_since = 0;
        st.apply_remote("r2", r, None, false, None);
        assert_eq!(st.evict_expired(Duration::ZERO), 0);
        assert!(st.instances.contains_key("g/a"));
        // Its owner evicted it: it goes here too.
        assert!(st.remove_remote("g/a", serde_json::json!({ "reason": "evicted" }), None));
        assert!(st.instances.is_empty());
    }

    #[test]
    fn a_client_that_fails_over_is_taken_over_with_an_online_event() {
        let (mut st, mut rx) = state();
        st.apply_remote("r2", remote_record("a"), None, false, None);
        assert!(rx.try_recv().is_err(), "the initial load is silent");
        let (tx, _keep) = OutboundTx::channel(4);
        st.register(registration("a"), 1000, Some(SessionRef { id: 9, tx }), None, "v1", serde_json::json!({}));
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::Online);
        assert_eq!(st.remote_owner("g/a"), None);
        assert_eq!(st.local_records().len(), 1);
        // A record of ours that is online stays when etcd loses it (it is written back).
        assert!(!st.remove_remote("g/a", serde_json::json!({}), None));
        // The owner's newer write supersedes our session.
        let superseded = st.apply_remote("r3", remote_record("a"), None, true, None);
        assert_eq!(superseded.map(|s| s.id), Some(9));
        assert_eq!(st.remote_owner("g/a").map(|o| o.0), Some("r3".to_string()));
    }
}
