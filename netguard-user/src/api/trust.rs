//! `GET /api/v1/never-block`: the addresses the automatic response never blocks, each with where it
//! came from (see `crate::trust`).

use axum::{Json, extract::State};
use serde::Serialize;

use super::{
    ApiState, ErrorBody,
    auth::{Auth, Read},
};
use crate::trust::Protected;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NeverBlockResponse {
    pub total: usize,
    /// Sorted by CIDR; an address may appear once per origin.
    pub entries: Vec<Protected>,
}

/// The never-block set now: own addresses, route next hops, resolvers, the Redis server, fleet
/// peers, authenticated sessions and `[trust] never_block`. Automatic blocks of these are refused
/// (alert action "refused"); REST blocks overlapping them need `"force": true`.
#[utoipa::path(
    get,
    path = "/api/v1/never-block",
    tag = "blocklist",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The never-block set", body = NeverBlockResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn never_block(_: Auth<Read>, State(state): State<ApiState>) -> Json<NeverBlockResponse> {
    let entries = state.control.trust().never_block.list();
    Json(NeverBlockResponse {
        total: entries.len(),
        entries,
    })
}
