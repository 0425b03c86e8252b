//! Prometheus metrics of validation (feature `metrics`).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Counters registered into a registry the caller owns.
#[derive(Debug, Clone)]
pub struct CoreMetrics {
    /// `portcullis_validations_total{result}`: `ok` or an error code.
    pub validations: IntCounterVec,
    /// `portcullis_key_refreshes_total{outcome}`: `success` or `error`.
    pub key_refreshes: IntCounterVec,
    /// `portcullis_token_cache_hits_total`.
    pub cache_hits: IntCounter,
}

impl CoreMetrics {
    /// Creates the counters and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let validations = IntCounterVec::new(
            Opts::new(
                "portcullis_validations_total",
                "Token validations by result code.",
            ),
            &["result"],
        )?;
        let key_refreshes = IntCounterVec::new(
            Opts::new(
                "portcullis_key_refreshes_total",
                "Signing-key refreshes by outcome.",
            ),
            &["outcome"],
        )?;
        let cache_hits = IntCounter::new(
            "portcullis_token_cache_hits_total",
            "Validations answered from the verified-token cache.",
        )?;
        registry.register(Box::new(validations.clone()))?;
        registry.register(Box::new(key_refreshes.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        Ok(CoreMetrics {
            validations,
            key_refreshes,
            cache_hits,
        })
    }

    /// Counts one rejection by its code (integrations call this for
    /// rejections they make themselves, such as `forbidden`).
    pub fn record(&self, result: &str) {
        self.validations.with_label_values(&[result]).inc();
    }
}
