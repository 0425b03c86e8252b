//! OpenID Connect relying party, on the `openidconnect` crate.
//!
//! Per provider: discovery (the document's `issuer` must equal the
//! configured one; cached for an hour), the authorization code flow with
//! PKCE (S256), `state` and `nonce` (kept by the caller in a sealed
//! pre-login cookie), the code exchange with `client_secret_basic`, and
//! ID token validation (signature with the provider's JWKS, `iss`, `aud`,
//! `exp`, `iat`, `nonce`; `alg: none` refused). When the ID token names a
//! key the cached JWKS lacks, the provider's keys are fetched again (at
//! most once per ten seconds) and validation retried, so a provider's key
//! rotation does not break logins. Userinfo, when the provider has it, is
//! fetched after the ID token passed, must name the same `sub`, and fills
//! in email, name and groups.
//!
//! HTTP goes through reqwest 0.13 (the workspace's), with redirects off,
//! timeouts, and bodies capped at 1 MiB.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AsyncHttpClient, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    HttpRequest, HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse as _, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, TokenResponse as _,
};
use serde_json::Value;

use crate::config::{IdentityProviderConfig, OidcProviderConfig};
use crate::identity::UserIdentity;

const MAX_BODY: usize = 1024 * 1024;
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A login start re-checks discovery when the cached document is older than
/// this, so a provider that went down gets the gateway's own error page
/// instead of a redirect the browser cannot follow.
const LOGIN_RECHECK: Duration = Duration::from_secs(15);
const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// An HTTP failure talking to a provider. Only a fixed description of
/// what failed is kept: nothing the provider sent (or an address) ends up
/// in it, so it is safe to show and to log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(&'static str);

/// The HTTP client handed to `openidconnect`: reqwest without redirects.
#[derive(Debug, Clone)]
pub struct HttpClient(reqwest::Client);

impl HttpClient {
    /// A client with connect and total timeouts and no redirects (a
    /// provider must not bounce our back-channel calls elsewhere).
    pub fn new() -> Result<Self, HttpError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map(HttpClient)
            .map_err(|_| HttpError("the HTTP client could not be built"))
    }

    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                HttpError(if e.is_timeout() {
                    "the request timed out"
                } else {
                    "the request failed"
                })
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| HttpError("reading the response failed"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError("the response is larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

/// Why an OIDC login failed. Every message is fixed text chosen by the
/// gateway: it names what failed and never echoes what the provider sent
/// (a parse error from serde may quote a value of the response, which
/// could be a token or a secret), so it is safe on the error page and in
/// the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// Discovery or the JWKS could not be had.
    #[error(
        "the identity provider could not be reached or its discovery document is unusable ({0})"
    )]
    Unavailable(&'static str),
    /// The code exchange failed.
    #[error(
        "the identity provider refused the sign-in code or sent an unusable token response ({0})"
    )]
    TokenExchange(&'static str),
    /// The token response had no ID token.
    #[error("the identity provider sent no ID token")]
    NoIdToken,
    /// The ID token did not validate.
    #[error("the ID token from the identity provider is not valid: {0}")]
    IdToken(&'static str),
    /// Userinfo failed or disagreed with the ID token.
    #[error("the identity provider's userinfo is not usable: {0}")]
    UserInfo(&'static str),
    /// Neither the ID token nor userinfo had an email address.
    #[error(
        "the identity provider did not share a (verified) email address; ask for the \"email\" scope"
    )]
    NoEmail,
}

impl OidcError {
    /// The stage that failed, as a stable identifier for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OidcError::Unavailable(_) => "provider_unavailable",
            OidcError::TokenExchange(_) => "token_exchange",
            OidcError::NoIdToken => "no_id_token",
            OidcError::IdToken(_) => "id_token",
            OidcError::UserInfo(_) => "userinfo",
            OidcError::NoEmail => "no_email",
        }
    }

    /// What in that stage went wrong (fixed text, no provider values).
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Unavailable(r)
            | OidcError::TokenExchange(r)
            | OidcError::IdToken(r)
            | OidcError::UserInfo(r) => r,
            OidcError::NoIdToken => "no id_token",
            OidcError::NoEmail => "no verified email",
        }
    }
}

/// What the caller keeps (sealed) between the redirect and the callback.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// `state` sent to the provider.
    pub state: String,
    /// `nonce` sent to the provider.
    pub nonce: String,
    /// PKCE verifier.
    pub pkce: String,
}

struct Cached {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

/// One OpenID Connect provider.
pub struct OidcProvider {
    id: String,
    config: OidcProviderConfig,
    redirect_uri: String,
    http: HttpClient,
    cache: tokio::sync::Mutex<Option<Cached>>,
    last_forced: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("id", &self.id)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// A provider whose redirect URI is `{team_domain}/cdn-cgi/access/callback`.
    pub fn new(
        idp: &IdentityProviderConfig,
        config: &OidcProviderConfig,
        team_domain: &str,
        http: HttpClient,
    ) -> Self {
        OidcProvider {
            id: idp.id.clone(),
            config: config.clone(),
            redirect_uri: format!("{team_domain}{}", portcullis_core::wire::CALLBACK_PATH),
            http,
            cache: tokio::sync::Mutex::new(None),
            last_forced: std::sync::Mutex::new(None),
        }
    }

