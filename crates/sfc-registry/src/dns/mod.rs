//! The DNS interface (`sfc registry --dns ADDR`): any program finds a healthy instance with a
//! plain DNS lookup. Built on hickory-server: its [`Server`] owns the UDP socket and the TCP
//! listener, parses queries and encodes answers (truncating UDP answers that do not fit, with
//! TC set, so resolvers retry over TCP); this module is its [`RequestHandler`].
//!
//! Every answer is computed from the registry's live state when the query arrives (the state
//! lock is held only to pick the records, shared, not copied): an instance that goes offline
//! or critical leaves the answers at once. DNS.md documents the names and the rules.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use crate::model::{Health, InstanceRecord, Status};
use crate::registry::Registry;

/// The address `--dns` binds when not given; when it is taken the registry runs without DNS
/// and says so, as with the HTTP API.
pub const DEFAULT_DNS_ADDR: &str = "127.0.0.1:7482";

/// Largest UDP answer, whatever the client's EDNS buffer says: 1232 bytes fit in one IPv6
/// packet without fragmentation (the DNS Flag Day 2020 figure). Larger answers are truncated
/// (TC) and the resolver asks again over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// How long an idle TCP connection is kept.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the DNS interface answers (the `--dns-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// The zone every name lives under (`--dns-domain`, default `sfc.`).
    pub domain: String,
    /// TTL of every record, in seconds (`--dns-ttl`, default 0: resolvers do not cache).
    pub ttl: u32,
    /// Answer instances whose health is warning too (`--dns-include-warning`).
    pub include_warning: bool,
    /// Queries per second one source address may send, twice that as a burst; 0 turns the
    /// limit off (`--dns-rate-limit`, default 1000).
    pub rate_limit: u32,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions { domain: "sfc.".into(), ttl: 0, include_warning: false, rate_limit: 1000 }
    }
}

/// The zone name of `--dns-domain`, checked: labels of letters, digits, `-` or `_`.
pub fn parse_zone(domain: &str) -> Result<Name> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() {
        return Err(Error::invalid("--dns-domain", "must name a zone, such as sfc."));
    }
    if let Some(l) = d.split('.').find(|l| !is_label(l)) {
        return Err(Error::invalid(
            "--dns-domain",
            format!("{domain:?}: the label {l:?} is not 1-63 letters, digits, '-' or '_'"),
        ));
    }
    let mut name = Name::from_ascii(d).map_err(|e| Error::invalid("--dns-domain", format!("{domain:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Whether a group or instance name can be a DNS label: 1-63 bytes of ASCII letters, digits,
/// `-` and `_`. Names that cannot are absent from DNS (DNS.md).
pub fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// --- counters for /metrics -------------------------------------------------------------------

/// Query types counted apart in `/metrics`; everything else is `other`.
pub const QUERY_TYPES: [&str; 9] = ["A", "AAAA", "SRV", "TXT", "CNAME", "SOA", "NS", "ANY", "other"];
/// Answer codes counted in `/metrics`.
pub const RCODES: [&str; 6] = ["NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "SERVFAIL"];

/// Queries answered, by type and answer code, and queries dropped by the rate limit.
#[derive(Default)]
pub struct DnsStats {
    queries: [[AtomicU64; RCODES.len()]; QUERY_TYPES.len()],
    rate_limited: AtomicU64,
}

impl DnsStats {
    fn count(&self, qtype: RecordType, rcode: ResponseCode) {
        let t = match qtype {
            RecordType::A => 0,
            RecordType::AAAA => 1,
            RecordType::SRV => 2,
            RecordType::TXT => 3,
            RecordType::CNAME => 4,
            RecordType::SOA => 5,
            RecordType::NS => 6,
            RecordType::ANY => 7,
            _ => 8,
        };
        let r = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::FormErr => 3,
            ResponseCode::NotImp => 4,
            _ => 5,
        };
        self.queries[t][r].fetch_add(1, Ordering::Relaxed);
    }

    /// `(type, rcode, count)` for every pair counted at least once.
    pub fn queries(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (t, row) in self.queries.iter().enumerate() {
            for (r, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((QUERY_TYPES[t], RCODES[r], n));
                }
            }
        }
        out
    }

    /// Queries dropped (UDP) or refused (TCP) by the per-source rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

// --- binding and serving ------------------------------------------------------------------------

/// Binds UDP and TCP on the same address. With port 0 the OS picks the TCP port and UDP takes
/// the same one (a few tries, in case another program holds that UDP port).
pub async fn bind(addr: &str) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr)> {
    let wanted: SocketAddr = addr
        .parse()
        .map_err(|_| Error::invalid("--dns", format!("{addr:?} is not an IP address and port (or off)")))?;
    let bind_err = |e: std::io::Error, what: &str| Error::invalid("--dns", format!("cannot bind {what} {addr}: {e}"));
    for _ in 0..10 {
        let tcp = tokio::net::TcpListener::bind(wanted).await.map_err(|e| bind_err(e, "TCP"))?;
        let local = tcp.local_addr().map_err(Error::Io)?;
        match tokio::net::UdpSocket::bind(local).await {
            Ok(udp) => return Ok((udp, tcp, local)),
            Err(e) if wanted.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(bind_err(e, "UDP")),
        }
    }
    Err(Error::invalid("--dns", format!("no port of {addr} was free for both UDP and TCP after 10 tries")))
}

/// Serves DNS on `udp` and `tcp` until `shutdown` resolves.
pub async fn serve(
    registry: Registry,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    opts: &DnsOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let handler = Handler::new(registry, opts)?;
    let limiter = handler.limiter.clone();
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
    // The limiter keeps one entry per source address: forget those that have refilled.
    let prune = limiter.map(|l| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                l.retain_recent();
                l.shrink_to_fit();
            }
        })
    });
    shutdown.await;
    if let Some(p) = prune {
        p.abort();
    }
    let r = tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(target: "sfc::dns", error = %e, "DNS server stopped with an error");
    }
    Ok(())
}

