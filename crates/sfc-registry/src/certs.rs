//! Development certificates generated with rcgen: a private CA, a registry (server)
//! certificate and a client certificate, written as PEM files into one directory.
//!
//! These are for development and small private fleets (`sfc certs init`, and `sfc registry`
//! without certificate flags); production deployments bring their own PKI.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Error, Result};

pub const CA: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CLIENT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";

/// Common name of the generated client certificate.
const CLIENT_CN: &str = "sfc-dev-client";
/// SAN URI of the generated client certificate, for identity-based policies.
const CLIENT_URI: &str = "sfc://client/dev";
const ORGANIZATION: &str = "sfc dev";

const DAY: u64 = 24 * 60 * 60;
const CA_VALIDITY_DAYS: u64 = 3652; // 10 years
                                    // 2 years: also below the 825-day maximum some TLS stacks (Apple) enforce for server certs.
const LEAF_VALIDITY_DAYS: u64 = 730;
// Backdate not_before so a peer whose clock is slightly behind still accepts fresh certs.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// Where the files of a certificate directory are.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server: PathBuf,
    pub server_key: PathBuf,
    pub client: PathBuf,
    pub client_key: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir` (whether or not they exist).
    pub fn in_dir(dir: &Path) -> Self {
        CertPaths {
            dir: dir.to_path_buf(),
            ca: dir.join(CA),
            server: dir.join(SERVER),
            server_key: dir.join(SERVER_KEY),
            client: dir.join(CLIENT),
            client_key: dir.join(CLIENT_KEY),
        }
    }
}

/// Writes a development CA, a server cert for `hosts` (DNS names and IP addresses; IPs go in
/// as IP SANs) and a client cert (CN "sfc-dev-client", plus SAN URI "sfc://client/dev") into
/// dir (created with parents). Overwrites. Key files get mode 0600 on unix.
pub fn init(dir: &Path, hosts: &[String]) -> Result<CertPaths> {
    let server_sans = host_sans(hosts)?;
    fs::create_dir_all(dir).map_err(|e| Error::write_file(dir, e))?;
    let paths = CertPaths::in_dir(dir);

    // CA. pathlen 0: it signs only leaf certificates, never intermediates.
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("sfc dev ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let ca = CertifiedIssuer::self_signed(params, generate_key()?)
        .map_err(|e| Error::Tls(format!("cannot generate ca certificate: {e}")))?;

    // Server.
    let mut params = leaf_params("sfc-dev-registry", ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = server_sans;
    let server_key = generate_key()?;
    let server = params
        .signed_by(&server_key, &ca)
        .map_err(|e| Error::Tls(format!("cannot generate server certificate: {e}")))?;

    // Client.
    let mut params = leaf_params(CLIENT_CN, ExtendedKeyUsagePurpose::ClientAuth);
    params.subject_alt_names = vec![SanType::URI(
        CLIENT_URI.try_into().expect("client uri is ascii"),
    )];
    let client_key = generate_key()?;
    let client = params
        .signed_by(&client_key, &ca)
        .map_err(|e| Error::Tls(format!("cannot generate client certificate: {e}")))?;

    write(&paths.ca, &ca.pem(), false)?;
    write(&dir.join(CA_KEY), &ca.key().serialize_pem(), true)?;
    write(&paths.server, &server.pem(), false)?;
    write(&paths.server_key, &server_key.serialize_pem(), true)?;
    write(&paths.client, &client.pem(), false)?;
    write(&paths.client_key, &client_key.serialize_pem(), true)?;
    Ok(paths)
}

/// Issues a client certificate signed by the CA in `ca_dir` (`ca.pem` and `ca-key.pem`, as
/// [`init`] writes them): common name `name`, SAN URIs `uris` (for example
/// `sfc://group/billing`, which a `--policy` turns into the right to register in `billing`).
/// Writes `<out_dir>/<name>.pem` and `<out_dir>/<name>-key.pem` and returns their paths.
pub fn issue_client(ca_dir: &Path, out_dir: &Path, name: &str, uris: &[String]) -> Result<(PathBuf, PathBuf)> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::invalid("certificate name", format!("{name:?} must be letters, digits, '-', '_' or '.'")));
    }
    let ca_pem_path = ca_dir.join(CA);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(|e| Error::read_file(&ca_pem_path, e))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(|e| Error::read_file(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| Error::Tls(format!("cannot read ca key {}: {e}", ca_key_path.display())))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| Error::Tls(format!("cannot read ca certificate {}: {e}", ca_pem_path.display())))?;
    let mut params = leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth);
    for u in uris {
        let san = u.as_str().try_into().map_err(|_| Error::invalid("certificate uri", format!("{u:?} is not an ascii uri")))?;
        params.subject_alt_names.push(SanType::URI(san));
    }
    let key = generate_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| Error::Tls(format!("cannot generate client certificate {name}: {e}")))?;
    fs::create_dir_all(out_dir).map_err(|e| Error::write_file(out_dir, e))?;
    let (cert_path, key_path) = (out_dir.join(format!("{name}.pem")), out_dir.join(format!("{name}-key.pem")));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// Default hosts: localhost, 127.0.0.1, ::1 and this machine's hostname
