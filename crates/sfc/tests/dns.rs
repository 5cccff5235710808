//! The DNS interface (`sfc registry --dns`, DNS.md) against the real `sfc` binary, asked by two
//! real resolvers: hickory's stub resolver (UDP with TCP retry, and TCP alone) and Debian's
//! `dig` (package dnsutils; tests/setup.sh installs it). Services register through
//! sfc-client, as in production.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use sfc_client::model::{Endpoint, EventKind, Filter, Health};

const LIMIT: Duration = Duration::from_secs(20);

fn registry() -> (RegistryProc, SocketAddr) {
    let reg = RegistryProc::start(&["--dns", "127.0.0.1:0"]);
    let dns = reg.dns.expect("the registry printed its DNS address");
    (reg, dns)
}

fn resolver(dns: SocketAddr, tcp_only: bool) -> TokioResolver {
    common::dns_resolver::resolver(dns, tcp_only, Duration::from_secs(3))
}

/// `(priority, weight, port, target)` of every SRV answer, sorted.
async fn srv(r: &TokioResolver, name: &str) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = match r.lookup(name, RecordType::SRV).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => panic!("SRV {name}: {e}"),
    };
    out.sort();
    out
}

/// The A records at `name`, sorted.
async fn a_records(r: &TokioResolver, name: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = match r.lookup(name, RecordType::A).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => panic!("A {name}: {e}"),
    };
    out.sort();
    out
}

/// Runs `dig @dns -p PORT <args>` (no recursion asked, one try) and returns its output.
fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+norec", "+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig (Debian package dnsutils; tests/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `status:` of a dig answer (NOERROR, NXDOMAIN, REFUSED...).
fn status(out: &str) -> &str {
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_else(|| panic!("no status in {out}"))
}

/// The records of the answer section, one per line, as `dig +noall +answer` prints them.
fn answer_lines(out: &str) -> Vec<String> {
    out.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).map(str::to_string).collect()
}

fn endpoint(name: &str, host: &str, port: u16) -> Endpoint {
    Endpoint { name: name.into(), host: host.into(), port, protocol: "tcp".into() }
}

