//! axum extractors for the identity [`AccessLayer`](crate::AccessLayer)
//! established (feature `axum`).
//!
//! ```
//! use axum::{Router, routing::get};
//! use portcullis_core::Validator;
//! use portcullis_tower::AccessLayer;
//! use portcullis_tower::axum::{AccessClaims, Identity};
//!
//! async fn whoami(identity: Identity) -> String {
//!     match &*identity {
//!         portcullis_core::Identity::User { email, .. } => format!("user {email}"),
//!         portcullis_core::Identity::Service { common_name } => format!("service {common_name}"),
//!     }
//! }
//!
//! async fn home(identity: Option<Identity>) -> String {
//!     identity.map_or_else(|| "hello stranger".into(), |i| format!("hello {}", i.name()))
//! }
//!
//! async fn country(claims: AccessClaims) -> String {
//!     claims.country.clone().unwrap_or_default()
//! }
//!
//! fn app(validator: Validator) -> Router {
//!     Router::new()
//!         .route("/whoami", get(whoami))
//!         .route("/country", get(country))
//!         .route("/", get(home))
//!         .layer(AccessLayer::new(validator).optional("/"))
//! }
//! # let _ = app;
//! ```
//!
//! Without the layer (or on an excluded path) [`Identity`] and
//! [`AccessClaims`] reject with 401 `missing_token`, and `Option<Identity>`
//! is `None`.

use std::convert::Infallible;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use portcullis_core::ValidationError;

use crate::rejection::Rejection;

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

/// Rejection of the extractors, and a handy error type for handlers that
/// check [rules](crate::Rule) themselves (`rule.check(&claims)?`): the
/// contract's JSON error with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRejection(pub ValidationError);

impl From<ValidationError> for AccessRejection {
    fn from(error: ValidationError) -> Self {
        AccessRejection(error)
    }
}

impl std::fmt::Display for AccessRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AccessRejection {}

impl IntoResponse for AccessRejection {
    fn into_response(self) -> Response {
        tracing::debug!(
            code = self.0.code().as_str(),
            "request rejected by an extractor or handler"
        );
        Rejection::json(self.0)
            .to_response()
            .map(axum::body::Body::from)
    }
}

fn claims(parts: &Parts) -> Option<Arc<portcullis_core::AccessClaims>> {
    parts
        .extensions
        .get::<Arc<portcullis_core::AccessClaims>>()
        .cloned()
}

impl<S: Send + Sync> FromRequestParts<S> for AccessClaims {
    type Rejection = AccessRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        claims(parts)
            .map(AccessClaims)
            .ok_or(AccessRejection(ValidationError::MissingToken))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AccessClaims {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(claims(parts).map(AccessClaims))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = AccessRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        claims(parts)
            .map(|c| Identity(c.identity()))
            .ok_or(AccessRejection(ValidationError::MissingToken))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(claims(parts).map(|c| Identity(c.identity())))
    }
}
