//! Health checks of `sfc agent`: the spec syntax, and running one check.
//!
//! A spec is a target followed by options, separated by spaces:
//!
//! ```text
//! http://127.0.0.1:8000/health interval=2s timeout=1s
//! tcp://127.0.0.1:5432 interval=5s
//! exec:pg_isready -h 127.0.0.1 timeout=3s
//! ```
//!
//! - `http://...` / `https://...`: a GET; 2xx is passing, 429 warning, anything else (or no
//!   answer within the timeout) critical.
//! - `tcp://host:port`: a TCP connect within the timeout is passing, else critical.
//! - `exec:CMD`: `sh -c CMD`; exit 0 passing, 1 warning, anything else (or the timeout)
//!   critical; its output is the note.
//!
//! Options are the trailing `interval=DURATION` and `timeout=DURATION` words (defaults 10s and
//! 5s; the timeout may not exceed the interval). In an `exec:` command everything before the
//! options is the command: quote a trailing argument that looks like an option
//! (`exec:tool 'interval=5'`).

use std::time::Duration;

use sfc_client::model::Health;

/// Defaults for a check without options.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Http(String),
    Tcp(String),
    Exec(String),
}

/// One parsed `--check`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// The target as written (`http://...`, `tcp://...`, `exec:...`): how notes name the check.
    pub name: String,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

fn bad(spec: &str, why: impl std::fmt::Display) -> String {
    format!("bad check {spec:?}: {why} (a check is `http://HOST:PORT/PATH`, `tcp://HOST:PORT` or `exec:COMMAND`, then optional interval=DURATION timeout=DURATION)")
}

