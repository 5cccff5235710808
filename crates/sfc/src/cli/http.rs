//! The blocking client of the registry's HTTP API that `sfc status --http`, `sfc watch --http`
//! and the admin commands share, and the flags that say where the API is and how to trust it.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::value::parse_duration;
use sfc_client::error::{Error, Result};
use sfc_client::protocol::ErrorCode;
use sfc_client::tls::PemSource;

/// Where the registry's HTTP API is and how to trust it.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Base URL of the registry's HTTP API (`sfc registry --http`).
    #[arg(
        long = "http",
        env = "SFC_HTTP",
        default_value = "http://127.0.0.1:7481"
    )]
    pub url: String,
    /// CA to trust for https (PEM). Defaults to <data-dir>/tls/ca.pem when that exists.
    #[arg(long, env = "SFC_CA")]
    pub ca: Option<String>,
    /// Client certificate (PEM), for a registry that takes admin certificates.
    #[arg(long, env = "SFC_CERT", requires = "key")]
    pub cert: Option<String>,
    /// Key of the client certificate (PEM).
    #[arg(long, env = "SFC_KEY", requires = "cert")]
    pub key: Option<String>,
    /// Where a local registry keeps its state (to find its development CA).
    #[arg(long, env = "SFC_DATA_DIR", default_value = "./sfc-data")]
    pub data_dir: PathBuf,
    /// How long to wait for the registry to answer.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A blocking client of the registry's HTTP API that turns every failure into an error that
/// says what failed and how to fix it.
pub struct HttpClient {
    base: String,
    agent: ureq::Agent,
    /// Without a total timeout, for `/v1/watch`.
    stream_agent: ureq::Agent,
}

fn read_pem(what: &str, s: &str) -> Result<Vec<u8>> {
    match PemSource::parse(s) {
        PemSource::File(p) => std::fs::read(&p).map_err(|e| Error::read_file(&p, e)),
        PemSource::Text(t) => Ok(t.into_bytes()),
    }
    .and_then(|b| {
        if b.is_empty() {
            Err(Error::invalid(what, "is empty"))
        } else {
            Ok(b)
        }
    })
}

