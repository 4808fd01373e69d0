//! Accepting API connections within limits, over HTTP and HTTPS alike.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never fires, and it accepts
//! every connection: a client that opens sockets and trickles header bytes (slowloris) holds a task
//! and a descriptor each, for ever. This loop serves the same router with hyper's HTTP/1 server
//! (the router speaks HTTP/1.1 only, upgrades included) plus:
//! - `[api] header_read_timeout`: a request whose headers are not complete in time closes its
//!   connection, whether the client is idle or trickling;
//! - `[api] max_connections`: connections being served at once. One more is answered at once with
//!   503 and the API's JSON error shape, then closed, so a client sees why instead of hanging in the
//!   accept queue. Over TLS this happens after the handshake (which `tls` caps separately).
//!
//! A connection upgraded to a WebSocket leaves this count: the hub counts it against
//! `[api] ws_max_clients` instead.

use std::{future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo, serve::Listener};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{Semaphore, watch},
};
use tower::ServiceExt as _;

/// How the accept loop limits connections (from [`super::ApiConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` on connections from `listener` until `shutdown`, then stops accepting, lets the
/// requests in progress finish, and returns.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // As axum does: dropping `signal_rx` tells every connection to finish gracefully; each
    // connection task holds a `close_rx`, and the loop waits until all are gone.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = signal_tx.closed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(io, peer, limits.max_connections));
            continue;
        };
        let app = app.clone();
        let (signal_tx, close_rx) = (signal_tx.clone(), close_rx.clone());
        tokio::spawn(async move {
            // The peer address lets authenticated clients join the never-block set (`crate::trust`).
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let mut conn = pin!(http.serve_connection(TokioIo::new(io), svc).with_upgrades());
            // Once shutdown begins, the connection finishes its request in progress and closes.
            let r = tokio::select! {
                r = conn.as_mut() => r,
                () = signal_tx.closed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                log::debug!("API connection from {peer} ended: {e}");
            }
            drop(slot);
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// Answers a connection over the cap with 503 and closes it. The request is not read first (that
/// is what the cap saves), but what the client sent is drained for a moment after the answer, so
/// that closing does not reset the connection and discard the answer on its way.
async fn refuse<Io>(mut io: Io, peer: SocketAddr, max: usize)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    log::debug!("API connection from {peer} refused: {max} connections open");
    let body = serde_json::json!({
        "error": format!(
            "the API is serving {max} connections, the limit ([api] max_connections); retry later"
        ),
        "code": "connections_full",
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 << 10;
        while left > 0 {
            match io.read(&mut sink).await? {
                0 => break,
                n => left -= n.min(left),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}
