//! # portcullis-core
//!
//! Validates [Cloudflare Access]-style JWTs — the `Cf-Access-Jwt-Assertion`
//! header or `CF_Authorization` cookie an identity-aware edge forwards —
//! against the account's signing keys, fetched from
//! `{team_domain}/cdn-cgi/access/certs` and cached.
//!
//! ```no_run
//! # async fn demo(headers: http::HeaderMap) -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_core::Validator;
//!
//! let validator = Validator::from_team_name("acme").audience("41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4").build()?;
//! let claims = validator.validate_headers(&headers).await?;
//! println!("hello {}", claims.identity().name());
//! # Ok(()) }
//! ```
//!
//! What is checked, in order: size (16 KiB), structure and canonical
//! base64url, the header (`crit` refused; `jwk`/`jku`/`x5u` never used),
//! the algorithm (allow-list, default RS256; HMAC and `none` never), the key
//! (by `kid`; no `kid` only with exactly one key loaded; the key's type and
//! JWK `alg` must match), the signature, the claims (JSON without
//! duplicate members; `iss`, `aud`, `exp` required), the issuer, the
//! audience (exact match, any overlap) and the times (`exp`, `nbf`, `iat`
//! with leeway, default 60 s). Every failure is a [`ValidationError`] whose
//! [`code`](ValidationError::code) is one of the stable codes of the wire
//! contract.
//!
//! Verified tokens are remembered (keyed by a keyed hash of the whole
//! token, matched byte for byte) so a repeated token skips the signature
//! check; an entry never outlives the token's `exp`, times are re-checked
//! on every hit, and the cache is invalidated when the key set drops a
//! key. Each thread also keeps the last verdict it served, under the same
//! rules, so a token repeated on one connection costs one comparison.
//! Middleware that wants no future on that path calls
//! [`Validator::validate_now`] (or `validate_headers_now`,
//! `validate_remembered`) and waits only when keys must be fetched.
//!
//! [Cloudflare Access]: https://developers.cloudflare.com/cloudflare-one/identity/authorization-cookie/validating-json/

pub mod claims;
pub mod clock;
pub mod error;
pub mod extract;
pub mod forward;
mod jws;
pub mod keys;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod source;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod validate;
pub mod wire;

pub use claims::{AccessClaims, Identity};
pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{ConfigError, ErrorCode, ValidationError};
pub use extract::{Extractor, TokenLocation, extract_token};
pub use jsonwebtoken::Algorithm;
pub use jws::parse_strict_json;
pub use keys::{KeySet, KeyType, VerifyingKey};
#[cfg(feature = "metrics")]
pub use metrics::CoreMetrics;
pub use source::{KeySnapshot, KeySource, KeySourceStatus, RemoteSourceBuilder};
pub use validate::{Validator, ValidatorBuilder, verify_jws};

#[doc(hidden)]
pub mod __fuzz {
    //! Entry points for the fuzz target; not a stable API.
    /// Runs the strict compact-JWS parser.
    pub fn parse_compact(token: &str) -> bool {
        crate::jws::parse_compact(token).is_ok()
    }
}
