//! `sfc shutdown`, `sfc command`, `sfc deregister` and `sfc events`: operator commands over the
//! registry's HTTP API. The admin token comes from `SFC_ADMIN_TOKEN` (or `--admin-token`).

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::http::{encode, HttpArgs, HttpClient};
use crate::value::parse_duration;
use sfc_client::error::{Error, Result};
use sfc_client::model::Event;
use sfc_client::protocol::ErrorCode;

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Admin token of the registry.
    #[arg(long, env = "SFC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct ShutdownArgs {
    /// Instance id, `<group>/<instance_id>` (see `sfc status`).
    pub id: String,
    /// Why, recorded in the event history and passed to the instance.
    #[arg(long)]
    pub reason: Option<String>,
    /// How long the registry waits for the instance's result.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct CommandArgs {
    /// Instance id, `<group>/<instance_id>`.
    pub id: String,
    /// Command name the instance handles.
    pub name: String,
    /// JSON payload.
    #[arg(long, default_value = "null")]
    pub payload: String,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct DeregisterArgs {
    /// Instance id, `<group>/<instance_id>`; it must be offline or left.
    pub id: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only events after this cursor (the `seq` of an event).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Most events to print.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `group/instance_id` checked and turned into the API path.
fn instance_path(id: &str) -> Result<String> {
    match id.split_once('/') {
        Some((g, i)) if !g.is_empty() && !i.is_empty() && !i.contains('/') => {
            Ok(format!("/v1/instances/{}/{}", encode(g), encode(i)))
        }
        _ => Err(Error::invalid(
            "instance id",
            format!("{id:?} is not <group>/<instance_id> (`sfc status` lists the ids)"),
        )),
    }
}

/// The token, trimmed (a secret file ends with a newline; the registry trims its own too).
fn token(a: &AdminArgs) -> Option<&str> {
    a.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

fn run_command(admin: &AdminArgs, id: &str, body: Value) -> Result<()> {
    let client = HttpClient::new(&admin.http)?;
    let name = body["command"].as_str().unwrap_or_default().to_string();
    let out = client.post(
        &format!("{}/commands", instance_path(id)?),
        token(admin),
        &body,
    )?;
    if admin.http.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if out["ok"].as_bool() == Some(true) {
        if !admin.http.json {
            println!(
                "{name} -> {id}: ok {} (by {})",
                out["result"],
                out["by"].as_str().unwrap_or("-")
            );
        }
        Ok(())
    } else {
        Err(Error::Remote {
            code: ErrorCode::Internal,
            message: format!(
                "instance {id} answered {name} with an error: {}",
                out["error"].as_str().unwrap_or("(none given)")
            ),
        })
    }
}

pub fn shutdown(a: ShutdownArgs) -> Result<()> {
    let body = json!({ "command": "shutdown", "reason": a.reason, "timeout": sfc_client::duration::format(a.wait) });
    run_command(&a.admin, &a.id, body)
}

pub fn command(a: CommandArgs) -> Result<()> {
    let payload: Value = serde_json::from_str(&a.payload)
        .map_err(|e| Error::invalid("--payload", format!("not JSON: {e}")))?;
    let body = json!({ "command": a.name, "reason": a.reason, "payload": payload, "timeout": sfc_client::duration::format(a.wait) });
    run_command(&a.admin, &a.id, body)
}

pub fn deregister(a: DeregisterArgs) -> Result<()> {
    let client = HttpClient::new(&a.admin.http)?;
    let out = client.delete(&instance_path(&a.id)?, token(&a.admin))?;
    if a.admin.http.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "deregistered {} (by {})",
            a.id,
            out["by"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

pub fn events(a: EventsArgs) -> Result<()> {
    let client = HttpClient::new(&a.http)?;
    let out = client.get(&format!("/v1/events?after={}&limit={}", a.after, a.limit))?;
    if a.http.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let events: Vec<Event> =
        serde_json::from_value(out["events"].clone()).map_err(|e| Error::Remote {
            code: ErrorCode::BadJson,
            message: format!("events in an unexpected shape: {e}"),
        })?;
    for ev in &events {
        let mut line = super::observe::event_line(ev);
        if let Some(by) = ev.detail.get("by").and_then(Value::as_str) {
            if !line.contains("\"by\"") {
                line.push_str(&format!(" by={by}"));
            }
        }
        println!("{line}");
    }
    if events.is_empty() {
        println!("(no events after {})", a.after);
    }
    if out["more"].as_bool() == Some(true) {
        eprintln!("more events: sfc events --after {}", out["next"]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_become_paths() {
        assert_eq!(instance_path("a b/x").unwrap(), "/v1/instances/a%20b/x");
        assert!(instance_path("nogroup")
            .unwrap_err()
            .to_string()
            .contains("<group>/<instance_id>"));
        assert!(instance_path("a/b/c").is_err());
    }

}
