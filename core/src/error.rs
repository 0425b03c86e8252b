//! Error codes of the wire contract and the validation error type.
//!
//! Every rejection has a stable machine code that is the same in this enum,
//! in logs, in metrics labels and in the JSON body that middleware, the
//! sidecar and the gateway send: `{"error":"<code>","message":"<sentence>"}`.

use std::fmt;

/// Every stable error code of the contract, with its HTTP status.
///
/// The origin-side codes are produced by [`ValidationError`]; the proxy and
/// gateway codes (`unknown_host`, `upstream_*`, `bad_credentials`,
/// `rate_limited`) live here too so that there is one place per fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No token was presented.
    MissingToken,
    /// The token is not a well-formed compact JWS with a JSON header and claims.
    MalformedToken,
    /// The token's `alg` is not allowed (or does not match the key).
    DisallowedAlgorithm,
    /// No loaded key matches the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// The token is past its `exp`.
    Expired,
    /// The token's `nbf` or `iat` lies in the future.
    NotYetValid,
    /// The token was issued by someone else.
    WrongIssuer,
    /// The token is for another application.
    WrongAudience,
    /// No signing keys could be loaded at all.
    KeysUnavailable,
    /// The token is valid but a policy refuses the caller.
    Forbidden,
    /// A proxy has no route for the request's host.
    UnknownHost,
    /// A proxy could not reach its upstream.
    UpstreamUnavailable,
    /// A proxy's upstream did not answer in time.
    UpstreamTimeout,
    /// Service credentials that do not authenticate.
    BadCredentials,
    /// Too many requests.
    RateLimited,
}

impl ErrorCode {
    /// All codes, in contract order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::MissingToken,
        ErrorCode::MalformedToken,
        ErrorCode::DisallowedAlgorithm,
        ErrorCode::UnknownKey,
        ErrorCode::BadSignature,
        ErrorCode::Expired,
        ErrorCode::NotYetValid,
        ErrorCode::WrongIssuer,
        ErrorCode::WrongAudience,
        ErrorCode::KeysUnavailable,
        ErrorCode::Forbidden,
        ErrorCode::UnknownHost,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::BadCredentials,
        ErrorCode::RateLimited,
    ];

    /// The stable machine code, e.g. `"wrong_audience"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::MalformedToken => "malformed_token",
            ErrorCode::DisallowedAlgorithm => "disallowed_algorithm",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Expired => "expired",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::WrongIssuer => "wrong_issuer",
            ErrorCode::WrongAudience => "wrong_audience",
            ErrorCode::KeysUnavailable => "keys_unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownHost => "unknown_host",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::RateLimited => "rate_limited",
        }
    }

    /// Parses a machine code back into an [`ErrorCode`].
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The HTTP status the contract assigns to this code.
    pub const fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorCode::Forbidden => S::FORBIDDEN,
            ErrorCode::KeysUnavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::UnknownHost => S::NOT_FOUND,
            ErrorCode::UpstreamUnavailable => S::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => S::GATEWAY_TIMEOUT,
            ErrorCode::RateLimited => S::TOO_MANY_REQUESTS,
            _ => S::UNAUTHORIZED,
        }
    }

    /// A human sentence suitable for the `message` member of an error body.
    pub const fn default_message(self) -> &'static str {
        match self {
            ErrorCode::MissingToken => "No access token was presented.",
            ErrorCode::MalformedToken => "The access token is malformed.",
            ErrorCode::DisallowedAlgorithm => {
                "The access token uses an algorithm that is not allowed."
            }
            ErrorCode::UnknownKey => "The access token was signed by an unknown key.",
            ErrorCode::BadSignature => "The access token's signature does not verify.",
            ErrorCode::Expired => "The access token has expired.",
            ErrorCode::NotYetValid => "The access token is not valid yet.",
            ErrorCode::WrongIssuer => "The access token was issued by another team.",
            ErrorCode::WrongAudience => "The access token is not meant for this application.",
            ErrorCode::KeysUnavailable => {
                "The signing keys could not be loaded; try again shortly."
            }
            ErrorCode::Forbidden => "You are not allowed to access this resource.",
            ErrorCode::UnknownHost => "No application is configured for this host.",
            ErrorCode::UpstreamUnavailable => "The application could not be reached.",
            ErrorCode::UpstreamTimeout => "The application did not answer in time.",
            ErrorCode::BadCredentials => "The service credentials are not valid.",
            ErrorCode::RateLimited => "Too many requests; slow down.",
        }
    }

    /// The contract's JSON body: `{"error":"<code>","message":"<message>"}`.
    pub fn json_body(self, message: &str) -> String {
        serde_json::json!({ "error": self.as_str(), "message": message }).to_string()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused. Variants map one-to-one onto the origin-side
/// codes of the contract; see [`ValidationError::code`].
///
/// Messages never contain the token, claims values or key material; the
/// `alg` and `kid` the token named are included only after sanitising.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// No token in the header, cookie (or bearer, when enabled).
    #[error("no access token was presented")]
    MissingToken,
    /// Structure, base64url, JSON or required-claim problem.
    #[error("malformed access token: {reason}")]
    MalformedToken {
        /// What was wrong, without echoing the input.
        reason: &'static str,
    },
    /// `alg` not in the allow-list, HMAC/`none`, or not matching the key.
    #[error("algorithm {alg:?} is not allowed{}", if *.key_mismatch { " for the selected key" } else { "" })]
    DisallowedAlgorithm {
        /// The algorithm the token named (sanitised).
        alg: String,
        /// True when the algorithm is allowed but does not match the key's type.
        key_mismatch: bool,
    },
    /// No loaded key has the token's `kid`.
    #[error("no signing key matches kid {kid:?}")]
    UnknownKey {
        /// The key id the token named (sanitised), if any.
        kid: Option<String>,
    },
    /// The signature does not verify with the selected key.
    #[error("the signature does not verify")]
    BadSignature,
    /// `exp` is in the past (beyond leeway).
    #[error("the token expired at {exp}")]
    Expired {
        /// The token's `exp`, seconds since the epoch.
        exp: i64,
    },
    /// `nbf` or `iat` is in the future (beyond leeway).
    #[error("the token is not valid before {not_before}")]
    NotYetValid {
        /// The offending `nbf` or `iat`, seconds since the epoch.
        not_before: i64,
    },
    /// `iss` missing or not the configured team domain.
    #[error("the token was not issued by the configured team domain")]
    WrongIssuer,
    /// `aud` missing or shares no value with the accepted audiences.
    #[error("the token's audience is not accepted here")]
    WrongAudience,
    /// Keys could not be loaded at all.
    #[error("signing keys are unavailable: {reason}")]
    KeysUnavailable {
        /// Why the last fetch failed.
        reason: String,
    },
    /// Valid token, but an authorization rule refuses the caller.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Which rule refused (never a secret).
        reason: String,
    },
}