    /// The discovery document, fetched again when the cached one is older
    /// than `max_age` (`Duration::ZERO` forces a fetch).
    async fn metadata(&self, max_age: Duration) -> Result<CoreProviderMetadata, OidcError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.fetched.elapsed() < max_age
        {
            return Ok(c.metadata.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|_| OidcError::Unavailable("the configured issuer is not a URL"))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(discovery_reason(&e)))?;
        *cache = Some(Cached {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        Ok(metadata)
    }

    fn may_force_refresh(&self) -> bool {
        let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < FORCED_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let redirect = RedirectUrl::new(self.redirect_uri.clone())
            .map_err(|_| OidcError::Unavailable("the redirect URI is not a URL"))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a login: the URL to send the browser to and what to keep.
    pub async fn start(&self) -> Result<(String, Pending), OidcError> {
        let client = self.client(self.metadata(LOGIN_RECHECK).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce: verifier.secret().clone(),
            },
        ))
    }

    /// Finishes a login: exchanges `code`, validates the ID token, merges
    /// userinfo. `state` must already have been checked by the caller.
    pub async fn finish(&self, code: &str, pending: &Pending) -> Result<UserIdentity, OidcError> {
        let metadata = self.metadata(METADATA_TTL).await?;
        let client = self.client(metadata.clone())?;
        let token: Result<CoreTokenResponse, OidcError> = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| OidcError::TokenExchange("the provider has no token endpoint"))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&e));
        let token = match token {
            Ok(token) => token,
            Err(e) => {
                if matches!(e, OidcError::Unavailable(_)) {
                    // The provider looks down: the next login start
                    // re-discovers it and shows the error page rather than
                    // sending the browser to a dead provider.
                    *self.cache.lock().await = None;
                }
                return Err(e);
            }
        };
        let id_token = token.id_token().ok_or(OidcError::NoIdToken)?;
        let nonce = Nonce::new(pending.nonce.clone());
        let verified = {
            let verifier = client.id_token_verifier();
            match id_token.claims(&verifier, &nonce) {
                Ok(claims) => Ok(claims.clone()),
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) => Err(()),
                Err(e) => return Err(OidcError::IdToken(claims_reason(&e))),
            }
        };
        let claims = match verified {
            Ok(c) => c,
            Err(()) => {
                // The provider may have rotated its keys: fetch them again.
                if !self.may_force_refresh() {
                    return Err(OidcError::IdToken(
                        "no key of the provider matches the token's key id (signature)",
                    ));
                }
                let fresh = self.client(self.metadata(Duration::ZERO).await?)?;
                let verifier = fresh.id_token_verifier();
                id_token
                    .claims(&verifier, &nonce)
                    .map_err(|e| OidcError::IdToken(claims_reason(&e)))?
                    .clone()
            }
        };
        let sub = claims.subject().as_str().to_owned();
        if sub.is_empty() {
            return Err(OidcError::IdToken("the sub claim is empty"));
        }
        let raw = payload(&id_token.to_string());
        let mut email = claims.email().map(|e| e.as_str().to_owned());
        let mut email_verified = claims.email_verified();
        let mut name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
        let mut groups = self.groups(&raw);
        if let Some(endpoint) = metadata.userinfo_endpoint() {
            let info = self
                .userinfo(endpoint.url().as_str(), token.access_token().secret())
                .await?;
            match info.get("sub").and_then(Value::as_str) {
                Some(s) if crate::crypto::constant_time_eq(s.as_bytes(), sub.as_bytes()) => {}
                Some(_) => {
                    return Err(OidcError::UserInfo("its sub differs from the ID token's"));
                }
                None => return Err(OidcError::UserInfo("it has no sub")),
            }
            if let Some(e) = info.get("email").and_then(Value::as_str) {
                email = Some(e.to_owned());
                email_verified = info.get("email_verified").and_then(Value::as_bool);
            }
            if let Some(n) = info.get("name").and_then(Value::as_str) {
                name = Some(n.to_owned());
            }
            let more = self.groups(&info);
            if !more.is_empty() {
                groups = more;
            }
        }
        let email = email
            .filter(|e| e.contains('@'))
            .filter(|_| email_verified != Some(false))
            .ok_or(OidcError::NoEmail)?;
        Ok(UserIdentity {
            email: email.to_ascii_lowercase(),
            sub,
            name,
            groups,
            login_method: Some(self.id.clone()),
        })
    }

    fn groups(&self, claims: &Value) -> Vec<String> {
        let Some(name) = &self.config.groups_claim else {
            return Vec::new();
        };
        match claims.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    async fn userinfo(&self, url: &str, access_token: &str) -> Result<Value, OidcError> {
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {access_token}"),
            )
            .body(Vec::new())
            .map_err(|_| OidcError::UserInfo("the userinfo endpoint is not a valid URI"))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| OidcError::UserInfo(e.0))?;
        if !response.status().is_success() {
            return Err(OidcError::UserInfo(
                if response.status() == http::StatusCode::UNAUTHORIZED {
                    "the endpoint refused the access token"
                } else {
                    "the endpoint answered with an error status"
                },
            ));
        }
        let is_json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| ct.to_ascii_lowercase().starts_with("application/json"));
        if !is_json {
            return Err(OidcError::UserInfo(
                "only JSON userinfo responses are supported",
            ));
        }
        let value: Value = serde_json::from_slice(response.body())
            .map_err(|_| OidcError::UserInfo("the response is not JSON"))?;
        if !value.is_object() {
            return Err(OidcError::UserInfo("the response is not a JSON object"));
        }
        Ok(value)
    }
}

