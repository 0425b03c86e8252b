//! Names on the wire: headers, cookies, claims and paths of the
//! Cloudflare Access-compatible contract. Everything else uses these
//! constants, so each name is spelled once.

/// Request header carrying the application token from the edge.
pub const JWT_ASSERTION_HEADER: &str = "cf-access-jwt-assertion";
/// Cookie holding the application token in the browser.
pub const AUTHORIZATION_COOKIE: &str = "CF_Authorization";
/// Header the edge sets to the authenticated user's email.
pub const AUTHENTICATED_USER_EMAIL_HEADER: &str = "cf-access-authenticated-user-email";
/// Service credential: client id.
pub const CLIENT_ID_HEADER: &str = "cf-access-client-id";
/// Service credential: client secret.
pub const CLIENT_SECRET_HEADER: &str = "cf-access-client-secret";
/// Header in which a client may present an app token to the edge.
pub const ACCESS_TOKEN_HEADER: &str = "cf-access-token";
/// JSON member names used when both service credentials travel in one header.
pub const CLIENT_ID_JSON_MEMBER: &str = "cf-access-client-id";
/// See [`CLIENT_ID_JSON_MEMBER`].
pub const CLIENT_SECRET_JSON_MEMBER: &str = "cf-access-client-secret";

/// Path of the signing-key document on the team domain.
pub const CERTS_PATH: &str = "/cdn-cgi/access/certs";
/// Login path prefix on the team domain (`/cdn-cgi/access/login/<app-host>`).
pub const LOGIN_PATH_PREFIX: &str = "/cdn-cgi/access/login/";
/// OIDC redirect URI path on the team domain.
pub const CALLBACK_PATH: &str = "/cdn-cgi/access/callback";
/// Logout path (team domain and app hosts).
pub const LOGOUT_PATH: &str = "/cdn-cgi/access/logout";
/// Identity endpoint on the team domain.
pub const GET_IDENTITY_PATH: &str = "/cdn-cgi/access/get-identity";
/// Path on an app host that sets the app cookie.
pub const AUTHORIZED_PATH: &str = "/cdn-cgi/access/authorized";

/// Claim names.
pub mod claims {
    /// Audience: array (or string) of application AUD tags.
    pub const AUD: &str = "aud";
    /// User email.
    pub const EMAIL: &str = "email";
    /// Expiry, seconds since the epoch.
    pub const EXP: &str = "exp";
    /// Issued-at, seconds since the epoch.
    pub const IAT: &str = "iat";
    /// Not-before, seconds since the epoch.
    pub const NBF: &str = "nbf";
    /// Issuer: the team domain URL.
    pub const ISS: &str = "iss";
    /// Token type: `app` or `org`.
    pub const TYPE: &str = "type";
    /// Nonce binding the token to the identity behind it.
    pub const IDENTITY_NONCE: &str = "identity_nonce";
    /// Subject: user id (empty for service tokens).
    pub const SUB: &str = "sub";
    /// Two-letter country of the request.
    pub const COUNTRY: &str = "country";
    /// Service-token client id.
    pub const COMMON_NAME: &str = "common_name";
    /// Groups of the user, when the identity provider sends them.
    pub const GROUPS: &str = "groups";
}

/// Values of the `type` claim.
pub mod token_type {
    /// Application token.
    pub const APP: &str = "app";
    /// Team-domain (organisation) session token.
    pub const ORG: &str = "org";
}
