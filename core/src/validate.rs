//! The [`Validator`]: signature, issuer, audience and time checks, with a
//! verified-token cache in front.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::claims::AccessClaims;
use crate::clock::{Clock, SystemClock};
use crate::error::{ConfigError, ValidationError, sanitize};
use crate::extract::Extractor;
use crate::jws::{Compact, asymmetric_alg, decode_b64, parse_compact, parse_strict_json};
use crate::keys::KeySet;
use crate::source::KeySource;
use crate::wire::{CERTS_PATH, claims as names};

/// Default token size limit.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 16 * 1024;
/// Default clock-skew leeway.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Default number of verified tokens remembered.
pub const DEFAULT_CACHE_CAPACITY: u64 = 10_000;

/// Builds a [`Validator`]; see [`Validator::builder`].
#[derive(Clone)]
pub struct ValidatorBuilder {
    team_domain: String,
    audiences: Vec<String>,
    leeway: Duration,
    algorithms: Vec<Algorithm>,
    max_token_size: usize,
    clock: Arc<dyn Clock>,
    source: Option<KeySource>,
    cache_capacity: u64,
    extractor: Extractor,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::CoreMetrics>,
}

impl std::fmt::Debug for ValidatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorBuilder")
            .field("team_domain", &self.team_domain)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl ValidatorBuilder {
    /// Adds an accepted audience (an application AUD tag).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }
    /// Adds several accepted audiences.
    pub fn audiences<I, S>(mut self, auds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.audiences.extend(auds.into_iter().map(Into::into));
        self
    }
    /// Clock-skew leeway for `exp`, `nbf` and `iat` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
    /// Replaces the algorithm allow-list (default `[RS256]`). HMAC
    /// algorithms are refused at build time.
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }
    /// Largest token accepted, in bytes (default 16 KiB).
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.max_token_size = bytes;
        self
    }
    /// Where "now" comes from (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Where keys come from (default: `{team_domain}/cdn-cgi/access/certs`).
    /// Several validators may share one source.
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.source = Some(source);
        self
    }
    /// Verified-token cache capacity (default 10 000; 0 disables it).
    pub fn cache_capacity(mut self, entries: u64) -> Self {
        self.cache_capacity = entries;
        self
    }
    /// Also accept `Authorization: Bearer` in [`Validator::validate_headers`].
    pub fn allow_bearer(mut self, allow: bool) -> Self {
        self.extractor.allow_bearer = allow;
        self
    }
    /// Count validations, refreshes and cache hits in these metrics.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: crate::metrics::CoreMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the settings and builds the validator.
    pub fn build(self) -> Result<Validator, ConfigError> {
        let issuer = normalize_team_domain(&self.team_domain)?;
        let audiences: Vec<String> = self
            .audiences
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(ConfigError::NoAudience);
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::Algorithms("it is empty"));
        }
        if self
            .algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(ConfigError::Algorithms(
                "HMAC algorithms are never accepted",
            ));
        }
        let source = match self.source {
            Some(s) => s,
            None => KeySource::remote(format!("{issuer}{CERTS_PATH}")).build()?,
        };
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            source.set_metrics(m.clone());
        }
        let cache = (self.cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(self.cache_capacity)
                .expire_after(ExpireAtTokenExpiry)
                .build()
        });
        Ok(Validator {
            inner: Arc::new(Inner {
                issuer,
                audiences,
                leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
                algorithms: self.algorithms,
                max_token_size: self.max_token_size,
                clock: self.clock,
                source,
                cache,
                hasher: foldhash::quality::RandomState::default(),
                extractor: self.extractor,
                #[cfg(feature = "metrics")]
                metrics: self.metrics,
            }),
        })
    }
}

fn normalize_team_domain(raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let bad = || ConfigError::InvalidTeamDomain(raw.to_owned());
    let url = url::Url::parse(trimmed).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if !plain {
        return Err(bad());
    }
    Ok(trimmed.to_owned())
}

/// A remembered verdict. The cache is keyed by a fast keyed 64-bit hash of
/// the whole token (random seed per validator); the token itself is kept so
/// a hit is only a hit when the presented token is byte-for-byte the one
/// that was verified, compared without early exit. A hash collision is
/// therefore only ever a miss. (SHA-256 of the token cost about as much as
/// the rest of a hit together.)
#[derive(Clone)]
struct CachedVerdict {
    token: Arc<str>,
    claims: Arc<AccessClaims>,
    epoch: u64,
    ttl: Duration,
}

struct ExpireAtTokenExpiry;

