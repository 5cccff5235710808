//! Who may change the fleet. Reads are open; every mutating call needs the admin token as
//! `Authorization: Bearer <token>`, or a TLS client certificate whose subject is listed as an
//! admin. The name returned for the caller goes into the event history (`by`).

use std::net::SocketAddr;

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use super::error::{ApiCode, ApiError};

/// The connection a request came in on; inserted by the server loop into every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Subject of the verified client certificate (HTTPS with mTLS only).
    pub subject: Option<String>,
    /// SAN URIs of that certificate (`sfc://admin` grants admin under `--policy`).
    pub uris: Vec<String>,
}

/// The admin credentials this registry accepts.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<String>,
    subjects: Vec<String>,
}

// Hand-written so the token never reaches a log.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("subjects", &self.subjects)
            .finish()
    }
}

/// How to enable mutating calls, for the 403 message and the CLI.
pub const HOW_TO_ENABLE: &str =
    "mutating calls are disabled: start the registry with --admin-token TOKEN \
     (or SFC_ADMIN_TOKEN=TOKEN), or with --http-tls --mtls optional --admin-subject SUBJECT, \
     then send Authorization: Bearer TOKEN or present that client certificate";

impl Access {
    /// An empty token counts as none: it would let anyone in with `Bearer `.
    pub fn new(token: Option<String>, subjects: Vec<String>) -> Access {
        Access {
            // Trimmed: a token read from a secret file ends with a newline that no client
            // can send in a header.
            token: token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
            subjects: subjects
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    /// Whether any admin credential is configured.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || !self.subjects.is_empty()
    }

    /// Checks a mutating request; returns who issued it.
    pub fn authorize(&self, headers: &HeaderMap, peer: &Peer) -> Result<String, ApiError> {
        if !self.enabled() {
            return Err(ApiError::new(ApiCode::AdminDisabled, HOW_TO_ENABLE));
        }
        if let Some(subject) = &peer.subject {
            if self.subject_is_admin(subject) {
                return Ok(format!("cert:{subject}"));
            }
        }
        let given = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let v = v.to_str().map_err(|_| {
                    ApiError::new(
                        ApiCode::Unauthorized,
                        "the authorization header is not valid text",
                    )
                })?;
                match v.split_once(' ') {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                        Some(token.trim())
                    }
                    _ => {
                        return Err(ApiError::new(
                            ApiCode::Unauthorized,
                            "the authorization header must be `Bearer <admin token>`",
                        ))
                    }
                }
            }
        };
        match (&self.token, given) {
            (Some(want), Some(got)) if bool::from(want.as_bytes().ct_eq(got.as_bytes())) => {
                Ok(format!("token@{}", peer.addr.ip()))
            }
            (Some(_), Some(_)) => Err(ApiError::new(
                ApiCode::Unauthorized,
                "wrong admin token: use the token the registry was started with (--admin-token or SFC_ADMIN_TOKEN)",
            )),
            (_, None) => Err(ApiError::new(
                ApiCode::Unauthorized,
                match (&self.token, &peer.subject) {
                    (Some(_), _) => "this call needs the admin token: send Authorization: Bearer <token>".to_string(),
                    (None, Some(s)) => format!("client certificate {s:?} is not an admin (--admin-subject)"),
                    (None, None) => "this call needs an admin client certificate (--admin-subject)".to_string(),
                },
            )),
            (None, Some(_)) => Err(ApiError::new(
                ApiCode::Unauthorized,
                "this registry accepts no admin token; present an admin client certificate (--admin-subject)",
            )),
        }
    }

    /// A listed subject matches the full subject (`CN=ops, O=acme`) or its common name alone.
    fn subject_is_admin(&self, subject: &str) -> bool {
        let cn = subject
            .split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix("CN="));
        self.subjects
            .iter()
            .any(|s| s == subject || Some(s.as_str()) == cn || s.strip_prefix("CN=") == cn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subject: Option<&str>) -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            subject: subject.map(String::from),
            uris: Vec::new(),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn disabled_without_credentials_says_how_to_enable() {
        let e = Access::new(Some("  ".into()), vec![])
            .authorize(&bearer(""), &peer(None))
            .unwrap_err();
        assert_eq!(e.code, ApiCode::AdminDisabled);
        assert!(e.message.contains("--admin-token"), "{}", e.message);
    }

    #[test]
    fn token_must_match() {
        let a = Access::new(Some("s3cret".into()), vec![]);
        assert_eq!(
            a.authorize(&bearer("s3cret"), &peer(None)).unwrap(),
            "token@127.0.0.1"
        );
        assert_eq!(
            a.authorize(&bearer("s3cre"), &peer(None)).unwrap_err().code,
            ApiCode::Unauthorized
        );
        assert_eq!(
            a.authorize(&HeaderMap::new(), &peer(None))
                .unwrap_err()
                .code,
            ApiCode::Unauthorized
        );
    }

    #[test]
    fn admin_subject_by_full_subject_or_common_name() {
        let a = Access::new(None, vec!["sfc-dev-client".into()]);
        let by = a
            .authorize(
                &HeaderMap::new(),
                &peer(Some("CN=sfc-dev-client, O=sfc dev")),
            )
            .unwrap();
        assert_eq!(by, "cert:CN=sfc-dev-client, O=sfc dev");
        let a = Access::new(None, vec!["CN=ops, O=acme".into()]);
        assert!(a
            .authorize(&HeaderMap::new(), &peer(Some("CN=ops, O=acme")))
            .is_ok());
        assert!(a
            .authorize(&HeaderMap::new(), &peer(Some("CN=intruder, O=acme")))
            .is_err());
    }
}
