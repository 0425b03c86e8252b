//! Service tokens: creation, rotation with a grace period, revocation,
//! expiry, last-used times, and authentication of presented credentials.
//!
//! A client id is `<32 hex>.access`; a secret is 64 hex characters (256
//! random bits). Only the SHA-256 of a secret is stored. A fast hash is
//! right here: password hashes are slow to make guessing low-entropy human
//! secrets expensive, but a 256-bit random secret cannot be guessed at any
//! speed, and a slow hash would hand attackers a cheap way to burn our CPU.
//! Hashes are compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ServiceTokensConfig;
use crate::crypto::{constant_time_eq, random_hex, sha256_hex};
use crate::identity::ServiceIdentity;
use crate::store::{ServiceTokenRecord, Storage, StoreError};

/// Errors of token management (not authentication).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Storage failed or the name is taken.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No active token has this name.
    #[error("no active service token is named {0:?}")]
    NotFound(String),
    /// The name is empty or too long.
    #[error("a service token name must be 1 to 128 printable characters")]
    BadName,
}

/// A token as handed out: the secret is shown once and never stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedCredentials {
    /// The token's name.
    pub name: String,
    /// `<32 hex>.access`.
    pub client_id: String,
    /// 64 hex characters; shown once.
    pub client_secret: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// Public facts about a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    /// Name.
    pub name: String,
    /// Client id.
    pub client_id: String,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Expires, RFC 3339.
    pub expires_at: String,
    /// Last rotation, RFC 3339.
    pub rotated_at: Option<String>,
    /// Revoked, RFC 3339.
    pub revoked_at: Option<String>,
    /// Last successful use, RFC 3339.
    pub last_used_at: Option<String>,
}

/// Why presented credentials were refused (all map to `bad_credentials`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Not shaped like a client id / secret.
    Malformed,
    /// No such client id.
    UnknownClient,
    /// The secret does not match.
    WrongSecret,
    /// The token expired.
    Expired,
    /// The token was revoked.
    Revoked,
    /// Storage was unreachable.
    Unavailable,
}

/// What a replica remembers about a token for admitting its app tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    /// The token's name.
    pub name: String,
    /// Expiry.
    pub expires_at: i64,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

