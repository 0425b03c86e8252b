//! The [`Validator`]: signature, issuer, audience and time checks, with a
//! verified-token cache in front.

use std::cell::RefCell;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::wire::{CERTS_PATH, JWT_ASSERTION_HEADER, claims as names};

/// The token header, parsed once (a `&str` name is parsed on every lookup).
const TOKEN_HEADER: http::HeaderName = http::HeaderName::from_static(JWT_ASSERTION_HEADER);

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
                id: NEXT_VALIDATOR_ID.fetch_add(1, Ordering::Relaxed),
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

/// Identities of validators for the per-thread memo: never reused, unlike
/// the address of a dropped validator's `Inner`.
static NEXT_VALIDATOR_ID: AtomicU64 = AtomicU64::new(1);

/// The last verdict this thread took from (or put into) a validator's
/// cache. A repeated token — one client on a keep-alive connection, the
/// common case behind an edge — is then recognised with one comparison,
/// without hashing the token or touching the shared cache (whose lookup
/// clones the entry and records the read for its eviction policy).
///
/// It is a view of the cache, not a second one: it is written only with
/// verdicts the cache holds, is only used by the validator (`validator`,
/// a never-reused id) and key-set epoch it was made under, matches only
/// the byte-for-byte same token (compared without early exit), and every
/// use re-checks the times, exactly as a cache hit does. A validator
/// without a cache never uses it.
struct Memo {
    validator: u64,
    epoch: u64,
    token: Arc<str>,
    claims: Arc<AccessClaims>,
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

struct Inner {
    /// Unique per built validator (clones share it); keys the memo.
    id: u64,
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

    /// Validates without waiting when no key fetch is needed: `Some` with
    /// exactly what [`validate`](Self::validate) would return (and counted
    /// the same way), `None` when the token names a key that is not loaded
    /// (or none is loaded yet) and `validate` would fetch keys first.
    ///
    /// Middleware uses it to answer a repeated token (a cache hit) without
    /// building a future, and falls back to `validate` on `None`:
    ///
    /// ```
    /// # async fn demo(validator: portcullis_core::Validator, token: &str) {
    /// let result = match validator.validate_now(token) {
    ///     Some(result) => result,
    ///     None => validator.validate(token).await,
    /// };
    /// # let _ = result; }
    /// ```
    pub fn validate_now(&self, token: &str) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        match self.attempt(token) {
            Attempt::Done(result) => {
                self.observe(&result);
                Some(result)
            }
            Attempt::KeyMissing { .. } => None,
        }
    }

    /// The verdict this thread remembers for `token`, given as the raw
    /// bytes found in the request (e.g. the value of the
    /// `Cf-Access-Jwt-Assertion` header, before any conversion): `Some`
    /// with exactly what [`validate`](Self::validate) would return — the
    /// claims, or `expired` / `not_yet_valid`, as the times are checked
    /// again — when this thread last served this very token from this
    /// validator's cache under the current keys; `None` otherwise (then
    /// find and validate the token as usual).
    ///
    /// A remembered token is one this validator verified: base64url
    /// characters and dots only, no whitespace. Raw bytes equal to it are
    /// therefore a token that extraction would return unchanged, so a
    /// caller may skip extraction (the visible-ASCII check, trimming) for
    /// them. Never `Some` for a validator without a cache.
    pub fn validate_remembered(
        &self,
        token: &[u8],
    ) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        self.inner.cache.as_ref()?;
        let claims = self.remembered(token)?;
        self.count_cache_hit();
        let result = self
            .check_time(&claims, self.inner.clock.now())
            .map(|()| claims);
        self.observe(&result);
        Some(result)
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

