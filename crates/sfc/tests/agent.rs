//! `sfc agent`, end to end: the real `sfc` binary as the agent and as the operator's CLI, a real
//! registry on loopback ports the OS assigns, real TLS, and real processes (Python's
//! `http.server`, `sleep`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, wait_record, RegistryProc};
use sfc_client::model::{Health, OfflineReason, Status};

const TOKEN: &str = "agent-test-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `sfc agent` with `args` (and, given `reg`, its address and CA); its log is echoed to ours.
fn agent(reg: Option<&RegistryProc>, args: &[&str]) -> Child {
    let mut cmd = Command::new(common::sfc_bin());
    cmd.arg("agent");
    start_agent(cmd, reg, args)
}

/// The stand-alone `sfc-agent` binary (the agent without registry code), same flags.
fn standalone_agent(reg: Option<&RegistryProc>, args: &[&str]) -> Child {
    start_agent(Command::new(env!("CARGO_BIN_EXE_sfc-agent")), reg, args)
}

fn start_agent(mut cmd: Command, reg: Option<&RegistryProc>, args: &[&str]) -> Child {
    if let Some(reg) = reg {
        cmd.args(["--registry", &reg.addr, "--ca"]).arg(reg.ca());
    }
    let mut child = cmd
        .args(args)
        .env_remove("SFC_GROUP")
        .env_remove("SFC_SERVICE")
        .env_remove("SFC_INSTANCE_ID")
        .env("RUST_LOG", "sfc=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sfc agent");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
        }
    });
    child
}

/// Waits (bounded) for a process this test started to exit.
async fn exited(child: &mut Child, what: &str) -> std::process::ExitStatus {
    eventually(Duration::from_secs(30), what, || child.try_wait().ok().flatten()).await
}

