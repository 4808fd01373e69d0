//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and the types'
//! `ToSchema` derives, so it cannot drift from the code. Served at `/openapi.json` and
//! `/api/v1/openapi.json`, without a token: it is the contract, not data.

use std::sync::OnceLock;

use axum::response::Response;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{ErrorBody, alerts_flows, health, json_text, lists, seed, trust, ws};
use crate::control::{Change, PushEvent, Removal};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "NetGuard API",
        description = "REST, WebSocket push and metrics of the NetGuard sensor daemon. Every error is \
            `{\"error\": ..., \"field\": ...}`. Authentication: `Authorization: Bearer TOKEN`; roles viewer \
            (reads) < operator (list changes) < admin, and agent (host events only). `/metrics`, \
            `/api/v1/health` and the OpenAPI document need no token."
    ),
    paths(
        health::health,
        health::metrics,
        lists::list_block,
        lists::put_block,
        lists::remove_block,
        lists::list_allow,
        lists::put_allow,
        lists::remove_allow,
        alerts_flows::alerts,
        alerts_flows::flows,
        ws::ws,
        seed::block,
        seed::block_per_vm,
        seed::unblock,
        seed::blocked_ips,
        trust::never_block,
        spec,
        spec_root,
    ),
    components(schemas(ErrorBody, PushEvent, Change, Removal, super::auth::Role)),
    modifiers(&Security),
    tags(
        (name = "blocklist", description = "Dropped in the kernel (XDP), with TTLs"),
        (name = "allowlist", description = "Never dropped; never blockable"),
        (name = "alerts", description = "Detection history"),
        (name = "flows", description = "The kernel's flow table"),
        (name = "push", description = "WebSocket push of alerts and list changes"),
        (name = "seed", description = "Aliases compatible with the seed API"),
        (name = "status", description = "Health, metrics and this document (no token needed)"),
    )
)]
pub struct ApiDoc;

/// The two ways to present a token.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (NETGUARD_ADMIN_TOKEN, the generated admin.token, or [[api.tokens]])"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The token as a query parameter, for WebSocket clients that cannot set headers",
            ))),
        );
    }
}

/// The document as JSON text, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.merge(super::multivm::MultiVmDoc::openapi());
        doc.merge(super::events::EventsDoc::openapi());
        doc.merge(super::console::ConsoleDoc::openapi());
        doc.to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "status",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn spec() -> Response {
    json_text(document())
}

/// This OpenAPI document (same as `/api/v1/openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn spec_root() -> Response {
    json_text(document())
}
