//! `GET /api/v1/alerts` (history from the store, newest first) and `GET /api/v1/flows` (the kernel's
//! flow table now, top N).

use std::net::IpAddr;

use axum::{Json, extract::State};
use netguard_common::{FlowKey, FlowStats, proto, tcp_flags};
use netguard_store::{Alert, AlertQuery};
use serde::{Deserialize, Serialize};

use super::{
    ApiState,
    auth::{Auth, Read},
    error::{ApiError, ApiQuery, ErrorBody},
};
use crate::datapath::{flow_dst, flow_src};

pub const MAX_ALERTS: usize = 10_000;
pub const MAX_TOP: usize = 10_000;
const MAX_CLASS_LEN: usize = 64;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Most alerts returned (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// Only this class (e.g. "port_scan").
    #[param(max_length = 64)]
    pub class: Option<String>,
    /// Only alerts about this source address.
    #[param(example = "203.0.113.7")]
    pub src: Option<String>,
}

impl AlertsQuery {
    fn to_query(&self) -> Result<AlertQuery, ApiError> {
        let limit = self.limit.unwrap_or(AlertQuery::default().limit);
        if !(1..=MAX_ALERTS).contains(&limit) {
            return Err(ApiError::field(
                "limit",
                format!("{limit} is outside 1..={MAX_ALERTS}"),
            ));
        }
        let class = self.class.clone().filter(|c| !c.is_empty());
        if class
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_CLASS_LEN)
        {
            return Err(ApiError::field(
                "class",
                format!(
                    "longer than {MAX_CLASS_LEN} characters; classes are names such as port_scan"
                ),
            ));
        }
        let src = match self.src.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| ApiError::field("src", format!("`{s}` is not an IP address")))?,
            ),
        };
        Ok(AlertQuery { limit, class, src })
    }
}

/// Alert history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Alerts, newest first", body = [Alert]),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn alerts(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let q = q.to_query()?;
    Ok(Json(state.control.alerts(q).await?))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlowSort {
    #[default]
    Bytes,
    Packets,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlowsQuery {
    /// How many flows (default 20).
    #[param(minimum = 1, maximum = 10000)]
    pub top: Option<usize>,
    /// Order, largest first (default bytes).
    pub sort: Option<FlowSort>,
}

/// One flow as the kernel counts it (one direction, ingress).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowView {
    #[schema(value_type = String, example = "203.0.113.7")]
    pub src: IpAddr,
    #[schema(value_type = String)]
    pub dst: IpAddr,
    /// For ICMP/ICMPv6: the type.
    pub src_port: u16,
    /// For ICMP/ICMPv6: the code.
    pub dst_port: u16,
    /// "tcp", "udp", "icmp", "icmpv6", or the protocol number.
    #[schema(example = "tcp")]
    pub proto: String,
    pub packets: u64,
    pub bytes: u64,
    pub syn: u32,
    pub syn_ack: u32,
    pub ack: u32,
    pub rst: u32,
    pub fin: u32,
    pub fragments: u32,
    /// Every TCP flag seen in the flow, e.g. "SYN|ACK|FIN"; empty for other protocols.
    #[schema(example = "SYN|ACK")]
    pub tcp_flags: String,
    /// Milliseconds since the first packet.
    pub first_seen_ms_ago: u64,
    /// Milliseconds since the latest packet.
    pub last_seen_ms_ago: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowsResponse {
    /// Flows in the kernel table now.
    pub total: usize,
    pub sort: FlowSort,
    pub flows: Vec<FlowView>,
}

/// The top flows now, from the kernel's flow table.
#[utoipa::path(
    get,
    path = "/api/v1/flows",
    tag = "flows",
    params(FlowsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Top flows, largest first", body = FlowsResponse),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn flows(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<FlowsQuery>,
) -> Result<Json<FlowsResponse>, ApiError> {
    let top = q.top.unwrap_or(20);
    if !(1..=MAX_TOP).contains(&top) {
        return Err(ApiError::field(
            "top",
            format!("{top} is outside 1..={MAX_TOP}"),
        ));
    }
    let sort = q.sort.unwrap_or_default();
    let dp = state.control.datapath().clone();
    // A full flow table is a million entries: read it off the async workers.
    let mut all =
        tokio::task::spawn_blocking(move || dp.lock().expect("datapath lock poisoned").flows())
            .await
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("flow read task failed: {e}"),
                )
            })?
            .map_err(super::error::datapath_error)?;
    let total = all.len();
    let key = |s: &FlowStats| match sort {
        FlowSort::Bytes => (s.bytes, s.packets),
        FlowSort::Packets => (s.packets, s.bytes),
    };
    if top < all.len() {
        all.select_nth_unstable_by(top, |a, b| key(&b.1).cmp(&key(&a.1)));
        all.truncate(top);
    }
    all.sort_unstable_by_key(|(_, s)| std::cmp::Reverse(key(s)));
    let now = monotonic_coarse_ns();
    let flows = all.iter().map(|(k, s)| view(k, s, now)).collect();
    state.metrics.set_flows_active(total);
    Ok(Json(FlowsResponse { total, sort, flows }))
}

fn view(k: &FlowKey, s: &FlowStats, now_ns: u64) -> FlowView {
    let ms_ago = |t: u64| now_ns.saturating_sub(t) / 1_000_000;
    FlowView {
        src: flow_src(k),
        dst: flow_dst(k),
        src_port: k.src_port,
        dst_port: k.dst_port,
        proto: proto_name(k.proto),
        packets: s.packets,
        bytes: s.bytes,
        syn: s.syn,
        syn_ack: s.syn_ack,
        ack: s.ack,
        rst: s.rst,
        fin: s.fin,
        fragments: s.fragments,
        tcp_flags: if k.proto == proto::TCP {
            flag_names(s.tcp_flags)
        } else {
            String::new()
        },
        first_seen_ms_ago: ms_ago(s.first_seen_ns),
        last_seen_ms_ago: ms_ago(s.last_seen_ns),
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

pub fn flag_names(flags: u32) -> String {
    const NAMES: [(u32, &str); 6] = [
        (tcp_flags::SYN, "SYN"),
        (tcp_flags::ACK, "ACK"),
        (tcp_flags::PSH, "PSH"),
        (tcp_flags::URG, "URG"),
        (tcp_flags::FIN, "FIN"),
        (tcp_flags::RST, "RST"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// The kernel stamps flows with `bpf_ktime_get_coarse_ns()`, which is CLOCK_MONOTONIC_COARSE.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(flag_names(tcp_flags::SYN | tcp_flags::ACK), "SYN|ACK");
        assert_eq!(flag_names(0), "");
        assert_eq!(proto_name(6), "tcp");
        assert_eq!(proto_name(47), "47");
    }

    #[test]
    fn alert_query_validation() {
        let q = |limit, src: Option<&str>| AlertsQuery {
            limit,
            class: None,
            src: src.map(Into::into),
        };
        assert_eq!(q(None, None).to_query().unwrap().limit, 100);
        assert_eq!(
            q(Some(0), None)
                .to_query()
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("limit")
        );
        assert_eq!(
            q(Some(10_001), None)
                .to_query()
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("limit")
        );
        assert_eq!(
            q(None, Some("nope"))
                .to_query()
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("src")
        );
        assert_eq!(
            q(None, Some("2001:db8::1")).to_query().unwrap().src,
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn coarse_clock_moves() {
        let a = monotonic_coarse_ns();
        assert!(a > 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(monotonic_coarse_ns() > a);
    }
}
