//! The request pipeline of the public listener: route by `Host`, find the
//! caller (service credentials or an app token), evaluate the app's
//! policies, audit the decision, and forward or refuse.
//!
//! Stages, in order:
//! 1. the team domain serves `/cdn-cgi/access/certs` and the login routes
//!    (see [`crate::login`]); on app hosts `/cdn-cgi/access/authorized`,
//!    `logout` and `get-identity` are the gateway's own;
//! 2. the app is chosen by host (and optional path prefix) — none: 404 `unknown_host`;
//! 3. service credentials, when present, must authenticate (401
//!    `bad_credentials`; 429 `rate_limited` after repeated failures);
//!    otherwise an app token from `cf-access-token`,
//!    `Cf-Access-Jwt-Assertion` or the `CF_Authorization` cookie is
//!    validated with portcullis-core against the gateway's own keys;
//! 4. policies decide (see [`crate::policy`]);
//! 5. the request goes to the origin with spoofable identity headers
//!    stripped and the app token added; a token issued at admission is
//!    also set as the app's `CF_Authorization` cookie.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_core::wire::{
    ACCESS_TOKEN_HEADER, AUTHENTICATED_USER_EMAIL_HEADER, AUTHORIZATION_COOKIE, CERTS_PATH,
    CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, JWT_ASSERTION_HEADER,
};
use portcullis_core::{AccessClaims, ErrorCode, ValidationError};
use tracing::Instrument as _;

use crate::audit::AuditSink;
use crate::config::{AppConfig, Config};
use crate::identity::{Principal, RequestContext, ServiceIdentity, UserIdentity};
use crate::issue::TokenIssuer;
use crate::keys::KeyManager;
use crate::metrics::Metrics;
use crate::policy::{Decision, Outcome, evaluate};
use crate::proxy::{Forwarder, Outgoing, forwarded_for, remove_hop_by_hop};
use crate::ratelimit::FailureLimiter;
use crate::response::{Body, rejection};

/// Identity and credential headers never passed on from the client (the
/// gateway sets its own `Cf-Access-Jwt-Assertion` and email header).
const STRIPPED: [HeaderName; 5] = [
    HeaderName::from_static(JWT_ASSERTION_HEADER),
    HeaderName::from_static(AUTHENTICATED_USER_EMAIL_HEADER),
    HeaderName::from_static(CLIENT_ID_HEADER),
    HeaderName::from_static(CLIENT_SECRET_HEADER),
    HeaderName::from_static(ACCESS_TOKEN_HEADER),
];

/// The client end of a connection of the public listener: its address and
/// its `X-Forwarded-For` element, rendered once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// `addr` as an `X-Forwarded-For` element.
    pub forwarded_for: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            forwarded_for: forwarded_for(addr.ip()),
        }
    }
}

/// Paths under this prefix on an app host are the gateway's own.
const ACCESS_PATH_PREFIX: &str = "/cdn-cgi/access/";
use crate::service_tokens::ServiceTokens;
use crate::store::Storage;

/// An app with its AUD tag.
#[derive(Debug, Clone)]
pub struct App {
    /// Its configuration.
    pub config: AppConfig,
    /// Its AUD tag (64 hex).
    pub aud: String,
    /// Its name and its policies' names, shared with the audit queue.
    names: AuditNames,
    /// `requests_total` of its admissions (`allow`, `service_auth`,
    /// `bypass` with reason `ok`), looked up once instead of per request.
    admitted: std::sync::OnceLock<[prometheus::IntCounter; 3]>,
}

#[derive(Debug, Clone)]
struct AuditNames {
    app: Arc<str>,
    policies: Vec<Arc<str>>,
}

