//! The client's rustls configuration: the system roots plus an optional CA, and an optional
//! client certificate for mTLS. The system roots are read only when no CA is given.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use sfc_proto::tls::{add_ca, load_certs, load_key};
pub use sfc_proto::tls::PemSource;

use crate::error::{Error, Result};

/// TLS settings of a client. All empty means: trust the system roots, present no certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsOptions {
    /// The CA to trust instead of the system roots (typically the registry's dev CA).
    pub ca: Option<PemSource>,
    /// Client certificate for mTLS; needs `key`.
    pub cert: Option<PemSource>,
    /// Private key of `cert`.
    pub key: Option<PemSource>,
}

/// Builds a client rustls config that trusts `opts.ca` when given, otherwise the system roots.
pub fn client_config(opts: &ClientTlsOptions) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    // Check the cheap argument error before touching the file system.
    let identity = match (&opts.cert, &opts.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::invalid(
                "client key",
                "required when a client certificate is given",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "client certificate",
                "required when a client key is given",
            ))
        }
    };

    let mut roots = RootCertStore::empty();
    match &opts.ca {
        // A given CA is the whole trust: reading the system store (hundreds of certificates)
        // would cost every client memory for roots it never uses.
        Some(ca) => add_ca(&mut roots, ca)?,
        None => {
            // Containers and minimal images often have no system roots at all; the handshake
            // then fails with "unknown issuer", so a failure here is only worth a debug line.
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!("cannot load system root certificates: {e}");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "system root certificates");
        }
    }

    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot select protocol versions: {e}")))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs = load_certs(cert, "client certificate")?;
            let private_key = load_key(key)?;
            builder
                .with_client_auth_cert(certs, private_key)
                .map_err(|e| {
                    Error::Tls(format!(
                        "cannot use {} with {}: {e}",
                        cert.describe("client certificate"),
                        key.describe("client key")
                    ))
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_names_the_path() {
        let path = "/nonexistent/sfc-test/ca.pem";
        let opts = ClientTlsOptions {
            ca: Some(PemSource::parse(path)),
            ..Default::default()
        };
        let err = client_config(&opts).unwrap_err().to_string();
        assert!(err.contains(path), "{err}");
    }

    #[test]
    fn ca_without_certificates_is_an_error() {
        let dir = std::env::temp_dir().join(format!("sfc-tls-empty-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let opts = ClientTlsOptions {
            ca: Some(PemSource::File(path.clone())),
            ..Default::default()
        };
        let err = client_config(&opts).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("no certificates found in ca file"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn client_cert_needs_key() {
        let opts = ClientTlsOptions {
            cert: Some(PemSource::parse("c.pem")),
            ..Default::default()
        };
        assert!(matches!(client_config(&opts), Err(Error::Invalid { .. })));
        let opts = ClientTlsOptions {
            key: Some(PemSource::parse("k.pem")),
            ..Default::default()
        };
        assert!(matches!(client_config(&opts), Err(Error::Invalid { .. })));
    }
}
