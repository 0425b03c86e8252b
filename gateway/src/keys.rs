//! Signing keys: generation, encryption at rest, rotation, publication at
//! `/cdn-cgi/access/certs`, and signing.
//!
//! Keys are RSA-2048 (RS256), generated with aws-lc-rs on a blocking
//! thread, stored with the private half sealed by the master key. Each key
//! has a *generation* (a unique, increasing number) and an `activates_at`
//! time. The signing key is the highest generation already active, so every
//! replica reading the same rows signs with the same key; generation
//! numbers are claimed by a unique-keyed insert, so when two replicas
//! decide to rotate at once exactly one new key wins and the other replica
//! adopts it.
//!
//! A new key is inserted `publish_ahead` before it activates, so it is in
//! the certs document before any token names it; a superseded key stays
//! published for `keep_previous` (default 7 days) after it stopped
//! signing, so tokens it signed stay valid until they expire.
//!
//! Tokens are signed through an `RsaKeyPair` parsed once when the key is
//! loaded; signing a token is one RSA operation plus a little base64.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use serde_json::{Value, json};

use crate::crypto::{MasterKey, b64url, sha256_hex};
use crate::store::{SigningKeyRecord, Storage, StoreError};

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key does not decrypt with this master key.
    #[error(
        "signing key {kid} cannot be decrypted with this master key (fingerprint {fingerprint}); \
         every replica must use the same PORTCULLIS_MASTER_KEY or key file"
    )]
    WrongMasterKey {
        /// The key id.
        kid: String,
        /// The fingerprint of the master key in use.
        fingerprint: String,
    },
    /// Key generation or parsing failed.
    #[error("key material error: {0}")]
    Crypto(String),
}

/// One loaded signing key.
pub struct SigningKey {
    generation: i64,
    kid: String,
    created_at: i64,
    activates_at: i64,
    pair: RsaKeyPair,
    /// base64url of `{"alg":"RS256","kid":"…"}`, computed once.
    header_b64: String,
    jwk: Value,
    cert_pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("generation", &self.generation)
            .field("kid", &self.kid)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses PKCS#8 DER once; the result signs any number of tokens.
    pub fn from_pkcs8(
        generation: i64,
        created_at: i64,
        activates_at: i64,
        pkcs8: &[u8],
        cert_pem: String,
    ) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Crypto(e.to_string()))?;
        let public = pair.public_key();
        let spki = public
            .as_der()
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let kid = sha256_hex(spki.as_ref());
        let jwk = json!({
            "kid": kid,
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "e": b64url(public.exponent().big_endian_without_leading_zero()),
            "n": b64url(public.modulus().big_endian_without_leading_zero()),
        });
        let header_b64 = b64url(json!({"alg": "RS256", "kid": kid}).to_string());
        Ok(SigningKey {
            generation,
            kid,
            created_at,
            activates_at,
            pair,
            header_b64,
            jwk,
            cert_pem,
        })
    }

    /// The key id: lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The generation number.
    pub fn generation(&self) -> i64 {
        self.generation
    }
    /// When the key was created (and published).
    pub fn created_at(&self) -> i64 {
        self.created_at
    }
    /// When the key starts signing.
    pub fn activates_at(&self) -> i64 {
        self.activates_at
    }
    /// The public JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Signs a claims object: `{"alg":"RS256","kid":…}.claims.signature`.
    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Crypto(e.to_string()))?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 350);
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&b64url(&payload));
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        token.push('.');
        token.push_str(&b64url(&signature));
        Ok(token)
    }
}

/// A freshly generated key: the record to store.
fn generate(
    master: &MasterKey,
    generation: i64,
    now: i64,
    activates_at: i64,
) -> Result<SigningKeyRecord, KeyError> {
    let crypto = |e: &dyn std::fmt::Display| KeyError::Crypto(e.to_string());
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| crypto(&e))?;
    let pkcs8 = pair.as_der().map_err(|e| crypto(&e))?;
    let cert_pem = self_signed_cert(pkcs8.as_ref())?;
    let key = SigningKey::from_pkcs8(generation, now, activates_at, pkcs8.as_ref(), cert_pem)?;
    Ok(SigningKeyRecord {
        generation,
        kid: key.kid.clone(),
        created_at: now,
        activates_at,
        public_jwk: key.jwk.to_string(),
        cert_pem: key.cert_pem.clone(),
        private_key_enc: master.seal(&key.kid, pkcs8.as_ref()),
    })
}

