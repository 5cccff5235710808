//! The HTTP API's query strings, through the real router: `GET /v1/instances`, `/v1/fleet`,
//! `/v1/samples`, `/v1/events` and `/v1/watch` with the fuzzer's query. The API has no
//! separate parse function: axum's `Query` extractor deserializes `FilterQuery`,
//! `EventsQuery` or `WatchQuery` and the handler converts them, so the whole handler is the
//! unit under test. The first byte picks the route (`i`, `f`, `s`, `e`, `w`, or any other byte
//! by its value); the rest is the query. Every answer is 200, or a 4xx with the documented
//! error body; never a 5xx or a panic.
#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/v1/instances",
    "/v1/fleet",
    "/v1/samples",
    "/v1/events",
    "/v1/watch",
];

/// Encodes what a URI cannot hold as is but keeps `&`, `=` and `%`, so structure survives.
const LOOSE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']');

thread_local! {
    static APP: axum::Router = sfc_registry::http::router(sfc_registry::http::AppState::new(sfc_fuzz::registry(), Default::default()));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, query)) = data.split_first() else {
        return;
    };
    let route = match sel {
        b'i' => ROUTES[0],
        b'f' => ROUTES[1],
        b's' => ROUTES[2],
        b'e' => ROUTES[3],
        b'w' => ROUTES[4],
        other => ROUTES[other as usize % ROUTES.len()],
    };
    let uri = [
        format!("{route}?{}", String::from_utf8_lossy(query)),
        format!("{route}?{}", percent_encode(query, LOOSE)),
        format!("{route}?{}", percent_encode(query, NON_ALPHANUMERIC)),
    ]
    .into_iter()
    .find_map(|u| u.parse::<axum::http::Uri>().ok())
    .expect("a fully percent-encoded query is a valid URI");
    let app = APP.with(|a| a.clone());
    let req = Request::get(uri).body(Body::empty()).unwrap();
    sfc_fuzz::block_on(async move {
        let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
        sfc_fuzz::check_http_answer(resp, &[StatusCode::OK, StatusCode::BAD_REQUEST]).await;
    });
});