    /// [`validate_headers`](Self::validate_headers) without waiting: `Some`
    /// with exactly its result when no key fetch is needed (a request
    /// without a token included), `None` when it would fetch keys; see
    /// [`validate_now`](Self::validate_now).
    pub fn validate_headers_now(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<Result<Arc<AccessClaims>, ValidationError>> {
        // The header comes first in extraction, and its first value is the
        // one read; a remembered token needs no extraction.
        if let Some(value) = headers.get(&TOKEN_HEADER)
            && let Some(result) = self.validate_remembered(value.as_bytes())
        {
            return Some(result);
        }
        match self.inner.extractor.extract(headers) {
            Some((token, _)) => self.validate_now(token),
            None => {
                let result = Err(ValidationError::MissingToken);
                self.observe(&result);
                Some(result)
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
        if i.cache.is_some()
            && let Some(claims) = self.remembered(token.as_bytes())
        {
            self.count_cache_hit();
            return Attempt::Done(self.check_time(&claims, now).map(|()| claims));
        }
        let hash = i
            .cache
            .as_ref()
            .map(|_| i.hasher.hash_one(token.as_bytes()));
        if let (Some(cache), Some(hash)) = (&i.cache, &hash)
            && let Some(hit) = cache.get(hash)
            && same_token(hit.token.as_bytes(), token.as_bytes())
        {
            if hit.epoch == i.source.epoch() {
                self.count_cache_hit();
                let result = self
                    .check_time(&hit.claims, now)
                    .map(|()| hit.claims.clone());
                self.remember(hit.epoch, hit.token, hit.claims);
                return Attempt::Done(result);
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
                let token: Arc<str> = Arc::from(token);
                cache.insert(
                    hash,
                    CachedVerdict {
                        token: token.clone(),
                        claims: claims.clone(),
                        epoch: snapshot.epoch(),
                        ttl: Duration::from_secs(remaining as u64),
                    },
                );
                self.remember(snapshot.epoch(), token, claims.clone());
            }
        }
        Attempt::Done(Ok(claims))
    }

    fn count_cache_hit(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner.metrics {
            m.cache_hits.inc();
        }
    }

    /// The claims of this thread's memo, when it holds `token`'s verdict
    /// from this validator under the current key epoch; see [`Memo`].
    fn remembered(&self, token: &[u8]) -> Option<Arc<AccessClaims>> {
        MEMO.try_with(|memo| {
            let memo = memo.borrow();
            let memo = memo.as_ref()?;
            (memo.validator == self.inner.id
                && same_token(memo.token.as_bytes(), token)
                && memo.epoch == self.inner.source.epoch())
            .then(|| memo.claims.clone())
        })
        .ok()
        .flatten()
    }

    /// Makes a verdict the cache holds this thread's memo.
    fn remember(&self, epoch: u64, token: Arc<str>, claims: Arc<AccessClaims>) {
        let memo = Memo {
            validator: self.inner.id,
            epoch,
            token,
            claims,
        };
        // The old memo is dropped outside the borrow.
        let _old = MEMO.try_with(|m| m.replace(Some(memo)));
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
/// much of a remembered token a guess got right. 64 bytes a step (four
/// SIMD registers), the last step overlapping the one before, as it runs
/// on every cache hit over ~850 bytes.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 64 {
        return a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    }
    let mut lanes = [0u8; 64];
    let mut compare = |x: &[u8], y: &[u8]| {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane |= x ^ y;
        }
    };
    for (x, y) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
        compare(x, y);
    }
    let last = a.len() - 64;
    compare(&a[last..], &b[last..]);
    lanes.iter().fold(0u8, |acc, lane| acc | lane) == 0
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
        assert!(same_token(b"a.b.c", b"a.b.c"));
        assert!(!same_token(b"a.b.c", b"a.b.d"));
        assert!(!same_token(b"a.b.c", b"a.b.c."));
        assert!(!same_token(b"", b"x"));
        // Across the 64-byte blocks and the tail.
        let long: Vec<u8> = (0..200u8).collect();
        assert!(same_token(&long, &long.clone()));
        for i in [0, 63, 64, 127, 128, 191, 192, 199] {
            let mut other = long.clone();
            other[i] ^= 0x40;
            assert!(!same_token(&long, &other), "{i}");
        }
    }

    mod fast_paths {
        //! `validate_now`, `validate_headers_now` and `validate_remembered`
        //! give exactly what the async path gives, and the per-thread memo
        //! is invalidated as the cache is.

