//! TLS material shared by the client and the registry: PEM sources (a file path or inline
//! text), the loaders that read certificates and keys from them, and server-name parsing.
//!
//! Every config built from these (in `sfc-client` and `sfc-registry`) uses an explicit ring
//! [`CryptoProvider`](rustls::crypto::CryptoProvider): no crate installs or relies on a
//! process-wide default provider, so they behave the same inside the C ABI, Node.js and Go hosts,
//! whatever else those have loaded.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::error::{Error, Result};

/// PEM material given either as a file path or as PEM text (Node.js users pass both).
/// A string starting with "-----BEGIN" is text, otherwise a path.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Text(String),
}

impl PemSource {
    pub fn parse(s: &str) -> Self {
        // Leading whitespace is common when PEM text comes from a template or an env var.
        if s.trim_start().starts_with("-----BEGIN") {
            PemSource::Text(s.to_owned())
        } else {
            PemSource::File(PathBuf::from(s))
        }
    }

    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            PemSource::File(path) => std::fs::read(path).map_err(|e| Error::read_file(path, e)),
            PemSource::Text(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    /// How error messages name this source, e.g. "ca file /etc/sfc/ca.pem" or "ca pem text".
    pub fn describe(&self, kind: &str) -> String {
        match self {
            PemSource::File(path) => format!("{kind} file {}", path.display()),
            PemSource::Text(_) => format!("{kind} pem text"),
        }
    }
}

// Hand-written so that inline private keys never end up in logs or error reports.
impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Text(text) => write!(f, "Text(<{} bytes>)", text.len()),
        }
    }
}

impl From<&str> for PemSource {
    fn from(s: &str) -> Self {
        PemSource::parse(s)
    }
}

/// Parses the name a client checks the registry certificate against: a DNS name or an IP
/// literal ("127.0.0.1", "::1", or bracketed "[::1]" as in URLs).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| {
        Error::invalid(
            "server name",
            format!("{host:?} is not a dns name or ip address"),
        )
    })
}

/// Reads all certificates of `src`; `kind` names it in errors ("certificate", "ca", ...).
pub fn load_certs(src: &PemSource, kind: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = src.read()?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("cannot parse {}: {e}", src.describe(kind))))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "no certificates found in {}",
            src.describe(kind)
        )));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of `src`.
pub fn load_key(src: &PemSource) -> Result<PrivateKeyDer<'static>> {
    let pem = src.read()?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            Error::Tls(format!("no private key found in {}", src.describe("key")))
        }
        e => Error::Tls(format!("cannot parse {}: {e}", src.describe("key"))),
    })
}

/// Adds every certificate of a CA source to `roots`. Unlike the system roots, an explicit CA
/// that cannot be used is an error: silently ignoring it would only surface later as an
/// unexplained "unknown issuer".
pub fn add_ca(roots: &mut RootCertStore, ca: &PemSource) -> Result<()> {
    for cert in load_certs(ca, "ca")? {
        roots.add(cert).map_err(|e| {
            Error::Tls(format!("invalid certificate in {}: {e}", ca.describe("ca")))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_source_parse() {
        assert_eq!(
            PemSource::parse("/etc/ca.pem"),
            PemSource::File("/etc/ca.pem".into())
        );
        let text = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(PemSource::parse(text), PemSource::Text(text.into()));
        assert!(!format!("{:?}", PemSource::parse(text)).contains("AAAA"));
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        let err = server_name("not a host").unwrap_err().to_string();
        assert!(err.contains("not a host"), "{err}");
    }
}
