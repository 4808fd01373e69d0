//! HTTPS for the API (`[api] tls_cert` and `tls_key`, PEM): the certificate and key are read and
//! checked at start, before anything is attached, and [`TlsListener`] hands axum only connections
//! whose TLS handshake has completed, so the router, the WebSocket, graceful shutdown and the
//! peer address (`ConnectInfo<SocketAddr>`, which `auth` uses for the never-block set) work exactly
//! as over plain HTTP.
//!
//! Handshakes run in their own tasks with a deadline and a cap on how many run at once: axum
//! accepts one connection at a time, so a client that opens a socket and never speaks must not
//! hold up everyone else's handshake.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// Why the API's certificate or key cannot be used. Each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "[api] tls_cert and tls_key go together: set both (PEM files) to serve HTTPS, or neither for HTTP"
    )]
    Half,
    #[error("cannot read {what} {} ({key}): {source}; check the path and that this user may read it", path.display())]
    Read {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} ({key}) {problem}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "the key {} ([api] tls_key) does not fit the certificate {} ([api] tls_cert): {detail}; \
         use the key the certificate was issued for",
        key.display(), cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Reads every certificate of a PEM file (a chain, or a CA bundle). `key` names the setting or
/// flag the file came from (`[api] tls_cert`, `--cacert`), for the error.
pub fn load_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "the certificate file",
        key,
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            problem: format!("is not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            path: path.to_owned(),
            problem: "holds no certificate: expected -----BEGIN CERTIFICATE----- (PEM)".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "the private key file",
        key: "[api] tls_key",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key: "[api] tls_key",
        path: path.to_owned(),
        problem: format!(
            "holds no usable private key ({e}): expected an unencrypted PEM key (-----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        ),
    })
}

/// The server's TLS settings from `[api] tls_cert` and `tls_key`; `None` when neither is set.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsError::Half),
    };
    let chain = load_certs(cert, "[api] tls_cert")?;
    let private = load_key(key)?;
    // ring, named rather than taken from rustls' process default, which panics if a dependency ever
    // enables a second provider. (Deprecated only for lacking post-quantum key exchange.)
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(mismatch)?;
    // The router speaks HTTP/1.1 (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A listener that yields TLS connections whose handshake has completed, with their peer address.
/// Dropping it (axum does at shutdown) stops accepting.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(Self {
            rx,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            r = tcp.accept() => r,
            () = tx.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: as axum does, wait a moment and go on.
                log::warn!("API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // No Nagle: small JSON answers and push messages must not wait for a delayed ACK (40 ms).
        let _ = stream.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    drop(slot);
                    let _ = tx.send((tls, peer)).await;
                }
                // A plain-HTTP client, a scanner or a client that distrusts our certificate.
                Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => log::debug!("TLS handshake with {peer} timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_is_http_and_half_is_refused() {
        assert!(server_config(None, None).unwrap().is_none());
        let e = server_config(Some(Path::new("/x.pem")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_cert") && e.contains("tls_key"), "{e}");
    }

    #[test]
    fn bad_files_are_named_with_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(Some(&missing), Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem") && e.contains("tls_cert"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = server_config(Some(&junk), Some(&junk))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.pem") && e.contains("holds no certificate"),
            "{e}"
        );
    }
}
