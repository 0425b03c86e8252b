//! Issuing app tokens and reusing them.
//!
//! As at Cloudflare, an identity admitted with service credentials gets an
//! app token (`type: "app"`, `aud` = the app's AUD tag) that is cached and
//! reused until close to its expiry: a signature per proxied request would
//! cap throughput near the cost of RSA signing.

use std::sync::Arc;

use serde::Serialize;

use crate::crypto::random_hex;
use crate::keys::{KeyError, KeyManager};
use crate::metrics::Metrics;

/// Claims of a service-token app token, in Cloudflare's shape.
#[derive(Debug, Serialize)]
pub struct ServiceTokenClaims<'a> {
    /// `[AUD tag]`.
    pub aud: [&'a str; 1],
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Issuer: the team domain.
    pub iss: &'a str,
    /// `"app"`.
    #[serde(rename = "type")]
    pub token_type: &'a str,
    /// Random per token.
    pub identity_nonce: String,
    /// `""` for service tokens.
    pub sub: &'a str,
    /// The client id.
    pub common_name: &'a str,
}

/// A signed token and its expiry.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: Arc<str>,
    /// Its `exp`.
    pub exp: i64,
}

/// Signs app tokens and remembers them per (app, client id).
pub struct TokenIssuer {
    keys: Arc<KeyManager>,
    issuer: String,
    cache: moka::sync::Cache<(String, String), IssuedToken>,
    metrics: Metrics,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer for `issuer` (the team domain) signing with `keys`.
    pub fn new(keys: Arc<KeyManager>, issuer: String, metrics: Metrics) -> Self {
        TokenIssuer {
            keys,
            issuer,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .support_invalidation_closures()
                .build(),
            metrics,
        }
    }

    /// The app token for a service token at an app: cached, or signed now
    /// when there is none or the cached one is within a tenth of its
    /// lifetime (at least a minute) of expiring.
    pub fn service_token(
        &self,
        aud: &str,
        client_id: &str,
        lifetime: i64,
        now: i64,
    ) -> Result<IssuedToken, KeyError> {
        let key = (aud.to_owned(), client_id.to_owned());
        let margin = (lifetime / 10).max(60).min(lifetime / 2);
        if let Some(hit) = self.cache.get(&key)
            && hit.exp - margin > now
        {
            self.metrics.token_cache_hits.inc();
            return Ok(hit);
        }
        let ring = self.keys.ring();
        let signer = ring
            .signer(now)
            .ok_or_else(|| KeyError::Crypto("no signing key is loaded".into()))?;
        let exp = now + lifetime;
        let claims = ServiceTokenClaims {
            aud: [aud],
            exp,
            iat: now,
            nbf: now,
            iss: &self.issuer,
            token_type: portcullis_core::wire::token_type::APP,
            identity_nonce: random_hex::<16>(),
            sub: "",
            common_name: client_id,
        };
        let token = IssuedToken {
            token: signer.sign(&claims)?.into(),
            exp,
        };
        self.metrics.tokens_signed.inc();
        self.cache.insert(key, token.clone());
        Ok(token)
    }

    /// Forgets cached tokens of a client id (after revocation).
    pub fn forget_client(&self, client_id: &str) {
        let id = client_id.to_owned();
        let _ = self.cache.invalidate_entries_if(move |(_, c), _| *c == id);
    }
}
