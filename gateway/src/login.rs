//! People logging in: the login page, local passwords, OIDC, the team
//! session, the code exchange on app hosts, logout and get-identity.
//!
//! The flow, for a page navigation to an app without a valid cookie:
//!
//! 1. the app host answers `302` to
//!    `{team_domain}/cdn-cgi/access/login/<app-host>?redirect_url=<url>`;
//! 2. the login page checks `redirect_url` (it must lead to that app — no
//!    open redirects). With a live team session (the team domain's
//!    `CF_Authorization` cookie, a `type: "org"` token naming a session
//!    row) it skips straight to step 4 — single sign-on without asking the
//!    provider again. Otherwise it shows one button per identity provider
//!    and the local form (or goes straight to the provider when it is the
//!    only way in);
//! 3. OIDC: `state`, `nonce` and the PKCE verifier live in a short-lived,
//!    AES-GCM-sealed, HttpOnly cookie until `/cdn-cgi/access/callback`;
//!    local: the form carries a CSRF token matched against a sealed cookie,
//!    passwords are checked with argon2id, failures lock the account and
//!    the address out for a while. Either way a session row is created and
//!    the team cookie set;
//! 4. the browser goes to `<app>/cdn-cgi/access/authorized?code=…`; the
//!    single-use, one-minute code is exchanged for the app's own
//!    `CF_Authorization` cookie (`type: "app"`, `aud` = the app's AUD,
//!    lifetime = its `session_duration`), then back to `redirect_url`.
//!
//! Tokens of a session carry its id as `sid`; revoking the session
//! (logout, admin API) makes them useless (see [`crate::session`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use portcullis_core::ErrorCode;
use portcullis_core::wire::{
    AUTHORIZATION_COOKIE, AUTHORIZED_PATH, CALLBACK_PATH, LOGIN_PATH_PREFIX, LOGOUT_PATH,
    token_type,
};
use serde::{Deserialize, Serialize};

use crate::config::{Config, IdentityProviderKind};
use crate::crypto::{MasterKey, constant_time_eq, random_hex, sha256_hex};
use crate::gateway::{App, Gateway};
use crate::identity::UserIdentity;
use crate::oidc::{HttpClient, OidcError, OidcProvider, Pending};
use crate::page::{self, LocalForm, ProviderButton};
use crate::response::{Body, empty, rejection};
use crate::session::{Session, Sessions};
use crate::store::{Storage, StoreError};
use crate::users::{LocalUsers, UsersError};

/// Cookie holding the sealed OIDC state between redirect and callback.
pub const OIDC_STATE_COOKIE: &str = "portcullis_oidc";

/// The authorization error codes of RFC 6749 §4.1.2.1 and OpenID Connect
/// Core §3.1.2.6: the only part of an error callback shown on the page.
const OAUTH_ERROR_CODES: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];
/// Cookie holding the sealed CSRF token of the local form.
pub const CSRF_COOKIE: &str = "portcullis_csrf";
/// How long a started login may take.
const PRE_LOGIN_SECS: i64 = 600;
const COOKIE_PATH: &str = "/cdn-cgi/access/";

/// How a provider logs people in.
#[derive(Debug)]
pub enum ProviderKind {
    /// OpenID Connect.
    Oidc(Box<OidcProvider>),
    /// The users file.
    Local(LocalUsers),
}

/// A configured identity provider, ready to use.
#[derive(Debug)]
pub struct Provider {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// How it works.
    pub kind: ProviderKind,
}

/// Why logins could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoginSetupError {
    /// The users file is unusable.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for identity providers: {0}")]
    Http(String),
}

