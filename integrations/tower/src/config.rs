//! What a guard enforces, and the decision it takes for one request.
//!
//! [`AccessConfig`] is shared by every integration: the tower
//! [`AccessLayer`](crate::AccessLayer) and the actix-web `AccessGuard` are
//! thin adapters around [`AccessConfig::decide`], so that both behave the
//! same way for the same request.
//!
//! ```
//! # async fn demo(validator: portcullis_core::Validator, headers: http::HeaderMap) -> Result<(), portcullis_core::ConfigError> {
//! use portcullis_tower::{AccessConfig, Decision, Rule};
//!
//! let config = AccessConfig::new(validator)
//!     .require(Rule::email_domain("example.com"))
//!     .exclude("/healthz")
//!     .redirect_to("https://acme.cloudflareaccess.com/cdn-cgi/access/login/app.example.com")?;
//! match config.decide("/reports", Some("year=2024"), &headers).await {
//!     Decision::Allow(claims) => println!("hello {}", claims.identity().name()),
//!     Decision::Skip | Decision::Anonymous => println!("no identity needed"),
//!     Decision::Reject(rejection) => println!("refused: {}", rejection.error().code()),
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, HeaderName};
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use portcullis_core::{AccessClaims, ConfigError, ValidationError, Validator};

use crate::authz::{Authorize, Rule};
use crate::paths::PathSet;
use crate::rejection::{Protocol, Rejection, SEC_FETCH_MODE, X_REQUESTED_WITH};

/// Every request header [`AccessConfig::decide`] reads. Adapters for
/// frameworks with another `HeaderMap` type copy just these.
pub const CONSULTED_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static(JWT_ASSERTION_HEADER),
    COOKIE,
    AUTHORIZATION,
    SEC_FETCH_MODE,
    ACCEPT,
    X_REQUESTED_WITH,
    CONTENT_TYPE,
];

/// How a path is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Not looked at: no token needed, none validated (e.g. `/healthz`).
    Excluded,
    /// Identity if available: a valid, authorized token is passed on;
    /// anything else lets the request through anonymously.
    Optional,
    /// A valid, authorized token is required (the default).
    Protected,
}

/// The outcome for one request.
#[derive(Debug, Clone)]
#[must_use]
pub enum Decision {
    /// The path is excluded; nothing was validated.
    Skip,
    /// An optional path without a usable token: pass, without identity.
    Anonymous,
    /// A valid, authorized token: pass, with these claims.
    Allow(Arc<AccessClaims>),
    /// Refuse with this response.
    Reject(Rejection),
}

/// Validator, authorization rules, path exclusions and the rejection form.
#[derive(Clone)]
pub struct AccessConfig {
    validator: Validator,
    rules: Vec<Rule>,
    excluded: PathSet,
    optional: PathSet,
    login_url: Option<String>,
    protocol: Protocol,
}