/// The X.509 form Cloudflare publishes in `public_cert(s)`.
fn self_signed_cert(pkcs8: &[u8]) -> Result<String, KeyError> {
    let crypto = |e: rcgen::Error| KeyError::Crypto(e.to_string());
    let key = rcgen::KeyPair::try_from(pkcs8).map_err(crypto)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis Access signing key");
    Ok(params.self_signed(&key).map_err(crypto)?.pem())
}

/// The keys currently published, parsed and ready to sign.
#[derive(Debug)]
pub struct KeyRing {
    /// Published keys by generation (pending, active, recently superseded).
    keys: Vec<Arc<SigningKey>>,
    /// Validates the gateway's own tokens against exactly these keys.
    validator: Option<portcullis_core::Validator>,
}

impl KeyRing {
    /// The key that signs at `now`: the highest generation already active.
    pub fn signer(&self, now: i64) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .or_else(|| self.keys.first())
    }

    /// Every published key.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// A validator for the gateway's own tokens (all app audiences), or
    /// `None` when no app is configured.
    pub fn validator(&self) -> Option<&portcullis_core::Validator> {
        self.validator.as_ref()
    }

    /// The certs document in Cloudflare's shape.
    pub fn certs_document(&self, now: i64) -> Value {
        let signer = self.signer(now).map(|k| k.kid.as_str());
        let certs: Vec<Value> = self
            .keys
            .iter()
            .map(|k| json!({"kid": k.kid, "cert": k.cert_pem}))
            .collect();
        let current = self
            .keys
            .iter()
            .find(|k| Some(k.kid.as_str()) == signer)
            .map(|k| json!({"kid": k.kid, "cert": k.cert_pem}))
            .unwrap_or(Value::Null);
        json!({
            "keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>(),
            "public_cert": current,
            "public_certs": certs,
        })
    }
}

/// Public facts about a stored key, for `keys list` and the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    /// Generation.
    pub generation: i64,
    /// Key id.
    pub kid: String,
    /// Created (published) at, seconds.
    pub created_at: i64,
    /// Starts signing at, seconds.
    pub activates_at: i64,
    /// Stops signing at (when a successor activates), seconds.
    pub superseded_at: Option<i64>,
    /// `pending`, `signing`, `previous` (still published) or `retired`.
    pub state: &'static str,
}