impl App {
    /// `config` bound to its AUD tag.
    pub fn new(config: AppConfig, aud: String) -> Self {
        let names = AuditNames {
            app: config.name.as_str().into(),
            policies: config
                .policies
                .iter()
                .map(|p| p.name.as_str().into())
                .collect(),
        };
        App {
            config,
            aud,
            names,
            admitted: std::sync::OnceLock::new(),
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Storage.
    pub store: Arc<dyn Storage>,
    /// Signing keys.
    pub keys: Arc<KeyManager>,
    /// Service tokens.
    pub tokens: Arc<ServiceTokens>,
    /// App token issuance and reuse.
    pub issuer: TokenIssuer,
    /// Apps in config order.
    pub apps: Vec<App>,
    /// Failed-credential limits.
    pub limiter: FailureLimiter,
    /// The audit queue.
    pub audit: AuditSink,
    /// Metrics.
    pub metrics: Metrics,
    /// The origin client.
    pub forwarder: Forwarder,
    /// Identity providers, sessions and revocation.
    pub login: crate::login::Login,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("apps", &self.apps.len())
            .finish_non_exhaustive()
    }
}

/// How the caller was established.
enum Admission {
    /// Service credentials authenticated; a token is issued for them.
    Credentials(ServiceIdentity),
    /// A valid app token was presented.
    Token {
        claims: Arc<AccessClaims>,
        token: String,
    },
    /// Nothing (or something invalid) was presented.
    None(Option<ErrorCode>),
}

/// The request's host, lowercased, from `Host` or the URI authority
/// (borrowed when it already is lowercase, as clients send it).
fn request_host(req: &Request<Incoming>) -> Option<std::borrow::Cow<'_, str>> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?
        .trim()
        .trim_end_matches('.');
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn path_matches(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Gateway {
    /// The app serving `host` and `path`: exact host (port included when
    /// the app names one), longest path prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&App> {
        let bare = strip_port(host);
        self.apps
            .iter()
            .filter(|a| {
                let h = &a.config.host;
                if a.config.host_has_port {
                    h == host
                } else {
                    h == bare
                }
            })
            .filter(|a| path_matches(path, &a.config.path_prefix))
            .max_by_key(|a| a.config.path_prefix.len())
    }

    /// Handles one request of the public listener.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let started = Instant::now();
        let response = self.dispatch(req, &peer).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn dispatch(&self, req: Request<Incoming>, conn: &Peer) -> Response<Body> {
        let peer = conn.addr;
        let Some(host) = request_host(&req) else {
            return rejection(ErrorCode::UnknownHost);
        };
        // The team domain's and the app hosts' own routes (logins, OIDC,
        // get-identity) are rare next to proxied requests and their
        // futures are large: boxed, so every proxied request does not
        // carry (and move) their state.
        if host == self.config.server.team_host {
            return Box::pin(self.team_domain(req, peer)).await;
        }
        if req.uri().path().starts_with(ACCESS_PATH_PREFIX)
            && let Some(app) = self
                .route(&host, req.uri().path())
                .or_else(|| self.apps.iter().find(|a| self.host_matches(a, &host)))
            && let Some(response) = Box::pin(self.app_routes(app, &req)).await
        {
            return response;
        }
        let Some(app) = self.route(&host, req.uri().path()) else {
            self.metrics
                .requests
                .with_label_values(&["", "deny", ErrorCode::UnknownHost.as_str()])
                .inc();
            return rejection(ErrorCode::UnknownHost);
        };
        let span = tracing::info_span!("request", app = %app.config.name, method = %req.method());
        self.admit_and_forward(app, req, conn)
            .instrument(span)
            .await
    }

    fn host_matches(&self, app: &App, host: &str) -> bool {
        if app.config.host_has_port {
            app.config.host == host
        } else {
            app.config.host == strip_port(host)
        }
    }

    async fn team_domain(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if req.uri().path() == CERTS_PATH && matches!(*req.method(), Method::GET | Method::HEAD) {
            let doc = self.keys.ring().certs_document(crate::clock::now());
            let mut response = crate::response::json(StatusCode::OK, &doc);
            let max_age = self.config.keys.certs_max_age.as_secs();
            if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                response
                    .headers_mut()
                    .insert(http::header::CACHE_CONTROL, v);
            }
            return response;
        }
        self.team_routes(req, peer).await
    }