/// (sysinfo::System::host_name() or /proc/sys/kernel/hostname; skipped if unavailable).
pub fn default_hosts() -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let hostname = sysinfo::System::host_name()
        .ok()
        .or_else(|| fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    if let Some(h) = hostname {
        // A hostname that is not a valid DNS name (e.g. with an underscore) would make the
        // certificate unusable for every name, so leave it out rather than fail.
        let valid = rustls::pki_types::ServerName::try_from(h.as_str()).is_ok();
        if valid && !hosts.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            hosts.push(h);
        } else if !valid {
            tracing::debug!("hostname {h:?} is not a valid dns name; not added to the certificate");
        }
    }
    hosts
}

/// For `sfc registry` with no certificate flags: if <data_dir>/tls/{ca,server,server-key}.pem
/// all exist, reuse them (created=false); otherwise generate them with [`default_hosts`]
/// (created=true).
pub fn ensure_dev_certs(data_dir: &Path) -> Result<(CertPaths, bool)> {
    let dir = data_dir.join("tls");
    let paths = CertPaths::in_dir(&dir);
    if paths.ca.is_file() && paths.server.is_file() && paths.server_key.is_file() {
        return Ok((paths, false));
    }
    let paths = init(&dir, &default_hosts())?;
    Ok((paths, true))
}

fn dn(common_name: &str) -> DistinguishedName {
    // Pushed CN first so the subject reads "CN=..., O=sfc dev".
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn leaf_params(common_name: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    // Lets verifiers find the issuing CA by key id, not only by name.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY_DAYS);
    params
}

fn set_validity(params: &mut CertificateParams, days: u64) {
    // Computed from the unix epoch so no `time` dependency (or its std feature) is needed.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch.as_secs());
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::from_secs(days * DAY);
}

fn generate_key() -> Result<KeyPair> {
    // ECDSA P-256: rcgen's default, small, and supported by every TLS stack we talk to.
    KeyPair::generate().map_err(|e| Error::Tls(format!("cannot generate key pair: {e}")))
}

/// Server SANs: IP literals (also bracketed, "[::1]") as IP SANs, everything else as DNS names.
fn host_sans(hosts: &[String]) -> Result<Vec<SanType>> {
    let mut sans: Vec<SanType> = Vec::new();
    for host in hosts {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let invalid = || {
                    Error::invalid(
                        "certificate host",
                        format!("{host:?} is not a dns name or ip address"),
                    )
                };
                // Same check the client applies, so a generated certificate is always usable.
                rustls::pki_types::ServerName::try_from(bare).map_err(|_| invalid())?;
                SanType::DnsName(bare.try_into().map_err(|_| invalid())?)
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    if sans.is_empty() {
        return Err(Error::invalid(
            "certificate hosts",
            "at least one dns name or ip address is required",
        ));
    }
    Ok(sans)
}

/// Writes `contents` to `path`, replacing it. Private keys are created 0600 and re-chmodded
/// before any byte is written, so an existing world-readable file never holds the new key.
fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| Error::write_file(path, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::write_file(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::write_file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sfc-certs-test-{}-{name}", std::process::id()))
    }

    fn parse_pem(path: &Path) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn init_writes_all_files() {
        let dir = temp_dir("init").join("nested");
        let hosts = ["localhost", "127.0.0.1", "[::1]", "registry.example"].map(String::from);
        let paths = init(&dir, &hosts).unwrap();
        for p in [
            &paths.ca,
            &paths.server,
            &paths.server_key,
            &paths.client,
            &paths.client_key,
        ] {
            assert!(p.is_file(), "{}", p.display());
        }
        assert!(dir.join(CA_KEY).is_file());

        let der = parse_pem(&paths.server);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("registry.example") && sans.contains("localhost"),
            "{sans}"
        );
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / DAY as i64;
        assert!((729..=731).contains(&days), "{days}");

        let der = parse_pem(&paths.ca);
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(ca.is_ca());
        let days = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
            / DAY as i64;
        assert!((3650..=3653).contains(&days), "{days}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&paths.server_key, &paths.client_key, &dir.join(CA_KEY)] {
                let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
            assert_ne!(
                fs::metadata(&paths.ca).unwrap().permissions().mode() & 0o077,
                0
            );
        }

        // Overwrites an existing directory.
        init(&dir, &hosts).unwrap();
        let _ = fs::remove_dir_all(temp_dir("init"));
    }

    #[test]
    fn invalid_host_is_named() {
        let dir = temp_dir("invalid-host");
        let err = init(&dir, &["bad host!".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad host!"), "{err}");
        assert!(init(&dir, &[]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_hosts_include_loopback() {
        let hosts = default_hosts();
        for h in ["localhost", "127.0.0.1", "::1"] {
            assert!(hosts.iter().any(|x| x == h), "{hosts:?}");
        }
    }

    #[test]
    fn ensure_dev_certs_creates_then_reuses() {
        let data = temp_dir("ensure");
        let (paths, created) = ensure_dev_certs(&data).unwrap();
        assert!(created);
        assert_eq!(paths.dir, data.join("tls"));
        let before = fs::read(&paths.server).unwrap();
        let (paths, created) = ensure_dev_certs(&data).unwrap();
        assert!(!created);
        assert_eq!(fs::read(&paths.server).unwrap(), before);
        let _ = fs::remove_dir_all(&data);
    }
}
