//! Where keys come from: the team's certs endpoint, or a static document.
//!
//! A remote [`KeySource`] fetches `{team_domain}/cdn-cgi/access/certs`,
//! honours `Cache-Control: max-age` within configurable bounds, refreshes in
//! the background before the keys go stale, refreshes at most once per
//! interval when a token names an unknown `kid` (single-flight: concurrent
//! callers share one fetch), and keeps serving the last good keys when a
//! refresh fails (stale-if-error). [`KeySource::status`] reports what a
//! readiness check needs: whether keys are loaded, their age and max age,
//! and the last error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::error::ConfigError;
use crate::keys::KeySet;

/// Largest certs document accepted from the network.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// A consistent view of the loaded keys.
#[derive(Debug)]
pub struct KeySnapshot {
    keys: KeySet,
    epoch: u64,
    loaded_at: Option<Instant>,
    max_age: Option<Duration>,
}

impl KeySnapshot {
    /// The keys.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }
    /// Incremented whenever a refresh removes a key; cached verdicts made
    /// under an older epoch are discarded.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Whether any key is loaded.
    pub fn is_loaded(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// What a readiness check needs to know about a key source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeySourceStatus {
    /// Whether keys are loaded (possibly stale).
    pub loaded: bool,
    /// Number of usable keys.
    pub key_count: usize,
    /// Time since the keys were fetched (`None` for static sources or when
    /// nothing is loaded).
    pub age: Option<Duration>,
    /// The max age the keys were fetched with (`None` for static sources).
    pub max_age: Option<Duration>,
    /// The last refresh failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Wall-clock time of the last successful fetch.
    pub last_success: Option<SystemTime>,
    /// Number of fetches attempted since start.
    pub fetches: u64,
}

impl KeySourceStatus {
    /// Keys are loaded and no older than their max age.
    pub fn is_fresh(&self) -> bool {
        self.loaded
            && match (self.age, self.max_age) {
                (Some(age), Some(max)) => age <= max,
                _ => true,
            }
    }
}

/// Settings of a remote key source; see [`KeySource::remote`].
#[derive(Debug, Clone)]
pub struct RemoteSourceBuilder {
    url: String,
    min_max_age: Duration,
    max_max_age: Duration,
    default_max_age: Duration,
    unknown_kid_interval: Duration,
    timeout: Duration,
    client: Option<reqwest::Client>,
}

impl RemoteSourceBuilder {
    /// Lower bound applied to the endpoint's `max-age` (default 60 s).
    pub fn min_max_age(mut self, d: Duration) -> Self {
        self.min_max_age = d;
        self
    }
    /// Upper bound applied to the endpoint's `max-age` (default 24 h).
    pub fn max_max_age(mut self, d: Duration) -> Self {
        self.max_max_age = d;
        self
    }
    /// Max age used when the response has no `max-age` (default 10 min).
    pub fn default_max_age(mut self, d: Duration) -> Self {
        self.default_max_age = d;
        self
    }
    /// Minimum time between refreshes forced by unknown `kid`s or by
    /// validations while no key is loaded (default 10 s).
    pub fn unknown_kid_interval(mut self, d: Duration) -> Self {
        self.unknown_kid_interval = d;
        self
    }
    /// Whole-request timeout of a fetch (default 5 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Use this HTTP client (e.g. with a proxy or extra root certificates).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the source. Nothing is fetched until the first validation or
    /// an explicit [`KeySource::refresh`].
    pub fn build(self) -> Result<KeySource, ConfigError> {
        let parsed = url::Url::parse(&self.url).map_err(|_| ConfigError::InvalidUrl {
            what: "certs URL",
            url: self.url.clone(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::InvalidUrl {
                what: "certs URL",
                url: self.url,
            });
        }
        if self.min_max_age > self.max_max_age {
            return Err(ConfigError::Bounds(
                "min_max_age must not exceed max_max_age",
            ));
        }
        let client = match self.client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| ConfigError::HttpClient(e.to_string()))?,
        };
        Ok(KeySource::with_origin(Origin::Remote(Remote {
            url: self.url,
            client,
            min_max_age: self.min_max_age,
            max_max_age: self.max_max_age,
            default_max_age: self.default_max_age,
            unknown_kid_interval: self.unknown_kid_interval,
            timeout: self.timeout,
        })))
    }
}

#[derive(Debug)]
struct Remote {
    url: String,
    client: reqwest::Client,
    min_max_age: Duration,
    max_max_age: Duration,
    default_max_age: Duration,
    unknown_kid_interval: Duration,
    timeout: Duration,
}

#[derive(Debug)]
enum Origin {
    Remote(Remote),
    Static,
}

#[derive(Debug, Default)]
struct Progress {
    last_error: Option<String>,
    last_success: Option<SystemTime>,
    /// When the last refresh forced by an unknown kid was attempted.
    last_unknown_kid: Option<Instant>,
    /// When the last fetch forced by "no keys loaded yet" was attempted.
    last_initial: Option<Instant>,
    /// Consecutive failures, for the background retry backoff.
    failures: u32,
}

