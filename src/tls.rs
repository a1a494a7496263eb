//! TLS on the listener (`[tls] cert_file`, `key_file`): HTTPS and WSS with rustls.
//!
//! Each accepted connection's TLS handshake runs on the accepting core. Once it is done, the
//! core makes a Unix socket pair: the connection loop gets one end, as it would get a plain TCP
//! connection, and a pump task carries bytes between the other end and the TLS stream
//! (decrypting what the client sends, encrypting what the server answers). Everything after the
//! accept (keep-alive, pipelining, WebSocket hand-over to the owning core by descriptor, the
//! backup stream) then works on TLS connections unchanged; the pump stays on the accepting core
//! and costs a copy through the socket pair each way (see BENCHMARKS.md).
//!
//! ALPN offers `http/1.1` only: a client that offers other protocols and not it is refused in
//! the handshake. SIGHUP reads the certificate and key again; connections open then keep the
//! certificate they were made with.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The largest certificate chain or key file read.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Bytes the pump reads at a time, each way.
const PUMP_CHUNK_BYTES: usize = 16 * 1024;

/// How long, and how many bytes, the pump still reads from a client after the connection
/// loop closed its connection (as the loop's own linger does for plain connections).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Why the certificate or key could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    Io { path: PathBuf, reason: String },
    /// A file holds no usable certificate or key.
    Invalid { path: PathBuf, reason: String },
    /// rustls refused the pair (a key that does not match the certificate, say).
    Refused { reason: String },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Io { path, reason } => write!(f, "tls: {}: {reason}", path.display()),
            TlsError::Invalid { path, reason } => write!(f, "tls: {}: {reason}", path.display()),
            TlsError::Refused { reason } => write!(f, "tls: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The listener's TLS configuration, shared by the cores and replaced whole on reload.
#[derive(Debug)]
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads the certificate chain and key; an error stops the start.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Tls, TlsError> {
        let config = server_config(cert_file, key_file)?;
        Ok(Tls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the certificate and key again (SIGHUP); on an error the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.cert_file, &self.key_file)?);
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// What a new connection's handshake uses.
    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        futures_rustls::TlsAcceptor::from(config)
    }
}

/// Reads at most `PEM_FILE_BYTES_MAX` of `path`.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::config::read_operator_file(path, PEM_FILE_BYTES_MAX).map_err(|reason| TlsError::Io {
        path: path.to_path_buf(),
        reason,
    })
}

