//! A full or read-only data directory: the registry keeps serving from memory, and once the
//! disk recovers it writes what it missed. Uses a real tmpfs mount and a real ext4 image on a
//! loop device (both need root, as CI runs). The tests are `#[ignore]`d, so a plain `cargo test`
//! lists them as ignored; `make test` runs them with `--ignored`, where they fail without root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use sfc_client::model::{EventKind, Filter, Status};

const LIMIT: Duration = Duration::from_secs(20);

struct Mount(std::path::PathBuf);

impl Mount {
    /// A 4 MiB tmpfs; panics where this process may not mount (not root).
    fn tmpfs() -> (tempfile::TempDir, Mount) {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mounting a tmpfs needs root (CI runs as root; `make test` runs this with --ignored)");
        let m = Mount(dir.path().to_path_buf());
        (dir, m)
    }

    /// A 32 MiB ext4 image on a loop device, mounted with `errors=remount-ro`, and the name of
    /// the loop device (`loop0`); panics where this process may not (not root, no loop devices).
    fn ext4() -> (tempfile::TempDir, Mount, String) {
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt) = (dir.path().join("disk.img"), dir.path().join("mnt"));
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let run = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
        assert!(run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)), "mkfs.ext4 failed (tests/setup.sh installs e2fsprogs)");
        assert!(
            run(Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(&img).arg(&mnt)),
            "mounting an ext4 image needs root and loop devices (CI runs as root; `make test` runs this with --ignored)"
        );
        let m = Mount(mnt.clone());
        let src = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&mnt).output().expect("findmnt");
        let dev = String::from_utf8_lossy(&src.stdout).trim().trim_start_matches("/dev/").to_string();
        assert!(dev.starts_with("loop"), "not on a loop device: {dev:?}");
        (dir, m, dev)
    }

    fn remount(&self, opt: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,{opt}")]).arg(&self.0).status().unwrap();
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("filler");
    // dd stops with "No space left on device"; that is the point.
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", f.display())).output();
    f
}

/// (status, body) of a plain GET on the registry's HTTP API.
fn get(reg: &RegistryProc, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).proxy(None).build().into();
    let mut r = agent.get(&reg.url(path)).call().expect("http answer");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
}

/// The whole history, collected until it holds every (id, kind) in `want` (fails loudly if
/// it does not within the harness's deadline).
async fn history_with(reg: &RegistryProc, want: &[(&str, EventKind)]) -> Vec<sfc_client::model::Event> {
    history_until(reg, 0, &format!("{want:?}"), |h| {
        want.iter().all(|(id, kind)| h.iter().any(|e| e.id == *id && e.kind == *kind))
    })
    .await
}

/// `<group>/during` joins and leaves while the disk is broken; a watcher sees both transitions.
async fn join_and_leave_while_broken(reg: &RegistryProc, obs: &sfc_client::Client, group: &str) {
    let mut w = watch_ready(obs, Filter::group(group), false).await;
    let b = reg.service(group, "during").start().unwrap();
    b.wait_connected(LIMIT).await.unwrap();
    b.stop().await.unwrap();
    let id = format!("{group}/during");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(LIMIT, w.next()).await.expect("events while the disk is broken").unwrap();
        if ev.id == id {
            kinds.push(ev.kind);
        }
    }
    assert_eq!(kinds, vec![EventKind::Joined, EventKind::Left]);
}

async fn serve_through_a_disk_fault(break_disk: impl Fn(&Path, &Mount), heal_disk: impl Fn(&Path, &Mount)) {
    let (dir, mount) = Mount::tmpfs();
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let obs = reg.observer();
    let a = reg.service("disk", "before").start().unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "disk/before", LIMIT, "online", |r| r.status == Status::Online).await;

    break_disk(dir.path(), &mount);
    // Transitions while the store fails: the registry keeps serving and broadcasting them.
    join_and_leave_while_broken(&reg, &obs, "disk").await;
    assert!(a.is_connected(), "the existing client was disturbed");
    // Said loudly on the operator surfaces.
    let (code, body) = get(&reg, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store-failing"), "{body}");
    assert!(get(&reg, "/metrics").1.contains("sfc_registry_store_up 0"));
    // Two transitions (and the retries on the snapshot timer) failed to write: said once.
    assert_eq!(reg.log_count("STORE FAILING"), 1, "{}", reg.log());

    heal_disk(dir.path(), &mount);
    // The next transition after recovery also writes what the store missed.
    let c = reg.service("disk", "after").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "disk/after", LIMIT, "online", |r| r.status == Status::Online).await;
    assert_eq!(get(&reg, "/readyz").0, 200);
    assert!(get(&reg, "/metrics").1.contains("sfc_registry_store_up 1"));
    assert_eq!(reg.log_count("STORE FAILING"), 1, "once for the whole outage: {}", reg.log());
    drop(obs);
    drop(reg);

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    history_with(&reg, &[("disk/during", EventKind::Joined), ("disk/during", EventKind::Left), ("disk/after", EventKind::Joined)]).await;
    let obs = reg.observer();
    let recs = obs.query(Filter::group("disk")).await.unwrap();
    assert!(recs.iter().any(|r| r.id == "disk/during" && r.status == Status::Left), "{recs:?}");
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (tmpfs/loop mounts): `make test` runs it with --ignored"]
async fn full_data_directory() {
    serve_through_a_disk_fault(
        |dir, _| {
            fill(dir);
        },
        |dir, _| std::fs::remove_file(dir.join("filler")).unwrap(),
    )
    .await;
}