impl TokenState {
    /// Whether the token still admits at `now`.
    pub fn is_valid(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// RFC 3339 of seconds since the epoch.
pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether `id` looks like `<32 lowercase hex>.access`.
pub fn is_client_id(id: &str) -> bool {
    id.strip_suffix(".access")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn is_secret(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Service-token operations over the store.
pub struct ServiceTokens {
    store: Arc<dyn Storage>,
    config: ServiceTokensConfig,
    states: ArcSwap<HashMap<String, TokenState>>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens").finish_non_exhaustive()
    }
}

impl ServiceTokens {
    /// Operations over `store`.
    pub fn new(store: Arc<dyn Storage>, config: ServiceTokensConfig) -> Self {
        ServiceTokens {
            store,
            config,
            states: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Creates a token; the secret is returned once.
    pub async fn create(
        &self,
        name: &str,
        duration: Option<Duration>,
    ) -> Result<IssuedCredentials, TokenError> {
        let name = check_name(name)?;
        let now = crate::clock::now();
        let duration = duration.unwrap_or(self.config.default_duration);
        let expires_at =
            now.saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2));
        let client_id = format!("{}.access", random_hex::<16>());
        let secret = random_hex::<32>();
        let record = ServiceTokenRecord {
            client_id: client_id.clone(),
            name: name.to_owned(),
            secret_hash: sha256_hex(secret.as_bytes()),
            previous_secret_hash: None,
            previous_valid_until: None,
            created_at: now,
            expires_at,
            rotated_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        self.store.insert_service_token(&record).await?;
        self.remember(&record);
        Ok(IssuedCredentials {
            name: name.to_owned(),
            client_id,
            client_secret: secret,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Gives the token a new secret; the old one keeps working for `grace`
    /// (default `rotation_grace`). The client id stays.
    pub async fn rotate(
        &self,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<IssuedCredentials, TokenError> {
        let record = self
            .store
            .active_service_token(name)
            .await?
            .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
        let now = crate::clock::now();
        let grace = grace.unwrap_or(self.config.rotation_grace);
        let secret = random_hex::<32>();
        let until = now.saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX / 2));
        if !self
            .store
            .rotate_service_token(
                &record.client_id,
                &sha256_hex(secret.as_bytes()),
                until,
                now,
            )
            .await?
        {
            return Err(TokenError::NotFound(name.to_owned()));
        }
        Ok(IssuedCredentials {
            name: record.name,
            client_id: record.client_id,
            client_secret: secret,
            expires_at: rfc3339(record.expires_at),
        })
    }

    /// Revokes the active token with this name, at once on this replica.
    pub async fn revoke(&self, name: &str) -> Result<String, TokenError> {
        let now = crate::clock::now();
        let client_id = self
            .store
            .revoke_service_token(name, now)
            .await?
            .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
        let mut states = (**self.states.load()).clone();
        if let Some(s) = states.get_mut(&client_id) {
            s.revoked_at = Some(now);
        }
        self.states.store(Arc::new(states));
        Ok(client_id)
    }

    /// Every token.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let now = crate::clock::now();
        Ok(self
            .store
            .service_tokens()
            .await?
            .into_iter()
            .map(|t| TokenInfo {
                status: if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "active"
                },
                name: t.name,
                client_id: t.client_id,
                created_at: rfc3339(t.created_at),
                expires_at: rfc3339(t.expires_at),
                rotated_at: t.rotated_at.map(rfc3339),
                revoked_at: t.revoked_at.map(rfc3339),
                last_used_at: t.last_used_at.map(rfc3339),
            })
            .collect())
    }

    /// Checks presented credentials against the database (so a revocation
    /// or rotation made anywhere counts at once).
    pub async fn authenticate(
        &self,
        client_id: &str,
        secret: &str,
        now: i64,
    ) -> Result<ServiceIdentity, AuthFailure> {
        if !is_client_id(client_id) || !is_secret(secret) {
            return Err(AuthFailure::Malformed);
        }
        let record = match self.store.service_token(client_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(AuthFailure::UnknownClient),
            Err(e) => {
                tracing::error!(error = %e, "service token lookup failed");
                return Err(AuthFailure::Unavailable);
            }
        };
        self.remember(&record);
        let presented = sha256_hex(secret.to_ascii_lowercase().as_bytes());
        let current = constant_time_eq(presented.as_bytes(), record.secret_hash.as_bytes());
        let previous = record
            .previous_secret_hash
            .as_deref()
            .is_some_and(|h| constant_time_eq(presented.as_bytes(), h.as_bytes()))
            && record.previous_valid_until.is_some_and(|t| now < t);
        if !(current || previous) {
            return Err(AuthFailure::WrongSecret);
        }
        if record.revoked_at.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if now >= record.expires_at {
            return Err(AuthFailure::Expired);
        }
        Ok(ServiceIdentity {
            name: record.name,
            client_id: record.client_id,
        })
    }

    /// The state of a token behind an app token's `common_name`, from
    /// memory (refreshed every few seconds), else from the database.
    pub async fn state(&self, client_id: &str) -> Option<TokenState> {
        if let Some(s) = self.states.load().get(client_id) {
            return Some(s.clone());
        }
        if !is_client_id(client_id) {
            return None;
        }
        let record = self.store.service_token(client_id).await.ok()??;
        self.remember(&record);
        self.states.load().get(client_id).cloned()
    }

    /// Re-reads every token's state (revocations made by other replicas or
    /// the CLI become effective here).
    pub async fn refresh_states(&self) -> Result<(), StoreError> {
        let all = self.store.service_tokens().await?;
        let map = all
            .into_iter()
            .map(|t| {
                (
                    t.client_id,
                    TokenState {
                        name: t.name,
                        expires_at: t.expires_at,
                        revoked_at: t.revoked_at,
                    },
                )
            })
            .collect();
        self.states.store(Arc::new(map));
        Ok(())
    }

    fn remember(&self, record: &ServiceTokenRecord) {
        let state = TokenState {
            name: record.name.clone(),
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
        };
        if self.states.load().get(&record.client_id) == Some(&state) {
            return;
        }
        self.states.rcu(|old| {
            let mut map = (**old).clone();
            map.insert(record.client_id.clone(), state.clone());
            map
        });
    }
}

fn check_name(name: &str) -> Result<&str, TokenError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(TokenError::BadName);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(is_client_id(&format!("{}.access", "0a".repeat(16))));
        assert!(!is_client_id(&format!("{}.access", "0A".repeat(16))));
        assert!(!is_client_id("abc.access"));
        assert!(!is_client_id(&"0".repeat(32)));
        assert!(is_secret(&"f".repeat(64)));
        assert!(!is_secret(&"g".repeat(64)));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
