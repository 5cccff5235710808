//! Handlers of the JSON API v1, the SSE watch and the registry's own endpoints. Records and
//! events are serialized exactly as in the protocol (`crate::model`).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::error::{ApiCode, ApiError};
use super::{AppState, Peer};
use crate::model::{Event, Filter, InstanceRecord};

type ApiResult<T> = Result<T, ApiError>;

/// Largest page of `/v1/events` in bytes (estimated from the records it carries).
pub const EVENTS_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest page of `/v1/events`.
pub const MAX_EVENTS_PAGE: usize = 1000;
/// Events in an instance's detail view.
const DETAIL_EVENTS: usize = 20;

pub async fn not_found() -> ApiError {
    ApiError::new(
        ApiCode::NotFound,
        "no such route; GET /v1/openapi.json lists them",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ApiCode::MethodNotAllowed,
        "this route does not take that method; GET /v1/openapi.json lists them",
    )
}

pub async fn healthz(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": crate::VERSION,
        "uptime_seconds": crate::model::now_ms().saturating_sub(s.registry.started_at()) / 1000,
    }))
}

pub async fn readyz(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    if !s.ready.load(Ordering::Relaxed) || s.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ApiCode::ShuttingDown,
            "the registry is shutting down",
        ));
    }
    let (store, store_error) = s.registry.store_status();
    if let Some(e) = store_error {
        return Err(ApiError::new(
            ApiCode::StoreFailing,
            format!("the {store} store is failing ({e}); the registry serves from memory and catches up when it recovers"),
        ));
    }
    Ok(Json(json!({
        "ready": true,
        "store": store,
        "sessions": s.registry.session_count(),
        "instances": s.registry.instance_count(),
    })))
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let body = super::prometheus::render(&s.registry, &s.figures(), s.config.metrics_instances);
    (
        [(header::CONTENT_TYPE, super::prometheus::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// The registry itself: version, figures, and whether mutating calls are possible.
pub async fn registry_info(State(s): State<AppState>) -> Json<Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let st = s.registry.stats();
    let (instances, online) = s.registry.counts();
    let (_, cursor) = s.registry.events_after(u64::MAX, 0);
    Json(json!({
        "version": crate::VERSION,
        "started_at": s.registry.started_at(),
        "tls": s.config.tls.is_some(),
        "admin_enabled": s.config.access.enabled(),
        "sessions": st.sessions_current.load(Relaxed),
        "reports_total": st.reports_total.load(Relaxed),
        "commands_total": st.commands_total.load(Relaxed),
        "events_cursor": cursor,
        "instances": instances,
        "online": online,
        "process": s.figures(),
    }))
}

/// Query parameters that select instances; empty values select everything.
#[derive(Debug, Default, Deserialize)]
pub struct FilterQuery {
    group: Option<String>,
    service: Option<String>,
    status: Option<String>,
    health: Option<String>,
    tag: Option<String>,
}

impl FilterQuery {
    pub(super) fn filter(self) -> ApiResult<Filter> {
        let some = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Filter {
            group: some(self.group),
            service: some(self.service),
            status: some(self.status)
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: String| ApiError::invalid(format!("query parameter status: {e}")))?,
            health: some(self.health)
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: String| ApiError::invalid(format!("query parameter health: {e}")))?,
            tag: some(self.tag),
        })
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
}

pub async fn fleet(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FilterQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let fleet: BTreeMap<String, Vec<Arc<InstanceRecord>>> = s.registry.fleet(&query(q)?.filter()?);
    Ok(super::lists::etag_json(&headers, super::lists::to_json(&fleet)))
}

/// Records, by id; paged with `limit` and `after`, narrowed with `q`, `ids` and `fields`
/// ([`super::lists`]).
pub async fn instances(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<super::lists::ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    super::lists::instances(&s, &headers, query(q)?)
}

/// Recent samples of every selected instance, by id (the dashboard's sparklines); `ids` and
/// `since` narrow them to the rows on screen and what is new.
pub async fn samples(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<super::lists::SamplesQuery>, QueryRejection>,
) -> ApiResult<Response> {
    super::lists::samples(&s, &headers, query(q)?)
}

/// Per-group counts for the dashboard's overview ([`super::lists::summary`]).
pub async fn summary(State(s): State<AppState>, headers: HeaderMap) -> Response {
    super::lists::summary(&s, &headers)
}

