//! `sfc status` and `sfc watch`: the fleet as an observer sees it over the protocol.

use clap::Args;

use super::http::{query_string, HttpArgs, HttpClient};
use super::ConnectArgs;
use sfc_client::{Client, ClientEvent};
use sfc_client::error::{Error, Result};
use sfc_client::model::{now_ms, Event, Filter, InstanceRecord};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Print the records as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Read the fleet from the registry's HTTP API at this URL (e.g. http://127.0.0.1:7481)
    /// instead of the protocol.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Also print every report.
    #[arg(long)]
    pub reports: bool,
    /// One JSON event per line.
    #[arg(long)]
    pub json: bool,
    /// Stream from the registry's HTTP API at this URL (Server-Sent Events) instead of the
    /// protocol.
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
}

/// Starts an observer and waits for its session; on failure says why, naming the registry.
async fn connect(a: &ConnectArgs) -> Result<Client> {
    let client = a.observer().start()?;
    let mut events = client.subscribe();
    if client.wait_connected(a.timeout).await.is_ok() {
        return Ok(client);
    }
    let mut why = None;
    while let Ok(ev) = events.try_recv() {
        if let ClientEvent::Error { message, .. } = ev {
            why = Some(message);
        }
    }
    let _ = client.stop().await;
    Err(Error::Unreachable(match why {
        Some(w) => format!("{w} (is `sfc registry` running there? does --ca name its CA?)"),
        None => format!("no session with {} within {:?}", a.registry.join(","), a.timeout),
    }))
}

pub fn status(a: StatusArgs) -> Result<()> {
    if let Some(url) = &a.http {
        return status_http(&a, url);
    }
    super::runtime()?.block_on(async {
        let client = connect(&a.connect).await?;
        let filter = Filter { group: a.group.clone(), ..Default::default() };
        let records = client.query(filter).await;
        let _ = client.stop().await;
        let records = records?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
        } else {
            print!("{}", table(&records));
        }
        Ok(())
    })
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(t) => {
            let d = now_ms().saturating_sub(t);
            if d < 1000 { format!("{d}ms") } else if d < 120_000 { format!("{}s", d / 1000) } else { format!("{}m", d / 60_000) }
        }
    }
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into())
}

/// A string as a terminal may show it: control, bidi and invisible characters escaped
/// (`\u{1b}`), so that what a client registered never reaches the operator's terminal as
/// an escape sequence. Registries before the identifier grammar (PROTOCOL.md §12) accepted
/// them, and a hostname from a store they wrote may still hold one.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if sfc_client::limits::is_forbidden_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The human table of `sfc status`.
pub fn table(records: &[InstanceRecord]) -> String {
    let mut rows = vec![["ID", "SERVICE", "STATUS", "HEALTH", "HOST", "PID", "CPU%", "RSS MiB", "LAST"].map(String::from).to_vec()];
    for r in records {
        let status = match r.offline_reason {
            Some(why) => format!("{} ({})", r.status.as_str(), why.as_str()),
            None => r.status.as_str().to_string(),
        };
        rows.push(vec![
            printable(&r.id),
            printable(&r.service),
            status,
            r.health.as_str().to_string(),
            printable(&r.hostname),
            if r.pid == 0 { "-".into() } else { r.pid.to_string() },
            r.metrics.process.cpu_percent.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
            mib(r.metrics.process.resident_bytes),
            ago(r.last_report_at),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if records.is_empty() {
        out.push_str("(no instances)\n");
    }
    out
}

/// One human line per event.
pub fn event_line(ev: &Event) -> String {
    let mut line = format!("{} #{} {:<14} {}", humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ev.at)), ev.seq, ev.kind.as_str(), printable(&ev.id));
    if let Some(r) = &ev.instance {
        line.push_str(&format!(" status={} health={}", r.status.as_str(), r.health.as_str()));
        if let Some(why) = r.offline_reason {
            line.push_str(&format!(" reason={}", why.as_str()));
        }
    }
    if !ev.detail.is_null() {
        // JSON escapes control characters already; bidi and invisible ones it leaves.
        line.push_str(&format!(" {}", printable(&ev.detail.to_string())));
    }
    line
}

pub fn watch(a: WatchArgs) -> Result<()> {
    if let Some(url) = &a.http {
        return watch_http(&a, url);
    }
    super::runtime()?.block_on(async {
        let client = connect(&a.connect).await?;
        let filter = Filter { group: a.group.clone(), ..Default::default() };
        let mut stream = client.watch(filter, a.reports)?;
        let mut events = client.subscribe();
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(ev) => {
                        if a.json {
                            println!("{}", serde_json::to_string(&ev).unwrap_or_default());
                        } else {
                            println!("{}", event_line(&ev));
                        }
                    }
                    None => break,
                },
                ev = events.recv() => match ev {
                    Ok(ClientEvent::Disconnected { registry, reason }) => eprintln!("disconnected from {registry}: {reason}; reconnecting"),
                    Ok(ClientEvent::Connected { registry, .. }) => eprintln!("connected to {registry}"),
                    _ => {}
                },
                _ = super::registry::shutdown_signal() => break,
            }
        }
        let _ = client.stop().await;
        Ok(())
    })
}

/// The HTTP client for `--http URL`, trusting what the protocol options say.
fn http_client(c: &ConnectArgs, url: &str) -> Result<HttpClient> {
    HttpClient::new(&HttpArgs {
        url: url.to_string(),
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        data_dir: c.data_dir.clone(),
        timeout: c.timeout,
        json: false,
    })
}

fn status_http(a: &StatusArgs, url: &str) -> Result<()> {
    let client = http_client(&a.connect, url)?;
    let v = client.get(&format!("/v1/instances{}", query_string(&[("group", a.group.clone())])))?;
    let records: Vec<InstanceRecord> = serde_json::from_value(v).map_err(|e| Error::Remote {
        code: sfc_client::protocol::ErrorCode::BadJson,
        message: format!("{url} answered records in an unexpected shape: {e}"),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
    } else {
        print!("{}", table(&records));
    }
    Ok(())
}

fn watch_http(a: &WatchArgs, url: &str) -> Result<()> {
    let client = http_client(&a.connect, url)?;
    let reports = a.reports.then(|| "true".to_string());
    let q = query_string(&[("group", a.group.clone()), ("reports", reports)]);
    client.watch(&q, |kind, data| {
        if a.json {
            println!("{data}");
        } else {
            match serde_json::from_str::<Event>(data) {
                Ok(ev) => println!("{}", event_line(&ev)),
                Err(_) => println!("{kind} {data}"),
            }
        }
        true
    })
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn escapes_terminal_controls_bidi_and_invisible_characters() {
        assert_eq!(super::printable("web-1"), "web-1");
        assert_eq!(super::printable("a\u{1b}[2J"), "a\\u{1b}[2J");
        assert_eq!(super::printable("x\u{202e}y\u{200b}"), "x\\u{202e}y\\u{200b}");
    }
}