/// Everything logins need besides the gateway's own state.
pub struct Login {
    master: Arc<MasterKey>,
    /// Team sessions and revocation.
    pub sessions: Sessions,
    /// Identity providers in config order.
    pub providers: Vec<Provider>,
    /// The audience of org (team session) tokens.
    pub org_aud: String,
    csp: HeaderValue,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Loads the users file and prepares the OIDC providers (discovery
    /// happens at the first login, so a provider that is down does not
    /// stop the gateway).
    pub fn new(
        config: &Config,
        master: Arc<MasterKey>,
        store: Arc<dyn Storage>,
        org_aud: String,
    ) -> Result<Login, LoginSetupError> {
        let http = HttpClient::new().map_err(|e| LoginSetupError::Http(e.to_string()))?;
        let mut providers = Vec::new();
        for idp in &config.identity_providers {
            let kind =
                match &idp.kind {
                    IdentityProviderKind::Oidc(o) => ProviderKind::Oidc(Box::new(
                        OidcProvider::new(idp, o, &config.server.team_domain, http.clone()),
                    )),
                    IdentityProviderKind::Local(l) => {
                        ProviderKind::Local(LocalUsers::load(&l.users_file)?)
                    }
                };
            providers.push(Provider {
                id: idp.id.clone(),
                name: idp.name.clone(),
                kind,
            });
        }
        let scheme = scheme(config);
        let origins: Vec<String> = config
            .apps
            .iter()
            .map(|a| format!("{scheme}://{}", a.host))
            .collect();
        let csp = HeaderValue::from_str(&page::content_security_policy(&origins))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        Ok(Login {
            master,
            sessions: Sessions::new(store),
            providers,
            org_aud,
            csp,
        })
    }

    fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    fn seal<T: Serialize>(&self, context: &str, value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        // base64 of the sealed bytes; '+', '/' and '=' are fine in cookies.
        self.master.seal(context, &json)
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, context: &str, sealed: &str) -> Option<T> {
        let bytes = self.master.open(context, sealed)?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn scheme(config: &Config) -> &'static str {
    if config.server.secure_cookies {
        "https"
    } else {
        "http"
    }
}

/// What the sealed OIDC cookie holds.
#[derive(Debug, Serialize, Deserialize)]
struct OidcState {
    idp: String,
    app: String,
    target: String,
    exp: i64,
    pending: Pending,
}

/// What the sealed CSRF cookie holds.
#[derive(Debug, Serialize, Deserialize)]
struct CsrfState {
    token: String,
    exp: i64,
}

/// Claims of the tokens minted for people (app and org tokens).
#[derive(Debug, Serialize)]
struct UserClaims<'a> {
    aud: [&'a str; 1],
    email: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    iss: &'a str,
    #[serde(rename = "type")]
    token_type: &'a str,
    identity_nonce: String,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<&'a str>>,
    login_method: &'a str,
    idp: serde_json::Value,
    sid: &'a str,
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    portcullis_core::extract::cookie(headers, name)
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Whether a request is a page navigation (which may be redirected to the
/// login page) rather than a fetch/XHR call (which gets 401 JSON).
pub fn is_navigation(req: &Request<Incoming>) -> bool {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let h = req.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if header("x-requested-with").is_some_and(|v| v.eq_ignore_ascii_case("xmlhttprequest")) {
        return false;
    }
    match header("sec-fetch-mode") {
        Some(mode) => mode.eq_ignore_ascii_case("navigate"),
        // Clients without Fetch Metadata: only those asking for HTML.
        None => header("accept").is_some_and(|a| a.to_ascii_lowercase().contains("text/html")),
    }
}

impl Gateway {
    fn login_csp(&self) -> &HeaderValue {
        &self.login.csp
    }

    fn error_page(&self, status: StatusCode, title: &str, message: &str) -> Response<Body> {
        page::error(status, self.login_csp(), title, message, None)
    }

    fn set_cookie(&self, name: &str, value: &str, path: &str, max_age: i64) -> Option<HeaderValue> {
        let c = cookie::Cookie::build((name, value))
            .path(path)
            .http_only(true)
            .secure(self.config.server.secure_cookies)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(max_age.max(0)))
            .build();
        HeaderValue::from_str(&c.to_string()).ok()
    }

    fn app_origin(&self, app: &App) -> String {
        format!("{}://{}", scheme(&self.config), app.config.host)
    }

    /// The team-domain login URL for a navigation to `app` at `target`.
    pub fn login_url(&self, app: &App, target: &str) -> String {
        format!(
            "{}{LOGIN_PATH_PREFIX}{}{}?redirect_url={}",
            self.config.server.team_domain,
            app.config.host,
            app.config.path_prefix,
            encode(target)
        )
    }

    /// The redirect to the login page for an anonymous page navigation,
    /// or `None` when the app offers no way to log in.
    pub fn login_redirect(
        &self,
        app: &App,
        req: &Request<Incoming>,
        host: &str,
    ) -> Option<Response<Body>> {
        if app.config.identity_providers.is_empty() || !is_navigation(req) {
            return None;
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}://{host}{path}", scheme(&self.config));
        Some(redirect(&self.login_url(app, &target)))
    }

    fn app_by_login_path(&self, rest: &str) -> Option<&App> {
        let rest = rest.trim_end_matches('/').to_ascii_lowercase();
        self.apps
            .iter()
            .find(|a| format!("{}{}", a.config.host, a.config.path_prefix) == rest)
    }

    /// Checks a `redirect_url` for `app`: absolute or relative to the app,
    /// http(s) with this gateway's scheme, no credentials, and routed to
    /// this very app. Returns the absolute URL.
    pub fn checked_target(&self, app: &App, redirect_url: Option<&str>) -> Option<String> {
        let base = url::Url::parse(&format!("{}/", self.app_origin(app))).ok()?;
        let raw = redirect_url.unwrap_or("").trim();
        if raw.is_empty() {
            return Some(base.to_string());
        }
        if raw.contains('\\') || raw.chars().any(char::is_control) {
            return None;
        }
        let url = base.join(raw).ok()?;
        if url.scheme() != scheme(&self.config)
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let routed = self.route(&authority, url.path())?;
        (routed.config.name == app.config.name).then(|| url.to_string())
    }

    fn allowed_providers(&self, app: &App) -> Vec<&Provider> {
        app.config
            .identity_providers
            .iter()
            .filter_map(|id| self.login.provider(id))
            .collect()
    }

    /// The live team session of a request (org token in the team cookie).
    async fn team_session(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie_value(headers, AUTHORIZATION_COOKIE)?;
        let ring = self.keys.ring();
        let claims = ring.validator()?.validate(token).await.ok()?;
        if claims.token_type.as_deref() != Some(token_type::ORG)
            || !claims.aud.iter().any(|a| a == &self.login.org_aud)
        {
            return None;
        }
        let sid = claims.extra.get("sid")?.as_str()?;
        self.login
            .sessions
            .live(sid, crate::clock::now())
            .await
            .ok()
            .flatten()
    }

    fn sign_user_token(
        &self,
        session: &Session,
        aud: &str,
        kind: &str,
        groups: Option<Vec<&str>>,
        country: Option<&str>,
        (exp, now): (i64, i64),
    ) -> Option<String> {
        let ring = self.keys.ring();
        let signer = ring.signer(now)?;
        let claims = UserClaims {
            aud: [aud],
            email: &session.user.email,
            exp,
            iat: now,
            nbf: now,
            iss: &self.config.server.team_domain,
            token_type: kind,
            identity_nonce: random_hex::<16>(),
            sub: &session.user.sub,
            country,
            name: session.user.name.as_deref(),
            groups,
            login_method: session.idp_id(),
            idp: serde_json::json!({"id": session.idp_id(), "type": session.idp_type}),
            sid: &session.id,
        };
        match signer.sign(&claims) {
            Ok(t) => {
                self.metrics.tokens_signed.inc();
                Some(t)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a user token");
                None
            }
        }
    }

    fn team_cookie(&self, session: &Session, now: i64) -> Option<HeaderValue> {
        let exp = session.expires_at;
        let token = self.sign_user_token(
            session,
            &self.login.org_aud,
            token_type::ORG,
            None,
            None,
            (exp, now),
        )?;
        self.set_cookie(AUTHORIZATION_COOKIE, &token, "/", exp - now)
    }

    /// After a successful login or with a live team session: a code for the
    /// app and the redirect to its `/cdn-cgi/access/authorized`.
    async fn hand_over(
        &self,
        session: &Session,
        app: &App,
        target: &str,
        mut cookies: Vec<HeaderValue>,
    ) -> Response<Body> {
        let now = crate::clock::now();
        let code = match self
            .login
            .sessions
            .issue_code(&session.id, &app.config.name, target, now)
            .await
        {
            Ok(c) => c,
            Err(e) => return self.storage_failed(&e),
        };
        // The code goes to the origin of the (checked) target.
        let origin = url::Url::parse(target)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| self.app_origin(app));
        let mut response = redirect(&format!("{origin}{AUTHORIZED_PATH}?code={code}"));
        for c in cookies.drain(..) {
            response.headers_mut().append(SET_COOKIE, c);
        }
        response
    }

    fn storage_failed(&self, e: &StoreError) -> Response<Body> {
        tracing::error!(error = %e, "login storage error");
        self.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable",
            "The gateway cannot reach its database right now. Please try again in a moment.",
        )
    }

    fn csrf_cookie(&self) -> (String, Option<HeaderValue>) {
        let token = random_hex::<16>();
        let sealed = self.login.seal(
            "csrf-v1",
            &CsrfState {
                token: token.clone(),
                exp: crate::clock::now() + PRE_LOGIN_SECS,
            },
        );
        (
            token,
            self.set_cookie(CSRF_COOKIE, &sealed, COOKIE_PATH, PRE_LOGIN_SECS),
        )
    }

    fn render_login(
        &self,
        status: StatusCode,
        app: &App,
        target: &str,
        error: Option<&str>,
        email: &str,
    ) -> Response<Body> {
        let providers = self.allowed_providers(app);
        let login_path = format!(
            "{LOGIN_PATH_PREFIX}{}{}",
            app.config.host, app.config.path_prefix
        );
        let buttons: Vec<ProviderButton> = providers
            .iter()
            .filter(|p| matches!(p.kind, ProviderKind::Oidc(_)))
            .map(|p| ProviderButton {
                name: p.name.clone(),
                href: format!(
                    "{login_path}?idp={}&redirect_url={}",
                    encode(&p.id),
                    encode(target)
                ),
            })
            .collect();
        let has_local = providers
            .iter()
            .any(|p| matches!(p.kind, ProviderKind::Local(_)));
        let (form, cookie) = if has_local {
            let (token, cookie) = self.csrf_cookie();
            (
                Some(LocalForm {
                    action: login_path.clone(),
                    csrf_token: token,
                    redirect_url: target.to_owned(),
                    email: email.to_owned(),
                }),
                cookie,
            )
        } else {
            (None, None)
        };
        let mut response = page::login(
            status,
            self.login_csp(),
            &app.config.name,
            error,
            &buttons,
            form.as_ref(),
        );
        if let Some(c) = cookie {
            response.headers_mut().append(SET_COOKIE, c);
        }
        response
    }

    /// Requests to the team domain other than the certs document.
    pub(crate) async fn team_routes(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if let Some(rest) = path.strip_prefix(LOGIN_PATH_PREFIX) {
            let Some(app) = self.app_by_login_path(rest) else {
                return self.error_page(
                    StatusCode::NOT_FOUND,
                    "Unknown application",
                    "No application behind this gateway has that address.",
                );
            };
            return match method {
                Method::GET | Method::HEAD => self.login_page(app, &req).await,
                Method::POST => self.local_login(app, req, peer).await,
                _ => self.error_page(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "Use GET or POST.",
                ),
            };
        }
        match (method, path.as_str()) {
            (Method::GET, CALLBACK_PATH) => self.callback(&req, peer).await,
            (Method::GET | Method::POST, LOGOUT_PATH) => self.logout(req.headers(), None).await,
            (Method::GET, portcullis_core::wire::GET_IDENTITY_PATH) => {
                match self.team_session(req.headers()).await {
                    Some(s) => identity_response(&s),
                    None => rejection(ErrorCode::MissingToken),
                }
            }
            _ => crate::response::rejection_with(
                ErrorCode::UnknownHost,
                "Nothing is served at this path of the team domain.",
            ),
        }
    }

    async fn login_page(&self, app: &App, req: &Request<Incoming>) -> Response<Body> {
        let q = query(req);
        let Some(target) = self.checked_target(app, param(&q, "redirect_url")) else {
            return self.error_page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect",
                "The redirect_url of this sign-in link does not lead to this application, so it was refused.",
            );
        };
        let providers = self.allowed_providers(app);
        if let Some(session) = self.team_session(req.headers()).await
            && providers.iter().any(|p| p.id == session.idp_id())
        {
            return self.hand_over(&session, app, &target, Vec::new()).await;
        }
        let chosen = match param(&q, "idp") {
            Some(id) => match providers.iter().find(|p| p.id == id) {
                Some(p) => Some(*p),
                None => {
                    return self.render_login(
                        StatusCode::BAD_REQUEST,
                        app,
                        &target,
                        Some("That way of signing in is not offered for this application."),
                        "",
                    );
                }
            },
            None if providers.len() == 1 && matches!(providers[0].kind, ProviderKind::Oidc(_)) => {
                Some(providers[0])
            }
            None => None,
        };
        match chosen {
            Some(Provider {
                id,
                name,
                kind: ProviderKind::Oidc(oidc),
            }) => match oidc.start().await {
                Ok((url, pending)) => {
                    let state = OidcState {
                        idp: id.clone(),
                        app: app.config.name.clone(),
                        target,
                        exp: crate::clock::now() + PRE_LOGIN_SECS,
                        pending,
                    };
                    let sealed = self.login.seal("oidc-v1", &state);
                    let mut response = redirect(&url);
                    if let Some(c) =
                        self.set_cookie(OIDC_STATE_COOKIE, &sealed, COOKIE_PATH, PRE_LOGIN_SECS)
                    {
                        response.headers_mut().append(SET_COOKIE, c);
                    }
                    response
                }
                Err(e) => {
                    tracing::warn!(
                        idp = %id,
                        error_kind = e.kind(),
                        reason = e.reason(),
                        "identity provider unavailable"
                    );
                    self.render_login(
                        StatusCode::BAD_GATEWAY,
                        app,
                        &state_target(&q, app, self),
                        Some(&format!("{name} is unavailable right now. Try again later or use another way to sign in.")),
                        "",
                    )
                }
            },
            _ => self.render_login(StatusCode::OK, app, &target, None, ""),
        }
    }