struct Inner {
    origin: Origin,
    current: ArcSwap<KeySnapshot>,
    progress: Mutex<Progress>,
    /// Held while a fetch is in flight: single-flight.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Completed fetch attempts; lets waiters see that someone else fetched.
    attempts: AtomicU64,
    refresher_started: AtomicBool,
    #[cfg(feature = "metrics")]
    metrics: std::sync::OnceLock<crate::metrics::CoreMetrics>,
}

/// A shared, cheaply clonable source of verifying keys.
#[derive(Clone)]
pub struct KeySource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("origin", &self.inner.origin)
            .field("status", &self.status())
            .finish()
    }
}

impl KeySource {
    /// A source fetching the certs document at `certs_url`.
    pub fn remote(certs_url: impl Into<String>) -> RemoteSourceBuilder {
        RemoteSourceBuilder {
            url: certs_url.into(),
            min_max_age: Duration::from_secs(60),
            max_max_age: Duration::from_secs(24 * 3600),
            default_max_age: Duration::from_secs(600),
            unknown_kid_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            client: None,
        }
    }

    /// A fixed source from a JWKS or Cloudflare certs JSON document.
    pub fn from_json(document: &str) -> Result<Self, ConfigError> {
        let keys = KeySet::from_json(document.as_bytes()).map_err(ConfigError::InvalidJwks)?;
        Ok(Self::from_key_set(keys))
    }

    /// A fixed source from a JWKS or Cloudflare certs JSON file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// A fixed source from an already parsed key set.
    pub fn from_key_set(keys: KeySet) -> Self {
        let source = Self::with_origin(Origin::Static);
        source.inner.current.store(Arc::new(KeySnapshot {
            keys,
            epoch: 0,
            loaded_at: None,
            max_age: None,
        }));
        source
    }