/// A data directory that is read-only when the registry starts (a volume mounted wrong): it
/// serves from memory, and writes everything once the directory becomes writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (tmpfs/loop mounts): `make test` runs it with --ignored"]
async fn read_only_data_directory_at_start() {
    let (dir, mount) = Mount::tmpfs();
    let st = Command::new(sfc_bin()).args(["certs", "init", "--dir"]).arg(dir.path().join("tls")).output().unwrap();
    assert!(st.status.success());
    mount.remount("ro");
    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    let obs = reg.observer();
    let a = reg.service("ro", "first").start().unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "ro/first", LIMIT, "online", |r| r.status == Status::Online).await;
    assert!(!dir.path().join("registry.db").exists());

    mount.remount("rw");
    let b = reg.service("ro", "second").start().unwrap();
    b.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "ro/second", LIMIT, "online", |r| r.status == Status::Online).await;
    assert!(dir.path().join("registry.db").exists(), "the store opened once the disk allowed it");
    drop(obs);
    drop(reg);

    let reg = RegistryProc::start_at("127.0.0.1:0", dir.path(), &[]);
    history_with(&reg, &[("ro/first", EventKind::Joined), ("ro/second", EventKind::Joined)]).await;
    drop(mount);
}

/// A disk that turns read-only under a running registry, as ext4 does on an I/O error with
/// `errors=remount-ro`: the error is raised through ext4's own `trigger_fs_error` knob on a real
/// ext4 image. The registry keeps serving and broadcasting from memory and says so on its
/// operator surfaces; the clients already there are not disturbed. Then the operator repairs
/// the disk as one would (unmount, `e2fsck`, mount again in place): the registry has let go of
/// the file, opens it afresh, writes what it missed, and says it is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (tmpfs/loop mounts): `make test` runs it with --ignored"]
async fn data_directory_turns_read_only_while_serving() {
    let (img, mount, dev) = Mount::ext4();
    let data = mount.0.join("sfc");
    let mut reg = RegistryProc::start_at("127.0.0.1:0", &data, &[]);
    let obs = reg.observer();
    let a = reg.service("rorun", "before").start().unwrap();
    a.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "rorun/before", LIMIT, "online", |r| r.status == Status::Online).await;
    assert_eq!(get(&reg, "/readyz").0, 200);

    // What was written so far reaches the image; then the file system fails.
    assert!(Command::new("sync").status().unwrap().success());
    std::fs::write(format!("/sys/fs/ext4/{dev}/trigger_fs_error"), "sfc disk test").expect("trigger an ext4 error");
    assert!(std::fs::write(data.join("probe"), "x").is_err(), "the file system should be read-only now");

    // Transitions while the disk is read-only: served and broadcast from memory.
    join_and_leave_while_broken(&reg, &obs, "rorun").await;
    let recs = obs.query(Filter::group("rorun")).await.unwrap();
    assert!(recs.iter().any(|r| r.id == "rorun/during" && r.status == Status::Left), "{recs:?}");
    assert!(a.is_connected(), "the existing client was disturbed");
    wait_record(&obs, "rorun/before", LIMIT, "still online", |r| r.status == Status::Online).await;

    // Said on the operator surfaces and in the log.
    let (code, body) = get(&reg, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store-failing"), "{body}");
    assert!(get(&reg, "/metrics").1.contains("sfc_registry_store_up 0"));
    assert_eq!(reg.log_count("STORE FAILING"), 1, "said once: {}", reg.log());

    // The repair. A plain (not lazy) unmount succeeds only once the registry holds no file
    // on it; it retries the store in the background, so the unmount is tried until it lands.
    let mnt = mount.0.clone();
    let image = img.path().join("disk.img");
    let start = std::time::Instant::now();
    loop {
        let out = Command::new("umount").arg(&mnt).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the registry keeps the broken file system busy: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fsck = Command::new("e2fsck").args(["-f", "-y"]).arg(&image).output().unwrap();
    assert!(matches!(fsck.status.code(), Some(0..=2)), "e2fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    let st = Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(&image).arg(&mnt).status().unwrap();
    assert!(st.success(), "mount the repaired image again");

    // The next transition finds the store again, and everything it missed is written.
    let c = reg.service("rorun", "after").start().unwrap();
    c.wait_connected(LIMIT).await.unwrap();
    wait_record(&obs, "rorun/after", LIMIT, "online", |r| r.status == Status::Online).await;
    eventually(LIMIT, "/readyz 200 after the repair", || (get(&reg, "/readyz").0 == 200).then_some(())).await;
    assert!(get(&reg, "/metrics").1.contains("sfc_registry_store_up 1"));
    drop((a, c, obs));
    reg.kill();

    let reg = RegistryProc::start_at("127.0.0.1:0", &data, &[]);
    history_with(
        &reg,
        &[
            ("rorun/before", EventKind::Joined),
            ("rorun/during", EventKind::Joined),
            ("rorun/during", EventKind::Left),
            ("rorun/after", EventKind::Joined),
        ],
    )
    .await;
    drop(reg);
    drop(mount);
}
