//! The list endpoints at fleet scale: `/v1/instances` with paging (`limit`, `after`), a
//! field selection (`fields`), a search (`q`) and a set of ids (`ids`); `/v1/samples` for a
//! set of ids and only what is newer than `since`; `/v1/summary`, the per-group counts the
//! dashboard's overview shows; and the weak `ETag` / `If-None-Match` every list answers with.
//!
//! Records are picked under the state lock as shared `Arc`s (no record is copied); the search,
//! the sort, the page and the JSON are done after the lock is released. Compression is not done
//! here: the router's `CompressionLayer` (tower-http) compresses every response the client
//! accepts gzip or zstd for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::FilterQuery;
use super::error::ApiError;
use super::AppState;
use crate::model::{Health, InstanceRecord, Status};

type ApiResult<T> = Result<T, ApiError>;

/// Largest page of `/v1/instances`.
pub const MAX_PAGE: usize = 10_000;
/// Most ids one `ids=` may name.
pub const MAX_IDS: usize = 1_000;
/// The summary's sparkline: one point per step, this many points (2 minutes).
pub const SPARK_STEP_MS: u64 = 5_000;
pub const SPARK_POINTS: u64 = 24;

/// The top-level fields of an instance record, which `fields=` may name.
pub const RECORD_FIELDS: &[&str] = &[
    "id",
    "group",
    "service",
    "instance_id",
    "hostname",
    "pid",
    "status",
    "offline_reason",
    "health",
    "health_note",
    "endpoints",
    "tags",
    "metadata",
    "version",
    "api",
    "interval_ms",
    "connected_since",
    "last_report_at",
    "tls_identity",
    "metrics",
    "wire",
    "clock_skew_ms",
    "status_since",
];

/// Query of `/v1/instances`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(flatten)]
    pub filter: FilterQuery,
    /// Case-insensitive substring of the id, service, hostname, version, a tag or a
    /// `key=value` of the metadata.
    pub q: Option<String>,
    /// Only these ids, comma-separated.
    pub ids: Option<String>,
    /// At most this many records (1..=10000); `X-Next-Cursor` says where the next page starts.
    pub limit: Option<usize>,
    /// Only records whose id sorts after this one (the cursor of the previous page).
    pub after: Option<String>,
    /// Only these top-level fields of each record, comma-separated (`id` always comes back).
    pub fields: Option<String>,
}

/// Query of `/v1/samples`.
#[derive(Debug, Default, Deserialize)]
pub struct SamplesQuery {
    #[serde(flatten)]
    pub filter: FilterQuery,
    /// Only these ids, comma-separated.
    pub ids: Option<String>,
    /// Only samples taken after this time (Unix ms, registry clock).
    pub since: Option<u64>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn parse_ids(ids: Option<String>) -> ApiResult<Option<HashSet<String>>> {
    let Some(ids) = non_empty(ids) else {
        return Ok(None);
    };
    let set: HashSet<String> = ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if set.len() > MAX_IDS {
        return Err(ApiError::invalid(format!(
            "ids names {} instances; at most {MAX_IDS}",
            set.len()
        )));
    }
    Ok(Some(set))
}

/// Does `r` match the search `q` (already lower case)?
pub fn search_matches(r: &InstanceRecord, q: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(q);
    has(&r.id)
        || has(&r.service)
        || has(&r.hostname)
        || r.version.as_deref().is_some_and(has)
        || r.tags.iter().any(|t| has(t))
        || r.metadata.iter().any(|(k, v)| has(&format!("{k}={v}")))
}

/// `W/"<hash>"` of a body: weak, because the compression layer may send it in another
/// encoding.
fn etag_of(body: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("W/\"{:016x}{:x}\"", h.finish(), body.len())
}

/// Whether the request's `If-None-Match` names `tag` (weak comparison, lists and `*`, as RFC
/// 9110 says for GET): the client has it, and the answer is 304. A tag that does not parse
/// never matches.
pub(crate) fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    use headers::HeaderMapExt;
    match (headers.typed_get::<headers::IfNoneMatch>(), tag.parse::<headers::ETag>()) {
        (Some(inm), Ok(etag)) => !inm.precondition_passes(&etag),
        _ => false,
    }
}