    async fn admission(
        &self,
        app: &App,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Admission, (ErrorCode, Option<String>)> {
        let now = crate::clock::now();
        match crate::credentials::extract(headers, app.config.service_token_header.as_ref()) {
            Err(problem) => {
                tracing::info!(?problem, "unusable service credential headers");
                return Err((ErrorCode::BadCredentials, None));
            }
            Ok(Some(creds)) => {
                // Only well-formed client ids reach the audit log.
                let audited = crate::service_tokens::is_client_id(&creds.client_id)
                    .then(|| creds.client_id.clone());
                if self.limiter.is_limited(&creds.client_id, peer.ip()) {
                    return Err((ErrorCode::RateLimited, audited));
                }
                return match self
                    .tokens
                    .authenticate(&creds.client_id, &creds.client_secret, now)
                    .await
                {
                    Ok(identity) => Ok(Admission::Credentials(identity)),
                    Err(failure) => {
                        tracing::info!(?failure, "service credentials refused");
                        self.limiter.record_failure(&creds.client_id, peer.ip());
                        Err((ErrorCode::BadCredentials, audited))
                    }
                };
            }
            Ok(None) => {}
        }
        let token = headers
            .get(ACCESS_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .or_else(|| portcullis_core::extract_token(headers));
        let Some(token) = token else {
            return Ok(Admission::None(None));
        };
        let ring = self.keys.ring();
        let Some(validator) = ring.validator() else {
            return Ok(Admission::None(Some(ErrorCode::KeysUnavailable)));
        };
        let claims = match validator.validate(token).await {
            Ok(c) => c,
            Err(e) => return Ok(Admission::None(Some(e.code()))),
        };
        if !claims.aud.iter().any(|a| a == &app.aud) {
            return Ok(Admission::None(Some(ValidationError::WrongAudience.code())));
        }
        if !claims.is_app_token() {
            return Ok(Admission::None(Some(ErrorCode::MalformedToken)));
        }
        // A token of a session that was logged out or revoked.
        if let Some(sid) = claims.extra.get("sid").and_then(|v| v.as_str())
            && self.login.sessions.is_revoked(sid)
        {
            return Ok(Admission::None(Some(ErrorCode::Expired)));
        }
        Ok(Admission::Token {
            claims,
            token: token.to_owned(),
        })
    }

    async fn principal_of(&self, claims: &AccessClaims) -> Result<Principal, ErrorCode> {
        if let Some(cn) = claims.common_name.as_deref().filter(|c| !c.is_empty())
            && claims.email.is_none()
        {
            let now = crate::clock::now();
            return match self.tokens.state(cn).await {
                Some(state) if state.is_valid(now) => Ok(Principal::Service(ServiceIdentity {
                    name: state.name,
                    client_id: cn.to_owned(),
                })),
                _ => Err(ErrorCode::BadCredentials),
            };
        }
        Ok(Principal::User(user_from_claims(claims)))
    }

    async fn admit_and_forward(
        &self,
        app: &App,
        req: Request<Incoming>,
        conn: &Peer,
    ) -> Response<Body> {
        let peer = conn.addr;
        let ctx = RequestContext {
            source_ip: peer.ip(),
            country: req
                .headers()
                .get(&self.config.server.country_header)
                .and_then(|v| v.to_str().ok())
                .map(|c| c.trim().to_ascii_uppercase())
                .filter(|c| c.len() == 2),
        };
        let audit = |principal: &Principal,
                     policy: Option<usize>,
                     decision: &'static str,
                     reason: &'static str| {
            self.count(app, decision, reason);
            self.audit.record(
                crate::audit::Decision {
                    app: app.names.app.clone(),
                    identity: principal.audit_name().to_owned(),
                    identity_kind: principal.kind(),
                    policy: policy.and_then(|i| app.names.policies.get(i).cloned()),
                    decision,
                    reason,
                    source_ip: peer.ip(),
                },
                crate::clock::now_ms(),
            );
        };
        let admission = match self.admission(app, req.headers(), peer).await {
            Ok(a) => a,
            Err((code, client_id)) => {
                let who = match client_id {
                    Some(client_id) => Principal::Service(ServiceIdentity {
                        name: String::new(),
                        client_id,
                    }),
                    None => Principal::Anonymous,
                };
                audit(&who, None, "deny", code.as_str());
                tracing::info!(decision = "deny", code = code.as_str(), "refused");
                return rejection(code);
            }
        };
        let (principal, pending_error) = match &admission {
            Admission::Credentials(identity) => (Principal::Service(identity.clone()), None),
            Admission::Token { claims, .. } => match self.principal_of(claims).await {
                Ok(p) => (p, None),
                Err(code) => (Principal::Anonymous, Some(code)),
            },
            Admission::None(code) => (Principal::Anonymous, *code),
        };
        let outcome = evaluate(&app.config.policies, &principal, &ctx);
        let (policy, decision) = match outcome {
            Outcome::Matched { policy, decision } => (Some(policy), Some(decision)),
            Outcome::NoMatch => (None, None),
        };
        match decision {
            Some(Decision::Block) => {
                audit(&principal, policy, "block", ErrorCode::Forbidden.as_str());
                tracing::info!(decision = "block", code = "forbidden", "refused");
                rejection(ErrorCode::Forbidden)
            }
            None => {
                let code = match (&principal, pending_error) {
                    (Principal::Anonymous, Some(code)) => code,
                    (Principal::Anonymous, None) => ErrorCode::MissingToken,
                    _ => ErrorCode::Forbidden,
                };
                // Page navigations go to the login page; fetch/XHR get JSON.
                if matches!(principal, Principal::Anonymous)
                    && let Some(host) = request_host(&req)
                    && let Some(response) = self.login_redirect(app, &req, &host)
                {
                    audit(&principal, None, "deny", code.as_str());
                    tracing::info!(
                        decision = "deny",
                        code = code.as_str(),
                        "redirected to login"
                    );
                    return response;
                }
                audit(&principal, None, "deny", code.as_str());
                tracing::info!(decision = "deny", code = code.as_str(), "refused");
                rejection(code)
            }
            Some(Decision::Bypass) => {
                audit(&principal, policy, "bypass", "ok");
                self.forward(app, req, &conn.forwarded_for, None, None)
                    .await
            }
            Some(d @ (Decision::Allow | Decision::ServiceAuth)) => {
                let now = crate::clock::now();
                let (token, set_cookie) = match admission {
                    Admission::Credentials(identity) => {
                        let lifetime =
                            i64::try_from(app.config.session_duration.as_secs()).unwrap_or(86_400);
                        match self.issuer.service_token(
                            &app.aud,
                            &identity.client_id,
                            lifetime,
                            now,
                        ) {
                            Ok(issued) => {
                                self.audit.token_used(&identity.client_id, now);
                                let cookie = self.cookie(&issued.token, issued.exp - now);
                                (issued.token.to_string(), cookie)
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot sign an app token");
                                audit(
                                    &principal,
                                    policy,
                                    "deny",
                                    ErrorCode::KeysUnavailable.as_str(),
                                );
                                return rejection(ErrorCode::KeysUnavailable);
                            }
                        }
                    }
                    Admission::Token { token, .. } => (token, None),
                    Admission::None(_) => {
                        // allow / service_auth never match an anonymous caller.
                        audit(&principal, None, "deny", ErrorCode::MissingToken.as_str());
                        return rejection(ErrorCode::MissingToken);
                    }
                };
                audit(&principal, policy, d.as_str(), "ok");
                let email = match &principal {
                    Principal::User(u) if !u.email.is_empty() => Some(u.email.as_str()),
                    _ => None,
                };
                let mut response = self
                    .forward(app, req, &conn.forwarded_for, Some(&token), email)
                    .await;
                if let Some(cookie) = set_cookie {
                    response.headers_mut().append(SET_COOKIE, cookie);
                }
                response
            }
        }
    }

    /// Counts a decision in `requests_total{app,decision,code}`.
    fn count(&self, app: &App, decision: &'static str, reason: &'static str) {
        const ADMITTED: [&str; 3] = ["allow", "service_auth", "bypass"];
        if reason == "ok"
            && let Some(i) = ADMITTED.iter().position(|d| *d == decision)
        {
            let counters = app.admitted.get_or_init(|| {
                ADMITTED.map(|d| {
                    self.metrics
                        .requests
                        .with_label_values(&[&app.config.name, d, "ok"])
                })
            });
            counters[i].inc();
            return;
        }
        self.metrics
            .requests
            .with_label_values(&[&app.config.name, decision, reason])
            .inc();
    }

    fn cookie(&self, token: &str, max_age: i64) -> Option<HeaderValue> {
        let cookie = cookie::Cookie::build((AUTHORIZATION_COOKIE, token))
            .path("/")
            .http_only(true)
            .secure(self.config.server.secure_cookies)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(max_age.max(0)))
            .build();
        HeaderValue::from_str(&cookie.to_string()).ok()
    }

