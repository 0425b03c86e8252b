//! The [`AccessGuard`] middleware: a valid Access token, or no entry.
//!
//! ```
//! # #[actix_web::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use actix_web::{App, test, web};
//! use portcullis_actix::{AccessGuard, Identity, Rule};
//! use portcullis_core::Validator;
//! use portcullis_core::test_support::{TestKey, static_source, user_claims};
//!
//! let key = TestKey::rsa();
//! let validator = Validator::builder("https://team.example")
//!     .audience("my-app-aud")
//!     .key_source(static_source(&[&key]))
//!     .build()?;
//!
//! let app = test::init_service(
//!     App::new()
//!         .wrap(AccessGuard::new(validator).require(Rule::email_domain("example.com")).exclude("/healthz"))
//!         .route("/", web::get().to(|who: Identity| async move { format!("hello {}", who.name()) }))
//!         .route("/healthz", web::get().to(|| async { "ok" })),
//! )
//! .await;
//!
//! let token = key.sign(&user_claims("https://team.example", "my-app-aud", "ada@example.com"));
//! let req = test::TestRequest::get().uri("/").insert_header(("cf-access-jwt-assertion", token));
//! assert_eq!(test::call_and_read_body(&app, req.to_request()).await, "hello ada@example.com");
//!
//! let resp = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
//! assert_eq!(resp.status(), 401);
//! let resp = test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
//! assert_eq!(resp.status(), 200);
//! # Ok(()) }
//! ```
//!
//! The guard finds the token (header, then cookie), validates it, checks
//! the [rules](crate::Rule), and then either calls the wrapped service with
//! the claims in the request extensions (read them with the
//! [extractors](crate::extract)) or answers itself with the contract's
//! JSON error, a login redirect for page navigations (see
//! [`AccessGuard::redirect_to`]) or a gRPC status for gRPC requests.
//!
//! Per-scope configuration: wrap a scope in its own guard (e.g. one built
//! with [`Validator::with_audiences`]) and exclude that scope from the
//! app-wide guard:
//!
//! ```
//! # fn demo(validator: portcullis_core::Validator) -> Result<(), portcullis_core::ConfigError> {
//! use actix_web::{App, web};
//! use portcullis_actix::AccessGuard;
//!
//! let partner = validator.with_audiences(["partner-app-aud"])?;
//! let app = App::new()
//!     .wrap(AccessGuard::new(validator).exclude_prefix("/partner"))
//!     .service(web::scope("/partner").wrap(AccessGuard::new(partner)));
//! # let _ = app; Ok(()) }
//! ```

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage};
use portcullis_core::{ConfigError, Validator};
use portcullis_tower::{AccessConfig, Authorize, Decision, PathKind, Protocol};

use crate::bridge::{consulted_headers, into_actix};

/// actix-web middleware requiring a valid Access token; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessGuard {
    config: Arc<AccessConfig>,
}

impl AccessGuard {
    /// Requires a token valid for `validator` on every path.
    pub fn new(validator: Validator) -> Self {
        Self::from_config(AccessConfig::new(validator))
    }

    /// A guard enforcing `config` (shared with the tower integration).
    pub fn from_config(config: AccessConfig) -> Self {
        AccessGuard {
            config: Arc::new(config),
        }
    }

    /// The configuration enforced.
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    fn map(self, f: impl FnOnce(AccessConfig) -> AccessConfig) -> Self {
        Self::from_config(f(Arc::unwrap_or_clone(self.config)))
    }

    /// Adds an authorization rule (a [`Rule`](crate::Rule) or a closure
    /// `Fn(&AccessClaims) -> bool`); refusal is 403 `forbidden`.
    pub fn require(self, rule: impl Authorize) -> Self {
        self.map(|c| c.require(rule))
    }

    /// Lets this exact path through without a token (e.g. `/healthz`).
    pub fn exclude(self, path: impl Into<String>) -> Self {
        self.map(|c| c.exclude(path))
    }

    /// Lets this path and everything below it through without a token.
    pub fn exclude_prefix(self, prefix: impl Into<String>) -> Self {
        self.map(|c| c.exclude_prefix(prefix))
    }

    /// Login optional on this exact path: a valid token's identity is
    /// passed on, anything else passes anonymously (`Option<Identity>` is
    /// `None`).
    pub fn optional(self, path: impl Into<String>) -> Self {
        self.map(|c| c.optional(path))
    }

    /// Login optional on this path and everything below it.
    pub fn optional_prefix(self, prefix: impl Into<String>) -> Self {
        self.map(|c| c.optional_prefix(prefix))
    }

    /// Redirects page navigations (`Sec-Fetch-Mode: navigate`, or
    /// `Accept: text/html` without `Sec-Fetch-Mode`) refused with a 401 to
    /// `login_url`, adding `redirect_url=<path?query>`. Fetch/XHR calls
    /// keep getting the JSON 401.
    pub fn redirect_to(self, login_url: impl Into<String>) -> Result<Self, ConfigError> {
        let config = Arc::unwrap_or_clone(self.config).redirect_to(login_url)?;
        Ok(Self::from_config(config))
    }

    /// How rejections are rendered for gRPC; see [`Protocol`].
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.map(|c| c.protocol(protocol))
    }
}

impl<S, B> Transform<S, ServiceRequest> for AccessGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AccessGuardMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AccessGuardMiddleware {
            service: Rc::new(service),
            config: self.config.clone(),
        }))
    }
}

/// The service [`AccessGuard`] wraps around the app.
#[derive(Debug)]
pub struct AccessGuardMiddleware<S> {
    service: Rc<S>,
    config: Arc<AccessConfig>,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for AccessGuardMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        if self.config.path_kind(req.path()) == PathKind::Excluded {
            return Box::pin(async move { Ok(service.call(req).await?.map_into_left_body()) });
        }
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let headers = consulted_headers(req.headers());
            let query = Some(req.query_string());
            match config.decide(req.path(), query, &headers).await {
                Decision::Reject(rejection) => {
                    let response = into_actix(rejection.to_response());
                    return Ok(req.into_response(response).map_into_right_body());
                }
                Decision::Allow(claims) => {
                    req.extensions_mut().insert(claims);
                }
                Decision::Skip | Decision::Anonymous => {}
            }
            Ok(service.call(req).await?.map_into_left_body())
        })
    }
}