/// Loads, rotates and publishes the signing keys.
pub struct KeyManager {
    store: Arc<dyn Storage>,
    master: Arc<MasterKey>,
    config: crate::config::KeysConfig,
    issuer: String,
    audiences: Vec<String>,
    ring: ArcSwap<KeyRing>,
    metrics: std::sync::OnceLock<portcullis_core::CoreMetrics>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("ring", &self.ring.load())
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

impl KeyManager {
    /// A manager over `store`; call [`KeyManager::start`] to load keys.
    /// `audiences` are the AUD tags the gateway's own validator accepts.
    pub fn new(
        store: Arc<dyn Storage>,
        master: Arc<MasterKey>,
        config: crate::config::KeysConfig,
        issuer: String,
        audiences: Vec<String>,
    ) -> Self {
        KeyManager {
            store,
            master,
            config,
            issuer,
            audiences,
            ring: ArcSwap::from_pointee(KeyRing {
                keys: Vec::new(),
                validator: None,
            }),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Makes the gateway's own validator (of app cookies and
    /// `Cf-Access-Jwt-Assertion` headers) count into `metrics`
    /// (`portcullis_validations_total{result}` and the cache hits). Takes
    /// effect for validators built from now on, so call it before
    /// [`start`](Self::start); a second call is ignored.
    pub fn set_metrics(&self, metrics: portcullis_core::CoreMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Loads the keys, creating the first one when there is none and the
    /// next one when rotation is due.
    pub async fn start(&self) -> Result<(), KeyError> {
        self.maintain(crate::clock::now()).await
    }

    /// The current key ring (lock-free).
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.load_full()
    }

    /// Rotation check plus reload; run every `reload_interval`.
    pub async fn maintain(&self, now: i64) -> Result<(), KeyError> {
        let records = self.store.signing_keys().await?;
        let next_activation = match records.last() {
            None => Some(now),
            Some(last) => {
                let due = last.activates_at + secs(self.config.rotate_every)
                    - secs(self.config.publish_ahead);
                (last.activates_at <= now && now >= due).then(|| {
                    (last.activates_at + secs(self.config.rotate_every))
                        .max(now + secs(self.config.publish_ahead))
                })
            }
        };
        if let Some(activates_at) = next_activation {
            let generation = records.last().map_or(1, |r| r.generation + 1);
            self.insert_new(generation, now, activates_at).await?;
        }
        self.reload(now).await
    }

    /// Creates the next key now. With `immediate` it signs at once (for a
    /// compromised key; validators with cached certs refetch on the unknown
    /// kid); otherwise it signs after `publish_ahead`.
    pub async fn rotate(&self, immediate: bool) -> Result<KeyInfo, KeyError> {
        let now = crate::clock::now();
        loop {
            let records = self.store.signing_keys().await?;
            let generation = records.last().map_or(1, |r| r.generation + 1);
            let floor = records.last().map_or(now, |r| r.activates_at);
            let activates_at = if immediate {
                now.max(floor)
            } else {
                (now + secs(self.config.publish_ahead)).max(floor)
            };
            if let Some(record) = self.insert_new(generation, now, activates_at).await? {
                self.reload(now).await?;
                return Ok(KeyInfo {
                    generation,
                    kid: record.kid,
                    created_at: now,
                    activates_at,
                    superseded_at: None,
                    state: if activates_at <= now {
                        "signing"
                    } else {
                        "pending"
                    },
                });
            }
            // Another replica took this generation; try the next one.
        }
    }

    async fn insert_new(
        &self,
        generation: i64,
        now: i64,
        activates_at: i64,
    ) -> Result<Option<SigningKeyRecord>, KeyError> {
        let master = self.master.clone();
        let record =
            tokio::task::spawn_blocking(move || generate(&master, generation, now, activates_at))
                .await
                .map_err(|e| KeyError::Crypto(e.to_string()))??;
        if self.store.insert_signing_key(&record).await? {
            tracing::info!(kid = %record.kid, generation, activates_at, "new signing key published");
            Ok(Some(record))
        } else {
            tracing::info!(
                generation,
                "another replica created this key generation first"
            );
            Ok(None)
        }
    }

    /// Re-reads the keys from storage and publishes those in their window.
    pub async fn reload(&self, now: i64) -> Result<(), KeyError> {
        let records = self.store.signing_keys().await?;
        let keep = secs(self.config.keep_previous);
        let current = self.ring.load_full();
        let mut keys = Vec::new();
        let mut oldest_needed = None;
        for (i, record) in records.iter().enumerate() {
            let superseded_at = records
                .get(i + 1..)
                .and_then(|rest| rest.iter().find(|n| n.activates_at <= now))
                .map(|n| n.activates_at);
            if superseded_at.is_some_and(|t| t + keep < now) {
                continue;
            }
            oldest_needed.get_or_insert(record.generation);
            if let Some(loaded) = current.keys.iter().find(|k| k.kid == record.kid) {
                keys.push(loaded.clone());
                continue;
            }
            let pkcs8 = self
                .master
                .open(&record.kid, &record.private_key_enc)
                .ok_or_else(|| KeyError::WrongMasterKey {
                    kid: record.kid.clone(),
                    fingerprint: self.master.fingerprint().to_owned(),
                })?;
            let key = SigningKey::from_pkcs8(
                record.generation,
                record.created_at,
                record.activates_at,
                &pkcs8,
                record.cert_pem.clone(),
            )?;
            keys.push(Arc::new(key));
        }
        // Keys retired a day past their window hold private material no
        // one needs; drop them.
        if let Some(oldest) = oldest_needed
            && records.first().is_some_and(|r| r.generation < oldest)
        {
            let first_kept = records
                .iter()
                .position(|r| r.generation == oldest)
                .unwrap_or(0);
            let grace_over = records
                .get(first_kept)
                .is_some_and(|r| r.activates_at + keep + 86_400 < now);
            if grace_over {
                let _ = self.store.delete_signing_keys_before(oldest).await;
            }
        }
        let unchanged = keys.len() == current.keys.len()
            && keys
                .iter()
                .zip(current.keys.iter())
                .all(|(a, b)| a.kid == b.kid);
        if unchanged && (current.validator.is_some() || self.audiences.is_empty()) {
            return Ok(());
        }
        let validator = self.build_validator(&keys);
        tracing::info!(
            published = keys.len(),
            signing = keys
                .iter()
                .rev()
                .find(|k| k.activates_at <= now)
                .map(|k| k.kid.as_str())
                .unwrap_or(""),
            "signing keys loaded"
        );
        self.ring.store(Arc::new(KeyRing { keys, validator }));
        Ok(())
    }

    fn build_validator(&self, keys: &[Arc<SigningKey>]) -> Option<portcullis_core::Validator> {
        if self.audiences.is_empty() || keys.is_empty() {
            return None;
        }
        let jwks: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        let set = portcullis_core::KeySet::from_jwks(&jwks).ok()?;
        let mut builder = portcullis_core::Validator::builder(self.issuer.clone())
            .audiences(self.audiences.iter().cloned())
            .key_source(portcullis_core::KeySource::from_key_set(set));
        if let Some(m) = self.metrics.get() {
            builder = builder.metrics(m.clone());
        }
        builder
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot build the token validator"))
            .ok()
    }

    /// Public facts about every stored key.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let now = crate::clock::now();
        let keep = secs(self.config.keep_previous);
        let records = self.store.signing_keys().await?;
        let signer = records
            .iter()
            .rev()
            .find(|r| r.activates_at <= now)
            .map(|r| r.generation);
        Ok(records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let superseded_at = records[i + 1..]
                    .iter()
                    .find(|n| n.activates_at <= now)
                    .map(|n| n.activates_at);
                let state = if r.activates_at > now {
                    "pending"
                } else if Some(r.generation) == signer {
                    "signing"
                } else if superseded_at.is_some_and(|t| t + keep >= now) {
                    "previous"
                } else {
                    "retired"
                };
                KeyInfo {
                    generation: r.generation,
                    kid: r.kid.clone(),
                    created_at: r.created_at,
                    activates_at: r.activates_at,
                    superseded_at,
                    state,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_signs_tokens_core_verifies() {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let cert = self_signed_cert(pkcs8.as_ref()).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = SigningKey::from_pkcs8(1, 0, 0, pkcs8.as_ref(), cert).unwrap();
        assert_eq!(key.kid().len(), 64);
        let ring = KeyRing {
            keys: vec![Arc::new(key)],
            validator: None,
        };
        let doc = ring.certs_document(0);
        assert_eq!(doc["keys"][0]["kid"], ring.keys[0].kid());
        assert_eq!(doc["public_cert"]["kid"], ring.keys[0].kid());
        assert_eq!(doc["public_certs"].as_array().unwrap().len(), 1);
        let now = portcullis_core::test_support::now();
        let aud = "a".repeat(64);
        let claims =
            portcullis_core::test_support::service_claims("https://t.example", &aud, "x.access");
        let token = ring.signer(now).unwrap().sign(&claims).unwrap();
        let source = portcullis_core::KeySource::from_json(&doc.to_string()).unwrap();
        let v = portcullis_core::Validator::builder("https://t.example")
            .audience(aud)
            .key_source(source)
            .build()
            .unwrap();
        let got = v.validate_with_current_keys(&token).unwrap();
        assert_eq!(got.common_name.as_deref(), Some("x.access"));
    }
}