    async fn local_login(
        &self,
        app: &App,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let country = self.country(req.headers());
        let csrf_cookie = cookie_value(req.headers(), CSRF_COOKIE).map(str::to_owned);
        let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return self.error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Form too large",
                    "The sign-in form could not be read.",
                );
            }
        };
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let field = |n: &str| param(&form, n).unwrap_or("");
        let Some(target) = self.checked_target(app, Some(field("redirect_url"))) else {
            return self.error_page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect",
                "The redirect_url of this sign-in form does not lead to this application, so it was refused.",
            );
        };
        let email = field("email").trim().to_ascii_lowercase();
        let now = crate::clock::now();
        let csrf_ok = csrf_cookie
            .as_deref()
            .and_then(|c| self.login.open::<CsrfState>("csrf-v1", c))
            .is_some_and(|s| {
                s.exp > now && constant_time_eq(s.token.as_bytes(), field("csrf_token").as_bytes())
            });
        if !csrf_ok {
            return self.render_login(
                StatusCode::FORBIDDEN,
                app,
                &target,
                Some("This sign-in form expired or was not opened here. Please sign in again."),
                &email,
            );
        }
        let Some(Provider {
            id,
            kind: ProviderKind::Local(users),
            ..
        }) = self
            .allowed_providers(app)
            .into_iter()
            .find(|p| matches!(p.kind, ProviderKind::Local(_)))
        else {
            return self.render_login(
                StatusCode::FORBIDDEN,
                app,
                &target,
                Some("Password sign-in is not offered for this application."),
                "",
            );
        };
        let lc = &self.config.login;
        let window = i64::try_from(lc.failure_window.as_secs()).unwrap_or(900);
        let account_key = format!("account:{}", sha256_hex(email.as_bytes()));
        let address_key = format!("address:{}", peer.ip());
        let locked = |account: i64, address: i64| {
            account >= i64::from(lc.max_failures_per_account)
                || address >= i64::from(lc.max_failures_per_address)
        };
        let lockout_message = format!(
            "Too many failed sign-in attempts. Sign-in is locked for up to {} for this account or address.",
            humantime::format_duration(lc.failure_window)
        );
        let counts = async {
            Ok::<_, StoreError>((
                self.store.login_failures(&account_key, now, window).await?,
                self.store.login_failures(&address_key, now, window).await?,
            ))
        };
        match counts.await {
            Ok((a, b)) if locked(a, b) => {
                tracing::info!(app = %app.config.name, "local sign-in refused: locked out");
                return self.render_login(
                    StatusCode::TOO_MANY_REQUESTS,
                    app,
                    &target,
                    Some(&lockout_message),
                    &email,
                );
            }
            Ok(_) => {}
            Err(e) => return self.storage_failed(&e),
        }
        let password = field("password");
        let user = if email.is_empty() || password.is_empty() || password.len() > 1024 {
            None
        } else {
            users.authenticate(&email, password).await
        };
        let Some(user) = user else {
            let counts = async {
                Ok::<_, StoreError>((
                    self.store
                        .record_login_failure(&account_key, now, window)
                        .await?,
                    self.store
                        .record_login_failure(&address_key, now, window)
                        .await?,
                ))
            };
            let (a, b) = match counts.await {
                Ok(c) => c,
                Err(e) => return self.storage_failed(&e),
            };
            tracing::info!(app = %app.config.name, "local sign-in refused: wrong email or password");
            if locked(a, b) {
                return self.render_login(
                    StatusCode::TOO_MANY_REQUESTS,
                    app,
                    &target,
                    Some(&lockout_message),
                    &email,
                );
            }
            return self.render_login(
                StatusCode::UNAUTHORIZED,
                app,
                &target,
                Some("Wrong email or password."),
                &email,
            );
        };
        let _ = self.store.clear_login_failures(&account_key).await;
        let identity = user.identity(id);
        self.complete_login(&identity, "local", country, app, &target)
            .await
    }

    async fn complete_login(
        &self,
        identity: &UserIdentity,
        idp_type: &str,
        country: Option<String>,
        app: &App,
        target: &str,
    ) -> Response<Body> {
        let now = crate::clock::now();
        let lifetime =
            i64::try_from(self.config.login.session_duration.as_secs()).unwrap_or(86_400);
        let session = match self
            .login
            .sessions
            .create(identity, idp_type, country, lifetime, now)
            .await
        {
            Ok(s) => s,
            Err(e) => return self.storage_failed(&e),
        };
        tracing::info!(app = %app.config.name, idp = %session.idp_id(), "signed in");
        let mut cookies = Vec::new();
        if let Some(c) = self.team_cookie(&session, now) {
            cookies.push(c);
        }
        self.hand_over(&session, app, target, cookies).await
    }

    fn country(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get(&self.config.server.country_header)
            .and_then(|v| v.to_str().ok())
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
    }

    async fn callback(&self, req: &Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let q = query(req);
        let now = crate::clock::now();
        let clear = self.set_cookie(OIDC_STATE_COOKIE, "", COOKIE_PATH, 0);
        let with_clear = |mut r: Response<Body>| {
            if let Some(c) = clear.clone() {
                r.headers_mut().append(SET_COOKIE, c);
            }
            r
        };
        let title = "Sign-in failed";
        let state: Option<OidcState> = cookie_value(req.headers(), OIDC_STATE_COOKIE)
            .and_then(|c| self.login.open("oidc-v1", c))
            .filter(|s: &OidcState| s.exp > now);
        let Some(state) = state else {
            return with_clear(self.error_page(
                StatusCode::BAD_REQUEST,
                title,
                "This sign-in took too long or was started in another browser. Go back to the application and sign in again.",
            ));
        };
        let retry = self
            .apps
            .iter()
            .find(|a| a.config.name == state.app)
            .map(|a| self.login_url(a, &state.target));
        let fail = |status: StatusCode, message: &str| {
            with_clear(page::error(
                status,
                self.login_csp(),
                title,
                message,
                retry.as_deref(),
            ))
        };
        let presented = param(&q, "state").unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), state.pending.state.as_bytes()) {
            tracing::info!(idp = %state.idp, "OIDC callback refused: state mismatch");
            return fail(
                StatusCode::BAD_REQUEST,
                "The sign-in response does not belong to this sign-in (state mismatch), so it was refused.",
            );
        }
        if let Some(error) = param(&q, "error") {
            // Only a standard error code is shown: the description (and
            // anything else in the query) is provider- or link-supplied text.
            let code = OAUTH_ERROR_CODES.iter().find(|c| **c == error);
            tracing::info!(
                idp = %state.idp,
                error_code = code.copied().unwrap_or("non-standard"),
                "OIDC callback carried an error"
            );
            return fail(
                StatusCode::UNAUTHORIZED,
                &match code {
                    Some(code) => format!("The identity provider refused the sign-in ({code})."),
                    None => "The identity provider refused the sign-in.".to_owned(),
                },
            );
        }
        let Some(code) = param(&q, "code").filter(|c| !c.is_empty()) else {
            return fail(
                StatusCode::BAD_REQUEST,
                "The identity provider sent no sign-in code.",
            );
        };
        let (
            Some(app),
            Some(Provider {
                id,
                kind: ProviderKind::Oidc(oidc),
                ..
            }),
        ) = (
            self.apps.iter().find(|a| a.config.name == state.app),
            self.login.provider(&state.idp),
        )
        else {
            return fail(
                StatusCode::BAD_REQUEST,
                "This sign-in is no longer configured.",
            );
        };
        if !app.config.identity_providers.iter().any(|p| p == id) {
            return fail(
                StatusCode::FORBIDDEN,
                "That way of signing in is not offered for this application.",
            );
        }
        match oidc.finish(code, &state.pending).await {
            Ok(identity) => {
                let country = self.country(req.headers());
                let mut r = self
                    .complete_login(&identity, "oidc", country, app, &state.target)
                    .await;
                if let Some(c) = clear.clone() {
                    r.headers_mut().append(SET_COOKIE, c);
                }
                r
            }
            Err(e) => {
                // `e` is fixed text (see `OidcError`): nothing the provider sent.
                tracing::info!(
                    idp = %id,
                    error_kind = e.kind(),
                    reason = e.reason(),
                    "OIDC sign-in refused"
                );
                if matches!(e, OidcError::Unavailable(_)) {
                    fail(
                        StatusCode::BAD_GATEWAY,
                        "The identity provider could not be reached to finish signing in. Try again in a moment.",
                    )
                } else {
                    fail(StatusCode::UNAUTHORIZED, &format!("Sign-in refused: {e}."))
                }
            }
        }
    }

    /// `/cdn-cgi/access/authorized`, `/cdn-cgi/access/logout` and
    /// `/cdn-cgi/access/get-identity` on an app host; `None` for other paths.
    pub(crate) async fn app_routes(
        &self,
        app: &App,
        req: &Request<Incoming>,
    ) -> Option<Response<Body>> {
        let path = req.uri().path();
        let method = req.method();
        Some(match (method, path) {
            (&Method::GET, AUTHORIZED_PATH) => self.authorized(app, req).await,
            (&Method::GET | &Method::POST, LOGOUT_PATH) => {
                let clear = self.set_cookie(AUTHORIZATION_COOKIE, "", "/", 0);
                self.logout(req.headers(), Some((app, clear))).await
            }
            (&Method::GET, portcullis_core::wire::GET_IDENTITY_PATH) => {
                match self.app_session(app, req.headers()).await {
                    Some(s) => identity_response(&s),
                    None => rejection(ErrorCode::MissingToken),
                }
            }
            _ => return None,
        })
    }

    async fn app_session(&self, app: &App, headers: &HeaderMap) -> Option<Session> {
        let token = portcullis_core::extract_token(headers)?;
        let ring = self.keys.ring();
        let claims = ring.validator()?.validate(token).await.ok()?;
        if !claims.is_app_token() || !claims.aud.iter().any(|a| a == &app.aud) {
            return None;
        }
        let sid = claims.extra.get("sid")?.as_str()?;
        self.login
            .sessions
            .live(sid, crate::clock::now())
            .await
            .ok()
            .flatten()
    }

    async fn authorized(&self, app: &App, req: &Request<Incoming>) -> Response<Body> {
        let q = query(req);
        let now = crate::clock::now();
        let stale = |gw: &Self| {
            gw.error_page(
                StatusCode::BAD_REQUEST,
                "Sign-in link expired",
                "This sign-in link has expired or was already used. Go back to the application to sign in again.",
            )
        };
        let code = param(&q, "code").unwrap_or("");
        let record = match self.login.sessions.redeem_code(code, now).await {
            Ok(Some(r)) => r,
            Ok(None) => return stale(self),
            Err(e) => return self.storage_failed(&e),
        };
        if record.app != app.config.name {
            return stale(self);
        }
        let session = match self.login.sessions.live(&record.session_id, now).await {
            Ok(Some(s)) => s,
            Ok(None) => return stale(self),
            Err(e) => return self.storage_failed(&e),
        };
        let lifetime = i64::try_from(app.config.session_duration.as_secs()).unwrap_or(86_400);
        let exp = (now + lifetime).min(session.expires_at);
        let groups: Vec<&str> = session
            .user
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| {
                app.config
                    .token_groups
                    .as_ref()
                    .is_none_or(|allowed| allowed.iter().any(|a| a == g))
            })
            .collect();
        let country = self
            .country(req.headers())
            .or_else(|| session.country.clone());
        let Some(token) = self.sign_user_token(
            &session,
            &app.aud,
            token_type::APP,
            Some(groups),
            country.as_deref(),
            (exp, now),
        ) else {
            return rejection(ErrorCode::KeysUnavailable);
        };
        let mut response = redirect(&record.redirect_url);
        if let Some(c) = self.set_cookie(AUTHORIZATION_COOKIE, &token, "/", exp - now) {
            response.headers_mut().append(SET_COOKIE, c);
        }
        response
    }

    /// Ends the session of the presented cookie (team or app) and clears
    /// the cookie.
    async fn logout(
        &self,
        headers: &HeaderMap,
        app: Option<(&App, Option<HeaderValue>)>,
    ) -> Response<Body> {
        let session = match &app {
            Some((app, _)) => self.app_session(app, headers).await,
            None => self.team_session(headers).await,
        };
        if let Some(s) = &session {
            match self.login.sessions.revoke(&s.id).await {
                Ok(_) => tracing::info!(idp = %s.idp_id(), "signed out"),
                Err(e) => return self.storage_failed(&e),
            }
        }
        let mut response = page::html(
            StatusCode::OK,
            self.login_csp(),
            "Signed out",
            "<h1>You are signed out</h1><p class=\"note\">Your session has ended on every application behind this gateway. You can close this window.</p>",
        );
        let clear = match app {
            Some((_, clear)) => clear,
            None => self.set_cookie(AUTHORIZATION_COOKIE, "", "/", 0),
        };
        if let Some(c) = clear {
            response.headers_mut().append(SET_COOKIE, c);
        }
        response
    }
}

/// The target to retry with after a provider failure.
fn state_target(q: &[(String, String)], app: &App, gw: &Gateway) -> String {
    gw.checked_target(app, param(q, "redirect_url"))
        .unwrap_or_else(|| format!("{}/", gw.app_origin(app)))
}

fn identity_response(session: &Session) -> Response<Body> {
    let mut r = crate::response::json(StatusCode::OK, &session.identity_json());
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}