/// A JSON body with its ETag, or 304 Not Modified when the client already has it.
pub fn etag_json(headers: &HeaderMap, body: Vec<u8>) -> Response {
    let tag = etag_of(&body);
    let value = HeaderValue::from_str(&tag).expect("an etag is ASCII");
    if not_modified(headers, &tag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, value)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, value),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Serializes `v` for [`etag_json`].
pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

/// A query-string component (RFC 3986 unreserved characters kept, everything else %XX).
fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED_KEPT).to_string()
}

/// Every byte but RFC 3986's unreserved characters (ASCII letters, digits and `-._~`).
const UNRESERVED_KEPT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `GET /v1/instances`.
pub fn instances(s: &AppState, headers: &HeaderMap, q: ListQuery) -> ApiResult<Response> {
    let filter = q.filter.filter()?;
    let search = non_empty(q.q).map(|x| x.to_lowercase());
    let ids = parse_ids(q.ids)?;
    let after = non_empty(q.after);
    let limit = match q.limit {
        None => None,
        Some(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "limit {n} is outside 1..={MAX_PAGE}"
            )))
        }
    };
    let fields: Option<BTreeSet<&str>> = match non_empty(q.fields) {
        None => None,
        Some(f) => {
            let mut set = BTreeSet::from(["id"]);
            for name in f.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                let known = RECORD_FIELDS.iter().find(|k| **k == name).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "fields: unknown field {name:?}; known: {}",
                        RECORD_FIELDS.join(",")
                    ))
                })?;
                set.insert(known);
            }
            Some(set)
        }
    };
    let mut page: Vec<Arc<InstanceRecord>> = match &ids {
        Some(ids) => {
            let st = s.registry.state();
            ids.iter()
                .filter_map(|id| st.instances.get(id))
                .filter(|i| filter.matches(&i.record))
                .map(|i| i.record.clone())
                .collect()
        }
        None => s.registry.state().query(&filter),
    };
    page.retain(|r| {
        after.as_deref().is_none_or(|a| r.id.as_str() > a)
            && search.as_deref().is_none_or(|q| search_matches(r, q))
    });
    crate::registry::state::sort_by_id(&mut page);
    let more = limit.is_some_and(|n| page.len() > n);
    if let Some(n) = limit {
        page.truncate(n);
    }
    let body = match &fields {
        None => to_json(&page),
        Some(fields) => {
            let projected: Vec<Value> = page
                .iter()
                .map(|r| match serde_json::to_value(&**r) {
                    Ok(Value::Object(mut m)) => {
                        m.retain(|k, _| fields.contains(k.as_str()));
                        Value::Object(m)
                    }
                    other => other.unwrap_or(Value::Null),
                })
                .collect();
            to_json(&projected)
        }
    };
    let mut resp = etag_json(headers, body);
    if more {
        if let Some(last) = page.last() {
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&last.id)) {
                resp.headers_mut().insert("x-next-cursor", v);
            }
        }
    }
    Ok(resp)
}

/// `GET /v1/samples`.
pub fn samples(s: &AppState, headers: &HeaderMap, q: SamplesQuery) -> ApiResult<Response> {
    let filter = q.filter.filter()?;
    let ids = parse_ids(q.ids)?;
    let since = q.since.unwrap_or(0);
    let out: BTreeMap<String, Vec<crate::registry::Sample>> = {
        let st = s.registry.state();
        let pick = |i: &crate::registry::state::Instance| {
            (
                i.record.id.clone(),
                i.samples
                    .iter()
                    .filter(|x| x.at() > since)
                    .map(|x| x.get())
                    .collect::<Vec<_>>(),
            )
        };
        match &ids {
            Some(ids) => ids
                .iter()
                .filter_map(|id| st.instances.get(id))
                .filter(|i| filter.matches(&i.record))
                .map(pick)
                .collect(),
            None => st
                .instances
                .values()
                .filter(|i| filter.matches(&i.record))
                .map(pick)
                .collect(),
        }
    };
    Ok(etag_json(headers, to_json(&out)))
}

#[derive(Default)]
struct GroupCounts {
    services: HashSet<String>,
    status: [u64; 3],
    health: [u64; 3],
    /// Per sparkline step: sum and number of CPU samples.
    cpu: Vec<(f64, u32)>,
}