    fn with_origin(origin: Origin) -> Self {
        KeySource {
            inner: Arc::new(Inner {
                origin,
                current: ArcSwap::from_pointee(KeySnapshot {
                    keys: KeySet::default(),
                    epoch: 0,
                    loaded_at: None,
                    max_age: None,
                }),
                progress: Mutex::new(Progress::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                refresher_started: AtomicBool::new(false),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Records key refreshes in these metrics (the first call wins).
    #[cfg(feature = "metrics")]
    pub fn set_metrics(&self, metrics: crate::metrics::CoreMetrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// The keys currently published (lock-free).
    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        self.inner.current.load_full()
    }

    /// The current key-set epoch (cheap: no reference count taken).
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.current.load().epoch
    }

    /// Whether this source fetches from the network.
    pub fn is_remote(&self) -> bool {
        matches!(self.inner.origin, Origin::Remote(_))
    }

    /// The current state, for readiness checks.
    pub fn status(&self) -> KeySourceStatus {
        let snap = self.inner.current.load();
        let progress = self
            .inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        KeySourceStatus {
            loaded: snap.is_loaded(),
            key_count: snap.keys.len(),
            age: snap.loaded_at.map(|t| t.elapsed()),
            max_age: snap.max_age,
            last_error: progress.last_error.clone(),
            last_success: progress.last_success,
            fetches: self.inner.attempts.load(Ordering::Relaxed),
        }
    }

    /// Fetches the keys now, sharing an in-flight fetch if there is one.
    /// A static source returns `Ok` without doing anything.
    ///
    /// On failure the previous keys stay published and the error is
    /// recorded in [`KeySource::status`].
    pub async fn refresh(&self) -> Result<(), String> {
        let Origin::Remote(remote) = &self.inner.origin else {
            return Ok(());
        };
        let seen = self.inner.attempts.load(Ordering::Acquire);
        let _guard = self.inner.fetch_lock.lock().await;
        if self.inner.attempts.load(Ordering::Acquire) != seen {
            // Someone fetched while we waited; share their outcome.
            let progress = self
                .inner
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            return match &progress.last_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
        }
        let result = self.fetch_and_publish(remote).await;
        self.inner.attempts.fetch_add(1, Ordering::Release);
        result
    }

    /// Called when a token names a `kid` that is not loaded, or when no key
    /// is loaded at all: refreshes unless a refresh for the same reason was
    /// attempted within the interval. Returns after any in-flight fetch has
    /// finished. The two reasons are limited separately, so the first load
    /// does not delay the pick-up of a rotated key.
    pub(crate) async fn refresh_for_unknown_kid(&self) {
        let Origin::Remote(remote) = &self.inner.origin else {
            return;
        };
        let loaded = self.inner.current.load().is_loaded();
        let allowed = {
            let mut progress = self
                .inner
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let last = if loaded {
                &mut progress.last_unknown_kid
            } else {
                &mut progress.last_initial
            };
            let now = Instant::now();
            match *last {
                Some(t) if now.duration_since(t) < remote.unknown_kid_interval => false,
                _ => {
                    *last = Some(now);
                    true
                }
            }
        };
        if allowed {
            let _ = self.refresh().await;
        } else {
            // Wait for a fetch that may be bringing the key, but start none.
            drop(self.inner.fetch_lock.lock().await);
        }
    }

    async fn fetch_and_publish(&self, remote: &Remote) -> Result<(), String> {
        match fetch(remote).await {
            Ok((keys, max_age)) => {
                let old = self.inner.current.load_full();
                let epoch = if old.keys.drops_keys_in(&keys) {
                    old.epoch + 1
                } else {
                    old.epoch
                };
                let count = keys.len();
                let skipped = keys.skipped();
                self.inner.current.store(Arc::new(KeySnapshot {
                    keys,
                    epoch,
                    loaded_at: Some(Instant::now()),
                    max_age: Some(max_age),
                }));
                {
                    let mut progress = self
                        .inner
                        .progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    progress.last_error = None;
                    progress.last_success = Some(SystemTime::now());
                    progress.failures = 0;
                }
                tracing::info!(url = %remote.url, keys = count, skipped, max_age_secs = max_age.as_secs(), epoch, "signing keys refreshed");
                self.record_refresh("success");
                self.start_refresher();
                Ok(())
            }
            Err(reason) => {
                let stale = self.inner.current.load().is_loaded();
                {
                    let mut progress = self
                        .inner
                        .progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    progress.last_error = Some(reason.clone());
                    progress.failures = progress.failures.saturating_add(1);
                }
                tracing::warn!(url = %remote.url, error = %reason, serving_stale_keys = stale, "signing key refresh failed");
                self.record_refresh("error");
                Err(reason)
            }
        }
    }

    fn record_refresh(&self, _outcome: &str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.inner.metrics.get() {
            m.key_refreshes.with_label_values(&[_outcome]).inc();
        }
    }

    /// Starts the background refresher once, if a tokio runtime is present.
    /// It holds only a weak reference and ends when the source is dropped.
    fn start_refresher(&self) {
        if self.inner.refresher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.refresher_started.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            loop {
                let Some(delay) = weak.upgrade().map(|inner| next_refresh_delay(&inner)) else {
                    return;
                };
                tokio::time::sleep(delay).await;
                let Some(inner) = weak.upgrade() else { return };
                let source = KeySource { inner };
                let _ = source.refresh().await;
            }
        });
    }
}

/// Refresh at 80 % of the max age; after failures, retry with a backoff
/// starting at the unknown-kid interval, capped at the max age.
fn next_refresh_delay(inner: &Inner) -> Duration {
    let Origin::Remote(remote) = &inner.origin else {
        return Duration::from_secs(3600);
    };
    let snap = inner.current.load();
    let max_age = snap.max_age.unwrap_or(remote.default_max_age);
    let failures = inner.progress.lock().map(|p| p.failures).unwrap_or(0);
    if failures > 0 {
        let base = remote.unknown_kid_interval.max(Duration::from_secs(1));
        let backoff = base.saturating_mul(1u32 << failures.min(10));
        return backoff.min(max_age).max(Duration::from_secs(1));
    }
    let due = max_age.mul_f64(0.8);
    let age = snap.loaded_at.map(|t| t.elapsed()).unwrap_or_default();
    due.saturating_sub(age).max(Duration::from_secs(1))
}

async fn fetch(remote: &Remote) -> Result<(KeySet, Duration), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("GET {}: {what}: {e}", remote.url);
    let mut response = remote
        .client
        .get(&remote.url)
        .header(http::header::ACCEPT, "application/json")
        .timeout(remote.timeout)
        .send()
        .await
        .map_err(|e| fail("request failed", &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail("unexpected status", &status));
    }
    let max_age = response
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_max_age)
        .unwrap_or(remote.default_max_age)
        .clamp(remote.min_max_age, remote.max_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail("reading the body failed", &e))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(fail("document too large", &MAX_DOCUMENT_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    let keys = KeySet::from_json(&body).map_err(|e| fail("invalid certs document", &e))?;
    Ok((keys, max_age))
}

/// Extracts `max-age` from one Cache-Control value; `no-store` / `no-cache`
/// count as zero (then clamped up to the minimum).
fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        let secs = lower.strip_prefix("max-age=")?.trim_matches('"');
        secs.parse::<u64>().ok().map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("Max-Age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
    }

    #[test]
    fn bad_urls_and_bounds_are_config_errors() {
        assert!(KeySource::remote("not a url").build().is_err());
        assert!(KeySource::remote("ftp://x/certs").build().is_err());
        assert!(
            KeySource::remote("https://x/certs")
                .min_max_age(Duration::from_secs(10))
                .max_max_age(Duration::from_secs(5))
                .build()
                .is_err()
        );
    }
}