/// The JSON payload of a compact JWS whose signature was already checked.
fn payload(jws: &str) -> Value {
    jws.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// Claims whose absence may be named: these names come from this list,
/// never from the provider's response.
const KNOWN_FIELDS: &[(&str, &str)] = &[
    ("sub", "it lacks the sub claim"),
    ("iss", "it lacks the iss (issuer) claim"),
    ("aud", "it lacks the aud (audience) claim"),
    ("exp", "it lacks the exp (expiry) claim"),
    ("iat", "it lacks the iat (issued at) claim"),
    ("access_token", "it lacks the access_token field"),
    ("token_type", "it lacks the token_type field"),
];

/// What a serde failure was about, as fixed text. The error's own message
/// can quote the offending value (`invalid type: string "…"`), so only a
/// `missing field` naming one of [`KNOWN_FIELDS`] is passed on.
fn parse_reason(message: &str, fallback: &'static str) -> &'static str {
    for (field, reason) in KNOWN_FIELDS {
        if message.contains(&format!("missing field `{field}`")) {
            return reason;
        }
    }
    fallback
}

/// Maps a failed code exchange to a fixed reason.
fn token_error(
    e: &openidconnect::RequestTokenError<
        HttpError,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> OidcError {
    use openidconnect::RequestTokenError as E;
    use openidconnect::core::CoreErrorResponseType as C;
    match e {
        E::ServerResponse(r) => OidcError::TokenExchange(match r.error() {
            C::InvalidGrant => "invalid_grant: the sign-in code is invalid, expired or used",
            C::InvalidClient => "invalid_client: the gateway's client credentials were refused",
            C::InvalidRequest => "invalid_request",
            C::InvalidScope => "invalid_scope",
            C::UnauthorizedClient => "unauthorized_client",
            C::UnsupportedGrantType => "unsupported_grant_type",
            C::Extension(_) => "the token endpoint answered with an error",
        }),
        // The provider could not be reached: an outage, not a refusal.
        E::Request(h) => OidcError::Unavailable(h.0),
        E::Parse(err, _) => {
            let message = err.inner().to_string();
            if err.path().to_string() == "id_token" {
                OidcError::IdToken(parse_reason(&message, "it could not be parsed"))
            } else {
                OidcError::TokenExchange(parse_reason(
                    &message,
                    "the token response could not be parsed",
                ))
            }
        }
        E::Other(_) => OidcError::TokenExchange("the token response was unexpected"),
    }
}

/// Maps a failed discovery to a fixed reason.
fn discovery_reason(e: &openidconnect::DiscoveryError<HttpError>) -> &'static str {
    use openidconnect::DiscoveryError as E;
    match e {
        E::Request(h) => h.0,
        E::Response(..) => "the discovery endpoint answered with an error status",
        E::Parse(_) => "the discovery document could not be parsed",
        E::UrlParse(_) => "the discovery URL is not valid",
        E::Validation(_) => "the discovery document's issuer differs from the configured one",
        E::Other(_) => "the discovery document or JWKS is unusable",
        _ => "the discovery document is unusable",
    }
}

/// Maps a failed ID token validation to a fixed reason.
fn claims_reason(e: &ClaimsVerificationError) -> &'static str {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::Expired(_) => "it has expired",
        C::InvalidAudience(_) => "it is meant for another audience (aud)",
        C::InvalidAuthContext(_) => "its authentication context (acr) is not accepted",
        C::InvalidAuthTime(_) => "its authentication time (auth_time) is not valid",
        C::InvalidIssuer(_) => "its issuer (iss) is not the configured one",
        C::InvalidNonce(_) => "its nonce does not belong to this sign-in",
        C::InvalidSubject(_) => "its subject (sub) is not valid",
        C::Unsupported(_) => "it uses an unsupported feature",
        C::SignatureVerification(s) => match s {
            S::NoSignature => "it has no signature (alg: none is refused)",
            S::NoMatchingKey => "no key of the provider matches the token's key id (signature)",
            S::AmbiguousKeyId(_) => "its signature key is ambiguous",
            S::DisallowedAlg(_) | S::UnsupportedAlg(_) => "its signature algorithm is not accepted",
            S::InvalidKey(_) => "the provider's signature key is unusable",
            _ => "its signature is not valid",
        },
        _ => "its claims are not valid",
    }
}
