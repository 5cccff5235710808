//! The dashboard's own files (page, script, style sheet) as a browser fetches them from the
//! real `sfc` binary: each has a strong ETag and `Cache-Control: no-cache`, and a second fetch
//! that names the tag in `If-None-Match` is answered 304 with no body.

mod common;

use common::{get_raw, RegistryProc};

fn header<'a>(h: &'a ureq::http::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .map(|v| v.to_str().expect("ASCII header"))
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

#[test]
fn dashboard_assets_carry_a_strong_etag_and_answer_304_when_unchanged() {
    let reg = RegistryProc::start(&[]);
    let mut tags = Vec::new();
    for (path, kind, starts) in [
        ("/", "text/html", "<!doctype html>"),
        ("/dashboard.js", "text/javascript", "// The sfc dashboard."),
        ("/dashboard.css", "text/css", ":root {"),
    ] {
        let url = reg.url(path);
        let (status, head, body) = get_raw(&url, &[]);
        assert_eq!(status, 200, "{path}");
        assert!(header(&head, "content-type").starts_with(kind), "{path}: {head:?}");
        assert!(body.starts_with(starts.as_bytes()), "{path}: not the asset");
        assert_eq!(header(&head, "cache-control"), "no-cache", "{path}");
        let tag = header(&head, "etag").to_string();
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2,
            "{path}: not a strong entity tag: {tag}"
        );

        // The same again: the same tag (computed from the bytes, not per request).
        let (_, again, _) = get_raw(&url, &[]);
        assert_eq!(header(&again, "etag"), tag, "{path}: the tag changed");

        // Revalidation: 304, no body, the tag and the caching rule repeated.
        for inm in [tag.clone(), format!("W/{tag}"), format!("\"other\", {tag}"), "*".into()] {
            let (status, head, body) = get_raw(&url, &[("if-none-match", &inm)]);
            assert_eq!(status, 304, "{path} with If-None-Match: {inm}");
            assert!(body.is_empty(), "{path}: a 304 with {} bytes of body", body.len());
            assert_eq!(header(&head, "etag"), tag, "{path}: 304 without its tag");
            assert_eq!(header(&head, "cache-control"), "no-cache", "{path}");
        }

        // A tag that is not this asset's: the whole asset again.
        let (status, _, body) = get_raw(&url, &[("if-none-match", "\"0123456789abcdef-1\"")]);
        assert_eq!(status, 200, "{path} with another tag");
        assert!(body.starts_with(starts.as_bytes()), "{path}: not the asset");

        // Compressed when asked, under the same tag, and still 304 when unchanged.
        let (status, head, _) = get_raw(&url, &[("accept-encoding", "gzip")]);
        assert_eq!(status, 200, "{path} gzip");
        assert_eq!(header(&head, "content-encoding"), "gzip", "{path}");
        assert_eq!(header(&head, "etag"), tag, "{path}: gzip under another tag");
        let (status, _, body) = get_raw(&url, &[("accept-encoding", "gzip"), ("if-none-match", &tag)]);
        assert_eq!((status, body.len()), (304, 0), "{path} gzip revalidation");
        tags.push(tag);
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 3, "two assets share a tag: {tags:?}");
}