/// `{group}/{instance_id}` from the path. A rejection (a segment that is not UTF-8 once
/// percent-decoded) answers with the JSON error body like every other bad request, not
/// axum's plain-text one (found by the `http_command` fuzz target).
type IdPath = Result<Path<(String, String)>, PathRejection>;

fn id_path(p: IdPath) -> ApiResult<(String, String)> {
    p.map(|Path(x)| x)
        .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(ApiCode::UnknownInstance, format!("no instance {id:?}"))
}

pub async fn instance(
    State(s): State<AppState>,
    path: IdPath,
) -> ApiResult<Json<Value>> {
    let (group, instance_id) = id_path(path)?;
    let id = InstanceRecord::make_id(&group, &instance_id);
    let record = s.registry.current_record(&id).ok_or_else(|| unknown(&id))?;
    let samples = s.registry.samples(&id).unwrap_or_default();
    let (history, _) = s.registry.events_after(0, usize::MAX);
    let mut recent: Vec<Arc<Event>> = history
        .into_iter()
        .rev()
        .filter(|e| e.id == id)
        .take(DETAIL_EVENTS)
        .collect();
    recent.reverse();
    Ok(Json(
        json!({ "instance": record, "samples": samples, "events": recent }),
    ))
}

pub async fn deregister(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    path: IdPath,
) -> ApiResult<Json<Value>> {
    let by = authorize_admin(&s, &headers, &peer, "deregister")?;
    let (group, instance_id) = id_path(path)?;
    let id = InstanceRecord::make_id(&group, &instance_id);
    s.registry
        .deregister(&id, &by)
        .map_err(|e| match ApiError::from(e) {
            e if e.code == ApiCode::UnknownInstance => unknown(&id),
            e => e,
        })?;
    // Answered once the eviction is committed (group commit).
    s.registry.durable().await;
    tracing::info!(target: "sfc::http", id, by, "deregistered");
    Ok(Json(json!({ "deregistered": id, "by": by })))
}

/// Body of `POST /v1/instances/{group}/{instance_id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// `shutdown`, or any name the instance handles.
    pub command: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub payload: Value,
    /// How long to wait for the result, e.g. `5s` (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
}

pub async fn command(
    State(s): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    path: IdPath,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    // Credentials first: an unauthorized caller learns nothing about the fleet.
    let by = authorize_admin(&s, &headers, &peer, "send a command")?;
    let (group, instance_id) = id_path(path)?;
    let req: CommandRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "bad command body: {e}; expected {{\"command\":\"shutdown\",\"reason\":\"...\"}} or {{\"command\":NAME,\"payload\":{{...}}}}"
        ))
    })?;
    let timeout = match &req.timeout {
        None => s.config.command_timeout,
        Some(t) => {
            let t = crate::duration::parse("timeout", t)
                .map_err(|e| ApiError::invalid(e.to_string()))?;
            if t.is_zero() || t > s.config.max_command_timeout {
                return Err(ApiError::invalid(format!(
                    "timeout {} is outside (0, {}]",
                    crate::duration::format(t),
                    crate::duration::format(s.config.max_command_timeout)
                )));
            }
            t
        }
    };
    let id = InstanceRecord::make_id(&group, &instance_id);
    tracing::info!(target: "sfc::http", id, command = req.command, by, "command");
    let result = s
        .registry
        .send_command(
            &id,
            &req.command,
            req.reason.clone(),
            req.payload,
            Some(by.clone()),
            timeout,
        )
        .await
        .map_err(|e| match ApiError::from(e) {
            e if e.code == ApiCode::UnknownInstance => unknown(&id),
            e => e,
        })?;
    Ok(Json(json!({
        "id": id,
        "command": req.command,
        "command_id": result.command_id,
        "ok": result.ok,
        "result": result.result,
        "error": result.error,
        "by": by,
    })))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub async fn events(
    State(s): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::invalid(format!(
            "limit {limit} is outside 1..={MAX_EVENTS_PAGE}"
        )));
    }
    let after = q.after.unwrap_or(0);
    let (mut page, latest) = s.registry.events_after(after, limit);
    // Bounded in bytes too: a page stops at EVENTS_PAGE_BYTES (at least one event); `next`
    // continues it.
    let mut bytes = 0usize;
    if let Some(cut) = page.iter().position(|e| {
        bytes += crate::registry::session::event_size(e);
        bytes > EVENTS_PAGE_BYTES
    }) {
        page.truncate(cut.max(1));
    }
    let next = page.last().map(|e| e.seq).unwrap_or(after.min(latest));
    Ok(Json(json!({
        "events": page,
        // Pass as `after` to get the next page.
        "next": next,
        "latest": latest,
        "more": next < latest,
    })))
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchQuery {
    #[serde(flatten)]
    filter: FilterQuery,
    /// Replay history after this cursor first (the `Last-Event-ID` header wins over it).
    after: Option<u64>,
    /// Also send a `report` event per report (no id: they are not in the history).
    #[serde(default)]
    reports: Option<bool>,
}

