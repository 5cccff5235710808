//! DNS query load against `sfc registry --dns` (BENCHMARKS.md, "DNS interface"): hickory's stub
//! resolver, `--concurrency` tasks asking in a loop for `--duration`, each query timed.
//! Timings are printed, never asserted.
//!
//! It registers `--instances` services of its own (group `dnsbench`, one `http` endpoint each,
//! through sfc-client) so that the answers carry records, and asks three names in turn:
//! `dnsbench.sfc.` A, `_http._tcp.dnsbench.sfc.` SRV and `c1.bench.sfc.` TXT (an instance of
//! the fleet `sfc bench --registry` runs in another process).
//!
//! ```sh
//! cargo run --release -p sfc --example dns_bench -- --dns 127.0.0.1:7590 \
//!     --registry 127.0.0.1:7589 --ca DATA/tls/ca.pem --duration 20s --concurrency 16
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RecordType;

#[path = "../tests/common/dns_resolver.rs"]
mod dns_resolver;
use sfc_client::model::Endpoint;
use sfc_client::Client;

struct Args {
    dns: SocketAddr,
    registry: String,
    ca: String,
    duration: Duration,
    concurrency: usize,
    instances: usize,
}

fn value(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

fn parse() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().collect();
    let need = |f: &str| value(&args, f).ok_or_else(|| format!("{f} is required"));
    let secs = |f: &str, d: &str| -> Result<Duration, String> {
        let v = value(&args, f).unwrap_or_else(|| d.into());
        v.trim_end_matches('s').parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{f}: {v:?} is not a number of seconds (20s)"))
    };
    let num = |f: &str, d: usize| -> Result<usize, String> {
        value(&args, f).map_or(Ok(d), |v| v.parse().map_err(|_| format!("{f}: {v:?} is not a number")))
    };
    Ok(Args {
        dns: need("--dns")?.parse().map_err(|_| "--dns: not an IP address and port".to_string())?,
        registry: need("--registry")?,
        ca: need("--ca")?,
        duration: secs("--duration", "20s")?,
        concurrency: num("--concurrency", 16)?.max(1),
        instances: num("--instances", 10)?,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dns_bench: {e}");
            std::process::exit(2);
        }
    };
    let clients: Vec<Client> = (0..a.instances)
        .map(|i| {
            Client::builder()
                .ignore_env()
                .registry(&a.registry)
                .ca(a.ca.clone())
                .group("dnsbench")
                .instance_id(format!("d{i}"))
                .endpoint(Endpoint { name: "http".into(), host: format!("127.0.2.{}", i + 1), port: 8000, protocol: "tcp".into() })
                .start()
                .expect("client")
        })
        .collect();
    for c in &clients {
        c.wait_connected(Duration::from_secs(30)).await.expect("client connected");
    }
    let r = dns_resolver::resolver(a.dns, false, Duration::from_secs(2));
    // Wait (bounded) until the group answers with every instance.
    let start = Instant::now();
    loop {
        let n = r.lookup("dnsbench.sfc.", RecordType::A).await.map(|l| l.answers().len()).unwrap_or(0);
        if n == a.instances {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            eprintln!("dns_bench: dnsbench.sfc. answers {n} of {} instances after 30 s", a.instances);
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queries = [("dnsbench.sfc.", RecordType::A), ("_http._tcp.dnsbench.sfc.", RecordType::SRV), ("c1.bench.sfc.", RecordType::TXT)];
    let end = Instant::now() + a.duration;
    let began = Instant::now();
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|t| {
            // One resolver per task: a resolver shares one in-flight query among concurrent
            // lookups of the same name, which would hide queries from the registry.
            let r = dns_resolver::resolver(a.dns, false, Duration::from_secs(2));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = t;
                while Instant::now() < end {
                    let (name, qtype) = queries[i % queries.len()];
                    i += 1;
                    let t0 = Instant::now();
                    match r.lookup(name, qtype).await {
                        Ok(_) => lat.push(t0.elapsed()),
                        Err(e) if e.is_no_records_found() => lat.push(t0.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("query task");
        lat.extend(l);
        errors += e;
    }
    let elapsed = began.elapsed();
    lat.sort();
    println!(
        "dns_bench: {} answers in {:.1} s = {:.0} queries/s ({} concurrent), errors {errors}; latency p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        a.concurrency,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    for c in &clients {
        let _ = c.stop().await;
    }
}