/// SRV for a group with two instances; one made critical leaves the answers (and comes back
/// when passing again), then killed (its connection closed without a leave) leaves them again.
/// Each step is acknowledged by the registry's own event before the answers are read once: the
/// answers are computed from the live state, so they must already follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_follows_health_and_liveness() {
    let (reg, dns) = registry();
    let obs = reg.observer();
    obs.wait_connected(LIMIT).await.unwrap();
    let mut w = watch_ready(&obs, Filter::group("billing"), false).await;
    let a = reg.service("billing", "b-1").endpoint(endpoint("http", "127.0.0.2", 8080)).start().unwrap();
    let b = reg.service("billing", "b-2").endpoint(endpoint("http", "127.0.0.3", 8081)).start().unwrap();
    for _ in 0..2 {
        next_kind(&mut w, EventKind::Joined).await;
    }
    let udp = resolver(dns, false);
    let both = vec![(8080, "b-1.billing.sfc.".to_string()), (8081, "b-2.billing.sfc.".to_string())];
    assert_eq!(srv(&udp, "_http._tcp.billing.sfc.").await, both);
    // Case does not matter.
    assert_eq!(srv(&udp, "_HTTP._Tcp.BILLING.sfc.").await, both);
    // The SRV targets resolve (their A records ride along as additional records too).
    assert_eq!(a_records(&udp, "b-2.billing.sfc.").await, vec!["127.0.0.3".parse::<IpAddr>().unwrap()]);
    let out = dig(dns, &["_http._tcp.billing.sfc.", "SRV"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("flags: qr aa;"), "authoritative, no recursion: {out}");
    assert!(out.contains("b-1.billing.sfc.\t0\tIN\tA\t127.0.0.2"), "additional A record: {out}");
    let short = dig(dns, &["+short", "billing.sfc.", "A"]);
    let mut ips: Vec<&str> = short.lines().collect();
    ips.sort();
    assert_eq!(ips, ["127.0.0.2", "127.0.0.3"], "{short}");

    // b-2 turns critical: as soon as the registry has recorded it, it is out of the answers.
    b.set_health(Health::Critical, Some("db down".into())).unwrap();
    let ev = next_kind(&mut w, EventKind::HealthChanged).await;
    assert_eq!(ev.id, "billing/b-2");
    let one = vec![(8080, "b-1.billing.sfc.".to_string())];
    assert_eq!(srv(&udp, "_http._tcp.billing.sfc.").await, one);
    assert_eq!(dig(dns, &["+short", "billing.sfc.", "A"]).trim(), "127.0.0.2");
    // Its own name exists still, without addresses (NODATA).
    let out = dig(dns, &["b-2.billing.sfc.", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");

    // Passing again: back. Then it dies without a word: out again.
    b.set_health(Health::Passing, None).unwrap();
    next_kind(&mut w, EventKind::HealthChanged).await;
    assert_eq!(srv(&udp, "_http._tcp.billing.sfc.").await, both);
    b.abort();
    let ev = next_kind(&mut w, EventKind::Offline).await;
    assert_eq!(ev.id, "billing/b-2");
    assert_eq!(srv(&udp, "_http._tcp.billing.sfc.").await, one);
    assert_eq!(dig(dns, &["+short", "_http._tcp.billing.sfc.", "SRV"]).trim(), "1 1 8080 b-1.billing.sfc.");

    // A real process killed (SIGKILL): its endpoint leaves the group's A answers.
    let svc = ServiceProc::start(&reg, "billing", "proc-1", "200ms");
    next_kind(&mut w, EventKind::Joined).await;
    let with_proc: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
    // The example service reports passing right after it joined: wait for that transition
    // if it comes as its own event (it may already be passing at join).
    let start = Instant::now();
    while a_records(&udp, "billing.sfc.").await != with_proc {
        assert!(start.elapsed() < LIMIT, "the example service never showed in billing.sfc. A");
        next_kind_within(&mut w, Duration::from_millis(500)).await;
    }
    drop(svc);
    let ev = next_kind(&mut w, EventKind::Offline).await;
    assert_eq!(ev.id, "billing/proc-1");
    assert_eq!(a_records(&udp, "billing.sfc.").await, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    // TXT of one instance: its service, health, version and tags.
    let txt = dig(dns, &["+short", "b-1.billing.sfc.", "TXT"]);
    assert!(txt.contains("\"health=passing\""), "{txt}");
    // Names registered in mixed case answer to any case (the lookup is lowercase).
    let mixed = reg.service("Billing", "B-9").endpoint(endpoint("http", "127.0.0.4", 8082)).start().unwrap();
    wait_record(&obs, "Billing/B-9", LIMIT, "online", |r| r.status == sfc_client::model::Status::Online).await;
    assert_eq!(a_records(&udp, "b-9.BILLING.sfc.").await, vec!["127.0.0.4".parse::<IpAddr>().unwrap()]);
    drop((a, mixed));
}

/// NXDOMAIN for an unknown group or instance, REFUSED outside the zone (no recursion), NODATA
/// for a known name without that type; every answer counted in /metrics by type and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers() {
    let (reg, dns) = registry();
    let obs = reg.observer();
    let a = reg.service("web", "w-1").endpoint(endpoint("http", "127.0.0.9", 80)).version("1.2.3").tag("eu").start().unwrap();
    wait_record(&obs, "web/w-1", LIMIT, "online", |r| r.status == sfc_client::model::Status::Online).await;

    let nx = dig(dns, &["nosuch.sfc.", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains("flags: qr aa;"), "{nx}");
    assert!(nx.contains("IN\tSOA\tns.sfc. hostmaster.sfc."), "the SOA for negative caching: {nx}");
    assert_eq!(status(&dig(dns, &["w-9.web.sfc.", "A"])), "NXDOMAIN");
    assert_eq!(status(&dig(dns, &["_http._tcp.nosuch.sfc.", "SRV"])), "NXDOMAIN");
    let refused = dig(dns, &["example.com.", "A"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    assert!(!refused.contains(" ra"), "no recursion available: {refused}");
    // Recursion asked for does not change it.
    assert_eq!(status(&dig(dns, &["+rec", "example.com.", "A"])), "REFUSED");
    // A known name without that type: NOERROR, no answer, the SOA in authority.
    let nodata = dig(dns, &["web.sfc.", "AAAA"]);
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"), "{nodata}");
    assert_eq!(status(&dig(dns, &["web.sfc.", "MX"])), "NOERROR");
    // The positive ones, by hickory over TCP alone.
    let tcp = resolver(dns, true);
    assert_eq!(a_records(&tcp, "WEB.sfc.").await, vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
    let l = tcp.lookup("w-1.web.sfc.", RecordType::TXT).await.unwrap();
    let txt: Vec<String> = l.answers().iter().map(|r| r.data.to_string()).collect();
    assert!(txt.iter().any(|t| t.contains("version=1.2.3") && t.contains("tag=eu")), "{txt:?}");
    let e = tcp.lookup("nosuch.sfc.", RecordType::A).await.unwrap_err();
    assert!(e.is_nx_domain(), "{e}");

    let m = metrics_text(&reg);
    for (series, at_least) in [
        ("sfc_registry_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}", 3.0),
        ("sfc_registry_dns_queries_total{type=\"A\",rcode=\"REFUSED\"}", 2.0),
        ("sfc_registry_dns_queries_total{type=\"AAAA\",rcode=\"NOERROR\"}", 1.0),
        ("sfc_registry_dns_queries_total{type=\"TXT\",rcode=\"NOERROR\"}", 1.0),
    ] {
        let v = metric(&m, series).unwrap_or_else(|| panic!("{series} missing from /metrics"));
        assert!(v >= at_least, "{series} = {v}, expected at least {at_least}");
    }
    drop(a);
}

/// A group of 100 instances does not fit in one UDP answer: it comes truncated (TC), and both
/// resolvers ask again over TCP and get all 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_group_over_tcp_after_truncation() {
    let (reg, dns) = registry();
    let clients: Vec<_> = (0..100u16)
        .map(|i| {
            reg.service("big", &format!("i-{i}"))
                .endpoint(endpoint("http", &format!("127.0.1.{}", i + 1), 8000 + i))
                .interval(Duration::from_secs(1))
                .start()
                .unwrap()
        })
        .collect();
    let obs = reg.observer();
    let start = Instant::now();
    loop {
        let rs = obs.query(Filter::group("big")).await.unwrap_or_default();
        if rs.iter().filter(|r| r.status == sfc_client::model::Status::Online).count() == 100 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "100 instances not online within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // UDP alone: the answer is truncated (flag tc), and fits the 1232-byte limit.
    let udp = dig(dns, &["+ignore", "+notcp", "+bufsize=4096", "big.sfc.", "A"]);
    assert!(udp.contains(" tc"), "truncated over UDP: {udp}");
    let got: usize = answer_lines(&dig(dns, &["+ignore", "+notcp", "+noall", "+answer", "big.sfc.", "A"])).len();
    assert!(got < 100, "a UDP answer of {got} records");
    // dig retries over TCP by itself.
    let all = dig(dns, &["+noall", "+answer", "big.sfc.", "A"]);
    assert_eq!(answer_lines(&all).len(), 100, "{all}");
    let srv_all = dig(dns, &["+noall", "+answer", "_http._tcp.big.sfc.", "SRV"]);
    assert_eq!(answer_lines(&srv_all).len(), 100, "{srv_all}");
    // hickory: UDP first, then TCP on truncation.
    let r = resolver(dns, false);
    let a = a_records(&r, "big.sfc.").await;
    assert_eq!(a.len(), 100);
    assert_eq!(srv(&r, "_http._tcp.big.sfc.").await.len(), 100);
    drop(clients);
}

/// The per-source rate limit: over TCP, queries beyond the burst are refused and counted, while
/// another source address is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_source() {
    let reg = RegistryProc::start(&["--dns", "127.0.0.1:0", "--dns-rate-limit", "1"]);
    let dns = reg.dns.expect("DNS address");
    let obs = reg.observer();
    let a = reg.service("web", "w-1").endpoint(endpoint("http", "127.0.0.9", 80)).start().unwrap();
    wait_record(&obs, "web/w-1", LIMIT, "online", |r| r.status == sfc_client::model::Status::Online).await;
    // 1 query/s, a burst of 2: of 20 queries sent back to back, most are refused (all but the
    // burst and what refills meanwhile).
    let loud = common::dns_resolver::resolver(dns, true, Duration::from_secs(3));
    let mut refused = 0;
    for _ in 0..20 {
        if loud.lookup("web.sfc.", RecordType::A).await.is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "no query refused");
    let m = metrics_text(&reg);
    let counted = metric(&m, "sfc_registry_dns_rate_limited_total").unwrap_or(0.0);
    // hickory tries a refused query again (attempts), each try refused and counted.
    assert!(counted as usize >= refused, "{refused} lookups refused, {counted} counted");
    // Another source has its own budget.
    let quiet = common::dns_resolver::resolver_from(dns, true, Duration::from_secs(3), Some("127.0.0.2:0".parse().unwrap()));
    assert_eq!(a_records(&quiet, "web.sfc.").await, vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
    drop(a);
}

async fn next_kind(w: &mut sfc_client::WatchStream, kind: EventKind) -> sfc_client::model::Event {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(ev)) if ev.kind == kind => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended waiting for {kind:?}"),
            Err(_) => panic!("no {kind:?} event within {LIMIT:?}"),
        }
    }
}

/// The next event of any kind, or nothing within `d` (a bounded wait, not an assertion).
async fn next_kind_within(w: &mut sfc_client::WatchStream, d: Duration) {
    let _ = tokio::time::timeout(d, w.next()).await;
}
