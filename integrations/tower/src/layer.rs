//! Require a valid Access token in front of any tower service.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use portcullis_core::{AccessClaims, Validator};
//! use portcullis_core::test_support::{TestKey, static_source, user_claims};
//! use portcullis_tower::AccessLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! let key = TestKey::rsa();
//! let validator = Validator::builder("https://team.example")
//!     .audience("my-app-aud")
//!     .key_source(static_source(&[&key]))
//!     .build()?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(AccessLayer::new(validator).exclude("/healthz"))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         // The layer put the validated claims here.
//!         let claims = req.extensions().get::<Arc<AccessClaims>>().unwrap();
//!         let hello = format!("hello {}", claims.identity().name());
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(hello))))
//!     }));
//!
//! let token = key.sign(&user_claims("https://team.example", "my-app-aud", "ada@example.com"));
//! let request = Request::get("/")
//!     .header("cf-access-jwt-assertion", token)
//!     .body(Full::default())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! let response = service.oneshot(Request::get("/").body(Full::default())?).await?;
//! assert_eq!(response.status(), 401);
//! # Ok(()) }
//! ```
//!
//! The service finds the token (header, then cookie), validates it, checks
//! the [authorization rules](crate::Rule), and then either calls the inner
//! service with `Arc<AccessClaims>` in the request extensions or answers
//! itself with a [`Rejection`](crate::Rejection): the JSON error, a login
//! redirect for page navigations, or a gRPC status for gRPC requests.
//! Excluded paths reach the inner service without any work. Requests are
//! decided in `call` itself whenever no key fetch is needed — a repeated
//! token is a cache hit, answered from the validator's per-thread memo —
//! so the common path allocates no future of its own; only a token whose
//! key is not loaded yet waits in a boxed check.
//!
//! Paths are matched as this layer sees them: behind axum's `nest`, the
//! prefix has already been stripped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use portcullis_core::{ConfigError, Validator};
use tower_layer::Layer;
use tower_service::Service;

use crate::authz::Authorize;
use crate::body::ResponseBody;
use crate::config::{AccessConfig, Decision};
use crate::rejection::Protocol;

/// Wraps services in [`AccessService`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLayer {
    config: Arc<AccessConfig>,
}

impl AccessLayer {
    /// Requires a token valid for `validator` on every path.
    pub fn new(validator: Validator) -> Self {
        Self::from_config(AccessConfig::new(validator))
    }

    /// A layer enforcing `config`.
    pub fn from_config(config: AccessConfig) -> Self {
        AccessLayer {
            config: Arc::new(config),
        }
    }

    /// The configuration enforced.
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    fn map(mut self, f: impl FnOnce(AccessConfig) -> AccessConfig) -> Self {
        let config = Arc::unwrap_or_clone(self.config);
        self.config = Arc::new(f(config));
        self
    }

    /// Adds an authorization rule; see [`AccessConfig::require`].
    pub fn require(self, rule: impl Authorize) -> Self {
        self.map(|c| c.require(rule))
    }

    /// Lets this exact path through without a token.
    pub fn exclude(self, path: impl Into<String>) -> Self {
        self.map(|c| c.exclude(path))
    }

    /// Lets this path and everything below it through without a token.
    pub fn exclude_prefix(self, prefix: impl Into<String>) -> Self {
        self.map(|c| c.exclude_prefix(prefix))
    }

    /// Login optional on this exact path; see [`PathKind::Optional`](crate::PathKind::Optional).
    pub fn optional(self, path: impl Into<String>) -> Self {
        self.map(|c| c.optional(path))
    }

    /// Login optional on this path and everything below it.
    pub fn optional_prefix(self, prefix: impl Into<String>) -> Self {
        self.map(|c| c.optional_prefix(prefix))
    }

    /// Redirects page navigations to `login_url`; see
    /// [`AccessConfig::redirect_to`].
    pub fn redirect_to(self, login_url: impl Into<String>) -> Result<Self, ConfigError> {
        let config = Arc::unwrap_or_clone(self.config).redirect_to(login_url)?;
        Ok(Self::from_config(config))
    }

    /// Answers with gRPC statuses; see [`Protocol`].
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.map(|c| c.protocol(protocol))
    }

    /// Always answers with gRPC statuses (`UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`), as a tonic server expects.
    pub fn grpc(self) -> Self {
        self.protocol(Protocol::Grpc)
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`AccessLayer`].
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    config: Arc<AccessConfig>,
}

