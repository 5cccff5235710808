//! The registry's rustls configuration: its certificate, client-certificate verification by
//! `--mtls` mode, and what the registry reads from a client certificate (subject, SAN URIs)
//! or notes when it refuses one (for the audit log).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
pub use sfc_proto::tls::PemSource;
use sfc_proto::tls::{add_ca, load_certs, load_key};

use crate::error::{Error, Result};

/// Whether the registry asks connecting clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// No client certificate is requested.
    #[default]
    Off,
    /// A client certificate is requested and verified if presented, but not required.
    Optional,
    /// Every client must present a certificate signed by the client CA.
    Required,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Off => "off",
            MtlsMode::Optional => "optional",
            MtlsMode::Required => "required",
        }
    }
}

impl FromStr for MtlsMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(MtlsMode::Off),
            "optional" => Ok(MtlsMode::Optional),
            "required" => Ok(MtlsMode::Required),
            other => Err(Error::invalid(
                "mtls mode",
                format!("{other:?} is not one of off, optional, required"),
            )),
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS settings of the registry.
#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    pub cert: PemSource,
    pub key: PemSource,
    pub mtls: MtlsMode,
    /// CA that signs client certificates; required unless `mtls` is off.
    pub client_ca: Option<PemSource>,
}

/// Builds the registry's rustls config.
pub fn server_config(opts: &ServerTlsOptions) -> Result<Arc<ServerConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    // TLS13_AES_128_GCM_SHA256 first (the server's choice, below): its key schedule hashes
    // with SHA-256, which CPUs with SHA extensions compute several times faster than the
    // SHA-384 of rustls' first default (AES_256_GCM_SHA384), and AES-128 records cost less.
    // Every join pays a dozen key-schedule HMACs; the suite is one of TLS 1.3's mandatory ones.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let certs = load_certs(&opts.cert, "certificate")?;
    let key = load_key(&opts.key)?;

    let verifier = match opts.mtls {
        MtlsMode::Off => {
            if opts.client_ca.is_some() {
                tracing::debug!("client ca ignored because mtls is off");
            }
            WebPkiClientVerifier::no_client_auth()
        }
        MtlsMode::Optional | MtlsMode::Required => {
            let ca = opts.client_ca.as_ref().ok_or_else(|| {
                Error::invalid(
                    "--client-ca",
                    "a client ca is required when --mtls is optional or required",
                )
            })?;
            let mut roots = RootCertStore::empty();
            add_ca(&mut roots, ca)?;
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if opts.mtls == MtlsMode::Optional {
                builder = builder.allow_unauthenticated();
            }
            let verifier = builder.build().map_err(|e| {
                Error::Tls(format!(
                    "cannot use {} for client verification: {e}",
                    ca.describe("client ca")
                ))
            })?;
            let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> =
                Arc::new(NoteRefused(verifier));
            verifier
        }
    };

    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot select protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Tls(format!(
                "cannot use {} with {}: {e}",
                opts.cert.describe("certificate"),
                opts.key.describe("key")
            ))
        })?;
    let mut config = config;
    // Selecting `sfc/1` tells a client that this registry speaks protocol v1 (one that gets no
    // ALPN answer takes the registry for the original, legacy-only one). Clients that offer no
    // ALPN (legacy clients, older sfc clients) are served as before.
    config.alpn_protocols = vec![ALPN_V1.to_vec()];
    // TLS 1.3 session tickets, so that a client reconnecting to this registry resumes its
    // session instead of a full handshake (no certificate sent or verified, no signature):
    // stateless, nothing kept per client. rustls' ticketer encrypts tickets with a random key
    // made in this process, rotated every 6 hours (tickets live 12 hours at most), so a
    // restarted registry, or another registry, answers a ticket with a full handshake. With
    // --mtls the client's verified certificate chain travels inside the ticket and is
    // restored on resumption (rustls), so the identity and policy checks see the same chain.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| Error::Tls(format!("cannot make the session ticket key: {e}")))?;
    // Tickets only: no session cache in the registry (rustls' default keeps 256 sessions, too
    // few for a fleet to matter, and memory held per client).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // One ticket per handshake (rustls sends 2): a reconnect uses one, and each resumed
    // handshake brings the next.
    config.send_tls13_tickets = 1;
    config.ignore_client_order = true;
    // Early data (0-RTT) stays off: it could be replayed.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The ALPN protocol id of protocol v1 (PROTOCOL.md §2).