// --- the handler ------------------------------------------------------------------------------------

struct Handler {
    registry: Registry,
    zone: LowerName,
    zone_labels: usize,
    ttl: u32,
    include_warning: bool,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    soa: Record,
}

/// What one query is answered with.
#[derive(Debug, Default)]
struct Answer {
    rcode: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// NXDOMAIN and NODATA carry the zone's SOA, so that resolvers may cache the negative answer
    /// for its minimum (the TTL).
    soa: bool,
}

impl Answer {
    fn refused() -> Self {
        Answer { rcode: ResponseCode::Refused, ..Default::default() }
    }
    fn nxdomain() -> Self {
        Answer { rcode: ResponseCode::NXDomain, soa: true, ..Default::default() }
    }
    fn nodata() -> Self {
        Answer { rcode: ResponseCode::NoError, soa: true, ..Default::default() }
    }
    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Self {
        if answers.is_empty() {
            return Answer::nodata();
        }
        Answer { rcode: ResponseCode::NoError, answers, additionals, soa: false }
    }
}

/// An endpoint host, as DNS answers it.
enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

fn host_of(host: &str) -> Option<Host<'_>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        // 0.0.0.0 and :: mean "every interface" to the instance, and nothing to a client.
        Ok(ip) if ip.is_unspecified() => None,
        Ok(ip) => Some(Host::Ip(ip)),
        Err(_) if !h.is_empty() && Name::from_ascii(h).is_ok() && h.split('.').all(|l| !l.is_empty() && l.len() <= 63) => {
            Some(Host::Name(h))
        }
        Err(_) => None,
    }
}