fn event_matches(f: &Filter, ev: &Event) -> bool {
    match &ev.instance {
        Some(r) => f.matches(r),
        None => {
            f.group.as_deref().is_none_or(|g| g == ev.group)
                && f.service
                    .as_deref()
                    .is_none_or(|sv| ev.service.is_empty() || sv == ev.service)
                && f.status.is_none()
                && f.health.is_none()
                && f.tag.is_none()
        }
    }
}

fn sse_event(ev: &Event) -> SseEvent {
    sse_frame(ev, serde_json::to_string(ev).unwrap_or_else(|_| "{}".into()))
}

fn sse_frame(ev: &Event, data: String) -> SseEvent {
    let e = SseEvent::default().event(ev.kind.as_str()).data(data);
    if ev.seq > 0 {
        e.id(ev.seq.to_string())
    } else {
        e
    }
}

/// The JSON of a thin report event with the current record filled in: the same text as the
/// [`Event`] with `instance` set, written from the shared record without copying it.
fn report_json(ev: &Event, record: &InstanceRecord) -> String {
    #[derive(serde::Serialize)]
    struct WithRecord<'a> {
        seq: u64,
        at: u64,
        kind: crate::model::EventKind,
        id: &'a str,
        group: &'a str,
        service: &'a str,
        instance: &'a InstanceRecord,
        #[serde(skip_serializing_if = "Value::is_null")]
        detail: &'a Value,
    }
    let view = WithRecord {
        seq: ev.seq,
        at: ev.at,
        kind: ev.kind,
        id: &ev.id,
        group: &ev.group,
        service: &ev.service,
        instance: record,
        detail: &ev.detail,
    };
    serde_json::to_string(&view).unwrap_or_else(|_| "{}".into())
}

/// The state of one SSE watch.
struct Watch {
    state: AppState,
    filter: Filter,
    events: broadcast::Receiver<Arc<Event>>,
    reports: Option<broadcast::Receiver<Arc<Event>>>,
    backlog: VecDeque<Arc<Event>>,
    /// Newest history position already looked at.
    last: u64,
    /// Sent before anything else (a resume point older than the history).
    notice: Option<SseEvent>,
    /// Set once `slow-consumer` was sent: the stream ends.
    done: bool,
}

/// Tells a watcher that fell behind the per-report events that it is cut off (its budget is
/// the 16,384 report events the registry keeps; RELIABILITY.md "Budgets"). The stream ends;
/// an `EventSource` reconnects with `Last-Event-ID` and misses no transition.
fn slow_consumer(missed: u64) -> SseEvent {
    SseEvent::default().event("slow-consumer").data(
        serde_json::json!({ "error": { "code": "slow-consumer", "message": format!(
            "this watch fell {missed} report events behind; reconnect (with Last-Event-ID) to resume"
        ) } })
        .to_string(),
    )
}

/// Tells the watcher that events it asked for are gone from the history.
fn lagged() -> SseEvent {
    SseEvent::default().event("lagged").data(
        r#"{"message":"some events are no longer in the registry's history; reload the fleet"}"#,
    )
}

