//! Error responses shared by many operations, for the OpenAPI document: a handler lists its success
//! responses and then one or more of these sets, instead of repeating the same error tuples in every
//! `#[utoipa::path]`:
//!
//! ```ignore
//! responses((status = 200, description = "...", body = Thing), ParamErrors, NotFoundError)
//! ```
//!
//! Every error body is [`ErrorBody`]. The enums are documentation only; handlers return
//! [`ApiError`](super::ApiError).

#![allow(dead_code)]

use super::ErrorBody;

/// The errors of an authenticated request without a body: invalid query or path parameter, missing
/// token, role too low, store unreachable, and the catch-all `default`.
#[derive(utoipa::IntoResponses)]
pub enum ParamErrors {
    /// Invalid parameter; `field` names it.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or invalid token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The state store is unreachable; retry later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// Any other error.
    #[response(status = "default")]
    Other(ErrorBody),
}

/// [`ParamErrors`] plus the errors of a JSON request body: not JSON (415), malformed (400), or JSON of
/// the wrong shape (422, `field` names the offending key).
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    /// Invalid field, or malformed JSON; `field` names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or invalid token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// JSON of the wrong shape (unknown field, wrong type); `field` names it.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The state store is unreachable; retry later.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// Any other error.
    #[response(status = "default")]
    Other(ErrorBody),
}

/// The resource named in the path does not exist.
#[derive(utoipa::IntoResponses)]
#[response(status = 404)]
pub struct NotFoundError(ErrorBody);
