//! `GET /api/v1/health` and `GET /metrics`: both readable without a token, because load balancers
//! and Prometheus scrape them without credentials, and neither shows an address.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use netguard_store::ListKind;
use serde::{Deserialize, Serialize};

use super::{ApiState, ErrorBody};
use crate::metrics::{BlocklistScope, CONTENT_TYPE};

/// A store that does not answer its ping within this time counts as unreachable.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// "ok", or "degraded" when the XDP program is not attached or the store does not answer.
    #[schema(example = "ok")]
    pub status: String,
    pub version: String,
    pub sensor_id: String,
    pub uptime_seconds: u64,
    pub datapath: DatapathHealth,
    pub store: StoreHealth,
    /// Connected WebSocket clients.
    pub ws_clients: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatapathHealth {
    pub attached: bool,
    /// Interface the program is attached to.
    pub iface: Option<String>,
    /// "driver" or "skb".
    pub mode: Option<String>,
    pub blocklist_entries: usize,
    pub allowlist_entries: usize,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreHealth {
    /// "embedded" or "redis".
    pub backend: String,
    pub reachable: bool,
    /// Why the store is unreachable.
    pub error: Option<String>,
    /// Writes the kernel already enforces (or alerts already sent) that the store has not taken
    /// yet: queued while it is unreachable or refusing writes (out of memory, disk full), and
    /// retried until it accepts them.
    pub backlog: usize,
    /// `backlog` by kind: "lists" (replayed first), "alerts", "events", "other".
    pub backlog_by_kind: std::collections::BTreeMap<String, usize>,
}

/// Liveness and readiness.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "status",
    responses(
        (status = 200, description = "Healthy: the XDP program is attached and the store answers", body = Health),
        (status = 503, description = "Degraded (same body): not attached, or the store is unreachable", body = Health),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn health(State(state): State<ApiState>) -> Response {
    let datapath = datapath_health(&state).await;
    let store = state.control.store();
    let ping = match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => None,
        // Store errors name the server without credentials; redacting again costs nothing.
        Ok(Err(e)) => Some(netguard_store::url::redact_text(&e.to_string())),
        Err(_) => Some(format!("no answer within {STORE_PING_TIMEOUT:?}")),
    };
    state.metrics.set_store_up(ping.is_none());
    state.metrics.set_datapath_attached(datapath.attached);
    let healthy = datapath.attached && ping.is_none();
    let body = Health {
        status: if healthy { "ok" } else { "degraded" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sensor_id: state.control.sensor_id().into(),
        uptime_seconds: state.started.elapsed().as_secs(),
        datapath,
        store: StoreHealth {
            backend: store.backend_name().into(),
            reachable: ping.is_none(),
            error: ping,
            backlog: store.queued_writes(),
            backlog_by_kind: store
                .queued_by_class()
                .into_iter()
                .map(|(c, n)| (c.label().to_owned(), n))
                .collect(),
        },
        ws_clients: state.ws_clients(),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus exposition. Kernel counters are read at scrape time, so they are exact.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "status",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
    )
)]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    // Never behind the datapath lock (a bulk import or a long list page may hold it): when it is
    // taken, the kernel counters and the attach state are those of the previous scrape.
    let refreshed = match state.control.datapath().try_lock() {
        Ok(dp) => {
            let r = state.metrics.refresh_from(&dp);
            state.dp_health.store(&dp);
            r
        }
        Err(_) => Ok(()),
    };
    if let Err(e) = refreshed {
        log::warn!("metrics: kernel counters not refreshed: {e}");
    }
    let (global, local, _) = state.control.entry_counts(ListKind::Block).await;
    state
        .metrics
        .set_blocklist_entries(BlocklistScope::Global, global);
    state
        .metrics
        .set_blocklist_entries(BlocklistScope::Local, local);
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// What `/health` shows of the datapath, as last read. `/health` and `/metrics` need no token, so
/// a flood of them must not queue behind writers on the datapath lock, nor writers behind them:
/// each takes the lock only if it is free, and otherwise answers from this copy.
#[derive(Default)]
pub(crate) struct DatapathCache(std::sync::Mutex<Option<DatapathHealth>>);

impl DatapathCache {
    fn store(&self, dp: &crate::datapath::Datapath) -> DatapathHealth {
        let att = dp.attached();
        let now = DatapathHealth {
            attached: att.is_some(),
            iface: att.map(|(i, _)| i.to_owned()),
            mode: att.map(|(_, m)| m.as_str().to_owned()),
            blocklist_entries: dp.blocklist.len(),
            allowlist_entries: dp.allowlist.len(),
        };
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now.clone());
        now
    }

    fn last(&self) -> Option<DatapathHealth> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn datapath_health(state: &ApiState) -> DatapathHealth {
    if let Ok(dp) = state.control.datapath().try_lock() {
        return state.dp_health.store(&dp);
    }
    if let Some(last) = state.dp_health.last() {
        return last;
    }
    // Busy before anything was cached (the first request during a long import): wait, but on a
    // blocking thread rather than a runtime worker.
    let (dp, cache) = (state.control.datapath().clone(), state.dp_health.clone());
    tokio::task::spawn_blocking(move || cache.store(&dp.lock().expect("datapath lock poisoned")))
        .await
        .expect("datapath health reader panicked")
}
