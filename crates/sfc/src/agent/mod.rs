//! `sfc agent`: the client for a process that embeds none (a Python service, nginx, a cron
//! job). It registers the process with `sfc-client` as a service would, reports its process
//! figures (sampled for that pid, not for the agent), turns health checks into the instance's
//! health, and answers commands for it.
//!
//! - `-- COMMAND ARGS...`: starts the process (in a process group of its own), forwards
//!   SIGTERM, SIGINT and SIGHUP to it, and exits with its exit code (128+N when signal N
//!   killed it).
//! - `--pid PID`: watches an existing process (a pidfd, or polling `/proc` every 250 ms).
//!
//! When the process ends the record ends `left` (exit 0, or an end the agent asked for: the
//! `shutdown` command or a forwarded SIGTERM/SIGINT), or else `offline` with health critical
//! and the exit status in the note (`process 1234 was killed by signal 9 (SIGKILL)`).
//!
//! # Layout
//! - this file: the arguments, and one supervisor per service.
//! - `check`: the `--check` spec syntax and the checks.
//! - `config`: `--config agent.toml`, several services at once.
//! - `process`: the child or watched process, its signals and its end.

pub mod check;
mod config;
mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc};

use sfc_client::error::{Error, Result};
use sfc_client::model::{Endpoint, Filter, Health};
use sfc_client::{ClientBuilder, ClientEvent};

use crate::cli::ConnectArgs;
use crate::value::parse_duration;
use check::CheckSpec;
use process::{Ending, Proc};

/// How long a command handler (`--on-command`, `[service.commands]`) may run.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a handler's output sent back as its result.
const MAX_OUTPUT: usize = 4096;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Group of the instance (default: the service).
    #[arg(long, env = "SFC_GROUP")]
    pub group: Option<String>,
    /// Service name (default: the group).
    #[arg(long, env = "SFC_SERVICE")]
    pub service: Option<String>,
    /// Instance id (default: <hostname>-<pid of the process>).
    #[arg(long, env = "SFC_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// An endpoint the process serves, NAME=PROTO://HOST:PORT (e.g. http=http://127.0.0.1:8000). Repeatable.
    #[arg(long = "endpoint", value_name = "NAME=PROTO://HOST:PORT")]
    pub endpoints: Vec<String>,
    /// A tag. Repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A health check: `http://HOST:PORT/PATH`, `tcp://HOST:PORT` or `exec:COMMAND`, then
    /// optional `interval=DURATION timeout=DURATION` (defaults 10s and 5s), in one argument:
    /// --check 'http://127.0.0.1:8000/health interval=2s timeout=1s'. Repeatable; the worst
    /// result is the instance's health.
    #[arg(long = "check", value_name = "SPEC", value_parser = CheckSpec::parse)]
    pub checks: Vec<CheckSpec>,
    /// Answer command NAME by running EXECUTABLE (env: SFC_COMMAND, SFC_COMMAND_PAYLOAD,
    /// SFC_COMMAND_REASON, SFC_PID); exit 0 is success, its output the result. Repeatable.
    #[arg(long = "on-command", value_name = "NAME=EXECUTABLE")]
    pub on_command: Vec<String>,
    /// Watch this existing process instead of starting one.
    #[arg(long, conflicts_with = "command")]
    pub pid: Option<u32>,
    /// After `shutdown`'s SIGTERM, how long the process has before SIGKILL.
    #[arg(long, env = "SFC_KILL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub kill_timeout: Duration,
    /// Report interval.
    #[arg(long, env = "SFC_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Services from a TOML file (several at once); see the README, "Services without a binding".
    #[arg(long, conflicts_with_all = ["endpoints", "tags", "checks", "on_command", "pid", "command"])]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The command to start and stand for.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Which process an agent stands for.
#[derive(Debug, Clone)]
enum Target {
    Command(Vec<String>),
    Pid(u32),
}

/// One service, resolved from the flags or from a `[[service]]` table.
#[derive(Debug, Clone)]
struct ServiceSpec {
    /// How errors and logs name it.
    label: String,
    checks: Vec<CheckSpec>,
    target: Target,
    handlers: BTreeMap<String, Vec<String>>,
    kill_timeout: Duration,
}

