//! `GET /api/v1/ws`: every alert and list change, pushed as one JSON text message each.
//!
//! One hub task serialises each [`PushEvent`](crate::control::PushEvent) once and fans the text out
//! through a broadcast channel whose capacity is the per-client queue: a broadcast receiver is a
//! bounded queue per client over one shared ring, so 1,000 clients cost one copy of each message.
//! The sender never waits, so a slow client cannot slow the daemon or the other clients: when it
//! falls more than a queue behind, it is disconnected with close code 1008 and the reason
//! "too slow: fell N messages behind". A client that stops reading entirely blocks only its own
//! write, which times out ([`WsConfig::write_timeout`]) and drops the connection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{
        State,
        ws::{
            CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use super::{
    ApiState,
    auth::{self, Need},
    error::{ApiError, ApiQuery, ErrorBody},
};
use crate::control::Control;

/// Close code for a client that fell behind (policy violation), per RFC 6455.
pub const CLOSE_TOO_SLOW: u16 = 1008;
/// Close code when the daemon stops.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Clients send us nothing but control frames: anything large is refused.
const MAX_CLIENT_MESSAGE: usize = 64 << 10;

#[derive(Clone, Debug)]
pub struct WsConfig {
    pub queue: usize,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    /// Clients at once (`[api] ws_max_clients`); one more is answered 503 before the upgrade.
    pub max_clients: usize,
}

pub struct Hub {
    tx: broadcast::Sender<Utf8Bytes>,
    stop: watch::Sender<bool>,
    cfg: WsConfig,
    clients: AtomicUsize,
}

impl Hub {
    /// Subscribes to the control plane and starts the serialising task.
    pub fn start(control: &Control, cfg: WsConfig) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(cfg.queue);
        let (stop, _) = watch::channel(false);
        let mut events = control.subscribe();
        let out = tx.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => match serde_json::to_string(&ev) {
                        // No receivers is fine: nobody is watching.
                        Ok(text) => drop(out.send(Utf8Bytes::from(text))),
                        Err(e) => log::error!("push event not serialisable: {e}"),
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        log::warn!(
                            "WebSocket hub fell {n} events behind the control plane; clients missed them"
                        )
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Arc::new(Hub {
            tx,
            stop,
            cfg,
            clients: AtomicUsize::new(0),
        })
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Takes one of the `max_clients` places, or none when all are taken. The place is taken
    /// before the upgrade is answered and given back when the returned guard is dropped (the client
    /// left, or the upgrade never completed), so that many upgrades at once cannot overshoot.
    fn reserve(self: &Arc<Self>) -> Option<ClientSlot> {
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.max_clients).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(self.clone()))
    }

    /// Tells every client that the server is going away.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

/// One connected (or connecting) WebSocket client's place in the hub's count.
struct ClientSlot(Arc<Hub>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The bearer token, for clients that cannot set headers (browsers). The header wins when both
    /// are present.
    pub token: Option<String>,
}

/// WebSocket push: each message is one JSON `PushEvent` (`{"type": "alert"|"block"|"unblock"|"allow"|
/// "unallow", ...}`). Needs the viewer role (header, or `?token=`). A client that falls behind is
/// closed with code 1008 and a reason; the server pings periodically.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "push",
    params(WsQuery),
    security(("bearer" = []), ("token_query" = [])),
    responses(
        (status = 101, description = "Switching protocols; then one text message per PushEvent", body = crate::control::PushEvent),
        (status = 400, description = "Not a valid WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 426, description = "Upgrade required: connect with a WebSocket client", body = ErrorBody),
        (status = 503, description = "`[api] ws_max_clients` clients are connected already; retry later", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn ws(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A browser always says where the page came from: only the console's own origin may connect,
    // so another site cannot open a socket with the user's cookie (or a token it learnt).
    if !super::console::origin_ok(&headers, state.sessions.secure()) {
        return Err(ApiError::forbidden(
            "WebSocket from another origin refused; open the console from the daemon's own address",
        )
        .with_code("origin"));
    }
    let token = match auth::bearer(&headers)? {
        Some(t) => Some(t),
        None => q.token.as_deref(),
    };
    let who = match (token, super::console::session::cookie_value(&headers)) {
        (None, Some(id)) => {
            let (p, _) = state.sessions.principal(id, &state.tokens).ok_or_else(|| {
                ApiError::unauthorized("the console session has expired or was ended; log in again")
                    .with_code("session_expired")
            })?;
            auth::permit(p, Need::Read)?
        }
        (token, _) => auth::check(&state.tokens, token, Need::Read)?,
    };
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            format!("{}; connect with a WebSocket client", r.body_text()),
        )
    })?;
    let Some(slot) = state.hub.reserve() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} WebSocket clients are connected, the limit ([api] ws_max_clients); retry later",
                state.hub.cfg.max_clients
            ),
        )
        .with_code("ws_clients_full"));
    };
    // Subscribe before answering 101, so that nothing published after the client sees the upgrade
    // can be missed.
    let rx = state.hub.tx.subscribe();
    let hub = state.hub.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            log::debug!("WebSocket client `{}` connected", who.name);
            let why = client(socket, rx, &hub).await;
            drop(slot);
            log::debug!("WebSocket client `{}` left: {why}", who.name);
        })
        .into_response())
}

/// Sends one message within the write timeout; false when the client is gone or stuck.
async fn send(socket: &mut WebSocket, msg: Message, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Runs one client until it leaves, falls behind, or the server stops; returns why it ended.
async fn client(
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    hub: &Hub,
) -> String {
    let cfg = &hub.cfg;
    let mut stop = hub.stop.subscribe();
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    let mut heard = Instant::now();
    let close: (u16, String) = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break (CLOSE_GOING_AWAY, "server shutting down".into()),
            incoming = socket.recv() => match incoming {
                // tungstenite answers a client's close and pings itself; we only note that it lives.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return "disconnected".into(),
                Some(Ok(_)) => heard = Instant::now(),
            },
            ev = rx.recv() => match ev {
                Ok(text) => {
                    if !send(&mut socket, Message::Text(text), cfg.write_timeout).await {
                        return "write failed or timed out".into();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    break (CLOSE_TOO_SLOW, format!("too slow: fell {n} messages behind"));
                }
                Err(broadcast::error::RecvError::Closed) => break (CLOSE_GOING_AWAY, "server shutting down".into()),
            },
            _ = ping.tick() => {
                if heard.elapsed() > cfg.ping_interval * 3 {
                    return "no pong for three ping intervals".into();
                }
                if !send(&mut socket, Message::Ping(Default::default()), cfg.write_timeout).await {
                    return "ping failed".into();
                }
            }
        }
    };
    let (code, reason) = close;
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.clone()),
    };
    let _ = send(&mut socket, Message::Close(Some(frame)), cfg.write_timeout).await;
    reason
}
