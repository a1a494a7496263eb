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

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The largest certificate chain or key file read.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Bytes the pump reads at a time, each way.
const PUMP_CHUNK_BYTES: usize = 16 * 1024;

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
    let io = |error: std::io::Error| TlsError::Io {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{size} bytes, more than the {PEM_FILE_BYTES_MAX} read"),
        });
    }
    std::fs::read(path).map_err(io)
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

/// Runs the TLS handshake on `stream` within `handshake_timeout`, then returns the end of a
/// socket pair that carries the connection's plain bytes, and pumps between the two on a task
/// of its own until either side ends. A write to the client that makes no progress for
/// `write_timeout` ends the connection (as the connection loop would).
pub async fn terminate(
    stream: TcpStream,
    acceptor: futures_rustls::TlsAcceptor,
    (handshake_timeout, write_timeout): (Duration, Duration),
) -> std::io::Result<TcpStream> {
    let tls = within(handshake_timeout, acceptor.accept(stream))
        .await
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS handshake took too long",
            )
        })??;
    let (inner, to_plain) = std::os::unix::net::UnixStream::pair()?;
    // The pump reads and writes its end on two descriptors, so that each direction can end its
    // own side.
    let from_plain = to_plain.try_clone()?;
    // SAFETY: each descriptor comes from the pair just made (or its clone) and is owned by
    // exactly one stream from here on.
    let (inner, to_plain, from_plain) = unsafe {
        (
            TcpStream::from_raw_fd(inner.into_raw_fd()),
            TcpStream::from_raw_fd(to_plain.into_raw_fd()),
            TcpStream::from_raw_fd(from_plain.into_raw_fd()),
        )
    };
    glommio::spawn_local(pump(tls, (from_plain, to_plain), write_timeout)).detach();
    Ok(inner)
}

/// Carries bytes both ways between the client's TLS stream and the connection loop's socket.
/// The client's end of sending ends the loop's reading; the loop's end (its connection closed)
/// sends the client `close_notify` and ends the pump, whatever the client still sends.
async fn pump(
    tls: futures_rustls::server::TlsStream<TcpStream>,
    (mut from_plain, mut to_plain): (TcpStream, TcpStream),
    write_timeout: Duration,
) {
    let (mut from_client, mut to_client) = futures_lite::io::split(tls);
    let up = async {
        let mut buffer = vec![0u8; PUMP_CHUNK_BYTES];
        loop {
            match from_client.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if to_plain.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_plain.shutdown(std::net::Shutdown::Write).await;
        // The answers to what the client sent may still be on their way: `down` ends the
        // pump.
        std::future::pending::<()>().await;
    };
    let down = async {
        let mut buffer = vec![0u8; PUMP_CHUNK_BYTES];
        loop {
            let read = match from_plain.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let sent = within(write_timeout, async {
                to_client.write_all(&buffer[..read]).await?;
                to_client.flush().await
            })
            .await;
            if !matches!(sent, Some(Ok(()))) {
                return;
            }
        }
        let _ = within(write_timeout, to_client.close()).await;
    };
    futures_lite::future::or(up, down).await;
}

/// `future`'s output, or None if it took longer than `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