    async fn forward(
        &self,
        app: &App,
        req: Request<Incoming>,
        forwarded_for: &HeaderValue,
        token: Option<&str>,
        email: Option<&str>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let upgrade = remove_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        // One scan, then hash and remove only what a client actually sent.
        if headers.keys().any(|n| STRIPPED.contains(n)) {
            for name in &STRIPPED {
                headers.remove(name);
            }
        }
        if let Some(json_header) = &app.config.service_token_header {
            let is_credential = headers
                .get(json_header)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with('{'));
            if is_credential {
                headers.remove(json_header);
            }
        }
        strip_cookie(headers, AUTHORIZATION_COOKIE, token.is_none());
        if let Some(token) = token
            && let Ok(v) = HeaderValue::from_str(token)
        {
            headers.insert(JWT_ASSERTION_HEADER, v);
        }
        if let Some(email) = email
            && let Ok(v) = HeaderValue::from_str(email)
        {
            headers.insert(AUTHENTICATED_USER_EMAIL_HEADER, v);
        }
        let outgoing = Outgoing {
            parts,
            body,
            upgrade,
            on_upgrade,
        };
        match self
            .forwarder
            .forward(outgoing, &app.config.origin, forwarded_for)
            .await
        {
            Ok(r) => r,
            Err(code) => {
                tracing::warn!(code = code.as_str(), "origin failed");
                rejection(code)
            }
        }
    }
}