fn fqdn(name: &str) -> Option<Name> {
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

impl Handler {
    fn new(registry: Registry, opts: &DnsOptions) -> Result<Handler> {
        let zone = parse_zone(&opts.domain)?;
        let limiter = limiter(opts.rate_limit);
        let ns = Name::from_ascii("ns").and_then(|n| n.append_domain(&zone));
        let hostmaster = Name::from_ascii("hostmaster").and_then(|n| n.append_domain(&zone));
        let (Ok(ns), Ok(hostmaster)) = (ns, hostmaster) else {
            return Err(Error::invalid("--dns-domain", format!("{:?} is too long", opts.domain)));
        };
        // The serial: the registry's start, in seconds (answers change all the time; nothing
        // transfers this zone).
        let serial = (registry.started_at() / 1000) as u32;
        let soa = Record::from_rdata(
            zone.clone(),
            opts.ttl,
            RData::SOA(SOA::new(ns, hostmaster, serial, 3600, 600, 86400, opts.ttl)),
        );
        Ok(Handler {
            registry,
            zone_labels: zone.num_labels() as usize,
            zone: LowerName::new(&zone),
            ttl: opts.ttl,
            include_warning: opts.include_warning,
            limiter,
            soa,
        })
    }

    fn serves(&self, r: &InstanceRecord) -> bool {
        r.status == Status::Online
            && (r.health == Health::Passing || (self.include_warning && r.health == Health::Warning))
    }

    /// Records of the group named `label` (ASCII case-insensitive), shared: the lock is held
    /// only to pick them, from the state's index by group (not a walk of the fleet).
    fn group(&self, label: &str) -> Vec<Arc<InstanceRecord>> {
        let st = self.registry.state();
        st.instances.group_ignore_case(label).map(|i| i.record.clone()).collect()
    }

    /// The record of `instance` in group `group` (both ASCII case-insensitive): first by its
    /// id (the names as asked, lowercase, match most fleets' names), else a walk of the group.
    fn instance(&self, group: &str, instance: &str) -> Option<Arc<InstanceRecord>> {
        let st = self.registry.state();
        if let Some(i) = st.instances.get(&InstanceRecord::make_id(group, instance)) {
            return Some(i.record.clone());
        }
        let found = st.instances.group_ignore_case(group).find(|i| i.record.instance_id.eq_ignore_ascii_case(instance));
        found.map(|i| i.record.clone())
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut n = Name::from_ascii(labels.join(".")).ok()?;
        n.set_fqdn(false);
        n.append_domain(&self.zone).ok()
    }

    fn record(&self, name: Name, data: RData) -> Record {
        Record::from_rdata(name, self.ttl, data)
    }

    /// A and AAAA records at `name` for the IP hosts of `r`'s endpoints (optionally only the
    /// endpoint `only`), distinct.
    fn addresses(&self, name: &Name, r: &InstanceRecord, qtype: RecordType, out: &mut Vec<Record>) {
        let mut seen: Vec<IpAddr> = Vec::new();
        for e in &r.endpoints {
            if let Some(Host::Ip(ip)) = host_of(&e.host) {
                if seen.contains(&ip) {
                    continue;
                }
                seen.push(ip);
                match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => out.push(self.record(name.clone(), RData::A(A(v4)))),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                        out.push(self.record(name.clone(), RData::AAAA(AAAA(v6))))
                    }
                    _ => {}
                }
            }
        }
    }

    /// The SRV record of one endpoint, and the address records its target needs.
    fn srv(&self, owner: &Name, r: &InstanceRecord, e: &crate::model::Endpoint, answers: &mut Vec<Record>, extra: &mut Vec<Record>) {
        let target = match host_of(&e.host) {
            Some(Host::Ip(_)) if is_label(&r.instance_id) && is_label(&r.group) => {
                let Some(t) = self.name(&[&r.instance_id, &r.group]) else { return };
                if !extra.iter().any(|x| x.name == t) {
                    self.addresses(&t, r, RecordType::ANY, extra);
                }
                t
            }
            Some(Host::Name(h)) => match fqdn(h) {
                Some(t) => t,
                None => return,
            },
            _ => return,
        };
        answers.push(self.record(owner.clone(), RData::SRV(SRV::new(1, 1, e.port, target))));
    }

    /// The answer to `qname`/`qtype`, from the registry's state now.
    fn answer(&self, qname: &LowerName, qtype: RecordType) -> Answer {
        if !self.zone.zone_of(qname) {
            return Answer::refused();
        }
        let owner: Name = qname.into();
        let n = qname.num_labels() as usize - self.zone_labels;
        // The labels below the zone, lowercase (LowerName), leftmost first.
        let labels: Vec<&str> = owner.iter().take(n).map(|l| std::str::from_utf8(l).unwrap_or("")).collect();
        if labels.iter().any(|l| !is_label(l)) {
            return Answer::nxdomain();
        }
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => Answer::records(vec![self.soa.clone()], Vec::new()),
                _ => Answer::nodata(),
            },
            [group] => {
                let records = self.group(group);
                if records.is_empty() {
                    return Answer::nxdomain();
                }
                let mut answers = Vec::new();
                let mut extra = Vec::new();
                for r in records.iter().filter(|r| self.serves(r)) {
                    match qtype {
                        RecordType::A | RecordType::AAAA | RecordType::ANY => self.addresses(&owner, r, qtype, &mut answers),
                        RecordType::SRV => {
                            for e in &r.endpoints {
                                self.srv(&owner, r, e, &mut answers, &mut extra);
                            }
                        }
                        _ => {}
                    }
                }
                answers.shuffle(&mut rand::rng());
                Answer::records(answers, extra)
            }
            [svc, proto, group] if svc.starts_with('_') && proto.starts_with('_') => {
                let records = self.group(group);
                if records.is_empty() {
                    return Answer::nxdomain();
                }
                let (svc, proto) = (&svc[1..], &proto[1..]);
                let mut answers = Vec::new();
                let mut extra = Vec::new();
                if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    for r in records.iter().filter(|r| self.serves(r)) {
                        for e in r.endpoints.iter().filter(|e| {
                            e.name.eq_ignore_ascii_case(svc) && e.protocol.eq_ignore_ascii_case(proto)
                        }) {
                            self.srv(&owner, r, e, &mut answers, &mut extra);
                        }
                    }
                }
                answers.shuffle(&mut rand::rng());
                Answer::records(answers, extra)
            }
            [instance, group] => {
                let Some(r) = self.instance(group, instance) else {
                    return Answer::nxdomain();
                };
                let r = &r;
                if !self.serves(r) {
                    return Answer::nodata();
                }
                let mut answers = Vec::new();
                let mut extra = Vec::new();
                match qtype {
                    RecordType::A | RecordType::AAAA | RecordType::ANY => {
                        self.addresses(&owner, r, qtype, &mut answers);
                        // No IP address at all, a hostname: the name is an alias of it.
                        let no_ip = !r.endpoints.iter().any(|e| matches!(host_of(&e.host), Some(Host::Ip(_))));
                        if no_ip {
                            if let Some(t) = r.endpoints.iter().find_map(|e| match host_of(&e.host) {
                                Some(Host::Name(h)) => fqdn(h),
                                _ => None,
                            }) {
                                answers.push(self.record(owner.clone(), RData::CNAME(CNAME(t))));
                            }
                        }
                    }
                    RecordType::CNAME => {}
                    RecordType::SRV => {
                        for e in &r.endpoints {
                            self.srv(&owner, r, e, &mut answers, &mut extra);
                        }
                    }
                    RecordType::TXT => {
                        let mut txt = vec![format!("service={}", r.service), format!("health={}", r.health.as_str())];
                        if let Some(v) = &r.version {
                            txt.push(format!("version={v}"));
                        }
                        txt.extend(r.tags.iter().map(|t| format!("tag={t}")));
                        // One character-string is at most 255 bytes.
                        txt.retain(|s| s.len() <= 255);
                        answers.push(self.record(owner.clone(), RData::TXT(TXT::new(txt))));
                    }
                    _ => {}
                }
                Answer::records(answers, extra)
            }
            _ => Answer::nxdomain(),
        }
    }

    fn allowed(&self, src: IpAddr) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check_key(&src).is_ok())
    }
}