        use super::super::*;
        use crate::clock::FixedClock;
        use crate::error::ErrorCode;
        use crate::test_support::{CertsServer, TestKey, now, static_source, user_claims};
        use serde_json::json;

        const ISS: &str = "https://team.example";
        const AUD: &str = "aud-fast";

        fn validator(key: &TestKey, clock: Arc<FixedClock>, capacity: u64) -> Validator {
            Validator::builder(ISS)
                .audience(AUD)
                .clock(clock)
                .cache_capacity(capacity)
                .key_source(static_source(&[key]))
                .build()
                .unwrap()
        }

        fn outcome(r: &Result<Arc<AccessClaims>, ValidationError>) -> Result<String, ErrorCode> {
            r.as_ref()
                .map(|c| c.identity().name().to_owned())
                .map_err(ValidationError::code)
        }

        #[tokio::test]
        async fn validate_now_agrees_with_validate() {
            let key = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let valid = key.sign(&user_claims(ISS, AUD, "ada@example.com"));
            let mut expired = user_claims(ISS, AUD, "ada@example.com");
            expired["exp"] = json!(now() - 3600);
            let (head, _) = valid.rsplit_once('.').unwrap();
            let tokens = [
                valid.clone(),
                key.sign(&expired),
                key.sign(&user_claims(ISS, "another-app", "ada@example.com")),
                key.sign(&user_claims("https://evil.example", AUD, "ada@example.com")),
                format!("{head}.AAAA"),
                "not.a.token".to_owned(),
                String::new(),
            ];
            for capacity in [DEFAULT_CACHE_CAPACITY, 0] {
                // Twice: once verified, once from the cache (or the memo).
                for round in 0..2 {
                    for token in &tokens {
                        let now_result = validator(&key, clock.clone(), capacity)
                            .validate_now(token)
                            .expect("the key is loaded: no fetch needed");
                        let v = validator(&key, clock.clone(), capacity);
                        let first = v.validate_now(token).unwrap();
                        let again = v.validate_now(token).unwrap();
                        let async_result = v.validate(token).await;
                        let expected = outcome(&async_result);
                        assert_eq!(outcome(&now_result), expected, "{capacity} {round}");
                        assert_eq!(outcome(&first), expected);
                        assert_eq!(outcome(&again), expected);
                    }
                }
            }
        }

        #[tokio::test]
        async fn validate_now_is_none_when_keys_must_be_fetched() {
            let key = TestKey::rsa();
            let other = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let v = validator(&key, clock, DEFAULT_CACHE_CAPACITY);
            let token = other.sign(&user_claims(ISS, AUD, "ada@example.com"));
            assert!(
                v.validate_now(&token).is_none(),
                "unknown kid: a refresh may bring it"
            );
            assert_eq!(
                v.validate(&token).await.unwrap_err().code(),
                ErrorCode::UnknownKey
            );
            let empty = Validator::builder(ISS)
                .audience(AUD)
                .key_source(KeySource::from_key_set(KeySet::default()))
                .build()
                .unwrap();
            assert!(empty.validate_now(&token).is_none(), "no keys loaded yet");
        }

        #[tokio::test]
        async fn validate_headers_now_agrees_with_validate_headers() {
            let key = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let v = validator(&key, clock, DEFAULT_CACHE_CAPACITY);
            let token = key.sign(&user_claims(ISS, AUD, "ada@example.com"));
            let cases: Vec<Vec<(&str, String)>> = vec![
                vec![],
                vec![(JWT_ASSERTION_HEADER, token.clone())],
                vec![(JWT_ASSERTION_HEADER, format!("  {token} "))],
                vec![("cookie", format!("a=1; CF_Authorization={token}"))],
                vec![
                    (JWT_ASSERTION_HEADER, "garbage".to_owned()),
                    ("cookie", format!("CF_Authorization={token}")),
                ],
                vec![(JWT_ASSERTION_HEADER, " ".to_owned())],
            ];
            for _ in 0..2 {
                for case in &cases {
                    let mut headers = http::HeaderMap::new();
                    for (name, value) in case {
                        headers.append(
                            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                            value.parse().unwrap(),
                        );
                    }
                    let now_result = v.validate_headers_now(&headers).unwrap();
                    let async_result = v.validate_headers(&headers).await;
                    assert_eq!(outcome(&now_result), outcome(&async_result), "{case:?}");
                }
            }
        }

