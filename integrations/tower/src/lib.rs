//! # portcullis-tower
//!
//! A tower [`Layer`](tower_layer::Layer) that requires a valid
//! [Cloudflare Access]-style token in front of any service over
//! `http::Request<B>` — axum routers, plain hyper services, tonic servers —
//! and hands the validated claims to the service in the request
//! extensions as `Arc<AccessClaims>`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use portcullis_core::Validator;
//! use portcullis_tower::{AccessLayer, Rule, axum::Identity};
//!
//! let validator = Validator::from_team_name("acme").audience("my-app-aud").build()?;
//! let app = Router::new()
//!     .route("/", get(|who: Identity| async move { format!("hello {}", who.name()) }))
//!     .layer(AccessLayer::new(validator).require(Rule::email_domain("example.com")).exclude("/healthz"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! ## Contents
//!
//! - [`layer`]: [`AccessLayer`], [`AccessService`] and its response future.
//! - [`config`]: [`AccessConfig`] — validator, rules, excluded and optional
//!   paths, rejection form — and the [`Decision`] it takes per request.
//!   The actix-web integration uses the same type.
//! - [`authz`]: [`Rule`] (email domain, email set, group, service token,
//!   predicate, `and`/`or`) and the [`Authorize`] trait.
//! - [`rejection`]: [`Rejection`]: the contract's JSON error
//!   (`{"error":"<code>","message":"..."}`), a login redirect for page
//!   navigations only, or a gRPC status (`UNAUTHENTICATED` = 16,
//!   `PERMISSION_DENIED` = 7) in a trailers-only response.
//! - [`paths`]: [`PathSet`], exact and prefix path matching.
//! - [`body`]: [`ResponseBody`], the layer's response body.
//! - `axum` (feature `axum`): `Identity`, `AccessClaims` and
//!   `Option<Identity>` extractors.
//!
//! ## Behaviour
//!
//! No token, or a token that fails any check: 401 with the error's code
//! (`missing_token`, `expired`, `wrong_audience`, ...). A valid token that a
//! rule refuses: 403 `forbidden`. Keys unavailable: 503. Bodies never echo
//! the token. Every rejection is logged with `tracing` at debug level and,
//! with feature `metrics` and a validator built with metrics, counted in
//! `portcullis_validations_total{result="<code>"}`.
//!
//! [Cloudflare Access]: https://developers.cloudflare.com/cloudflare-one/identity/authorization-cookie/validating-json/

pub mod authz;
#[cfg(feature = "axum")]
pub mod axum;
pub mod body;
pub mod config;
pub mod layer;
pub mod paths;
pub mod rejection;

pub use authz::{Authorize, Rule};
pub use body::ResponseBody;
pub use config::{AccessConfig, CONSULTED_HEADERS, Decision, PathKind};
pub use layer::{AccessLayer, AccessService, ResponseFuture};
pub use paths::PathSet;
pub use portcullis_core::{AccessClaims, Identity, ValidationError, Validator};
pub use rejection::{GrpcCode, Protocol, Rejection, is_page_navigation};
