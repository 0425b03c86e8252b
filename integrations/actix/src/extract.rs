//! Extractors for the identity [`AccessGuard`](crate::AccessGuard)
//! established.
//!
//! ```
//! use actix_web::{get, HttpResponse, Responder};
//! use portcullis_actix::{AccessClaims, AccessError, Identity, Rule};
//!
//! #[get("/whoami")]
//! async fn whoami(identity: Identity) -> impl Responder {
//!     match &*identity {
//!         portcullis_core::Identity::User { email, .. } => format!("user {email}"),
//!         portcullis_core::Identity::Service { common_name } => format!("service {common_name}"),
//!     }
//! }
//!
//! #[get("/")]
//! async fn home(identity: Option<Identity>) -> impl Responder {
//!     identity.map_or_else(|| "hello stranger".to_owned(), |i| format!("hello {}", i.name()))
//! }
//!
//! #[get("/ops")]
//! async fn ops(claims: AccessClaims) -> Result<HttpResponse, AccessError> {
//!     Rule::group("ops").check(&claims)?; // 403 `forbidden` otherwise
//!     Ok(HttpResponse::Ok().body("welcome to ops"))
//! }
//! # let _ = (whoami, home, ops);
//! ```
//!
//! Without the guard (or on an excluded path) [`Identity`] and
//! [`AccessClaims`] fail with 401 `missing_token`, and `Option<Identity>`
//! is `None`.

use std::future::{Ready, ready};
use std::ops::Deref;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use portcullis_core::ValidationError;
use portcullis_tower::Rejection;

use crate::bridge::into_actix;

/// Who the caller is: a user or a service token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub portcullis_core::Identity);

impl Deref for Identity {
    type Target = portcullis_core::Identity;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// All claims of the caller's validated token.
#[derive(Debug, Clone)]
pub struct AccessClaims(pub Arc<portcullis_core::AccessClaims>);

impl Deref for AccessClaims {
    type Target = portcullis_core::AccessClaims;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Error of the extractors, and a handy error type for handlers that check
/// [rules](crate::Rule) themselves: the contract's JSON error with its
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessError(pub ValidationError);

impl From<ValidationError> for AccessError {
    fn from(error: ValidationError) -> Self {
        AccessError(error)
    }
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for AccessError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.http_status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        tracing::debug!(
            code = self.0.code().as_str(),
            "request rejected by an extractor or handler"
        );
        into_actix(Rejection::json(self.0.clone()).to_response())
    }
}

/// The claims the guard stored for this request.
pub fn claims_of(req: &HttpRequest) -> Option<Arc<portcullis_core::AccessClaims>> {
    req.extensions()
        .get::<Arc<portcullis_core::AccessClaims>>()
        .cloned()
}

impl FromRequest for AccessClaims {
    type Error = AccessError;
    type Future = Ready<Result<Self, AccessError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            claims_of(req)
                .map(AccessClaims)
                .ok_or(AccessError(ValidationError::MissingToken)),
        )
    }
}

impl FromRequest for Identity {
    type Error = AccessError;
    type Future = Ready<Result<Self, AccessError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            claims_of(req)
                .map(|c| Identity(c.identity()))
                .ok_or(AccessError(ValidationError::MissingToken)),
        )
    }
}