/// Removes the `CF_Authorization` cookie from `Cookie` headers when
/// `remove` (a bypassed request must not carry an identity the gateway did
/// not vouch for); otherwise leaves cookies as sent.
fn strip_cookie(headers: &mut HeaderMap, name: &str, remove: bool) {
    if !remove || !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// The user behind an app token. Tokens minted at login carry the identity
/// provider's id in `login_method` (and `idp.id`), so `login_method`
/// selectors apply.
pub fn user_from_claims(claims: &AccessClaims) -> UserIdentity {
    UserIdentity {
        email: claims
            .email
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        sub: claims.sub.clone().unwrap_or_default(),
        name: claims
            .extra
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        groups: claims.groups().into_iter().map(str::to_owned).collect(),
        login_method: claims
            .extra
            .get("login_method")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_paths() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert!(path_matches("/admin/x", "/admin"));
        assert!(path_matches("/admin", "/admin"));
        assert!(!path_matches("/administrator", "/admin"));
        assert!(path_matches("/anything", ""));
    }

    #[test]
    fn cookie_stripping() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; CF_Authorization=x"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        strip_cookie(&mut h, "CF_Authorization", true);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(COOKIE, HeaderValue::from_static("CF_Authorization=x"));
        strip_cookie(&mut only, "CF_Authorization", true);
        assert!(!only.contains_key(COOKIE));
    }
}
