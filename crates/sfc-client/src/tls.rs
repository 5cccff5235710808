//! The client's rustls configuration: the system roots plus an optional CA, and an optional
//! client certificate for mTLS. The system roots are read only when no CA is given.
//!
//! Protocol v1 is offered as ALPN `sfc/1`. [`connect`] drives the TLS handshake itself so
//! that it can look at the registry's ALPN answer *before* the client's last handshake flight
//! (its `Finished`) leaves: a registry that selects no ALPN predates protocol v1 (the original
//! `service_fleet_control` registry crashes on anything but one JSON document per connection,
//! even on a connection that closes empty), and a client that will not speak the legacy format
//! to it abandons the handshake there, so the registry never sees an established connection.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
pub use sfc_proto::tls::PemSource;
use sfc_proto::tls::{add_ca, load_certs, load_key};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
///
/// Build it once and use it for every connection: its session store (rustls' default, in
/// memory, 256 server names) keeps the TLS 1.3 tickets registries send, so a reconnect to the
/// same registry resumes the session, an abbreviated handshake without certificates or
/// signatures (it still makes a fresh ECDHE key exchange). Early data (0-RTT) stays off.
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
    let mut config = config;
    config.alpn_protocols = vec![ALPN_V1.to_vec()];
    // 0-RTT data can be replayed; the protocol's first flight (preamble, hello) must not be.
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// The ALPN protocol id of protocol v1, offered by clients and selected by registries.
pub const ALPN_V1: &[u8] = b"sfc/1";

/// What the TLS handshake told about the registry.
pub enum Handshake {
    /// It selected ALPN `sfc/1`: it speaks protocol v1.
    V1(TlsStream),
    /// It selected no ALPN: it predates protocol v1, and the caller asked to go on anyway (to
    /// speak the legacy format). The handshake is complete.
    Legacy(TlsStream),
    /// It selected no ALPN and the caller would not go on: the handshake was abandoned before
    /// the client's last flight, so the registry saw no established connection and no byte
    /// of application data. The connection is dropped.
    Predates,
}

/// Whether the registry's ALPN answer is final: TLS 1.2 carries it in the ServerHello, TLS 1.3
/// in EncryptedExtensions, which precede the server's Finished (the client's handshake is over
/// once it has processed that, with its own Finished still to send).
fn alpn_settled(c: &ClientConnection) -> bool {
    !c.is_handshaking() || c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2)
}

/// TLS handshake over `io` that offers ALPN `sfc/1` (as configured by [`client_config`]) and
/// checks the answer before the client's last flight; see [`Handshake`]. Errors are I/O errors,
/// with rustls errors inside as `InvalidData` (as tokio-rustls reports them).
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    io: TcpStream,
    legacy_ok: bool,
) -> io::Result<Handshake> {
    let conn = ClientConnection::new(config, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut s = TlsStream {
        io,
        conn,
        eof: false,
        close_sent: false,
    };
    let mut heard = false;
    loop {
        if heard
            && s.conn.wants_write()
            && alpn_settled(&s.conn)
            && !legacy_ok
            && s.conn.alpn_protocol() != Some(ALPN_V1)
        {
            return Ok(Handshake::Predates);
        }
        while s.conn.wants_write() {
            if poll_fn(|cx| s.write_io(cx)).await? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        poll_fn(|cx| Pin::new(&mut s.io).poll_flush(cx)).await?;
        if !s.conn.is_handshaking() {
            break;
        }
        if poll_fn(|cx| s.read_io(cx)).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tls handshake eof",
            ));
        }
        heard = true;
    }
    Ok(if s.conn.alpn_protocol() == Some(ALPN_V1) {
        Handshake::V1(s)
    } else if legacy_ok {
        Handshake::Legacy(s)
    } else {
        Handshake::Predates
    })
}

/// A client TLS stream over TCP, made by [`connect`].
pub struct TlsStream {
    io: TcpStream,
    conn: ClientConnection,
    eof: bool,
    close_sent: bool,
}

impl TlsStream {
    pub fn get_ref(&self) -> (&TcpStream, &ClientConnection) {
        (&self.io, &self.conn)
    }

    fn read_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut reader = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut reader) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            self.eof = true;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued for this error, if it can go at once.
            let _ = self.write_io(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    fn write_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut writer = SyncIo {
            io: &mut self.io,
            cx,
        };
        match self.conn.write_tls(&mut writer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    fn flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            if ready!(self.write_io(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                // rustls answers WouldBlock only while more may come; after EOF it never should.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(this.read_io(cx))?;
            // Answers rustls owes the peer (key updates), if they can go at once.
            while this.conn.wants_write() {
                match this.write_io(cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {}
                    _ => break,
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut pos = 0;
        while pos != buf.len() {
            pos += this.conn.writer().write(&buf[pos..])?;
            let mut would_block = false;
            while this.conn.wants_write() {
                match this.write_io(cx) {
                    Poll::Ready(Ok(0)) | Poll::Pending => {
                        would_block = true;
                        break;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            if would_block {
                return if pos == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(pos))
                };
            }
        }
        Poll::Ready(Ok(pos))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        this.flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.conn.send_close_notify();
            this.close_sent = true;
        }
        ready!(this.flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Blocking-style `Read`/`Write` over the TCP stream for rustls, `WouldBlock` when not ready.
struct SyncIo<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
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
