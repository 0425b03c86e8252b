//! Prometheus metrics of the gateway, served on the admin `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry everything is registered in.
    pub registry: Registry,
    /// `portcullis_gateway_requests_total{app,decision,code}`.
    pub requests: IntCounterVec,
    /// `portcullis_gateway_request_duration_seconds`: until the response head.
    pub latency: Histogram,
    /// `portcullis_gateway_tokens_signed_total`.
    pub tokens_signed: IntCounter,
    /// `portcullis_gateway_token_cache_hits_total`.
    pub token_cache_hits: IntCounter,
    /// `portcullis_gateway_audit_rows_written_total`.
    pub audit_written: IntCounter,
    /// `portcullis_gateway_audit_rows_dropped_total` (queue full or storage down).
    pub audit_dropped: IntCounter,
    /// `portcullis_gateway_audit_rows_purged_total`: deleted by the retention purge.
    pub audit_purged: IntCounter,
    /// portcullis-core's counters for the gateway's own validator:
    /// `portcullis_validations_total{result}`,
    /// `portcullis_key_refreshes_total{outcome}` and
    /// `portcullis_token_cache_hits_total`.
    pub core: portcullis_core::CoreMetrics,
}

impl Metrics {
    /// Creates a registry with every metric registered.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_gateway_requests_total",
                "Requests by app, decision and code.",
            ),
            &["app", "decision", "code"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_gateway_request_duration_seconds",
                "Time until the response head.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let tokens_signed = counter(
            "portcullis_gateway_tokens_signed_total",
            "App tokens signed.",
        )?;
        let token_cache_hits = counter(
            "portcullis_gateway_token_cache_hits_total",
            "App tokens reused from the cache instead of signing.",
        )?;
        let audit_written = counter(
            "portcullis_gateway_audit_rows_written_total",
            "Audit rows committed.",
        )?;
        let audit_dropped = counter(
            "portcullis_gateway_audit_rows_dropped_total",
            "Decisions not audited because the queue was full or storage failed.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(tokens_signed.clone()))?;
        registry.register(Box::new(token_cache_hits.clone()))?;
        registry.register(Box::new(audit_written.clone()))?;
        let audit_purged = counter(
            "portcullis_gateway_audit_rows_purged_total",
            "Audit rows deleted because they were older than the retention.",
        )?;
        registry.register(Box::new(audit_dropped.clone()))?;
        registry.register(Box::new(audit_purged.clone()))?;
        let core = portcullis_core::CoreMetrics::register(&registry)?;
        // Shown (at 0) from the start, so dashboards see the series.
        let _ = core.validations.with_label_values(&["ok"]);
        Ok(Metrics {
            registry,
            requests,
            latency,
            tokens_signed,
            token_cache_hits,
            audit_written,
            audit_dropped,
            audit_purged,
            core,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        if prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
