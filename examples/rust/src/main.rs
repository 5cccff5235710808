//! A small service that registers with a registry, reports every interval, sets its health,
//! publishes a gauge, looks up its peers, and exits when the registry sends `shutdown`.
//!
//! Settings come from the environment (`SFC_REGISTRY`, `SFC_CA`, `SFC_GROUP`, `SFC_SERVICE`,
//! `SFC_INSTANCE_ID`, ...) and from these flags:
//! `--group G --service S --instance-id I --interval 1s --peer-group P --insecure-plaintext`.

use std::time::Duration;

use sfc_client::{Client, ClientEvent, LookupOptions};
use sfc_client::model::{Endpoint, Health};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut b = Client::builder()
        .endpoint(Endpoint { name: "http".into(), host: "127.0.0.1".into(), port: 8080, protocol: "http".into() })
        .tag("example")
        .version(env!("CARGO_PKG_VERSION"));
    if std::env::var("SFC_GROUP").is_err() && flag(&args, "--group").is_none() {
        b = b.group("example");
    }
    if let Some(g) = flag(&args, "--group") {
        b = b.group(g);
    }
    if let Some(s) = flag(&args, "--service") {
        b = b.service(s);
    }
    if let Some(i) = flag(&args, "--instance-id") {
        b = b.instance_id(i);
    }
    if let Some(i) = flag(&args, "--interval") {
        b = b.interval(sfc_client::duration::parse("--interval", &i)?);
    }
    if args.iter().any(|a| a == "--insecure-plaintext") {
        b = b.insecure_plaintext(true);
    }
    let peer_group = flag(&args, "--peer-group").unwrap_or_else(|| "example".into());
    let client = b.start()?;
    let mut events = client.subscribe();
    println!("example service {} starting", client.id());
    client.set_health(Health::Passing, Some("ready".into()))?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut requests = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                requests += 1;
                client.set_gauge("requests_total", requests as f64)?;
                match client.lookup(&peer_group, &LookupOptions { healthy_only: true, ..Default::default() }).await {
                    Ok(l) => println!("peers in {peer_group}: {}{}", l.instances.len(), if l.stale { " (stale)" } else { "" }),
                    Err(e) => println!("lookup failed: {e}"),
                }
            }
            ev = events.recv() => match ev {
                Ok(ClientEvent::Connected { registry, session }) => println!("connected to {registry} (session {session})"),
                Ok(ClientEvent::Disconnected { registry, reason }) => println!("disconnected from {registry}: {reason}"),
                Ok(ClientEvent::Error { message, .. }) => println!("client error: {message}"),
                Ok(ClientEvent::Command(c)) if c.name == "shutdown" => {
                    println!("shutdown requested: {}", c.reason.clone().unwrap_or_default());
                    client.respond(c.command_id, Ok(serde_json::json!({ "stopping": true })))?;
                    // Give the result a moment to leave before the leave frame.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                Ok(ClientEvent::Command(c)) => {
                    client.respond(c.command_id, Ok(serde_json::json!({ "echo": c.payload })))?;
                }
                Err(_) => {}
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // stop() waits (up to the stop timeout) for the registry to confirm the leave; without the
    // confirmation the client is closed all the same, so that is worth a line, not a failure.
    if let Err(e) = client.stop().await {
        eprintln!("sfc-example-service: {e}");
    }
    println!("stopped");
    Ok(())
}
