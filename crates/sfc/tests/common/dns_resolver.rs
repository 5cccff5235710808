//! hickory's stub resolver pointed at one registry's DNS interface (`--dns`), for tests/dns.rs
//! and examples/dns_bench.rs.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// A resolver that asks only `dns`: over UDP then TCP (a truncated UDP answer is asked again
/// over TCP), or over TCP alone. No cache, no recursion asked: every lookup reaches the registry.
pub fn resolver(dns: SocketAddr, tcp_only: bool, timeout: Duration) -> TokioResolver {
    resolver_from(dns, tcp_only, timeout, None)
}

/// [`resolver`], its queries sent from `source` (an address of this host, port 0).
pub fn resolver_from(dns: SocketAddr, tcp_only: bool, timeout: Duration, source: Option<SocketAddr>) -> TokioResolver {
    let mut ns = if tcp_only { NameServerConfig::tcp(dns.ip()) } else { NameServerConfig::udp_and_tcp(dns.ip()) };
    for c in &mut ns.connections {
        c.port = dns.port();
        c.bind_addr = source;
    }
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.recursion_desired = false;
    opts.timeout = timeout;
    TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("hickory resolver")
}