/// `NAME=PROTO://HOST:PORT`.
fn parse_endpoint(s: &str) -> Result<Endpoint> {
    let bad = |why: &str| {
        Error::invalid(
            "endpoint",
            format!("{s:?}: {why} (expected NAME=PROTO://HOST:PORT, e.g. http=http://127.0.0.1:8000)"),
        )
    };
    let (name, rest) = s.split_once('=').ok_or_else(|| bad("no NAME="))?;
    let (protocol, addr) = rest.split_once("://").ok_or_else(|| bad("no PROTO://"))?;
    let (host, port) = sfc_client::split_host_port(addr).map_err(|_| bad("no HOST:PORT"))?;
    if name.is_empty() || protocol.is_empty() {
        return Err(bad("empty NAME or PROTO"));
    }
    Ok(Endpoint { name: name.into(), host, port, protocol: protocol.into() })
}

/// `NAME=EXECUTABLE` of `--on-command`.
fn parse_handler(s: &str) -> Result<(String, Vec<String>)> {
    match s.split_once('=') {
        Some((n, exe)) if !n.is_empty() && !exe.is_empty() => Ok((n.to_string(), vec![exe.to_string()])),
        _ => Err(Error::invalid("--on-command", format!("{s:?} is not NAME=EXECUTABLE"))),
    }
}

fn check_handlers(label: &str, h: &BTreeMap<String, Vec<String>>) -> Result<()> {
    if h.contains_key("shutdown") {
        return Err(Error::invalid(label, "`shutdown` is the agent's own command (SIGTERM, then SIGKILL); it cannot be mapped"));
    }
    if let Some((n, _)) = h.iter().find(|(_, argv)| argv.is_empty()) {
        return Err(Error::invalid(label, format!("command {n:?} maps to an empty command line")));
    }
    Ok(())
}

/// The services and a builder for each, all checked before anything starts.
fn resolve(a: AgentArgs) -> Result<Vec<(ServiceSpec, ClientBuilder)>> {
    let base = |connect: &ConnectArgs, interval: Duration| {
        connect
            .apply(ClientBuilder::new())
            .interval(interval)
            .client_name(format!("sfc-agent/{}", sfc_client::VERSION))
    };
    let mut out = Vec::new();
    let Some(path) = &a.config else {
        let target = match (a.pid, a.command.is_empty()) {
            (Some(p), _) => Target::Pid(p),
            (None, false) => Target::Command(a.command.clone()),
            (None, true) => {
                return Err(Error::invalid("sfc agent", "nothing to stand for: give -- COMMAND ARGS..., --pid PID or --config FILE"))
            }
        };
        let mut b = base(&a.connect, a.interval);
        b = identity(b, a.group.clone(), a.service.clone(), a.instance_id.clone(), &a.endpoints, &a.tags)?;
        let handlers = a.on_command.iter().map(|s| parse_handler(s)).collect::<Result<BTreeMap<_, _>>>()?;
        check_handlers("--on-command", &handlers)?;
        let label = label_of(a.group.as_deref().or(a.service.as_deref()).unwrap_or_default(), a.instance_id.as_deref());
        out.push((ServiceSpec { label, checks: a.checks, target, handlers, kill_timeout: a.kill_timeout }, b));
        return validated(out);
    };
    if a.group.is_some() || a.service.is_some() || a.instance_id.is_some() {
        return Err(Error::invalid(
            "--config",
            "the file names the services: --group, --service and --instance-id (and SFC_GROUP, SFC_SERVICE, SFC_INSTANCE_ID) go in its [[service]] tables",
        ));
    }
    let file = config::FileConfig::read(path)?;
    let mut connect = a.connect.clone();
    if let Some(r) = &file.registry {
        connect.registry = r.clone();
    }
    connect.ca = file.ca.clone().or(connect.ca);
    connect.cert = file.cert.clone().or(connect.cert);
    connect.key = file.key.clone().or(connect.key);
    connect.insecure_plaintext = file.insecure_plaintext.unwrap_or(connect.insecure_plaintext);
    let interval = config::duration("interval", &file.interval)?.unwrap_or(a.interval);
    let kill_timeout = config::duration("kill_timeout", &file.kill_timeout)?.unwrap_or(a.kill_timeout);
    for (i, s) in file.services.into_iter().enumerate() {
        let label = format!("[[service]] #{} of {}", i + 1, path.display());
        let target = match (s.command, s.pid) {
            (Some(c), None) if !c.is_empty() => Target::Command(c),
            (None, Some(p)) => Target::Pid(p),
            _ => return Err(Error::invalid(label, "needs exactly one of command = [...] (not empty) or pid = N")),
        };
        let in_service = |e: Error| Error::invalid(label.clone(), e.to_string());
        let checks = s.checks.iter().map(|c| CheckSpec::parse(c)).collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(label.clone(), e))?;
        check_handlers(&label, &s.commands)?;
        let name = s.group.as_deref().or(s.service.as_deref()).map(|g| label_of(g, s.instance_id.as_deref()));
        let b = identity(base(&connect, interval), s.group, s.service, s.instance_id, &s.endpoints, &s.tags)
            .map_err(in_service)?;
        let kill_timeout = config::duration("kill_timeout", &s.kill_timeout).map_err(in_service)?.unwrap_or(kill_timeout);
        let label = name.unwrap_or(label);
        out.push((ServiceSpec { label, checks, target, handlers: s.commands, kill_timeout }, b));
    }
    validated(out)
}