        #[tokio::test]
        async fn remembered_tokens_are_exact_and_rechecked() {
            let key = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let v = validator(&key, clock.clone(), DEFAULT_CACHE_CAPACITY);
            let token = key.sign(&user_claims(ISS, AUD, "ada@example.com"));
            assert!(
                v.validate_remembered(token.as_bytes()).is_none(),
                "not seen yet"
            );
            let claims = v.validate(&token).await.unwrap();
            let remembered = v.validate_remembered(token.as_bytes()).unwrap().unwrap();
            assert!(Arc::ptr_eq(&claims, &remembered));
            // Only the very same bytes.
            for near in [
                format!(" {token}"),
                format!("{token} "),
                token[1..].to_owned(),
            ] {
                assert!(v.validate_remembered(near.as_bytes()).is_none(), "{near:?}");
            }
            let mut flipped = token.clone().into_bytes();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(v.validate_remembered(&flipped).is_none());
            // Only for this validator: not a clone-alike with other audiences.
            let other = v.with_audiences(["another-app"]).unwrap();
            assert!(other.validate_remembered(token.as_bytes()).is_none());
            assert_eq!(
                other.validate_now(&token).unwrap().unwrap_err().code(),
                ErrorCode::WrongAudience
            );
            // The times are checked on every use.
            clock.advance(3600 + 61);
            assert_eq!(
                v.validate_remembered(token.as_bytes())
                    .unwrap()
                    .unwrap_err()
                    .code(),
                ErrorCode::Expired
            );
            assert_eq!(
                v.validate_now(&token).unwrap().unwrap_err().code(),
                ErrorCode::Expired
            );
        }

        #[tokio::test]
        async fn nothing_is_remembered_without_a_cache() {
            let key = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let v = validator(&key, clock, 0);
            let token = key.sign(&user_claims(ISS, AUD, "ada@example.com"));
            let first = v.validate(&token).await.unwrap();
            assert!(v.validate_remembered(token.as_bytes()).is_none());
            let second = v.validate_now(&token).unwrap().unwrap();
            assert!(!Arc::ptr_eq(&first, &second), "verified afresh");
        }

        #[tokio::test]
        async fn a_dropped_key_invalidates_the_memo() {
            let old = TestKey::rsa();
            let new = TestKey::rsa();
            let server = CertsServer::start(&[&old, &new]).await.unwrap();
            let v = Validator::builder(server.team_domain())
                .audience(AUD)
                .key_source(KeySource::remote(server.certs_url()).build().unwrap())
                .build()
                .unwrap();
            let token = old.sign(&user_claims(&server.team_domain(), AUD, "ada@example.com"));
            v.validate(&token).await.unwrap();
            assert!(v.validate_remembered(token.as_bytes()).is_some());
            server.set_keys(&[&new]);
            v.key_source().refresh().await.unwrap();
            assert!(
                v.validate_remembered(token.as_bytes()).is_none(),
                "verdicts made under the old keys are not served"
            );
            assert!(v.validate_now(&token).is_none(), "its key is gone");
            assert_eq!(
                v.validate(&token).await.unwrap_err().code(),
                ErrorCode::UnknownKey
            );
        }

        #[test]
        fn validator_ids_are_not_reused() {
            let key = TestKey::rsa();
            let clock = Arc::new(FixedClock::new(now()));
            let first = validator(&key, clock.clone(), 1).inner.id;
            // The first validator is dropped: its address may be reused,
            // its id is not.
            let second = validator(&key, clock, 1).inner.id;
            assert_ne!(first, second);
        }
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