/// A rustls server configuration of the chain in `cert_file` and the key in `key_file` (PEM),
/// HTTP/1.1 by ALPN, ring as the cryptography.
fn server_config(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let pem = read_pem(cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(cert_file, format!("not a PEM certificate chain: {error}")))?;
    if chain.is_empty() {
        return Err(invalid(cert_file, "no CERTIFICATE in it".to_string()));
    }
    let pem = read_pem(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|error| invalid(key_file, format!("no usable private key: {error}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let refused = |error: rustls::Error| TlsError::Refused {
        reason: error.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts the PEM certificates in `ca_file` (a server's own
/// self-signed certificate, or its CA) and offers HTTP/1.1: for `stead bench` and `stead admin`.
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let pem = read_pem(ca_file)?;
    let invalid = |reason: String| TlsError::Invalid {
        path: ca_file.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate =
            certificate.map_err(|error| invalid(format!("not a PEM certificate: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| invalid(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid("no CERTIFICATE in it".to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Refused {
            reason: error.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name a client checks the server's certificate against: the host of `authority`
/// (`host`, `host:port`, `[v6]` or `[v6]:port`).
pub fn server_name(authority: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    rustls::pki_types::ServerName::try_from(host)
        .map_err(|error| format!("{authority:?} is not a TLS server name: {error}"))
}

/// Runs the TLS handshake on `stream` within `handshake_timeout`, then returns the end of a
/// socket pair that carries the connection's plain bytes, and pumps between the two on a task
/// of its own until either side ends. A 16 KiB chunk the client does not take within
/// `write_timeout` ends the connection (as the connection loop would). `slot` (the core's
/// connection slot) is held until the pump ends, so that the core's connection limit and its
/// shutdown drain count the pump too.
pub async fn terminate<G: 'static>(
    stream: TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
    (handshake_timeout, write_timeout): (Duration, Duration),
    slot: G,
) -> std::io::Result<TcpStream> {
    let tls = within(handshake_timeout, acceptor.accept(stream))
        .await
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake took too long",
            )
        })??;
    let (inner, pump_end) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: each descriptor comes from the pair just made and is owned by exactly one
    // stream from here on.
    let (inner, pump_end) = unsafe {
        (
            TcpStream::from_raw_fd(inner.into_raw_fd()),
            TcpStream::from_raw_fd(pump_end.into_raw_fd()),
        )
    };
    glommio::spawn_local(async move {
        pump(tls, pump_end, write_timeout).await;
        drop(slot);
    })
    .detach();
    Ok(inner)
}

/// Carries bytes both ways between the client's TLS session and the connection loop's
/// socket. The client's end of sending ends the loop's reading. The loop's end (its connection
/// closed) sends the client `close_notify`, then drains what the client still sends for at
/// most `LINGER` (closing with unread input would reset the connection and could destroy the
/// end of the last answer), then ends the pump.
///
/// Both directions share the session and the socket: each poll borrows them only for its own
/// duration, and the two directions are polled by this one task, never at once.
async fn pump(
    tls: futures_rustls::server::TlsStream<TcpStream>,
    plain: TcpStream,
    write_timeout: Duration,
) {
    use futures_lite::io::{AsyncRead, AsyncWrite};
    use std::cell::RefCell;
    use std::pin::Pin;
    let (tls, plain) = (RefCell::new(tls), RefCell::new(plain));
    let up = async {
        let mut buffer = vec![0u8; PUMP_CHUNK_BYTES];
        loop {
            let read = futures_lite::future::poll_fn(|cx| {
                Pin::new(&mut *tls.borrow_mut()).poll_read(cx, &mut buffer)
            })
            .await;
            let read = match read {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let mut written = 0;
            while written < read {
                let chunk = &buffer[written..read];
                let wrote = futures_lite::future::poll_fn(|cx| {
                    Pin::new(&mut *plain.borrow_mut()).poll_write(cx, chunk)
                })
                .await;
                match wrote {
                    Ok(0) | Err(_) => return std::future::pending::<bool>().await,
                    Ok(bytes) => written += bytes,
                }
            }
        }
        let _ =
            futures_lite::future::poll_fn(|cx| Pin::new(&mut *plain.borrow_mut()).poll_close(cx))
                .await;
        // The answers to what the client sent may still be on their way: `down` ends the
        // pump.
        std::future::pending::<bool>().await
    };
    let down = async {
        let mut buffer = vec![0u8; PUMP_CHUNK_BYTES];
        loop {
            let read = futures_lite::future::poll_fn(|cx| {
                Pin::new(&mut *plain.borrow_mut()).poll_read(cx, &mut buffer)
            })
            .await;
            let read = match read {
                Ok(0) | Err(_) => return true,
                Ok(read) => read,
            };
            let sent = within(write_timeout, async {
                let mut written = 0;
                while written < read {
                    let chunk = &buffer[written..read];
                    let wrote = futures_lite::future::poll_fn(|cx| {
                        Pin::new(&mut *tls.borrow_mut()).poll_write(cx, chunk)
                    })
                    .await?;
                    if wrote == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    written += wrote;
                }
                futures_lite::future::poll_fn(|cx| Pin::new(&mut *tls.borrow_mut()).poll_flush(cx))
                    .await
            })
            .await;
            if !matches!(sent, Some(Ok(()))) {
                return false;
            }
        }
    };
    // `up` never ends on its own: the pump ends with `down`.
    let loop_ended = futures_lite::future::or(up, down).await;
    if !loop_ended {
        return;
    }
    let mut tls = tls.into_inner();
    tls.get_mut().1.send_close_notify();
    let closed = within(write_timeout, futures_lite::AsyncWriteExt::flush(&mut tls)).await;
    if !matches!(closed, Some(Ok(()))) {
        return;
    }
    let _ = tls.get_mut().0.shutdown(std::net::Shutdown::Write).await;
    let mut scratch = vec![0u8; PUMP_CHUNK_BYTES];
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_BYTES_MAX {
            match futures_lite::AsyncReadExt::read(&mut tls, &mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    };
    let _ = within(LINGER, drain).await;
}

/// `future`'s output, or None if it took longer than `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