/// Waits for `id` to be `left`, then for the agent to exit with `code`; the final record.
async fn left_then_exits(obs: &sfc_client::Client, id: &str, a: &mut Child, code: i32) -> sfc_client::model::InstanceRecord {
    let r = wait_record(obs, id, Duration::from_secs(20), "left", |r| r.status == Status::Left).await;
    let st = exited(a, "the agent to exit").await;
    assert_eq!(st.code(), Some(code), "{st}");
    r
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

fn sfc(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(common::sfc_bin());
    cmd.args(args).env_remove("SFC_ADMIN_TOKEN").env_remove("SFC_GROUP").env_remove("SFC_SERVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sfc");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_server_joins_fails_its_check_recovers_and_is_shut_down() {
    let reg = RegistryProc::start(&["--admin-token", TOKEN]);
    let obs = reg.observer();
    let site = tempfile::tempdir().expect("tempdir");
    let health = site.path().join("health");
    std::fs::write(&health, "ok\n").unwrap();
    let port = free_port().to_string();
    let check = format!("http://127.0.0.1:{port}/health interval=300ms timeout=250ms");
    let endpoint = format!("http=http://127.0.0.1:{port}");
    let dir = site.path().display().to_string();
    let mut a = agent(
        Some(&reg),
        &[
            "--group", "agent-py", "--instance-id", "web", "--interval", "200ms",
            "--endpoint", &endpoint, "--tag", "python", "--check", &check, "--",
            "python3", "-m", "http.server", &port, "--bind", "127.0.0.1", "--directory", &dir,
        ],
    );
    let id = "agent-py/web";
    let r = wait_record(&obs, id, Duration::from_secs(30), "online and passing", |r| {
        r.status == Status::Online && r.health == Health::Passing && r.metrics.process.resident_bytes.is_some()
    })
    .await;
    // The record stands for Python, not for the agent: its pid, and its sampled figures.
    assert_ne!(r.pid, a.id());
    assert!(cmdline(r.pid).contains("http.server"), "pid {} is {:?}", r.pid, cmdline(r.pid));
    assert_eq!(r.metrics.process.pid, Some(r.pid));
    assert_eq!(r.tags, vec!["python".to_string()]);
    assert_eq!(r.endpoints[0].port.to_string(), port);

    // The checked path starts failing: critical, the check named with its reason.
    std::fs::remove_file(&health).unwrap();
    let r = wait_record(&obs, id, Duration::from_secs(20), "critical", |r| r.health == Health::Critical).await;
    let note = r.health_note.unwrap_or_default();
    assert!(note.contains(&format!("http://127.0.0.1:{port}/health")) && note.contains("HTTP 404"), "{note}");
    assert_eq!(r.status, Status::Online);

    std::fs::write(&health, "ok\n").unwrap();
    let r = wait_record(&obs, id, Duration::from_secs(20), "passing again", |r| r.health == Health::Passing).await;
    assert_eq!(r.health_note, None);

    // The operator's CLI: SIGTERM to Python, answered once it has exited, then a leave.
    let (ok, out, err) = sfc(
        &["shutdown", id, "--reason", "agent test", "--http", &format!("http://{}", reg.http)],
        &[("SFC_ADMIN_TOKEN", TOKEN)],
    );
    assert!(ok, "sfc shutdown: {err}");
    assert!(out.contains("ok") && out.contains("killed by signal 15 (SIGTERM)"), "{out}");
    // The agent passes the process's end on, as a shell would: 128 + SIGTERM.
    let r = left_then_exits(&obs, id, &mut a, 143).await;
    assert_eq!(r.offline_reason, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_pid_that_is_killed_ends_offline_with_the_reason() {
    let reg = RegistryProc::start(&[]);
    let obs = reg.observer();
    // Our child, left unreaped until the end: its exit status stays readable (a zombie).
    let mut sleeper = Command::new("sleep").arg("600").spawn().expect("sleep");
    let pid = sleeper.id().to_string();
    let mut a = agent(Some(&reg), &["--group", "agent-pid", "--instance-id", "sleeper", "--interval", "200ms", "--pid", &pid]);
    let id = "agent-pid/sleeper";
    let r = wait_record(&obs, id, Duration::from_secs(30), "online", |r| r.status == Status::Online).await;
    assert_eq!(r.pid.to_string(), pid);

    common::signal(sleeper.id(), "KILL");
    let r = wait_record(&obs, id, Duration::from_secs(20), "offline", |r| r.status == Status::Offline).await;
    assert_eq!(r.offline_reason, Some(OfflineReason::ConnectionLost));
    assert_eq!(r.health, Health::Critical);
    let note = r.health_note.unwrap_or_default();
    assert!(note.contains(&format!("process {pid} was killed by signal 9 (SIGKILL)")), "{note}");
    let st = exited(&mut a, "the agent to exit").await;
    assert_eq!(st.code(), Some(137), "{st}");
    sleeper.wait().expect("reap sleep");
}

#[test]
fn a_bad_check_spec_is_refused_naming_it_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("started");
    let touch = ["--", "touch", marker.to_str().unwrap()];
    let refused = |args: &[&str], needles: &[&str]| {
        let (ok, _, err) = sfc(&[&["agent", "--group", "g", "--insecure-plaintext"], args, &touch].concat(), &[]);
        assert!(!ok, "{args:?} was accepted");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {n:?} not in {err:?}");
        }
        assert!(!Path::new(&marker).exists(), "{args:?}: the command ran");
    };
    refused(&["--check", "tcp://nohost"], &["\"tcp://nohost\"", "is not HOST:PORT"]);
    refused(&["--check", "ftp://h/x interval=1s"], &["\"ftp://h/x interval=1s\"", "unknown kind"]);
    refused(&["--check", "http://127.0.0.1:1/ interval=1s timeout=2s"], &["longer than the interval"]);
    refused(&["--endpoint", "http:8000"], &["\"http:8000\"", "NAME=PROTO://HOST:PORT"]);

    // The same from a config file: the spec and the service are named.
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "insecure_plaintext = true\n[[service]]\ngroup = \"g\"\nchecks = [\"exec:true interval=never\"]\ncommand = [\"touch\", {:?}]\n",
            marker.to_str().unwrap()
        ),
    )
    .unwrap();
    let (ok, _, err) = sfc(&["agent", "--config", cfg.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("\"exec:true interval=never\"") && err.contains("[[service]] #1"), "{err}");
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_runs_several_services_with_mapped_commands() {
    let reg = RegistryProc::start(&["--admin-token", TOKEN]);
    let obs = reg.observer();
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let stop = dir.path().join("stop");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"registry = [{addr:?}]
ca = {ca:?}
interval = "200ms"

[[service]]
group = "agent-cfg"
instance_id = "a"
checks = ["exec:test -f {ready} interval=300ms timeout=250ms"]
command = ["sleep", "600"]
[service.commands]
hello = ["sh", "-c", "echo hello $SFC_COMMAND $SFC_PID $SFC_COMMAND_PAYLOAD"]

[[service]]
group = "agent-cfg"
instance_id = "b"
command = ["sh", "-c", "while [ ! -e {stop} ]; do sleep 0.1; done"]
"#,
            addr = reg.addr,
            ca = reg.ca().display().to_string(),
            ready = ready.display(),
            stop = stop.display(),
        ),
    )
    .unwrap();
    let mut a = agent(None, &["--config", cfg.to_str().unwrap()]);
    // `test -f` exits 1 while the file is missing: warning, the check named.
    let r = wait_record(&obs, "agent-cfg/a", Duration::from_secs(30), "online, warning", |r| {
        r.status == Status::Online && r.health == Health::Warning
    })
    .await;
    let note = r.health_note.unwrap_or_default();
    assert!(note.contains("check exec:test -f") && note.contains("warning: exited with status 1"), "{note}");
    std::fs::write(&ready, "").unwrap();
    let ra = wait_record(&obs, "agent-cfg/a", Duration::from_secs(20), "passing", |r| r.health == Health::Passing).await;
    wait_record(&obs, "agent-cfg/b", Duration::from_secs(20), "online", |r| r.status == Status::Online).await;

    let http = format!("http://{}", reg.http);
    let token = [("SFC_ADMIN_TOKEN", TOKEN)];
    let (ok, out, err) = sfc(&["command", "agent-cfg/a", "hello", "--payload", "7", "--http", &http], &token);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("hello hello {} 7", ra.pid)), "{out}");
    let (ok, _, err) = sfc(&["command", "agent-cfg/a", "nope", "--http", &http], &token);
    assert!(!ok && err.contains("no handler for command \"nope\""), "{err}");

    // b exits 0 by itself: left; the agent goes on for a.
    std::fs::write(&stop, "").unwrap();
    wait_record(&obs, "agent-cfg/b", Duration::from_secs(20), "left", |r| r.status == Status::Left).await;
    assert!(a.try_wait().unwrap().is_none(), "the agent exited with a service still running");
    let (ok, _, err) = sfc(&["shutdown", "agent-cfg/a", "--http", &http], &token);
    assert!(ok, "{err}");
    left_then_exits(&obs, "agent-cfg/a", &mut a, 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_agent_is_forwarded_and_the_record_ends_left() {
    sigterm_is_forwarded(agent).await;
}

/// The same with the stand-alone `sfc-agent` binary that the operator tarball ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_sfc_agent_binary_forwards_sigterm_and_the_record_ends_left() {
    sigterm_is_forwarded(standalone_agent).await;
}