/// The per-source limiter of `--dns-rate-limit`: `rate` queries a second, twice that as a
/// burst; None for 0 (no limit).
fn limiter(rate: u32) -> Option<Arc<DefaultKeyedRateLimiter<IpAddr>>> {
    NonZeroU32::new(rate).map(|rate| {
        let burst = NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate);
        Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
    })
}

fn no_response(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let stats = &self.registry.stats().dns;
        let udp = request.protocol() == hickory_server::net::xfer::Protocol::Udp;
        let limited = !self.allowed(request.src().ip());
        if limited {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            // UDP: dropped without a word (a spoofed source gets nothing to amplify); the
            // client's own retry comes after its timeout. TCP proved its address: refused.
            if udp {
                return no_response(request, ResponseCode::Refused);
            }
        }
        let resp_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, resp_edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let queries = request.queries.queries();
        let qtype = queries.first().map(|q| q.query_type()).unwrap_or(RecordType::Unknown(0));
        let answer = if request.metadata.message_type != MessageType::Query || queries.len() != 1 {
            Answer { rcode: ResponseCode::FormErr, ..Default::default() }
        } else if request.metadata.op_code != OpCode::Query {
            Answer { rcode: ResponseCode::NotImp, ..Default::default() }
        } else if limited {
            Answer::refused()
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Answer { rcode: ResponseCode::BADVERS, ..Default::default() }
        } else {
            let q = &queries[0];
            self.answer(q.name(), q.query_type())
        };
        if answer.rcode != ResponseCode::NoError || answer.soa {
            metadata.authoritative = answer.rcode != ResponseCode::Refused;
        }
        metadata.response_code = answer.rcode;
        stats.count(qtype, answer.rcode);
        let soa: &[Record] = if answer.soa { std::slice::from_ref(&self.soa) } else { &[] };
        let msg = builder.build(metadata, answer.answers.iter(), [], soa.iter(), answer.additionals.iter());
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(target: "sfc::dns", error = %e, "could not send a DNS answer");
                no_response(request, ResponseCode::ServFail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_are_checked() {
        assert_eq!(parse_zone("sfc.").unwrap().to_ascii(), "sfc.");
        assert_eq!(parse_zone("Fleet.Example").unwrap().to_ascii(), "fleet.example.");
        for bad in ["", ".", "a..b", "with space.", "ünï.", &"x".repeat(64)] {
            let e = parse_zone(bad).unwrap_err().to_string();
            assert!(e.contains("--dns-domain"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_dns_labels_are_mapped() {
        for ok in ["billing", "b-1", "_x", "A9"] {
            assert!(is_label(ok), "{ok}");
        }
        for no in ["", "a.b", "a b", "café", &"x".repeat(64)] {
            assert!(!is_label(no), "{no}");
        }
    }

    #[test]
    fn endpoint_hosts() {
        assert!(matches!(host_of("10.0.0.1"), Some(Host::Ip(_))));
        assert!(matches!(host_of("[::1]"), Some(Host::Ip(_))));
        assert!(matches!(host_of("db.internal"), Some(Host::Name("db.internal"))));
        for none in ["", "0.0.0.0", "::", "a..b", "has space"] {
            assert!(host_of(none).is_none(), "{none:?}");
        }
    }

    #[test]
    fn rate_limit_is_per_source_with_a_burst_of_twice_the_rate() {
        assert!(limiter(0).is_none());
        let l = limiter(2).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let allowed = (0..10).filter(|_| l.check_key(&a).is_ok()).count();
        // 4 at once (the burst); fewer than 10 unless the loop took seconds.
        assert!((4..10).contains(&allowed), "{allowed} allowed: a burst of 2 x 2 queries, then refused");
        assert!(l.check_key(&b).is_ok(), "another source has its own budget");
    }
}
