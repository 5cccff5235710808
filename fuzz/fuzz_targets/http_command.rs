//! The HTTP API's command body, through the real router: `POST
//! /v1/instances/{group}/{instance_id}/commands` with the admin token and the fuzzer's body
//! (`CommandRequest` JSON, then the `timeout` duration). If the input has a newline in its
//! first 256 bytes, the part before it is `group/instance_id` (percent-encoded into the
//! path). The instances are unknown or have no live session, so no request waits. Every
//! answer is a 4xx with the documented error body; never a 5xx or a panic.
#![no_main]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
use sfc_registry::http::{Access, AppState, HttpConfig, Peer};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

thread_local! {
    static APP: axum::Router = {
        let config = HttpConfig { access: Access::new(Some(TOKEN.into()), Vec::new()), ..Default::default() };
        sfc_registry::http::router(AppState::new(sfc_fuzz::registry(), config))
    };
}

fuzz_target!(|data: &[u8]| {
    let (group, instance, body) = match data.iter().take(256).position(|&b| b == b'\n') {
        Some(nl) => {
            let path = &data[..nl];
            let (g, i) = match path.iter().position(|&b| b == b'/') {
                Some(s) => (&path[..s], &path[s + 1..]),
                None => (path, &b"known"[..]),
            };
            (g, i, &data[nl + 1..])
        }
        None => (&b"fuzz"[..], &b"missing"[..], data),
    };
    let uri = format!(
        "/v1/instances/{}/{}/commands",
        percent_encode(group, NON_ALPHANUMERIC),
        percent_encode(instance, NON_ALPHANUMERIC)
    );
    let mut req = Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    req.extensions_mut().insert(Peer {
        addr: "127.0.0.1:1".parse().unwrap(),
        subject: None,
        uris: Vec::new(),
    });
    let app = APP.with(|a| a.clone());
    sfc_fuzz::block_on(async move {
        let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
        sfc_fuzz::check_http_answer(
            resp,
            &[
                StatusCode::BAD_REQUEST,
                StatusCode::NOT_FOUND,
                StatusCode::CONFLICT,
                StatusCode::METHOD_NOT_ALLOWED,
            ],
        )
        .await;
    });
});
