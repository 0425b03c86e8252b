//! Prometheus metrics of the sidecar; served on the admin `/metrics`.
//!
//! Key refreshes and validations are counted by core's [`CoreMetrics`]
//! (`portcullis_key_refreshes_total`, `portcullis_validations_total`) in
//! the same registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use portcullis_core::CoreMetrics;

/// The sidecar's own metrics plus core's.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry everything is registered in.
    pub registry: Registry,
    /// Core's validation and key-refresh counters.
    pub core: CoreMetrics,
    /// `portcullis_sidecar_requests_total{route,status,code}`; `code` is
    /// `ok` when the sidecar itself refused nothing.
    pub requests: IntCounterVec,
    /// `portcullis_sidecar_request_duration_seconds{route}`: until the
    /// response head is ready.
    pub latency: HistogramVec,
    /// `portcullis_sidecar_upstream_errors_total{route,code}`.
    pub upstream_errors: IntCounterVec,
    /// `portcullis_sidecar_config_reloads_total{outcome}`.
    pub reloads: IntCounterVec,
    /// `portcullis_sidecar_connections_total{worker}`: client connections
    /// accepted by each worker thread (how evenly they share the load).
    pub connections: IntCounterVec,
}

impl Metrics {
    /// Creates a registry with every metric registered.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let core = CoreMetrics::register(&registry)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_sidecar_requests_total",
                "Requests by route, status and error code.",
            ),
            &["route", "status", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_sidecar_request_duration_seconds",
                "Time until the response head, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_sidecar_upstream_errors_total",
                "Upstream failures by route and code.",
            ),
            &["route", "code"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_sidecar_config_reloads_total",
                "Config reloads by outcome.",
            ),
            &["outcome"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "portcullis_sidecar_connections_total",
                "Client connections accepted, by worker thread.",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Metrics {
            registry,
            core,
            requests,
            latency,
            upstream_errors,
            reloads,
            connections,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