impl HttpClient {
    pub fn new(a: &HttpArgs) -> Result<HttpClient> {
        let base = a.url.trim_end_matches('/').to_string();
        let uri: ureq::http::Uri = base
            .parse()
            .map_err(|e| Error::invalid("--http", format!("{base:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(Error::invalid(
                    "--http",
                    format!("{base:?} must start with http:// or https://"),
                ))
            }
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        let dev_ca = a.data_dir.join("tls").join(sfc_registry::certs::CA);
        let ca =
            a.ca.clone()
                .or_else(|| dev_ca.exists().then(|| dev_ca.display().to_string()));
        if let Some(ca) = ca {
            let pem = read_pem("--ca", &ca)?;
            let roots: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if roots.is_empty() {
                return Err(Error::invalid(
                    "--ca",
                    format!("{ca} holds no PEM certificate"),
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
            let pem = read_pem("--cert", cert)?;
            let chain: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let key = ureq::tls::PrivateKey::from_pem(&read_pem("--key", key)?)
                .map_err(|e| Error::invalid("--key", format!("{key}: {e}")))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        let tls = tls.build();
        let agent = |total: Option<Duration>| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_connect(Some(a.timeout))
                .timeout_recv_response(Some(a.timeout))
                .timeout_global(total)
                .tls_config(tls.clone())
                .user_agent(format!("sfc-cli/{}", sfc_client::VERSION))
                .build()
                .new_agent()
        };
        Ok(HttpClient {
            base,
            agent: agent(Some(a.timeout)),
            stream_agent: agent(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Says what a transport failure means and what to check.
    fn transport(&self, e: ureq::Error) -> Error {
        // rustls errors arrive either as such or wrapped in an io error.
        let tls = match &e {
            ureq::Error::Rustls(t) => Some(t.to_string()),
            ureq::Error::Io(io) => io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(|t| t.to_string()),
            _ => None,
        };
        if let Some(t) = tls {
            return Error::Tls(format!(
                "{}: {t} (for a registry with development certificates pass --ca <data-dir>/tls/ca.pem; \
                 a registry that wants a client certificate needs --cert and --key)",
                self.base
            ));
        }
        match e {
            ureq::Error::Timeout(t) => Error::Timeout(format!("{} did not answer in time ({t})", self.base)),
            other => Error::Unreachable(format!(
                "{}: {other} (is `sfc registry` running with --http on that address? pass --http URL or set SFC_HTTP)",
                self.base
            )),
        }
    }

    /// Turns an error answer into an error with a hint on how to fix it.
    fn api_error(status: u16, body: &str) -> Error {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().unwrap_or("");
        let message = v["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| {
                format!(
                    "http status {status}: {}",
                    body.chars().take(200).collect::<String>()
                )
            });
        let (code, hint) = match code {
            "unauthorized" => (
                ErrorCode::NotAuthorized,
                " (set SFC_ADMIN_TOKEN, or --admin-token, to the token the registry was started with)",
            ),
            "admin-disabled" => (ErrorCode::NotAuthorized, ""),
            "unknown-instance" => (ErrorCode::UnknownInstance, " (`sfc status` lists the ids)"),
            "not-online" => (ErrorCode::NotOnline, ""),
            "instance-online" => (ErrorCode::InvalidField, ""),
            "command-timeout" => (ErrorCode::CommandTimeout, " (a longer --wait may help)"),
            "shutting-down" => (ErrorCode::ShuttingDown, ""),
            "invalid-request" => (ErrorCode::InvalidField, ""),
            "not-found" => (ErrorCode::Internal, " (is --http the registry's HTTP API, and is the registry this version?)"),
            _ => (ErrorCode::Internal, ""),
        };
        // The registry's own message may already say how to fix it.
        let hint = if message.contains("SFC_ADMIN_TOKEN") {
            ""
        } else {
            hint
        };
        Error::Remote {
            code,
            message: format!("{message}{hint}"),
        }
    }

    fn finish(
        &self,
        resp: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = resp.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        if !(200..300).contains(&status) {
            return Err(Self::api_error(status, &body));
        }
        serde_json::from_str(&body).map_err(|e| Error::Remote {
            code: ErrorCode::BadJson,
            message: format!("{} answered with something that is not JSON ({e}); is --http the registry's HTTP API?", self.base),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.finish(self.agent.get(&self.url(path)).call())
    }

    fn with_token<B>(req: ureq::RequestBuilder<B>, token: Option<&str>) -> Result<ureq::RequestBuilder<B>> {
        match token.map(str::trim) {
            // Said before anything is sent: ureq would report it as an unreachable registry.
            Some(t) if t.bytes().any(|b| !(0x20..0x7f).contains(&b)) => Err(Error::invalid(
                "SFC_ADMIN_TOKEN",
                "the admin token contains a control or non-ASCII character, which no HTTP header can carry \
                 (check the file or variable it comes from)",
            )),
            Some(t) => Ok(req.header("Authorization", &format!("Bearer {t}"))),
            None => Ok(req),
        }
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Result<Value> {
        self.finish(Self::with_token(self.agent.post(&self.url(path)), token)?.send_json(body))
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Result<Value> {
        self.finish(Self::with_token(self.agent.delete(&self.url(path)), token)?.call())
    }

    /// Reads `/v1/watch` (with `query`, e.g. `?group=a`) and calls `on_event` for every event
    /// until the stream ends or `on_event` returns false.
    pub fn watch(&self, query: &str, mut on_event: impl FnMut(&str, &str) -> bool) -> Result<()> {
        let mut resp = self
            .stream_agent
            .get(&self.url(&format!("/v1/watch{query}")))
            .call()
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Self::api_error(status, &body));
        }
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut kind, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let line = line.map_err(|e| {
                Error::Unreachable(format!("{}: the watch stream broke: {e}", self.base))
            })?;
            if line.is_empty() {
                if !data.is_empty() && !on_event(&kind, &data) {
                    return Ok(());
                }
                kind.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        Ok(())
    }
}

/// Percent-encodes one path segment.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED_KEPT).to_string()
}

/// Every byte but RFC 3986's unreserved characters (ASCII letters, digits and `-._~`).
const UNRESERVED_KEPT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A query string from optional pairs (`?a=1&b=2`, or empty).
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_a_hint() {
        let e = HttpClient::api_error(
            401,
            r#"{"error":{"code":"unauthorized","message":"wrong admin token"}}"#,
        );
        assert!(e.to_string().contains("SFC_ADMIN_TOKEN"), "{e}");
        let e = HttpClient::api_error(
            404,
            r#"{"error":{"code":"unknown-instance","message":"no instance \"a/b\""}}"#,
        );
        assert!(e.to_string().contains("sfc status"), "{e}");
        let e = HttpClient::api_error(502, "<html>bad gateway</html>");
        assert!(e.to_string().contains("502"), "{e}");
    }
}