/// How logs name a service: `group/instance_id`, or the group while the id is the default
/// (which waits for the process's pid).
fn label_of(group: &str, instance_id: Option<&str>) -> String {
    match instance_id {
        Some(i) => format!("{group}/{i}"),
        None => group.to_string(),
    }
}

fn identity(
    mut b: ClientBuilder,
    group: Option<String>,
    service: Option<String>,
    instance_id: Option<String>,
    endpoints: &[String],
    tags: &[String],
) -> Result<ClientBuilder> {
    if let Some(g) = group {
        b = b.group(g);
    }
    if let Some(s) = service {
        b = b.service(s);
    }
    if let Some(i) = instance_id {
        b = b.instance_id(i);
    }
    for e in endpoints {
        b = b.endpoint(parse_endpoint(e)?);
    }
    for t in tags {
        b = b.tag(t);
    }
    Ok(b)
}

/// Builds every client config once (names, limits, TLS files) so that a mistake is refused
/// before any process starts.
fn validated(out: Vec<(ServiceSpec, ClientBuilder)>) -> Result<Vec<(ServiceSpec, ClientBuilder)>> {
    for (s, b) in &out {
        b.clone().build().map_err(|e| Error::invalid(format!("service {:?}", s.label), e.to_string()))?;
    }
    Ok(out)
}

/// Runs the agent until every process it stands for has ended; exits with the process's exit
/// code (several services: the first non-zero one).
pub fn run(a: AgentArgs) -> Result<()> {
    let services = resolve(a)?;
    // One thread: the agent should cost less than any in-process client (BENCHMARKS.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(std::io::Error::other(format!("cannot start the runtime: {e}"))))?;
    let codes = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let several = services.len() > 1;
        for (spec, b) in services {
            let label = spec.label.clone();
            set.spawn(async move {
                let r = supervise(spec, b).await;
                if let (true, Err(e)) = (several, &r) {
                    // Said now: the other services go on, and the agent exits only after them.
                    tracing::error!(target: "sfc::agent", service = %label, "{e}");
                }
                r
            });
        }
        let mut codes = Vec::new();
        while let Some(r) = set.join_next().await {
            codes.push(r.unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(format!("agent task failed: {e}"))))));
        }
        codes
    });
    drop(rt);
    let mut code = 0;
    for c in codes {
        match c {
            Ok(c) if code == 0 => code = c,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    if code != 0 {
        // The runtime is gone and every record closed: only the exit code is left to give.
        std::process::exit(code);
    }
    Ok(())
}

/// `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(n)) => match Signal::try_from(n) {
            Ok(sig) => format!("was killed by signal {n} ({sig})"),
            Err(_) => format!("was killed by signal {n}"),
        },
        _ => format!("ended ({s})"),
    }
}

/// The exit code the agent passes on: the process's, or 128+N for signal N (as a shell does).
fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(1)
}

/// A note the registry accepts: no control characters but tab and newline, at most `max` bytes.
fn fit(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| matches!(c, '\t' | '\n') || !sfc_client::limits::is_forbidden_char(*c)) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// The instance's health: the worst result, with the checks that are not passing named.
fn aggregate(specs: &[CheckSpec], results: &[Option<(Health, Option<String>)>]) -> (Health, Option<String>) {
    let mut worst = Health::Passing;
    let mut notes = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        let Some((h, note)) = r else { continue };
        if check::rank(*h) > check::rank(worst) {
            worst = *h;
        }
        if *h != Health::Passing {
            notes.push(format!("check {} {}: {}", spec.name, h.as_str(), note.as_deref().unwrap_or("-")));
        }
    }
    let note = (!notes.is_empty()).then(|| fit(&notes.join("; "), sfc_client::limits::MAX_NOTE_LEN));
    (worst, note)
}

