//! The dashboard: one page, its script and its style sheet, compiled into the binary. It uses
//! nothing from the network but this registry's own API, so it works offline; the
//! Content-Security-Policy header holds it to that.
//!
//! Each asset carries a strong `ETag` (a hash of its bytes, computed once) and
//! `Cache-Control: no-cache`: a browser keeps its copy and revalidates it, and a request whose
//! `If-None-Match` names the tag is answered 304 with no body. The bytes change only with the
//! binary, so the tag does too.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

struct Asset {
    content_type: &'static str,
    body: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            content_type,
            body,
            etag: OnceLock::new(),
        }
    }

    /// `"<hash>-<length>"` of the bytes, both hex (the first request computes it).
    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let mut h = DefaultHasher::new();
            self.body.as_bytes().hash(&mut h);
            HeaderValue::from_str(&format!("\"{:016x}-{:x}\"", h.finish(), self.body.len()))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
    }

    /// Does `If-None-Match` name this asset's tag (or `*`)? RFC 9110 §13.1.2: a list of
    /// entity tags, compared weakly (a `W/` prefix does not matter).
    fn unchanged_for(&self, headers: &HeaderMap) -> bool {
        self.etag().to_str().is_ok_and(|tag| super::lists::not_modified(headers, tag))
    }

    fn respond(&self, headers: &HeaderMap) -> Response {
        let common = [
            (header::ETAG, self.etag().clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ];
        if self.unchanged_for(headers) {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        (
            common,
            [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))],
            self.body,
        )
            .into_response()
    }
}

static PAGE: Asset = Asset::new("text/html; charset=utf-8", include_str!("dashboard.html"));
static SCRIPT: Asset = Asset::new("text/javascript; charset=utf-8", include_str!("dashboard.js"));
static STYLE: Asset = Asset::new("text/css; charset=utf-8", include_str!("dashboard.css"));

pub async fn page(headers: HeaderMap) -> Response {
    PAGE.respond(&headers)
}

pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

pub async fn style(headers: HeaderMap) -> Response {
    STYLE.respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_none_match_names_the_tag_in_a_list_weakly_or_as_star() {
        let tag = SCRIPT.etag().to_str().unwrap().to_string();
        assert!(!tag.starts_with("W/") && tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        assert_ne!(SCRIPT.etag(), STYLE.etag());
        assert!(SCRIPT.unchanged_for(&with(&[&tag])));
        assert!(SCRIPT.unchanged_for(&with(&[&format!("\"x\", W/{tag}")])));
        assert!(SCRIPT.unchanged_for(&with(&["\"x\"", &tag])));
        assert!(SCRIPT.unchanged_for(&with(&["*"])));
        assert!(!SCRIPT.unchanged_for(&with(&[])));
        assert!(!SCRIPT.unchanged_for(&with(&["\"x\""])));
        assert!(!SCRIPT.unchanged_for(&with(&[STYLE.etag().to_str().unwrap()])));
    }
}