pub const ALPN_V1: &[u8] = sfc_client::tls::ALPN_V1;

/// Subject DN of the peer's leaf certificate, e.g. "CN=client, O=sfc dev".
/// `None` if the client presented no certificate (or it cannot be parsed).
pub fn peer_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.subject().to_string())
}

/// SAN URIs of the peer leaf certificate (for later policy work).
pub fn peer_san_uris(conn: &rustls::ServerConnection) -> Vec<String> {
    use x509_parser::extensions::GeneralName;

    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Vec::new();
    };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

std::thread_local! {
    /// Subject of the last client certificate the verifier refused on this thread.
    static REFUSED_SUBJECT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// WebPKI client verification, unchanged, except that it notes the subject of a certificate it
/// refuses, for the audit line: rustls returns only the error. The note is thread-local, and
/// reliable because verification runs inside the poll of the handshake future that then
/// returns the error to [`CertRefusal::classify`], on the same thread.
#[derive(Debug)]
struct NoteRefused(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for NoteRefused {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verdict = self.0.verify_client_cert(end_entity, intermediates, now);
        if verdict.is_err() {
            let subject = x509_parser::parse_x509_certificate(end_entity)
                .ok()
                .map(|(_, c)| c.subject().to_string());
            REFUSED_SUBJECT.with(|s| *s.borrow_mut() = subject);
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a TLS handshake was refused because of the client's certificate (`--mtls`): an
/// access-control refusal, audited and counted apart from handshakes that merely fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRefusal {
    /// `--mtls required` and the client presented none.
    NoCertificate,
    /// No CA this registry trusts signed the certificate.
    UnknownCa,
    /// Any other verification failure (expired, not yet valid, wrong key usage...).
    BadCertificate,
}

impl CertRefusal {
    pub const ALL: [CertRefusal; 3] = [
        CertRefusal::NoCertificate,
        CertRefusal::UnknownCa,
        CertRefusal::BadCertificate,
    ];

    /// The `reason` label in `/metrics` and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRefusal::NoCertificate => "no-certificate",
            CertRefusal::UnknownCa => "unknown-ca",
            CertRefusal::BadCertificate => "bad-certificate",
        }
    }

    /// Classifies the error of a server-side handshake (`tokio_rustls` wraps rustls' error
    /// in the `io::Error`), with a sentence for the log. `None`: not a certificate refusal.
    pub fn classify(e: &std::io::Error) -> Option<(CertRefusal, String)> {
        use rustls::{CertificateError, Error as TlsError};
        match e.get_ref()?.downcast_ref::<TlsError>()? {
            TlsError::NoCertificatesPresented => Some((
                CertRefusal::NoCertificate,
                "presented no client certificate (--mtls required)".into(),
            )),
            // BadSignature: the issuer's name is a trusted CA's but its key is not, as with a
            // second development CA (`sfc certs init` names every CA alike) or a forgery.
            TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => Some((
                CertRefusal::UnknownCa,
                format!(
                    "presented a client certificate{} from a CA this registry does not trust",
                    claimed_subject()
                ),
            )),
            TlsError::InvalidCertificate(c) => Some((
                CertRefusal::BadCertificate,
                format!(
                    "presented a client certificate{} that failed verification: {c}",
                    claimed_subject()
                ),
            )),
            _ => None,
        }
    }
}

/// ` (subject "CN=..., O=...", unverified)` for the certificate just refused on this thread.
fn claimed_subject() -> String {
    match REFUSED_SUBJECT.with(|s| s.borrow_mut().take()) {
        Some(subject) => format!(" (subject {subject:?}, unverified)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtls_mode_parses_and_displays() {
        for mode in [MtlsMode::Off, MtlsMode::Optional, MtlsMode::Required] {
            assert_eq!(mode.to_string().parse::<MtlsMode>().unwrap(), mode);
        }
        assert_eq!(MtlsMode::default(), MtlsMode::Off);
        let err = "sometimes".parse::<MtlsMode>().unwrap_err().to_string();
        assert!(err.contains("sometimes"), "{err}");
    }

    mod handshake {
        use std::net::SocketAddr;
        use std::path::{Path, PathBuf};
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};
        use tokio_rustls::{TlsAcceptor, TlsConnector};

        use rustls::ClientConfig;
        use sfc_client::tls::{client_config, ClientTlsOptions};
        use sfc_proto::tls::server_name;

        use super::super::*;
        use crate::certs::{self, CertPaths};

        /// A fresh directory of dev certificates, removed on drop.
        struct TestCerts {
            paths: CertPaths,
        }

        impl TestCerts {
            fn new(name: &str) -> Self {
                let dir = std::env::temp_dir()
                    .join(format!("sfc-tls-test-{}-{name}", std::process::id()));
                let hosts = ["localhost", "127.0.0.1", "::1"].map(String::from);
                TestCerts {
                    paths: certs::init(&dir, &hosts).unwrap(),
                }
            }

            fn server(&self, mtls: MtlsMode) -> Arc<ServerConfig> {
                server_config(&ServerTlsOptions {
                    cert: file(&self.paths.server),
                    key: file(&self.paths.server_key),
                    mtls,
                    client_ca: Some(file(&self.paths.ca)),
                })
                .unwrap()
            }

            fn client(&self, with_cert: bool) -> Arc<ClientConfig> {
                let mut opts = ClientTlsOptions {
                    ca: Some(file(&self.paths.ca)),
                    ..Default::default()
                };
                if with_cert {
                    opts.cert = Some(file(&self.paths.client));
                    opts.key = Some(file(&self.paths.client_key));
                }
                client_config(&opts).unwrap()
            }
        }

        impl Drop for TestCerts {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.paths.dir);
            }
        }

        fn file(p: &Path) -> PemSource {
            PemSource::File(PathBuf::from(p))
        }

        struct Outcome {
            /// Server side: (peer subject, peer SAN URIs) or the handshake error.
            server: std::result::Result<(Option<String>, Vec<String>), String>,
            /// Client side: the greeting read after the handshake, or the error.
            client: std::result::Result<Vec<u8>, String>,
        }

        /// Runs one TLS connection over loopback TCP. `name` is what the client verifies the
        /// server certificate against; the TCP connection always goes to 127.0.0.1.
        async fn connect(
            server: Arc<ServerConfig>,
            client: Arc<ClientConfig>,
            name: &str,
        ) -> Outcome {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let acceptor = TlsAcceptor::from(server);
            let server_task = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
                let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                let (_, conn) = tls.get_ref();
                let peer = (peer_subject(conn), peer_san_uris(conn));
                tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
                tls.shutdown().await.map_err(|e| e.to_string())?;
                Ok(peer)
            });

            let name = server_name(name).unwrap();
            let client = async move {
                let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let mut tls = TlsConnector::from(client)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                // With TLS 1.3 the server rejects a client certificate only after the client
                // considers the handshake done, so the rejection shows up on the first read.
                let mut buf = [0u8; 2];
                tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                Ok(buf.to_vec())
            };
            let limit = Duration::from_secs(10);
            let client = tokio::time::timeout(limit, client)
                .await
                .expect("client timed out");
            let server = tokio::time::timeout(limit, server_task)
                .await
                .expect("server timed out")
                .unwrap();
            Outcome { server, client }
        }

        #[tokio::test]
        async fn required_mtls_rejects_client_without_cert() {
            let certs = TestCerts::new("required-no-cert");
            let out = connect(
                certs.server(MtlsMode::Required),
                certs.client(false),
                "localhost",
            )
            .await;
            assert!(
                out.server.is_err(),
                "server accepted a client without certificate"
            );
            assert!(
                out.client.is_err(),
                "client read succeeded without certificate"
            );
        }

        #[tokio::test]
        async fn required_mtls_accepts_client_with_cert() {
            let certs = TestCerts::new("required-cert");
            let out = connect(
                certs.server(MtlsMode::Required),
                certs.client(true),
                "localhost",
            )
            .await;
            assert_eq!(out.client.unwrap(), b"ok");
            let (subject, uris) = out.server.unwrap();
            let subject = subject.expect("peer subject");
            assert!(subject.contains("CN=sfc-dev-client"), "{subject}");
            assert_eq!(uris, vec!["sfc://client/dev".to_string()]);
        }

        #[tokio::test]
        async fn optional_mtls_accepts_both() {
            let certs = TestCerts::new("optional");
            let out = connect(
                certs.server(MtlsMode::Optional),
                certs.client(false),
                "localhost",
            )
            .await;
            assert_eq!(out.client.unwrap(), b"ok");
            assert_eq!(out.server.unwrap(), (None, Vec::new()));

            let out = connect(
                certs.server(MtlsMode::Optional),
                certs.client(true),
                "localhost",
            )
            .await;
            assert_eq!(out.client.unwrap(), b"ok");
            assert!(out.server.unwrap().0.unwrap().contains("sfc-dev-client"));
        }

        #[tokio::test]
        async fn server_cert_valid_for_loopback_names() {
            let certs = TestCerts::new("names");
            for name in ["localhost", "127.0.0.1", "::1", "[::1]"] {
                let out = connect(certs.server(MtlsMode::Off), certs.client(false), name).await;
                assert_eq!(out.client.as_deref(), Ok(&b"ok"[..]), "server name {name}");
                assert!(out.server.is_ok(), "server name {name}");
            }
            let out = connect(
                certs.server(MtlsMode::Off),
                certs.client(false),
                "example.com",
            )
            .await;
            assert!(
                out.client.is_err(),
                "certificate must not be valid for example.com"
            );
        }

        #[tokio::test]
        async fn inline_pem_text_works() {
            let certs = TestCerts::new("inline");
            let text = |p: &Path| PemSource::parse(&std::fs::read_to_string(p).unwrap());
            assert!(matches!(text(&certs.paths.server), PemSource::Text(_)));
            let server = server_config(&ServerTlsOptions {
                cert: text(&certs.paths.server),
                key: text(&certs.paths.server_key),
                mtls: MtlsMode::Required,
                client_ca: Some(text(&certs.paths.ca)),
            })
            .unwrap();
            let client = client_config(&ClientTlsOptions {
                ca: Some(text(&certs.paths.ca)),
                cert: Some(text(&certs.paths.client)),
                key: Some(text(&certs.paths.client_key)),
            })
            .unwrap();
            let out = connect(server, client, "127.0.0.1").await;
            assert_eq!(out.client.unwrap(), b"ok");
            assert!(out.server.is_ok());
        }

        #[test]
        fn mtls_without_client_ca_is_invalid() {
            let certs = TestCerts::new("no-client-ca");
            for mtls in [MtlsMode::Optional, MtlsMode::Required] {
                let err = server_config(&ServerTlsOptions {
                    cert: file(&certs.paths.server),
                    key: file(&certs.paths.server_key),
                    mtls,
                    client_ca: None,
                })
                .unwrap_err();
                assert!(err.to_string().contains("--client-ca"), "{err}");
            }
        }
    }
}