impl std::fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessConfig")
            .field("validator", &self.validator)
            .field("rules", &self.rules)
            .field("excluded", &self.excluded)
            .field("optional", &self.optional)
            .field("login_url", &self.login_url)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl AccessConfig {
    /// Requires a valid token on every path, answering refusals with JSON.
    pub fn new(validator: Validator) -> Self {
        AccessConfig {
            validator,
            rules: Vec::new(),
            excluded: PathSet::default(),
            optional: PathSet::default(),
            login_url: None,
            protocol: Protocol::Auto,
        }
    }

    /// Adds an authorization rule; every rule must allow the caller
    /// (refusal: 403 `forbidden`). Accepts a [`Rule`] or a closure
    /// `Fn(&AccessClaims) -> bool`.
    pub fn require(mut self, rule: impl Authorize) -> Self {
        self.rules.push(Rule::custom(rule));
        self
    }

    /// Lets this exact path through without a token (e.g. `/healthz`).
    pub fn exclude(mut self, path: impl Into<String>) -> Self {
        self.excluded.insert_exact(path);
        self
    }

    /// Lets this path and everything below it through without a token.
    pub fn exclude_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.excluded.insert_prefix(prefix);
        self
    }

    /// Makes login optional on this exact path; see [`PathKind::Optional`].
    pub fn optional(mut self, path: impl Into<String>) -> Self {
        self.optional.insert_exact(path);
        self
    }

    /// Makes login optional on this path and everything below it.
    pub fn optional_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.optional.insert_prefix(prefix);
        self
    }

    /// Redirects page navigations refused with a 401 to `login_url`
    /// (with `redirect_url=<path?query>` appended); fetch/XHR calls still
    /// get the JSON 401. `login_url` is an absolute `http(s)` URL or an
    /// absolute path such as `/login`.
    pub fn redirect_to(mut self, login_url: impl Into<String>) -> Result<Self, ConfigError> {
        let login_url = login_url.into();
        let is_path = login_url.starts_with('/') && !login_url.starts_with("//");
        let is_url = url::Url::parse(&login_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        let header_safe = http::HeaderValue::from_str(&login_url).is_ok();
        if !(is_path || is_url) || !header_safe || login_url.contains('#') {
            return Err(ConfigError::InvalidUrl {
                what: "login URL (an absolute http(s) URL or a path starting with '/', no fragment)",
                url: login_url,
            });
        }
        self.login_url = Some(login_url);
        Ok(self)
    }

    /// How rejections are rendered for gRPC (default [`Protocol::Auto`]).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The validator.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The login URL of redirect mode, if set.
    pub fn login_url(&self) -> Option<&str> {
        self.login_url.as_deref()
    }

    /// How `path` is treated; exclusions win over optional paths.
    pub fn path_kind(&self, path: &str) -> PathKind {
        if self.excluded.is_empty() && self.optional.is_empty() {
            // The common configuration: every path protected.
            PathKind::Protected
        } else if self.excluded.matches(path) {
            PathKind::Excluded
        } else if self.optional.matches(path) {
            PathKind::Optional
        } else {
            PathKind::Protected
        }
    }

    /// Validates the token in `headers` and applies the rules.
    ///
    /// Refusals made here (`forbidden`) are counted in the validator's
    /// metrics, when it has some; the validator counts its own.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Arc<AccessClaims>, ValidationError> {
        let claims = self.validator.validate_headers(headers).await?;
        self.authorize(claims)
    }

    /// [`authenticate`](Self::authenticate) without waiting: `Some` with
    /// exactly its result when no key fetch is needed (see
    /// [`Validator::validate_now`]), `None` when it would fetch keys.
    pub fn authenticate_now(
        &self,
        headers: &HeaderMap,
    ) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        Some(
            self.validator
                .validate_headers_now(headers)?
                .and_then(|claims| self.authorize(claims)),
        )
    }

    /// Like [`authenticate_now`](Self::authenticate_now) for a token an
    /// adapter has already found in the request, the way
    /// [`Validator::extractor`] finds it.
    pub fn authenticate_token_now(
        &self,
        token: &str,
    ) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        Some(
            self.validator
                .validate_now(token)?
                .and_then(|claims| self.authorize(claims)),
        )
    }

    /// Like [`authenticate_now`](Self::authenticate_now) for the raw
    /// bytes of the token header when the validator remembers them (see
    /// [`Validator::validate_remembered`]); `None` otherwise.
    pub fn authenticate_remembered(
        &self,
        token: &[u8],
    ) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        Some(
            self.validator
                .validate_remembered(token)?
                .and_then(|claims| self.authorize(claims)),
        )
    }

    /// Applies the rules to validated claims, counting a refusal.
    fn authorize(&self, claims: Arc<AccessClaims>) -> Result<Arc<AccessClaims>, ValidationError> {
        self.rules
            .iter()
            .try_for_each(|r| r.check(&claims))
            .inspect_err(|_error| {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = self.validator.metrics() {
                    metrics.record(_error.code().as_str());
                }
            })?;
        Ok(claims)
    }

    /// The decision for a request to `path` (and `query`) with `headers`.
    pub async fn decide(&self, path: &str, query: Option<&str>, headers: &HeaderMap) -> Decision {
        let kind = self.path_kind(path);
        match self.decide_now_for(kind, path, query, headers) {
            Some(decision) => decision,
            None => self.decide_waiting(kind, path, query, headers).await,
        }
    }

    /// The decision once [`decide_now_for`](Self::decide_now_for) said
    /// keys must be fetched first.
    pub(crate) async fn decide_waiting(
        &self,
        kind: PathKind,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Decision {
        let result = self.authenticate(headers).await;
        self.conclude(kind, result, path, query, headers)
    }

    /// [`decide`](Self::decide) without waiting: `Some` with exactly its
    /// decision when no key fetch is needed — a repeated token (a cache
    /// hit), a missing or refused token, an excluded path — and `None`
    /// when `decide` would fetch keys.
    pub fn decide_now(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Decision> {
        self.decide_now_for(self.path_kind(path), path, query, headers)
    }

    /// [`decide_now`](Self::decide_now) for a path whose kind the caller
    /// has already looked up.
    pub(crate) fn decide_now_for(
        &self,
        kind: PathKind,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Decision> {
        if kind == PathKind::Excluded {
            return Some(Decision::Skip);
        }
        let result = self.authenticate_now(headers)?;
        Some(self.conclude(kind, result, path, query, headers))
    }

    /// The decision on a path of `kind` once the token's fate is known:
    /// allowed with its claims; on an optional path, anonymous otherwise;
    /// else refused (see [`reject`](Self::reject)). `headers` are only
    /// read for a refusal. Adapters that authenticate a token themselves
    /// ([`authenticate_token_now`](Self::authenticate_token_now)) finish
    /// with this, so that their decisions are [`decide`](Self::decide)'s.
    pub fn conclude(
        &self,
        kind: PathKind,
        result: Result<Arc<AccessClaims>, ValidationError>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Decision {
        match (result, kind) {
            (_, PathKind::Excluded) => Decision::Skip,
            (Ok(claims), _) => Decision::Allow(claims),
            (Err(error), PathKind::Optional) => {
                tracing::debug!(
                    code = error.code().as_str(),
                    path,
                    "optional login: passing anonymously"
                );
                Decision::Anonymous
            }
            (Err(error), PathKind::Protected) => {
                Decision::Reject(self.reject(error, path, query, headers))
            }
        }
    }

    /// The rejection for `error` on this request, logged at debug level.
    pub fn reject(
        &self,
        error: ValidationError,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Rejection {
        let path_and_query = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_owned(),
        };
        let rejection = Rejection::for_request(
            error,
            headers,
            self.protocol,
            self.login_url.as_deref(),
            &path_and_query,
        );
        tracing::debug!(
            code = rejection.error().code().as_str(),
            status = rejection.status().as_u16(),
            grpc = rejection.is_grpc(),
            redirect = rejection.location().is_some(),
            path,
            "request rejected"
        );
        rejection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::ErrorCode;
    use portcullis_core::test_support::{TestKey, static_source, user_claims};

    const ISS: &str = "https://team.example";

    fn config(key: &TestKey) -> AccessConfig {
        let validator = Validator::builder(ISS)
            .audience("aud")
            .key_source(static_source(&[key]))
            .build()
            .unwrap();
        AccessConfig::new(validator)
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(JWT_ASSERTION_HEADER, token.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn decisions_by_path_kind() {
        let key = TestKey::rsa();
        let cfg = config(&key)
            .exclude("/healthz")
            .optional_prefix("/public")
            .require(Rule::email_domain("example.com"));
        let none = HeaderMap::new();
        assert!(matches!(
            cfg.decide("/healthz", None, &none).await,
            Decision::Skip
        ));
        assert!(matches!(
            cfg.decide("/public/x", None, &none).await,
            Decision::Anonymous
        ));
        match cfg.decide("/x", None, &none).await {
            Decision::Reject(r) => assert_eq!(r.error().code(), ErrorCode::MissingToken),
            other => panic!("{other:?}"),
        }
        let ok = with_token(&key.sign(&user_claims(ISS, "aud", "ada@example.com")));
        assert!(matches!(
            cfg.decide("/x", None, &ok).await,
            Decision::Allow(_)
        ));
        assert!(matches!(
            cfg.decide("/public", None, &ok).await,
            Decision::Allow(_)
        ));
        let refused = with_token(&key.sign(&user_claims(ISS, "aud", "eve@evil.example")));
        match cfg.decide("/x", None, &refused).await {
            Decision::Reject(r) => assert_eq!(r.status(), 403),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cfg.decide("/public", None, &refused).await,
            Decision::Anonymous
        ));
    }

    fn outcome(d: &Decision) -> String {
        match d {
            Decision::Skip => "skip".to_owned(),
            Decision::Anonymous => "anonymous".to_owned(),
            Decision::Allow(c) => format!("allow {}", c.identity().name()),
            Decision::Reject(r) => format!(
                "reject {} {} {:?}",
                r.status(),
                r.error().code().as_str(),
                r.location()
            ),
        }
    }

    #[tokio::test]
    async fn decide_now_agrees_with_decide() {
        let key = TestKey::rsa();
        let cfg = config(&key)
            .exclude("/healthz")
            .optional("/home")
            .require(Rule::email_domain("example.com"))
            .redirect_to("/login")
            .unwrap();
        let ada = key.sign(&user_claims(ISS, "aud", "ada@example.com"));
        let eve = key.sign(&user_claims(ISS, "aud", "eve@evil.example"));
        let mut expired = user_claims(ISS, "aud", "ada@example.com");
        expired["exp"] = serde_json::json!(portcullis_core::test_support::now() - 3600);
        let expired = key.sign(&expired);
        let mut cases = vec![HeaderMap::new(), with_token("garbage")];
        for token in [&ada, &eve, &expired] {
            cases.push(with_token(token));
            let mut browser = with_token(token);
            browser.insert(SEC_FETCH_MODE, "navigate".parse().unwrap());
            cases.push(browser);
            let mut cookie = HeaderMap::new();
            cookie.insert(COOKIE, format!("CF_Authorization={token}").parse().unwrap());
            cases.push(cookie);
        }
        // Twice: verified, then from the cache.
        for _ in 0..2 {
            for path in ["/healthz", "/home", "/x"] {
                for headers in &cases {
                    let now = cfg.decide_now(path, Some("a=1"), headers).unwrap();
                    let waited = cfg.decide(path, Some("a=1"), headers).await;
                    assert_eq!(outcome(&now), outcome(&waited), "{path} {headers:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn decide_now_leaves_key_fetches_to_decide() {
        let key = TestKey::rsa();
        let cfg = config(&key);
        let stranger = TestKey::rsa().sign(&user_claims(ISS, "aud", "ada@example.com"));
        let headers = with_token(&stranger);
        assert!(cfg.decide_now("/x", None, &headers).is_none());
        assert!(cfg.authenticate_now(&headers).is_none());
        assert!(cfg.authenticate_token_now(&stranger).is_none());
        assert!(cfg.authenticate_remembered(stranger.as_bytes()).is_none());
        match cfg.decide("/x", None, &headers).await {
            Decision::Reject(r) => assert_eq!(r.error().code(), ErrorCode::UnknownKey),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn remembered_tokens_still_meet_the_rules() {
        let key = TestKey::rsa();
        let cfg = config(&key).require(Rule::email_domain("example.com"));
        let eve = key.sign(&user_claims(ISS, "aud", "eve@evil.example"));
        assert!(cfg.authenticate_remembered(eve.as_bytes()).is_none());
        assert_eq!(
            cfg.authenticate(&with_token(&eve))
                .await
                .unwrap_err()
                .code(),
            ErrorCode::Forbidden
        );
        let again = cfg.authenticate_remembered(eve.as_bytes()).unwrap();
        assert_eq!(again.unwrap_err().code(), ErrorCode::Forbidden);
    }

    #[cfg(feature = "metrics")]
    #[tokio::test]
    async fn forbidden_is_counted() {
        let key = TestKey::rsa();
        let registry = prometheus::Registry::new();
        let metrics = portcullis_core::CoreMetrics::register(&registry).unwrap();
        let validator = Validator::builder(ISS)
            .audience("aud")
            .key_source(static_source(&[&key]))
            .metrics(metrics.clone())
            .build()
            .unwrap();
        let cfg = AccessConfig::new(validator).require(|_: &AccessClaims| false);
        let h = with_token(&key.sign(&user_claims(ISS, "aud", "ada@example.com")));
        assert!(cfg.authenticate(&h).await.is_err());
        assert_eq!(
            metrics.validations.with_label_values(&["forbidden"]).get(),
            1
        );
    }

    #[test]
    fn login_url_is_checked_once() {
        let key = TestKey::rsa();
        assert!(
            config(&key)
                .redirect_to("https://team.example/login")
                .is_ok()
        );
        assert!(config(&key).redirect_to("/login?x=1").is_ok());
        for bad in [
            "//evil.example",
            "javascript:alert(1)",
            "login",
            "/a\nb",
            "/a#b",
        ] {
            assert!(config(&key).redirect_to(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consulted_headers_cover_token_locations() {
        let headers = CONSULTED_HEADERS;
        let names: Vec<&str> = headers.iter().map(HeaderName::as_str).collect();
        assert!(names.contains(&JWT_ASSERTION_HEADER));
        assert!(names.contains(&"cookie"));
    }
}