impl Watch {
    /// Fills the backlog from the history after `self.last` (resume and lag recovery).
    /// Returns false when the history no longer holds the event right after `last`.
    fn replay(&mut self) -> bool {
        let (page, _) = self.state.registry.events_after(self.last, usize::MAX);
        // Not `first == last + 1`: with `--store etcd` numbers are etcd revisions, with gaps.
        let complete = self.state.registry.state().complete_after(self.last);
        self.backlog
            .extend(page.into_iter().filter(|e| event_matches(&self.filter, e)));
        complete
    }

    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(n) = self.notice.take() {
            return Some(n);
        }
        if self.done {
            return None;
        }
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                self.last = self.last.max(ev.seq);
                return Some(sse_event(&ev));
            }
            let reports = async {
                match self.reports.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                r = self.events.recv() => match r {
                    Ok(ev) => {
                        if ev.seq <= self.last {
                            continue;
                        }
                        self.last = ev.seq;
                        if event_matches(&self.filter, &ev) {
                            return Some(sse_event(&ev));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !self.replay() {
                            return Some(lagged());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                r = reports => match r {
                    Ok(ev) if event_matches(&self.filter, &ev) => {
                        // Report events travel thin (the ring keeps no record); the current
                        // record, shared, is written with it as it is sent.
                        if ev.instance.is_some() {
                            return Some(sse_event(&ev));
                        }
                        let Some(record) = self.state.registry.current_record(&ev.id) else { continue };
                        if self.filter.matches(&record) {
                            return Some(sse_frame(&ev, report_json(&ev, &record)));
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.state.registry.stats().slow_consumers_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(target: "sfc::audit", missed = n, "slow consumer: an SSE watch fell behind the report events; closing it");
                        self.done = true;
                        return Some(slow_consumer(n));
                    }
                    Err(broadcast::error::RecvError::Closed) => self.reports = None,
                },
            }
        }
    }
}

pub async fn watch(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let q = query(q)?;
    let filter = q.filter.filter()?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID must be an event sequence number")
                })?,
        ),
        None => q.after,
    };
    // A cursor from another registry of the fleet (`--store etcd`): wait until this one has
    // reached it.
    if let Some(after) = resume {
        s.registry.caught_up(after).await;
    }
    // Subscribe before reading the history, so nothing falls between the two.
    let events = s.registry.subscribe();
    let reports = q
        .reports
        .unwrap_or(false)
        .then(|| s.registry.subscribe_reports());
    let (_, latest) = s.registry.events_after(u64::MAX, 0);
    let heartbeat = s.config.heartbeat;
    let mut w = Watch {
        state: s,
        filter,
        events,
        reports,
        backlog: VecDeque::new(),
        last: latest,
        notice: None,
        done: false,
    };
    if let Some(after) = resume {
        w.last = after.min(latest);
        if !w.replay() {
            w.notice = Some(lagged());
        }
    }
    let stream =
        futures_util::stream::unfold(w, |mut w| async move { w.next().await.map(|e| (Ok(e), w)) });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(heartbeat.max(Duration::from_millis(10)))
            .text("heartbeat"),
    ))
}

/// Who may mutate: an admin token or listed admin subject (`--admin-token`, `--admin-subject`),
/// or a client certificate that the identity policy (`--policy`) makes admin.
/// A refusal is written to the audit log (who: address and certificate subject; what they
/// tried; why) and counted in `/metrics` (`sfc_registry_refused_admin_calls_total`).
fn authorize_admin(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    peer: &super::access::Peer,
    action: &str,
) -> ApiResult<String> {
    if let (Some(policy), Some(subject)) = (&s.registry.config().policy, &peer.subject) {
        if policy.grant(Some(subject), &peer.uris).is_admin() {
            return Ok(format!("cert:{subject}"));
        }
    }
    s.config.access.authorize(headers, peer).inspect_err(|e| {
        s.registry.stats().refused_admin_calls_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "sfc::audit",
            peer = %peer.addr,
            subject = ?peer.subject,
            action,
            "refused: {} may not {action} over HTTP: {}",
            peer.addr,
            e.message
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report event written from the shared record reads exactly as the event with the
    /// record in it, with and without a detail.
    #[test]
    fn report_events_are_written_as_the_event_with_its_record() {
        let record: InstanceRecord = serde_json::from_value(json!({
            "id": "g/a", "group": "g", "service": "svc", "instance_id": "a", "hostname": "h",
            "pid": 7, "status": "online", "health": "warning", "health_note": "slow",
            "interval_ms": 1000, "wire": "v1", "status_since": 5, "tags": ["x"],
            "metadata": { "k": "v" }, "last_report_at": 9, "endpoints": [], "metrics": {},
            "offline_reason": null, "version": "1.2", "api": null, "connected_since": 3,
            "tls_identity": null,
        }))
        .unwrap();
        for detail in [Value::Null, json!({ "note": "n" })] {
            let ev = Event {
                seq: 0,
                at: 11,
                kind: crate::model::EventKind::Report,
                id: "g/a".into(),
                group: "g".into(),
                service: "svc".into(),
                instance: None,
                detail,
            };
            let whole = Event { instance: Some(Arc::new(record.clone())), ..ev.clone() };
            assert_eq!(report_json(&ev, &record), serde_json::to_string(&whole).unwrap());
        }
    }
}
