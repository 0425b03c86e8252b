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
//! The decision is taken in `call` itself whenever no key fetch is needed:
//! a token in the `Cf-Access-Jwt-Assertion` header is read in place from
//! actix-web's header map, and a repeated one is a cache hit answered from
//! the validator's per-thread memo, so that path neither copies headers
//! nor boxes a future ([`GuardFuture`]). Only a token whose key is not
//! loaded yet waits in a boxed check.
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

use std::future::{Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage};
use pin_project_lite::pin_project;
use portcullis_core::{ConfigError, Validator};
use portcullis_tower::{AccessConfig, Authorize, Decision, PathKind, Protocol};

use crate::bridge::{TOKEN_HEADER, consulted_headers, header_token, into_actix};

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
        std::future::ready(Ok(AccessGuardMiddleware {
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
    type Future = GuardFuture<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let config = &self.config;
        let kind = config.path_kind(req.path());
        if kind == PathKind::Excluded {
            return GuardFuture::calling(self.service.call(req));
        }
        // The edge sends the token in its header: found there, it is read
        // in place and, when no key fetch is needed (a repeated token is a
        // cache hit), decided here without copying headers or boxing.
        // Anything else (a cookie, no token) goes through core's extractor
        // on a copy of the headers it reads.
        let header = req.headers().get(&TOKEN_HEADER);
        let decision = if let Some(result) =
            header.and_then(|raw| config.authenticate_remembered(raw.as_bytes()))
        {
            Some(conclude(config, kind, result, &req))
        } else if let Some(token) = header_token(header) {
            config
                .authenticate_token_now(token)
                .map(|result| conclude(config, kind, result, &req))
        } else {
            config.decide_now(
                req.path(),
                Some(req.query_string()),
                &consulted_headers(req.headers()),
            )
        };
        match decision {
            Some(Decision::Reject(rejection)) => {
                let response = into_actix(rejection.to_response());
                GuardFuture::ready(req.into_response(response).map_into_right_body())
            }
            Some(decision) => {
                if let Decision::Allow(claims) = decision {
                    req.extensions_mut().insert(claims);
                }
                GuardFuture::calling(self.service.call(req))
            }
            None => {
                // The token names a key that is not loaded: wait for it.
                let service = Rc::clone(&self.service);
                let config = Arc::clone(config);
                GuardFuture::waiting(Box::pin(async move {
                    let headers = consulted_headers(req.headers());
                    let query = Some(req.query_string());
                    let result = config.authenticate(&headers).await;
                    match config.conclude(kind, result, req.path(), query, &headers) {
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
                }))
            }
        }
    }
}

/// [`AccessConfig::conclude`] for this request on a path that is not
/// excluded: valid claims are let in as they are there; only a refusal
/// reads other headers (to choose between a redirect and the JSON error).
fn conclude(
    config: &AccessConfig,
    kind: PathKind,
    result: Result<Arc<portcullis_core::AccessClaims>, portcullis_core::ValidationError>,
    req: &ServiceRequest,
) -> Decision {
    match result {
        Ok(claims) => Decision::Allow(claims),
        Err(error) => config.conclude(
            kind,
            Err(error),
            req.path(),
            Some(req.query_string()),
            &consulted_headers(req.headers()),
        ),
    }
}

pin_project! {
    /// Response future of [`AccessGuardMiddleware`]: the app's response, a
    /// rejection, or (only while keys are fetched) a boxed check.
    pub struct GuardFuture<S, B>
    where
        S: Service<ServiceRequest>,
    {
        #[pin]
        state: GuardState<S, B>,
    }
}

pin_project! {
    #[project = GuardStateProj]
    enum GuardState<S, B>
    where
        S: Service<ServiceRequest>,
    {
        Calling {
            #[pin]
            future: S::Future,
        },
        Ready {
            response: Option<ServiceResponse<EitherBody<B>>>,
        },
        Waiting {
            future: LocalBoxFuture<Result<ServiceResponse<EitherBody<B>>, Error>>,
        },
    }
}

impl<S, B> GuardFuture<S, B>
where
    S: Service<ServiceRequest>,
{
    fn calling(future: S::Future) -> Self {
        GuardFuture {
            state: GuardState::Calling { future },
        }
    }

    fn ready(response: ServiceResponse<EitherBody<B>>) -> Self {
        GuardFuture {
            state: GuardState::Ready {
                response: Some(response),
            },
        }
    }

    fn waiting(future: LocalBoxFuture<Result<ServiceResponse<EitherBody<B>>, Error>>) -> Self {
        GuardFuture {
            state: GuardState::Waiting { future },
        }
    }
}

impl<S, B> Future for GuardFuture<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            GuardStateProj::Calling { future } => {
                Poll::Ready(Ok(ready!(future.poll(cx))?.map_into_left_body()))
            }
            GuardStateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("GuardFuture polled after completion"))),
            GuardStateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}