impl moka::Expiry<u64, CachedVerdict> for ExpireAtTokenExpiry {
    fn expire_after_create(&self, _: &u64, value: &CachedVerdict, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

struct Inner {
    issuer: String,
    audiences: Vec<String>,
    leeway: i64,
    algorithms: Vec<Algorithm>,
    max_token_size: usize,
    clock: Arc<dyn Clock>,
    source: KeySource,
    cache: Option<moka::sync::Cache<u64, CachedVerdict>>,
    hasher: foldhash::quality::RandomState,
    extractor: Extractor,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::CoreMetrics>,
}

/// Validates Access tokens for one team domain and a set of audiences.
///
/// Cheap to clone; clones share keys, cache and settings.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences)
            .field("algorithms", &self.inner.algorithms)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done(Result<Arc<AccessClaims>, ValidationError>),
    /// The key is not loaded; a refresh may bring it.
    KeyMissing {
        kid: Option<String>,
    },
}

impl Validator {
    /// Starts a builder for the team domain (the issuer), e.g.
    /// `https://acme.cloudflareaccess.com`; a trailing slash is ignored.
    pub fn builder(team_domain: impl Into<String>) -> ValidatorBuilder {
        ValidatorBuilder {
            team_domain: team_domain.into(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            algorithms: vec![Algorithm::RS256],
            max_token_size: DEFAULT_MAX_TOKEN_SIZE,
            clock: Arc::new(SystemClock),
            source: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            extractor: Extractor::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Starts a builder from a bare Cloudflare team name:
    /// `acme` → `https://acme.cloudflareaccess.com`.
    pub fn from_team_name(team: &str) -> ValidatorBuilder {
        Self::builder(format!("https://{}.cloudflareaccess.com", team.trim()))
    }

    /// A validator with the same settings and key source but other
    /// audiences (and its own cache), e.g. for one scope of an app.
    pub fn with_audiences<I, S>(&self, audiences: I) -> Result<Validator, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let i = &self.inner;
        Validator::builder(i.issuer.clone())
            .audiences(audiences)
            .leeway(Duration::from_secs(i.leeway.max(0) as u64))
            .algorithms(i.algorithms.iter().copied())
            .max_token_size(i.max_token_size)
            .clock(i.clock.clone())
            .key_source(i.source.clone())
            .cache_capacity(
                i.cache
                    .as_ref()
                    .map_or(0, |c| c.policy().max_capacity().unwrap_or(0)),
            )
            .allow_bearer(i.extractor.allow_bearer)
            .build_with_metrics(
                #[cfg(feature = "metrics")]
                i.metrics.clone(),
            )
    }

    /// The issuer tokens must carry.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }
    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.inner.audiences
    }
    /// The key source.
    pub fn key_source(&self) -> &KeySource {
        &self.inner.source
    }
    /// How tokens are found in requests.
    pub fn extractor(&self) -> Extractor {
        self.inner.extractor
    }
    /// The metrics this validator records into, if any.
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> Option<&crate::metrics::CoreMetrics> {
        self.inner.metrics.as_ref()
    }

    /// Validates a token, fetching keys when none are loaded yet or when
    /// the token names a `kid` not loaded (at most once per interval).
    pub async fn validate(&self, token: &str) -> Result<Arc<AccessClaims>, ValidationError> {
        let result = match self.attempt(token) {
            Attempt::Done(r) => r,
            Attempt::KeyMissing { .. } => {
                self.inner.source.refresh_for_unknown_kid().await;
                match self.attempt(token) {
                    Attempt::Done(r) => r,
                    Attempt::KeyMissing { kid } => Err(self.key_missing(kid)),
                }
            }
        };
        self.observe(&result);
        result
    }

    /// Validates with the keys loaded right now, never fetching. Useful
    /// outside async code; returns `keys_unavailable` before the first load.
    pub fn validate_with_current_keys(
        &self,
        token: &str,
    ) -> Result<Arc<AccessClaims>, ValidationError> {
        let result = match self.attempt(token) {
            Attempt::Done(r) => r,
            Attempt::KeyMissing { kid } => Err(self.key_missing(kid)),
        };
        self.observe(&result);
        result
    }

    /// Finds the token in request headers and validates it.
    pub async fn validate_headers(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<AccessClaims>, ValidationError> {
        match self.inner.extractor.extract(headers) {
            Some((token, _)) => self.validate(token).await,
            None => {
                let result = Err(ValidationError::MissingToken);
                self.observe(&result);
                result
            }
        }
    }

    fn observe(&self, result: &Result<Arc<AccessClaims>, ValidationError>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner.metrics {
            m.record(match result {
                Ok(_) => "ok",
                Err(e) => e.code().as_str(),
            });
        }
        if let Err(e) = result {
            tracing::debug!(code = e.code().as_str(), error = %e, "access token rejected");
        }
    }

    fn key_missing(&self, kid: Option<String>) -> ValidationError {
        if self.inner.source.snapshot().is_loaded() {
            return ValidationError::UnknownKey { kid };
        }
        ValidationError::KeysUnavailable {
            reason: self
                .inner
                .source
                .status()
                .last_error
                .unwrap_or_else(|| "no key has been loaded yet".to_owned()),
        }
    }

    fn attempt(&self, token: &str) -> Attempt {
        let i = &self.inner;
        if token.is_empty() {
            return Attempt::Done(Err(ValidationError::MissingToken));
        }
        if token.len() > i.max_token_size {
            return Attempt::Done(Err(ValidationError::malformed(
                "token exceeds the size limit",
            )));
        }
        let now = i.clock.now();
        let hash = i
            .cache
            .as_ref()
            .map(|_| i.hasher.hash_one(token.as_bytes()));
        if let (Some(cache), Some(hash)) = (&i.cache, &hash)
            && let Some(hit) = cache.get(hash)
            && same_token(&hit.token, token)
        {
            if hit.epoch == i.source.epoch() {
                #[cfg(feature = "metrics")]
                if let Some(m) = &i.metrics {
                    m.cache_hits.inc();
                }
                return Attempt::Done(self.check_time(&hit.claims, now).map(|()| hit.claims));
            }
            // A key was dropped since this verdict; verify afresh.
            cache.invalidate(hash);
        }
        let snapshot = i.source.snapshot();
        let compact = match parse_compact(token) {
            Ok(c) => c,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let alg = match asymmetric_alg(&compact.header.alg) {
            Ok(alg) if i.algorithms.contains(&alg) => alg,
            Ok(_) | Err(_) => {
                return Attempt::Done(Err(ValidationError::DisallowedAlgorithm {
                    alg: sanitize(&compact.header.alg),
                    key_mismatch: false,
                }));
            }
        };
        match verify_parsed(&compact, alg, snapshot.keys()) {
            Ok(()) => {}
            Err(KeyStep::Missing { kid }) => return Attempt::KeyMissing { kid },
            Err(KeyStep::Refused(e)) => return Attempt::Done(Err(e)),
        }
        let claims = match decode_b64(compact.payload_b64).and_then(|bytes| parse_claims(&bytes)) {
            Ok(c) => Arc::new(c),
            Err(e) => return Attempt::Done(Err(e)),
        };
        if let Err(e) = self.check_claims(&claims, now) {
            return Attempt::Done(Err(e));
        }
        if let (Some(cache), Some(hash)) = (&i.cache, hash) {
            let remaining = claims.exp.saturating_add(i.leeway).saturating_sub(now);
            if remaining > 0 {
                cache.insert(
                    hash,
                    CachedVerdict {
                        token: Arc::from(token),
                        claims: claims.clone(),
                        epoch: snapshot.epoch(),
                        ttl: Duration::from_secs(remaining as u64),
                    },
                );
            }
        }
        Attempt::Done(Ok(claims))
    }

    fn check_claims(&self, claims: &AccessClaims, now: i64) -> Result<(), ValidationError> {
        let i = &self.inner;
        if claims.iss.trim_end_matches('/') != i.issuer {
            return Err(ValidationError::WrongIssuer);
        }
        if !claims
            .aud
            .iter()
            .any(|a| i.audiences.iter().any(|ours| ours == a))
        {
            return Err(ValidationError::WrongAudience);
        }
        self.check_time(claims, now)
    }

    fn check_time(&self, claims: &AccessClaims, now: i64) -> Result<(), ValidationError> {
        let leeway = self.inner.leeway;
        if now > claims.exp.saturating_add(leeway) {
            return Err(ValidationError::Expired { exp: claims.exp });
        }
        for not_before in [claims.nbf, claims.iat].into_iter().flatten() {
            if not_before > now.saturating_add(leeway) {
                return Err(ValidationError::NotYetValid { not_before });
            }
        }
        Ok(())
    }
}

impl ValidatorBuilder {
    fn build_with_metrics(
        self,
        #[cfg(feature = "metrics")] metrics: Option<crate::metrics::CoreMetrics>,
    ) -> Result<Validator, ConfigError> {
        #[cfg(feature = "metrics")]
        let this = ValidatorBuilder { metrics, ..self };
        #[cfg(not(feature = "metrics"))]
        let this = self;
        this.build()
    }
}

enum KeyStep {
    /// No key with this kid is loaded (a refresh may help).
    Missing {
        kid: Option<String>,
    },
    Refused(ValidationError),
}

/// Key selection and signature check for a parsed token whose `alg` has
/// already passed the allow-list.
fn verify_parsed(compact: &Compact<'_>, alg: Algorithm, keys: &KeySet) -> Result<(), KeyStep> {
    let kid = compact.header.kid.as_deref();
    let Some(key) = keys.find(kid) else {
        return Err(if kid.is_none() && keys.len() > 1 {
            KeyStep::Refused(ValidationError::UnknownKey { kid: None })
        } else {
            KeyStep::Missing {
                kid: kid.map(sanitize),
            }
        });
    };
    if !key.accepts(alg) {
        return Err(KeyStep::Refused(ValidationError::DisallowedAlgorithm {
            alg: sanitize(&compact.header.alg),
            key_mismatch: true,
        }));
    }
    let signature = decode_b64(compact.signature_b64).map_err(KeyStep::Refused)?;
    if key.verify(alg, compact.signing_input.as_bytes(), &signature) {
        Ok(())
    } else {
        Err(KeyStep::Refused(ValidationError::BadSignature))
    }
}

/// Verifies a compact JWS against a key set — the key-selection and
/// signature layer of [`Validator`] without any claim checks — and returns
/// the decoded payload.
///
/// For JWS that are not Access tokens (and for conformance tests); to
/// validate an Access token use [`Validator::validate`].
pub fn verify_jws(
    token: &str,
    keys: &KeySet,
    algorithms: &[Algorithm],
) -> Result<Vec<u8>, ValidationError> {
    let compact = parse_compact(token)?;
    let alg = match asymmetric_alg(&compact.header.alg) {
        Ok(alg) if algorithms.contains(&alg) => alg,
        _ => {
            return Err(ValidationError::DisallowedAlgorithm {
                alg: sanitize(&compact.header.alg),
                key_mismatch: false,
            });
        }
    };
    verify_parsed(&compact, alg, keys).map_err(|step| match step {
        KeyStep::Missing { kid } => ValidationError::UnknownKey { kid },
        KeyStep::Refused(e) => e,
    })?;
    decode_b64(compact.payload_b64)
}

/// Equality without early exit, so the time taken does not reveal how
/// much of a remembered token a guess got right.
fn same_token(stored: &str, presented: &str) -> bool {
    let (a, b) = (stored.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses the payload: a JSON object without duplicate members, with
/// `iss`, `aud` and `exp` present. A missing `iss` is `wrong_issuer`, a
/// missing `aud` `wrong_audience` (the token is not for us), a missing
/// `exp` `malformed_token`.
fn parse_claims(bytes: &[u8]) -> Result<AccessClaims, ValidationError> {
    let value = parse_strict_json(bytes)
        .map_err(|_| ValidationError::malformed("claims are not JSON without duplicate members"))?;
    let Value::Object(map) = &value else {
        return Err(ValidationError::malformed("claims are not a JSON object"));
    };
    if !map.contains_key(names::ISS) {
        return Err(ValidationError::WrongIssuer);
    }
    if !map.contains_key(names::AUD) {
        return Err(ValidationError::WrongAudience);
    }
    if !map.contains_key(names::EXP) {
        return Err(ValidationError::malformed("the exp claim is required"));
    }
    serde_json::from_value(value)
        .map_err(|_| ValidationError::malformed("a registered claim has the wrong type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_token_is_exact() {
        assert!(same_token("a.b.c", "a.b.c"));
        assert!(!same_token("a.b.c", "a.b.d"));
        assert!(!same_token("a.b.c", "a.b.c."));
        assert!(!same_token("", "x"));
    }

    #[test]
    fn team_domain_normalisation() {
        assert_eq!(
            normalize_team_domain("https://acme.cloudflareaccess.com/").unwrap(),
            "https://acme.cloudflareaccess.com"
        );
        assert_eq!(
            normalize_team_domain("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "acme",
            "ftp://acme.com",
            "https://acme.com/path",
            "https://u:p@acme.com",
            "https://acme.com?x=1",
            "",
        ] {
            assert!(normalize_team_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builder_refuses_unsafe_settings() {
        let src = || KeySource::from_key_set(crate::keys::KeySet::default());
        assert!(matches!(
            Validator::builder("https://a.com")
                .key_source(src())
                .build(),
            Err(ConfigError::NoAudience)
        ));
        assert!(matches!(
            Validator::builder("https://a.com")
                .audience("  ")
                .key_source(src())
                .build(),
            Err(ConfigError::NoAudience)
        ));
        assert!(matches!(
            Validator::builder("https://a.com")
                .audience("x")
                .algorithms([Algorithm::HS256])
                .key_source(src())
                .build(),
            Err(ConfigError::Algorithms(_))
        ));
        assert!(matches!(
            Validator::builder("https://a.com")
                .audience("x")
                .algorithms([])
                .key_source(src())
                .build(),
            Err(ConfigError::Algorithms(_))
        ));
        let v = Validator::from_team_name("molten")
            .audience("x")
            .build()
            .unwrap();
        assert_eq!(v.issuer(), "https://molten.cloudflareaccess.com");
    }
}