async fn sigterm_is_forwarded(start: fn(Option<&RegistryProc>, &[&str]) -> Child) {
    let reg = RegistryProc::start(&[]);
    let obs = reg.observer();
    let mut a = start(Some(&reg), &["--group", "agent-sig", "--instance-id", "s", "--interval", "200ms", "--", "sleep", "600"]);
    let r = wait_record(&obs, "agent-sig/s", Duration::from_secs(30), "online", |r| r.status == Status::Online).await;
    assert!(cmdline(r.pid).starts_with("sleep 600"), "{:?}", cmdline(r.pid));
    common::signal(a.id(), "TERM");
    left_then_exits(&obs, "agent-sig/s", &mut a, 143).await;
    assert!(!Path::new(&format!("/proc/{}", r.pid)).exists(), "sleep {} still runs", r.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_pid_reaped_by_its_parent_ends_offline_saying_the_status_is_unknown() {
    let reg = RegistryProc::start(&[]);
    let obs = reg.observer();
    // `sleep` is the shell's child: the shell reaps it the moment it dies.
    let mut sh = Command::new("sh").args(["-c", "sleep 600 & echo $!; wait"]).stdout(Stdio::piped()).spawn().expect("sh");
    let mut line = String::new();
    BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).expect("the sleep's pid");
    let pid = line.trim().to_string();
    // A long interval: the agent is stopped for a moment below, and must not miss reports.
    let mut a = agent(Some(&reg), &["--group", "agent-pid", "--instance-id", "reaped", "--interval", "5s", "--pid", &pid]);
    wait_record(&obs, "agent-pid/reaped", Duration::from_secs(30), "online", |r| r.status == Status::Online).await;
    // The agent, stopped, cannot read the zombie before the shell has reaped it (the shell's
    // exit says it has); then it goes on.
    common::signal(a.id(), "STOP");
    common::signal(pid.parse().unwrap(), "KILL");
    sh.wait().expect("reap sh");
    common::signal(a.id(), "CONT");
    let r = wait_record(&obs, "agent-pid/reaped", Duration::from_secs(20), "offline", |r| r.status == Status::Offline).await;
    let note = r.health_note.unwrap_or_default();
    assert!(note.contains(&format!("process {pid} is gone; its exit status is unknown (not the agent's child, and already reaped")), "{note}");
    assert_eq!(exited(&mut a, "the agent to exit").await.code(), Some(1));
}