impl<S> AccessService<S> {
    /// Wraps `inner`, enforcing `config`.
    pub fn new(inner: S, config: AccessConfig) -> Self {
        AccessService {
            inner,
            config: Arc::new(config),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let kind = self.config.path_kind(req.uri().path());
        // Most requests are decided here, without a future of our own: a
        // repeated token (a cache hit), a missing or refused token, an
        // excluded path. Only a token whose key is not loaded yet waits.
        let decision =
            self.config
                .decide_now_for(kind, req.uri().path(), req.uri().query(), req.headers());
        let state = match decision {
            Some(Decision::Reject(rejection)) => State::Rejected {
                response: Some(rejection.to_response()),
            },
            Some(decision) => {
                if let Decision::Allow(claims) = decision {
                    req.extensions_mut().insert(claims);
                }
                State::Calling {
                    future: self.inner.call(req),
                }
            }
            None => {
                // The inner service is called later: keep the one that was
                // driven to readiness for this request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                // Only the head travels into the (boxed, `Send`) check, so
                // the request body need not be `Send`.
                let (parts, body) = req.into_parts();
                let config = self.config.clone();
                let decide = Box::pin(async move {
                    let decision = config
                        .decide_waiting(kind, parts.uri.path(), parts.uri.query(), &parts.headers)
                        .await;
                    (decision, parts)
                });
                State::Deciding {
                    decide,
                    rest: Some((body, inner)),
                }
            }
        };
        ResponseFuture { state }
    }
}

type DecideFuture = Pin<Box<dyn Future<Output = (Decision, Parts)> + Send>>;

pin_project! {
    /// Response future of [`AccessService`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // Waiting for keys to validate the token; the body and the inner
        // service wait.
        Deciding {
            decide: DecideFuture,
            rest: Option<(ReqBody, S)>,
        },
        // Allowed (or excluded): the inner service answers.
        Calling {
            #[pin]
            future: S::Future,
        },
        // Refused without waiting: the rejection is the answer.
        Rejected {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decide, rest } => {
                    let (decision, mut parts) = ready!(decide.as_mut().poll(cx));
                    let (body, mut inner) =
                        rest.take().expect("ResponseFuture polled after completion");
                    match decision {
                        Decision::Reject(rejection) => {
                            let response = rejection.to_response();
                            return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                        }
                        Decision::Allow(claims) => {
                            parts.extensions.insert(claims);
                        }
                        Decision::Skip | Decision::Anonymous => {}
                    }
                    let future = inner.call(Request::from_parts(parts, body));
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use portcullis_core::AccessClaims;
    use portcullis_core::test_support::{TestKey, service_claims, static_source, user_claims};
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    const ISS: &str = "https://team.example";

    async fn echo(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
        let who = req.extensions().get::<Arc<AccessClaims>>().map_or_else(
            || "anonymous".to_owned(),
            |c| c.identity().name().to_owned(),
        );
        Ok(Response::new(Full::new(Bytes::from(who))))
    }

    fn layer(key: &TestKey) -> AccessLayer {
        let validator = Validator::builder(ISS)
            .audience("aud")
            .key_source(static_source(&[key]))
            .build()
            .unwrap();
        AccessLayer::new(validator)
    }

    async fn call(layer: &AccessLayer, req: Request<Full<Bytes>>) -> (u16, Bytes) {
        let resp = layer.layer(service_fn(echo)).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    fn get(path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header("Cf-Access-Jwt-Assertion", t);
        }
        b.body(Full::default()).unwrap()
    }

    #[tokio::test]
    async fn allows_rejects_and_excludes() {
        let key = TestKey::rsa();
        let l = layer(&key).exclude("/healthz").optional("/home");
        let user = key.sign(&user_claims(ISS, "aud", "ada@example.com"));
        let bot = key.sign(&service_claims(ISS, "aud", "bot.access"));
        assert_eq!(
            call(&l, get("/", Some(&user))).await,
            (200, "ada@example.com".into())
        );
        assert_eq!(
            call(&l, get("/", Some(&bot))).await,
            (200, "bot.access".into())
        );
        assert_eq!(
            call(&l, get("/healthz", None)).await,
            (200, "anonymous".into())
        );
        assert_eq!(
            call(&l, get("/home", None)).await,
            (200, "anonymous".into())
        );
        assert_eq!(
            call(&l, get("/home", Some(&user))).await,
            (200, "ada@example.com".into())
        );
        let (status, body) = call(&l, get("/", None)).await;
        assert_eq!(status, 401);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "missing_token");
    }

    #[tokio::test]
    async fn tokens_wait_for_keys_being_fetched() {
        use portcullis_core::test_support::CertsServer;
        let key = TestKey::rsa();
        let certs = CertsServer::start(&[&key]).await.unwrap();
        let validator = Validator::builder(certs.team_domain())
            .audience("aud")
            .key_source(
                portcullis_core::KeySource::remote(certs.certs_url())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let l = AccessLayer::new(validator).optional("/home");
        let iss = certs.team_domain();
        // No key loaded yet: the first requests wait for the fetch.
        let other = key.sign(&user_claims(&iss, "other", "ada@example.com"));
        let (status, body) = call(&l, get("/home", Some(&other))).await;
        assert_eq!((status, body), (200, "anonymous".into()));
        let stranger = TestKey::rsa().sign(&user_claims(&iss, "aud", "ada@example.com"));
        assert_eq!(call(&l, get("/", Some(&stranger))).await.0, 401);
        let user = key.sign(&user_claims(&iss, "aud", "ada@example.com"));
        let fetches = certs.requests();
        for _ in 0..3 {
            assert_eq!(
                call(&l, get("/", Some(&user))).await,
                (200, "ada@example.com".into())
            );
        }
        assert_eq!(certs.requests(), fetches, "the loaded key serves them");
    }

    #[tokio::test]
    async fn rules_refuse_with_403() {
        let key = TestKey::rsa();
        let l = layer(&key).require(crate::Rule::users());
        let bot = key.sign(&service_claims(ISS, "aud", "bot.access"));
        let (status, body) = call(&l, get("/", Some(&bot))).await;
        assert_eq!(status, 403);
        assert!(!String::from_utf8_lossy(&body).contains(&bot));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "forbidden");
    }

    #[tokio::test]
    async fn claims_put_in_extensions_by_others_are_not_trusted() {
        // Claims can only come from the layer: a request without a token is
        // refused even when the inner service would have accepted anything.
        let key = TestKey::rsa();
        let l = layer(&key);
        let mut req = get("/", Some("a.b.c"));
        req.extensions_mut().insert(Arc::new(
            serde_json::from_value::<AccessClaims>(serde_json::json!({
                "aud": ["aud"], "iss": ISS, "exp": 1, "email": "eve@evil.example"
            }))
            .unwrap(),
        ));
        assert_eq!(call(&l, req).await.0, 401);
    }
}
