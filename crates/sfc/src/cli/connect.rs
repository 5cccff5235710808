//! The options every command that talks to a registry as a client takes (also compiled into
//! the `sfc-agent` binary, which has no other part of the CLI).

use std::path::PathBuf;

use clap::Args;

use crate::value::parse_duration;

/// TLS and address options shared by every command that talks to a registry as a client.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Registry address(es), host:port, comma-separated.
    #[arg(long, env = "SFC_REGISTRY", value_delimiter = ',', default_value = sfc_client::DEFAULT_REGISTRY)]
    pub registry: Vec<String>,
    /// CA to trust (PEM). Defaults to <data-dir>/tls/ca.pem when that exists.
    #[arg(long, env = "SFC_CA")]
    pub ca: Option<String>,
    /// Client certificate for mutual TLS (PEM).
    #[arg(long, env = "SFC_CERT")]
    pub cert: Option<String>,
    /// Key of the client certificate (PEM).
    #[arg(long, env = "SFC_KEY")]
    pub key: Option<String>,
    /// Talk to a registry started with --insecure-plaintext.
    #[arg(long, env = "SFC_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Where a local registry keeps its state (to find its development CA).
    #[arg(long, env = "SFC_DATA_DIR", default_value = "./sfc-data")]
    pub data_dir: PathBuf,
    /// How long to wait for the registry.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

impl ConnectArgs {
    /// An observer client builder with these options.
    pub fn observer(&self) -> sfc_client::ClientBuilder {
        let b = sfc_client::ClientBuilder::observer()
            .sample_metrics(false)
            .client_name(format!("sfc-cli/{}", sfc_client::VERSION));
        self.apply(b)
    }

    /// These options (addresses, timeout, TLS) on a builder; `SFC_*` variables are read
    /// here through clap, not again by the builder.
    pub fn apply(&self, b: sfc_client::ClientBuilder) -> sfc_client::ClientBuilder {
        let mut b = b
            .ignore_env()
            .registries(self.registry.clone())
            .connect_timeout(self.timeout);
        if self.insecure_plaintext {
            return b.insecure_plaintext(true);
        }
        let dev_ca = self.data_dir.join("tls").join(sfc_registry::certs::CA);
        match &self.ca {
            Some(ca) => b = b.ca(ca),
            None if dev_ca.exists() => b = b.ca(dev_ca.display().to_string()),
            None => {}
        }
        if let Some(c) = &self.cert {
            b = b.cert(c);
        }
        if let Some(k) = &self.key {
            b = b.key(k);
        }
        b
    }
}