fn counts_json(status: &[u64; 3], health: &[u64; 3]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("instances".into(), json!(status.iter().sum::<u64>()));
    for (i, s) in [Status::Online, Status::Offline, Status::Left]
        .iter()
        .enumerate()
    {
        m.insert(s.as_str().into(), json!(status[i]));
    }
    for (i, h) in [Health::Passing, Health::Warning, Health::Critical]
        .iter()
        .enumerate()
    {
        m.insert(h.as_str().into(), json!(health[i]));
    }
    m
}

/// `GET /v1/summary`: per group, instances by status and by health, the number of services,
/// and the mean process CPU of its instances per 5 s step over the last 2 minutes (complete
/// steps only, so the body, and its ETag, change at most once a step while nothing else does);
/// the fleet's totals; and the registry's own figures.
pub fn summary(s: &AppState, headers: &HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let end = crate::model::now_ms() / SPARK_STEP_MS * SPARK_STEP_MS;
    let start = end.saturating_sub(SPARK_POINTS * SPARK_STEP_MS);
    let mut groups: HashMap<String, GroupCounts> = HashMap::new();
    let cursor;
    {
        let st = s.registry.state();
        cursor = st.cursor();
        for i in st.instances.values() {
            let r = &i.record;
            let g = match groups.get_mut(&r.group) {
                Some(g) => g,
                None => groups.entry(r.group.clone()).or_default(),
            };
            if !g.services.contains(&r.service) {
                g.services.insert(r.service.clone());
            }
            g.status[match r.status {
                Status::Online => 0,
                Status::Offline => 1,
                Status::Left => 2,
            }] += 1;
            g.health[match r.health {
                Health::Passing => 0,
                Health::Warning => 1,
                Health::Critical => 2,
            }] += 1;
            if g.cpu.is_empty() {
                g.cpu = vec![(0.0, 0); SPARK_POINTS as usize];
            }
            for x in i.samples.iter().rev().map(|x| x.get()) {
                if x.at < start {
                    break;
                }
                if x.at >= end {
                    continue;
                }
                if let Some(c) = x.cpu_percent {
                    let slot = &mut g.cpu[((x.at - start) / SPARK_STEP_MS) as usize];
                    slot.0 += c;
                    slot.1 += 1;
                }
            }
        }
    }
    let mut names: Vec<&String> = groups.keys().collect();
    names.sort_unstable();
    let (mut status, mut health) = ([0u64; 3], [0u64; 3]);
    let list: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let g = &groups[name];
            for k in 0..3 {
                status[k] += g.status[k];
                health[k] += g.health[k];
            }
            let mut m = counts_json(&g.status, &g.health);
            m.insert("group".into(), json!(name));
            m.insert("services".into(), json!(g.services.len()));
            let cpu: Vec<Value> = g
                .cpu
                .iter()
                .map(|(sum, n)| {
                    if *n == 0 {
                        Value::Null
                    } else {
                        json!((sum / *n as f64 * 10.0).round() / 10.0)
                    }
                })
                .collect();
            m.insert("cpu".into(), Value::Array(cpu));
            Value::Object(m)
        })
        .collect();
    let mut totals = counts_json(&status, &health);
    totals.insert("groups".into(), json!(list.len()));
    let f = s.figures();
    let body = json!({
        "version": crate::VERSION,
        "tls": s.config.tls.is_some(),
        "admin_enabled": s.config.access.enabled(),
        "sessions": s.registry.stats().sessions_current.load(Relaxed),
        "events_cursor": cursor,
        "process": {
            "reports_per_second": f.reports_per_second.round(),
            "cpu_percent": f.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
            "resident_bytes": f.resident_bytes.map(|b| b >> 20 << 20),
        },
        "spark": { "step_ms": SPARK_STEP_MS, "end": end },
        "totals": totals,
        "groups": list,
    });
    etag_json(headers, to_json(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_accepts_weak_strong_lists_and_star() {
        let tag = etag_of(b"[1,2,3]");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &tag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", {tag}")).unwrap(),
        );
        assert!(not_modified(&h, &tag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(tag.trim_start_matches("W/")).unwrap(),
        );
        assert!(not_modified(&h, &tag));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, &tag));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"other\""),
        );
        assert!(!not_modified(&h, &tag));
    }

    #[test]
    fn cursors_are_query_components() {
        assert_eq!(percent_encode("g/c 1&x=é"), "g%2Fc%201%26x%3D%C3%A9");
    }
}
