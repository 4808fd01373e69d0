//! The API's one error shape, `{"error": "...", "field": "..."}`, and the extractors that make every
//! rejection use it: axum's own `Json`/`Query` rejections answer in plain text, which scripts cannot
//! parse and which would break the OpenAPI contract, so request bodies and query strings go through
//! [`ApiJson`] and [`ApiQuery`] instead.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::control::{ControlError, FieldError};
use crate::datapath::DatapathError;
use netguard_store::StoreError;

/// The body of every error response.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words a user can act on.
    #[schema(
        example = "`10.0.0.1/24` has host bits set: use 10.0.0.0/24 for the network, or 10.0.0.1/32 for the single host"
    )]
    pub error: String,
    /// The request field the error is about (`cidr`, `items[3].ttl`, `limit` ...); absent when the
    /// error is not about one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "cidr")]
    pub field: Option<String>,
    /// Every failing item of a validation error (a bulk request lists all of them, not just the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<FieldError>>,
    /// A stable machine-readable reason where one error status has several causes (e.g.
    /// "geoip_unavailable" for a 503 of `/geo-attacks`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "geoip_unavailable")]
    pub code: Option<String>,
}

/// An error response: status plus [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                field: None,
                items: None,
                code: None,
            },
        }
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error).with_field(field)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    /// Sets [`ErrorBody::code`].
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.body.code = Some(code.into());
        self
    }

    pub fn unauthorized(error: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, error)
    }

    pub fn forbidden(error: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    /// Renames the field of a validation error, for aliases whose body names it differently (the seed
    /// API's `ip` and `vm_id` are the control plane's `cidr` and `scope`).
    pub fn rename_fields(mut self, rename: &[(&str, &str)]) -> Self {
        let map = |f: &mut String| {
            if let Some((_, to)) = rename.iter().find(|(from, _)| f == from) {
                *f = (*to).to_owned();
            }
        };
        if let Some(f) = self.body.field.as_mut() {
            map(f);
        }
        for item in self.body.items.iter_mut().flatten() {
            map(&mut item.field);
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"netguard\""),
            );
        }
        resp
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(items) => {
                let msg = ControlError::Invalid(items.clone()).to_string();
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, msg);
                err.body.field = items.first().map(|i| i.field.clone());
                err.body.items = Some(items);
                err
            }
            ControlError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).with_field("items")
            }
            ControlError::Store(s) => store_error(s),
            ControlError::Datapath(d) => datapath_error(d),
            // Only automatic blocks get these two; REST requests see field errors instead.
            ControlError::NeverBlock { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string()).with_field("cidr")
            }
            ControlError::Capped(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        }
    }
}

/// A store failure. Invalid input is the client's; an unreachable backend is a 503 so that clients
/// retry; anything else is the server's.
pub fn store_error(e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
        StoreError::Unavailable { .. }
        | StoreError::QueueFull { .. }
        | StoreError::Locked { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let field = match &e {
        StoreError::Invalid { field, .. } => Some(*field),
        _ => None,
    };
    let mut err = ApiError::new(status, e.to_string());
    err.body.field = field.map(str::to_owned);
    err
}

/// A kernel map failure. A full table is a capacity limit the operator raises in the config (507);
/// the rest are server faults.
pub fn datapath_error(e: DatapathError) -> ApiError {
    match e {
        DatapathError::TableFull { .. } => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// The API's field name for a serde error: its path ("[3].cidr" is "items[3].cidr"), completed for a
/// missing field by the name serde gives in its message.
fn field_name(path: &serde_path_to_error::Path, msg: &str) -> Option<String> {
    let p = path.to_string();
    let mut p = match p.trim_start_matches('.') {
        "?" => String::new(),
        p if p.starts_with('[') => format!("items{p}"),
        p => p.to_owned(),
    };
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|pre| msg.strip_prefix(pre))
        .and_then(|rest| rest.split('`').next());
    // serde_path_to_error ends an unknown field's path with the field, a missing field's with its parent.
    if let Some(name) = named
        && !(p == name || p.ends_with(&format!(".{name}")))
    {
        if !p.is_empty() {
            p.push('.');
        }
        p.push_str(name);
    }
    (!p.is_empty()).then_some(p)
}

/// `Json<T>` with JSON errors: 415 without a JSON content type, 413 over the body limit, 400 for
/// malformed JSON, 422 for well-formed JSON of the wrong shape (unknown field, wrong type), with the
/// failing field named.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub(crate) fn is_json(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Deserialises a JSON body, naming the failing field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Path tracking costs about as much as the parse itself on a 100,000-entry import: parse plainly,
    // and only a body that fails is parsed again to name the field.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_name(e.path(), &e.inner().to_string());
        let inner = e.into_inner();
        let status = match inner.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        let what = if status == StatusCode::BAD_REQUEST {
            "malformed JSON"
        } else {
            "invalid request body"
        };
        let mut err = ApiError::new(status, format!("{what}: {inner}"));
        err.body.field = field;
        err
    })?;
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// `Query<T>` with JSON errors naming the parameter (400).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let field = field_name(e.path(), &e.inner().to_string());
                let mut err = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid query string: {}", e.into_inner()),
                );
                err.body.field = field;
                err
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::EntryRequest;

    #[test]
    fn body_errors_name_the_field_and_classify() {
        let e = parse_json::<EntryRequest>(br#"{"cidr": "10.0.0.0/8", "colour": 1}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.body.error.contains("colour"), "{}", e.body.error);
        assert_eq!(e.body.field.as_deref(), Some("colour"));
        let e = parse_json::<EntryRequest>(br#"{"ttl": "1h"}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("cidr"));
        let e = parse_json::<Vec<EntryRequest>>(br#"[{"cidr": "10.0.0.0/8"}, {"cidr": 5}]"#)
            .unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("items[1].cidr"));
        let e = parse_json::<EntryRequest>(br#"{"cidr": "#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_json::<EntryRequest>(br#"{"cidr": "1.2.3.4"} x"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(is_json(Some(&v("application/merge-patch+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }

    #[test]
    fn invalid_lists_every_item() {
        let e: ApiError = ControlError::Invalid(vec![
            FieldError::new("items[0].cidr", "bad"),
            FieldError::new("items[2].ttl", "bad too"),
        ])
        .into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body.field.as_deref(), Some("items[0].cidr"));
        assert_eq!(e.body.items.as_ref().map(Vec::len), Some(2));
        let renamed = e.rename_fields(&[("items[2].ttl", "duration")]);
        assert_eq!(renamed.body.items.unwrap()[1].field, "duration");
    }
}