impl CheckSpec {
    /// Parses a spec; the error names the spec and what is wrong with it.
    pub fn parse(spec: &str) -> Result<CheckSpec, String> {
        let mut words: Vec<&str> = spec.split_whitespace().collect();
        if words.is_empty() {
            return Err(bad(spec, "it is empty"));
        }
        let (mut interval, mut timeout) = (None, None);
        // Options are the trailing key=value words; the first other word ends them.
        while words.len() > 1 {
            let last = words[words.len() - 1];
            let Some((key, value)) = last.split_once('=') else { break };
            let slot = match key {
                "interval" => &mut interval,
                "timeout" => &mut timeout,
                _ => break,
            };
            if slot.is_some() {
                return Err(bad(spec, format!("{key} is given twice")));
            }
            let d = sfc_client::duration::parse(key, value).map_err(|e| bad(spec, e))?;
            if d.is_zero() {
                return Err(bad(spec, format!("{key} must be more than 0")));
            }
            *slot = Some(d);
            words.pop();
        }
        let target = words.join(" ");
        let probe = if target.starts_with("http://") || target.starts_with("https://") {
            if words.len() > 1 {
                return Err(bad(spec, format!("unexpected {:?} after the URL (options are interval= and timeout=)", words[1])));
            }
            let uri: ureq::http::Uri = target.parse().map_err(|e| bad(spec, format!("not a URL: {e}")))?;
            if uri.host().is_none_or(str::is_empty) {
                return Err(bad(spec, "the URL has no host"));
            }
            Probe::Http(target.clone())
        } else if let Some(addr) = target.strip_prefix("tcp://") {
            if words.len() > 1 {
                return Err(bad(spec, format!("unexpected {:?} after the address (options are interval= and timeout=)", words[1])));
            }
            sfc_client::split_host_port(addr).map_err(|_| bad(spec, format!("{addr:?} is not HOST:PORT")))?;
            Probe::Tcp(addr.to_string())
        } else if let Some(cmd) = target.strip_prefix("exec:") {
            if cmd.trim().is_empty() {
                return Err(bad(spec, "exec: needs a command"));
            }
            Probe::Exec(cmd.trim().to_string())
        } else {
            return Err(bad(spec, format!("unknown kind {:?}", words[0])));
        };
        let interval = interval.unwrap_or(DEFAULT_INTERVAL);
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval));
        if timeout > interval {
            return Err(bad(spec, format!("timeout {timeout:?} is longer than the interval {interval:?}")));
        }
        Ok(CheckSpec { name: target, probe, interval, timeout })
    }

    /// Runs the check once: its health and, unless passing, why.
    pub async fn run(&self) -> (Health, Option<String>) {
        match &self.probe {
            Probe::Http(url) => self.http(url.clone()).await,
            Probe::Tcp(addr) => match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => (Health::Passing, None),
                Ok(Err(e)) => (Health::Critical, Some(format!("connect: {e}"))),
                Err(_) => (Health::Critical, Some(format!("no connection within {:?}", self.timeout))),
            },
            Probe::Exec(cmd) => self.exec(cmd).await,
        }
    }

    async fn http(&self, url: String) -> (Health, Option<String>) {
        let timeout = self.timeout;
        // ureq blocks: one short blocking task per check run.
        let r = tokio::task::spawn_blocking(move || {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_global(Some(timeout))
                .user_agent(format!("sfc-agent/{}", sfc_client::VERSION))
                .build()
                .new_agent();
            agent.get(&url).call().map(|mut r| {
                // Drain a little of the body so the server sees a complete exchange.
                let _ = r.body_mut().with_config().limit(64 << 10).read_to_vec();
                r.status().as_u16()
            })
        })
        .await;
        match r {
            Ok(Ok(s)) if (200..300).contains(&s) => (Health::Passing, None),
            Ok(Ok(429)) => (Health::Warning, Some("HTTP 429".into())),
            Ok(Ok(s)) => (Health::Critical, Some(format!("HTTP {s}"))),
            Ok(Err(ureq::Error::Timeout(_))) => (Health::Critical, Some(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => (Health::Critical, Some(e.to_string())),
            Err(e) => (Health::Critical, Some(format!("check task failed: {e}"))),
        }
    }

    async fn exec(&self, cmd: &str) -> (Health, Option<String>) {
        let child = tokio::process::Command::new("sh")
            .args(["-c", cmd])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return (Health::Critical, Some(format!("cannot run sh: {e}"))),
        };
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => (Health::Critical, Some(format!("did not finish within {:?}", self.timeout))),
            Ok(Err(e)) => (Health::Critical, Some(format!("wait: {e}"))),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let text = text.trim();
                let health = match out.status.code() {
                    Some(0) => Health::Passing,
                    Some(1) => Health::Warning,
                    _ => Health::Critical,
                };
                let note = if text.is_empty() {
                    (health != Health::Passing).then(|| super::describe_status(out.status))
                } else {
                    Some(text.to_string())
                };
                (health, note)
            }
        }
    }
}

/// How bad a health is, to find the worst.
pub fn rank(h: Health) -> u8 {
    match h {
        Health::Passing => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let c = CheckSpec::parse("http://127.0.0.1:8000/health interval=2s timeout=1s").unwrap();
        assert_eq!(c.probe, Probe::Http("http://127.0.0.1:8000/health".into()));
        assert_eq!((c.interval, c.timeout), (Duration::from_secs(2), Duration::from_secs(1)));
        let c = CheckSpec::parse("tcp://[::1]:5432").unwrap();
        assert_eq!((c.interval, c.timeout), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT));
        let c = CheckSpec::parse("exec:test -f /srv/ready x=1 timeout=3s interval=4s").unwrap();
        assert_eq!(c.probe, Probe::Exec("test -f /srv/ready x=1".into()));
        assert_eq!(CheckSpec::parse("exec:true interval=1s").unwrap().timeout, Duration::from_secs(1));
        for (spec, why) in [
            ("ftp://x", "unknown kind"),
            ("tcp://nohost", "is not HOST:PORT"),
            ("http://x/ y", "unexpected \"y\""),
            ("http://x/ interval=soon", "not a duration"),
            ("http://x/ interval=1s timeout=2s", "longer than the interval"),
            ("http://x/ timeout=1s timeout=1s", "given twice"),
            ("exec:", "needs a command"),
            ("", "empty"),
        ] {
            let e = CheckSpec::parse(spec).unwrap_err();
            assert!(e.contains(&format!("{spec:?}")) && e.contains(why), "{spec}: {e}");
        }
    }
}