impl ValidationError {
    /// The stable machine code of this error.
    pub const fn code(&self) -> ErrorCode {
        match self {
            ValidationError::MissingToken => ErrorCode::MissingToken,
            ValidationError::MalformedToken { .. } => ErrorCode::MalformedToken,
            ValidationError::DisallowedAlgorithm { .. } => ErrorCode::DisallowedAlgorithm,
            ValidationError::UnknownKey { .. } => ErrorCode::UnknownKey,
            ValidationError::BadSignature => ErrorCode::BadSignature,
            ValidationError::Expired { .. } => ErrorCode::Expired,
            ValidationError::NotYetValid { .. } => ErrorCode::NotYetValid,
            ValidationError::WrongIssuer => ErrorCode::WrongIssuer,
            ValidationError::WrongAudience => ErrorCode::WrongAudience,
            ValidationError::KeysUnavailable { .. } => ErrorCode::KeysUnavailable,
            ValidationError::Forbidden { .. } => ErrorCode::Forbidden,
        }
    }

    /// The HTTP status of this error (401, 403 or 503).
    pub const fn http_status(&self) -> http::StatusCode {
        self.code().http_status()
    }

    /// The contract's JSON body for this error. The message is the code's
    /// fixed sentence, so nothing from the request can leak into it.
    pub fn json_body(&self) -> String {
        let code = self.code();
        code.json_body(code.default_message())
    }

    pub(crate) fn malformed(reason: &'static str) -> Self {
        ValidationError::MalformedToken { reason }
    }
}

/// Keeps attacker-chosen header values printable and short before they are
/// stored in an error (which ends up in logs).
pub(crate) fn sanitize(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// A problem with configuration, found when a validator or key source is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No audience was configured; the audience check is never skipped.
    #[error("at least one audience is required (the AUD tag of the application)")]
    NoAudience,
    /// The team domain is not an absolute http(s) URL.
    #[error(
        "team domain {0:?} is not an absolute http(s) URL such as https://acme.cloudflareaccess.com"
    )]
    InvalidTeamDomain(String),
    /// A URL (certs URL) is not valid.
    #[error("{what} {url:?} is not a valid http(s) URL")]
    InvalidUrl {
        /// Which setting.
        what: &'static str,
        /// The value given.
        url: String,
    },
    /// The algorithm allow-list is empty or contains an HMAC algorithm.
    #[error("algorithm allow-list: {0}")]
    Algorithms(&'static str),
    /// A static JWKS document could not be used.
    #[error("invalid JWKS document: {0}")]
    InvalidJwks(String),
    /// Reading a JWKS file failed.
    #[error("cannot read JWKS file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// A bound is inconsistent (e.g. minimum max-age above maximum).
    #[error("{0}")]
    Bounds(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_statuses_follow_the_contract() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::KeysUnavailable.http_status(), 503);
        assert_eq!(ErrorCode::WrongAudience.http_status(), 401);
        assert_eq!(ErrorCode::UnknownHost.http_status(), 404);
        assert_eq!(ErrorCode::UpstreamUnavailable.http_status(), 502);
        assert_eq!(ErrorCode::UpstreamTimeout.http_status(), 504);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::BadCredentials.http_status(), 401);
    }

    #[test]
    fn json_body_has_code_and_message() {
        let body: serde_json::Value =
            serde_json::from_str(&ValidationError::Expired { exp: 5 }.json_body()).unwrap();
        assert_eq!(body["error"], "expired");
        assert_eq!(body["message"], "The access token has expired.");
    }

    #[test]
    fn sanitize_truncates_and_masks() {
        assert_eq!(sanitize("RS256"), "RS256");
        assert_eq!(sanitize("a\nb"), "a?b");
        assert!(sanitize(&"x".repeat(500)).chars().count() <= 81);
    }
}
