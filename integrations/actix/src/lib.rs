//! # portcullis-actix
//!
//! actix-web middleware ([`AccessGuard`]) and extractors ([`Identity`],
//! [`AccessClaims`], `Option<Identity>`) that require a valid
//! [Cloudflare Access]-style token and tell the handler who is calling.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use portcullis_actix::{AccessGuard, Identity};
//! use portcullis_core::Validator;
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let validator = Validator::from_team_name("acme").audience("my-app-aud").build()?;
//!     HttpServer::new(move || {
//!         App::new()
//!             .wrap(AccessGuard::new(validator.clone()).exclude("/healthz"))
//!             .route("/", web::get().to(|who: Identity| async move { format!("hello {}", who.name()) }))
//!     })
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Contents
//!
//! - [`guard`]: [`AccessGuard`], with path exclusions, optional-login
//!   paths, [authorization rules](Rule), login redirects for page
//!   navigations and gRPC statuses; per-scope configuration by wrapping a
//!   scope in its own guard; [`GuardFuture`], its response future.
//! - [`extract`]: [`Identity`], [`AccessClaims`] (`FromRequest`; `Option<_>`
//!   of either for optional login) and [`AccessError`].
//! - Re-exported from `portcullis-tower`, whose [`AccessConfig`] both
//!   integrations share: [`Rule`], [`Authorize`], [`Protocol`].
//!
//! ## Behaviour
//!
//! No token, or a token that fails any check: 401 with the error's code
//! (`missing_token`, `expired`, `wrong_audience`, ...) in
//! `{"error":"<code>","message":"..."}` (`Content-Type: application/json`).
//! A valid token that a rule refuses: 403 `forbidden`. Keys unavailable:
//! 503. Bodies never echo the token. Every rejection is logged with
//! `tracing` at debug level and, with feature `metrics` and a validator
//! built with metrics, counted in
//! `portcullis_validations_total{result="<code>"}`.
//!
//! [Cloudflare Access]: https://developers.cloudflare.com/cloudflare-one/identity/authorization-cookie/validating-json/

mod bridge;
pub mod extract;
pub mod guard;

pub use extract::{AccessClaims, AccessError, Identity, claims_of};
pub use guard::{AccessGuard, AccessGuardMiddleware, GuardFuture};
pub use portcullis_core::Validator;
pub use portcullis_tower::{AccessConfig, Authorize, Protocol, Rule};