/// How the supervisor's loop ended.
enum End {
    Process(Ending),
    /// The agent was told to stop while watching a process that is not its own: it leaves and
    /// the process goes on.
    AgentStopped,
}

/// Runs a command handler; its output is the result.
async fn run_handler(argv: Vec<String>, c: sfc_client::protocol::Command, pid: u32) -> std::result::Result<serde_json::Value, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty handler command line".into());
    };
    let child = tokio::process::Command::new(prog)
        .args(args)
        .env("SFC_COMMAND", &c.name)
        .env("SFC_COMMAND_PAYLOAD", c.payload.to_string())
        .env("SFC_COMMAND_REASON", c.reason.as_deref().unwrap_or(""))
        .env("SFC_PID", pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {prog:?} for {:?}: {e}", c.name))?;
    let out = match tokio::time::timeout(HANDLER_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(format!("{prog:?} did not finish within {HANDLER_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("{prog:?}: {e}")),
        Ok(Ok(o)) => o,
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = fit(text.trim(), MAX_OUTPUT);
    if out.status.success() {
        Ok(serde_json::json!({ "output": text }))
    } else {
        Err(format!("{prog:?} {}: {text}", describe_status(out.status)))
    }
}

/// Stands for one process until it ends; returns the exit code to pass on.
async fn supervise(spec: ServiceSpec, builder: ClientBuilder) -> Result<i32> {
    let label = spec.label.clone();
    // Before the process starts: a signal from now on is forwarded, never the agent's death
    // with its process left behind.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut proc = match &spec.target {
        Target::Command(argv) => Proc::spawn(argv)?,
        Target::Pid(p) => Proc::watch(*p)?,
    };
    let pid = proc.pid();
    tracing::info!(target: "sfc::agent", service = %label, pid, "standing for process {pid}");

    // The checks, each on its own interval; the first round is in before the instance joins,
    // so that its first report carries real health.
    let (tx, mut results) = mpsc::channel::<(usize, Health, Option<String>)>(spec.checks.len().max(1));
    let mut checks = tokio::task::JoinSet::new();
    for (i, c) in spec.checks.iter().cloned().enumerate() {
        let tx = tx.clone();
        checks.spawn(async move {
            let mut tick = tokio::time::interval(c.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (h, note) = c.run().await;
                if tx.send((i, h, note)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut state: Vec<Option<(Health, Option<String>)>> = vec![None; spec.checks.len()];
    let longest = spec.checks.iter().map(|c| c.timeout).max().unwrap_or_default();
    let _ = tokio::time::timeout(longest + Duration::from_secs(1), async {
        while state.iter().any(Option::is_none) {
            let Some((i, h, n)) = results.recv().await else { break };
            state[i] = Some((h, n));
        }
    })
    .await;

    let client = builder.pid(pid).start()?;
    let mut events = client.subscribe();
    if !spec.checks.is_empty() {
        let (h, note) = aggregate(&spec.checks, &state);
        let _ = client.set_health(h, note);
    }

    // The agent asked the process to end (shutdown, or a forwarded SIGTERM/SIGINT): its end
    // is then a leave, whatever its status.
    let mut stop_requested = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    // `shutdown` commands answered once the process has exited.
    let mut answers: Vec<u64> = Vec::new();
    let mut events_open = true;
    let end = loop {
        tokio::select! {
            e = proc.wait() => break End::Process(e),
            Some((i, h, n)) = results.recv() => {
                state[i] = Some((h, n));
                let (h, note) = aggregate(&spec.checks, &state);
                if let Err(e) = client.set_health(h, note) {
                    tracing::warn!(target: "sfc::agent", service = %label, "cannot set health: {e}");
                }
            }
            ev = events.recv(), if events_open => match ev {
                Ok(ClientEvent::Command(c)) if c.name == "shutdown" => {
                    tracing::info!(target: "sfc::agent", service = %label, pid, by = ?c.issued_by, "shutdown: SIGTERM, SIGKILL after {:?}", spec.kill_timeout);
                    answers.push(c.command_id);
                    stop_requested = true;
                    if kill_at.is_none() {
                        proc.signal(Signal::SIGTERM);
                        kill_at = Some(tokio::time::Instant::now() + spec.kill_timeout);
                    }
                }
                Ok(ClientEvent::Command(c)) => match spec.handlers.get(&c.name) {
                    Some(argv) => {
                        let (client, argv) = (client.clone(), argv.clone());
                        tokio::spawn(async move {
                            let id = c.command_id;
                            let r = run_handler(argv, c, pid).await;
                            let _ = client.respond(id, r);
                        });
                    }
                    None => {
                        let _ = client.respond(c.command_id, Err(format!(
                            "sfc agent: no handler for command {:?} (map one with --on-command NAME=EXECUTABLE or [service.commands])", c.name)));
                    }
                },
                Ok(ClientEvent::Connected { registry, .. }) => tracing::info!(target: "sfc::agent", service = %label, "connected to {registry}"),
                Ok(ClientEvent::Disconnected { registry, reason }) => tracing::warn!(target: "sfc::agent", service = %label, "disconnected from {registry}: {reason}"),
                Ok(ClientEvent::Error { message, .. }) => tracing::warn!(target: "sfc::agent", service = %label, "{message}"),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            _ = sigterm.recv() => {
                if !proc.is_child() { break End::AgentStopped; }
                stop_requested = true;
                proc.signal(Signal::SIGTERM);
            }
            _ = sigint.recv() => {
                if !proc.is_child() { break End::AgentStopped; }
                stop_requested = true;
                proc.signal(Signal::SIGINT);
            }
            _ = sighup.recv() => {
                if proc.is_child() { proc.signal(Signal::SIGHUP); }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                tracing::warn!(target: "sfc::agent", service = %label, pid, "still running {:?} after SIGTERM: SIGKILL", spec.kill_timeout);
                proc.signal(Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    checks.abort_all();

    let (clean, what, code) = match end {
        End::AgentStopped => (true, "the agent was stopped; the process goes on".to_string(), 0),
        End::Process(Ending::Status(s)) => (stop_requested || s.success(), describe_status(s), exit_code(s)),
        End::Process(Ending::Unknown(why)) => (
            stop_requested,
            format!("is gone; its exit status is unknown ({why})"),
            if stop_requested { 0 } else { 1 },
        ),
    };
    for id in answers {
        let _ = client.respond(id, Ok(serde_json::json!({ "pid": pid, "exit": what })));
    }
    if clean {
        tracing::info!(target: "sfc::agent", service = %label, pid, "process {pid} {what}: leaving");
        match client.stop().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(target: "sfc::agent", service = %label, "closed without the registry's confirmation of the leave"),
            Err(e) => tracing::warn!(target: "sfc::agent", service = %label, "{e}"),
        }
    } else {
        let note = fit(&format!("process {pid} {what}"), sfc_client::limits::MAX_NOTE_LEN);
        tracing::warn!(target: "sfc::agent", service = %label, pid, "{note}: going offline");
        let _ = client.set_health(Health::Critical, Some(note));
        // The registry handles a session's frames in order: the answer to a query sent after
        // the report is its acknowledgement. Then close without a leave: `offline`.
        let group = client.config().registration.group.clone();
        if let Err(e) = client.query(Filter::group(group)).await {
            tracing::warn!(target: "sfc::agent", service = %label, "the final report may not have reached the registry: {e}");
        }
        client.abort();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_handlers() {
        let e = parse_endpoint("http=http://127.0.0.1:8000").unwrap();
        assert_eq!((e.name.as_str(), e.protocol.as_str(), e.host.as_str(), e.port), ("http", "http", "127.0.0.1", 8000));
        for bad in ["http", "http=127.0.0.1:80", "http=http://host", "=tcp://h:1"] {
            let m = parse_endpoint(bad).unwrap_err().to_string();
            assert!(m.contains(&format!("{bad:?}")), "{m}");
        }
        assert!(parse_handler("reload=/bin/true").is_ok());
        assert!(parse_handler("reload").unwrap_err().to_string().contains("\"reload\""));
    }

    #[test]
    fn worst_check_wins_and_is_named() {
        let specs = vec![CheckSpec::parse("tcp://a:1").unwrap(), CheckSpec::parse("exec:x").unwrap()];
        let (h, n) = aggregate(&specs, &[Some((Health::Passing, None)), None]);
        assert_eq!((h, n), (Health::Passing, None));
        let (h, n) = aggregate(&specs, &[Some((Health::Warning, Some("slow".into()))), Some((Health::Critical, Some("x\u{1b}[2J".into())))]);
        assert_eq!(h, Health::Critical);
        assert_eq!(n.unwrap(), "check tcp://a:1 warning: slow; check exec:x critical: x[2J");
    }
}
