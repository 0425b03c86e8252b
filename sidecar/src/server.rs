//! Listening, serving, reloading and shutting down.
//!
//! Proxied requests are served thread-per-core, like nginx's worker
//! processes: `--workers` threads (one per core by default), each running
//! a single-threaded tokio runtime that accepts on its own `SO_REUSEPORT`
//! listening socket and serves its connections start to end — the client
//! connection, the pipeline and the pooled upstream connection (the
//! forwarder keeps idle connections per thread) all stay on that thread,
//! with no work-stealing and no cross-thread wake-ups per request. The
//! admin server, key loading and signals run on the caller's runtime.
//!
//! The live configuration is one immutable [`Generation`] behind an
//! `ArcSwap`: each request loads it once (lock-free), so a SIGHUP reload
//! never disturbs requests or connections in flight. A new configuration
//! that does not validate is refused with a logged reason and the old one
//! stays.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_core::{ErrorCode, KeySource};
use prometheus::{Histogram, IntCounter};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::config::{Cli, Settings, SettingsError};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::proxy::Forwarder;
use crate::response::{self, Body};
use crate::routes::{Route, RouteTable};

/// One immutable generation of configuration: settings, routes with their
/// validators, the key source and the upstream client.
#[derive(Debug)]
pub struct Generation {
    settings: Settings,
    routes: RouteTable,
    keys: KeySource,
    forwarder: Forwarder,
}

impl Generation {
    /// Builds validators and the client for `settings`.
    pub fn build(
        settings: Settings,
        keys: KeySource,
        metrics: &Metrics,
    ) -> Result<Self, SettingsError> {
        let routes = RouteTable::build(
            settings.default_route.as_ref(),
            &settings.routes,
            &settings.team_domain,
            &keys,
            settings.max_token_bytes,
            &metrics.core,
        )?;
        // Pooled upstream connections stay with the worker that opened them.
        let forwarder = Forwarder::new(
            settings.connect_timeout,
            settings.read_timeout,
            settings.idle_timeout,
        )
        .pool_per_thread();
        Ok(Generation {
            settings,
            routes,
            keys,
            forwarder,
        })
    }
    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    /// The routes.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }
    /// The key source shared by every route.
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }
    /// The upstream client.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }
}

/// Why the sidecar could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    Settings(SettingsError),
    /// A listener could not be bound.
    Bind {
        /// Which setting.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Metrics could not be registered, or signals not installed.
    Internal(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Settings(e) => write!(f, "{e}"),
            StartError::Bind { key, addr, source } => {
                write!(f, "{key}: cannot listen on {addr}: {source}")
            }
            StartError::Internal(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

impl From<SettingsError> for StartError {
    fn from(e: SettingsError) -> Self {
        StartError::Settings(e)
    }
}

struct Shared {
    current: ArcSwap<Generation>,
    metrics: Metrics,
    cli: Cli,
    reload_lock: Mutex<()>,
    shutdown: watch::Receiver<bool>,
}

/// A started sidecar: its bound addresses, reload and shutdown.
pub struct Running {
    shared: Arc<Shared>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// One per worker thread: resolves once it has drained and stopped.
    workers: Vec<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Where proxied requests are accepted.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
    /// The live configuration.
    pub fn generation(&self) -> Arc<Generation> {
        self.shared.current.load_full()
    }

    /// Re-reads the config file (flags and environment as at start) and
    /// swaps it in. On error the old configuration stays and the reason is
    /// logged and returned. Listen addresses, the log format, the header
    /// cap, the idle and shutdown timeouts and the worker count need a
    /// restart; changes to them are logged and ignored.
    pub fn reload(&self) -> Result<(), SettingsError> {
        let shared = &self.shared;
        let _serial = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = shared.current.load_full();
        let result = Settings::load(&shared.cli).and_then(|mut settings| {
            let o = &old.settings;
            let fixed = [
                ("listen", settings.listen != o.listen),
                ("admin_listen", settings.admin_listen != o.admin_listen),
                ("log_format", settings.log_format != o.log_format),
                (
                    "max_header_bytes",
                    settings.max_header_bytes != o.max_header_bytes,
                ),
                ("idle_timeout", settings.idle_timeout != o.idle_timeout),
                ("workers", settings.workers != o.workers),
                (
                    "shutdown_timeout",
                    settings.shutdown_timeout != o.shutdown_timeout,
                ),
            ];
            for (key, changed) in fixed {
                if changed {
                    tracing::warn!(
                        key,
                        "changing this setting needs a restart; keeping the running value"
                    );
                }
            }
            settings.listen = o.listen;
            settings.admin_listen = o.admin_listen;
            settings.log_format = o.log_format;
            settings.max_header_bytes = o.max_header_bytes;
            settings.idle_timeout = o.idle_timeout;
            settings.workers = o.workers;
            settings.shutdown_timeout = o.shutdown_timeout;
            let keys = if settings.certs_url == o.certs_url {
                old.keys.clone()
            } else {
                new_key_source(&settings, &shared.metrics, &shared.shutdown)?
            };
            Generation::build(settings, keys, &shared.metrics)
        });
        match result {
            Ok(generation) => {
                shared.current.store(Arc::new(generation));
                shared.metrics.reloads.with_label_values(&["success"]).inc();
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                shared.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(key = %e.key, reason = %e.message, "configuration reload refused; the previous configuration stays");
                Err(e)
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to the shutdown
    /// timeout) and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        for worker in self.workers.drain(..) {
            let _ = worker.await;
        }
    }
}

fn new_key_source(
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<KeySource, SettingsError> {
    let keys = KeySource::remote(settings.certs_url.clone())
        .build()
        .map_err(|e| SettingsError {
            key: "certs_url (--certs-url / PORTCULLIS_CERTS_URL)".into(),
            message: e.to_string(),
        })?;
    keys.set_metrics(metrics.core.clone());
    tokio::spawn(load_keys(keys.clone(), shutdown.clone()));
    Ok(keys)
}

/// Fetches the keys until a first load succeeds (with backoff); after that
/// core's own refresher keeps them fresh.
async fn load_keys(keys: KeySource, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(500);
    loop {
        if keys.status().loaded {
            return;
        }
        if keys.refresh().await.is_ok() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut shutdown) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Validates nothing further: binds, spawns the servers and returns.
pub async fn start(cli: Cli, settings: Settings) -> Result<Running, StartError> {
    let metrics = Metrics::new().map_err(|e| StartError::Internal(format!("metrics: {e}")))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listeners = portcullis_core::proxy::bind_workers(settings.listen, settings.workers)
        .map_err(|source| StartError::Bind {
            key: "listen",
            addr: settings.listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            key: "admin_listen",
            addr: settings.admin_listen,
            source,
        })?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| StartError::Internal(e.to_string()))?;

    let mut proxy_builder = http1::Builder::new();
    proxy_builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.idle_timeout)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.max_header_bytes.max(8192) * 2);
    let mut admin_builder = http1::Builder::new();
    admin_builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_header_size(16 * 1024);
    let drain = settings.shutdown_timeout;
    let mode = settings.mode;

    let keys = new_key_source(&settings, &metrics, &shutdown_rx)?;
    let generation = Generation::build(settings, keys, &metrics)?;
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(generation),
        metrics,
        cli,
        reload_lock: Mutex::new(()),
        shutdown: shutdown_rx.clone(),
    });

    let workers = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            spawn_worker(
                index,
                listener,
                proxy_builder.clone(),
                shared.clone(),
                shutdown_rx.clone(),
                drain,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut tasks = JoinSet::new();
    let admin_shared = shared.clone();
    tasks.spawn(accept_loop(
        admin_listener,
        admin_builder,
        shutdown_rx,
        drain,
        None,
        move |_peer| {
            let shared = admin_shared.clone();
            service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(serve_admin(&shared, &req)) }
            })
        },
    ));
    tracing::info!(addr = %addr, admin_addr = %admin_addr, mode = ?mode, workers = workers.len(), "listening");
    Ok(Running {
        shared,
        addr,
        admin_addr,
        shutdown: shutdown_tx,
        tasks,
        workers,
    })
}

/// Starts worker thread `index`: a single-threaded runtime serving the
/// connections it accepts on `listener` until shutdown, then draining
/// them. The receiver resolves when the thread is done.
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    builder: http1::Builder,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> Result<oneshot::Receiver<()>, StartError> {
    portcullis_core::proxy::spawn_worker(
        format!("sidecar-worker-{index}"),
        listener,
        move |listener| async move {
            let accepted = shared
                .metrics
                .connections
                .with_label_values(&[index.to_string().as_str()]);
            accept_loop(
                listener,
                builder,
                shutdown,
                drain,
                Some(accepted),
                move |peer| proxy_service(shared.clone(), peer),
            )
            .await;
        },
    )
    .map_err(|e| StartError::Internal(format!("cannot start a worker: {e}")))
}

/// The service for one proxied client connection from `peer`.
fn proxy_service(
    shared: Arc<Shared>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Send
+ 'static {
    // Per request only this connection's own `Arc` is cloned: reference
    // counts shared by all connections would bounce between the workers'
    // cores.
    let connection = Arc::new(ConnectionState {
        shared,
        pipeline: pipeline::Connection::new(peer),
        metrics: Mutex::new(None),
    });
    service_fn(move |req| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(serve_request(&connection, req).await) }
    })
}

/// Starts the sidecar and serves until SIGTERM or SIGINT; SIGHUP reloads
/// the config file.
pub async fn run(cli: Cli, settings: Settings) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind)
            .map_err(|e| StartError::Internal(format!("cannot install signal handlers: {e}")))
    };
    let mut hup = install(SignalKind::hangup())?;
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    let running = start(cli, settings).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.reload();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down; draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop<F, S>(
    listener: TcpListener,
    builder: http1::Builder,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    counted: Option<IntCounter>,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut connections = JoinSet::new();
    // One stop signal per connection, sent at shutdown: a oneshot receiver
    // is cheap to poll alongside the connection (the shared watch channel
    // is checked here only), and touches nothing other threads use.
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    let mut prune_at = 64;
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(ok) => ok,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if let Some(counted) = &counted {
                    counted.inc();
                }
                let connection = builder
                    .serve_connection(TokioIo::new(stream), make_service(peer))
                    .with_upgrades();
                let (stop_tx, stop) = oneshot::channel::<()>();
                if stops.len() >= prune_at {
                    // Forget the signals of connections that have ended.
                    stops.retain(|s| !s.is_closed());
                    prune_at = (stops.len() * 2).max(64);
                }
                stops.push(stop_tx);
                connections.spawn(async move {
                    tokio::pin!(connection);
                    tokio::select! {
                        biased;
                        _ = connection.as_mut() => {}
                        _ = stop => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    for stop in stops {
        let _ = stop.send(());
    }
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown timeout reached; closing remaining connections"
        );
        connections.abort_all();
    }
}

/// Resolves once shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

const MAX_LOGGED: usize = 256;

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOGGED) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Per client connection: the pipeline's state and the metric handles of
/// the previous request (label lookups hash and lock; requests on one
/// connection mostly repeat their labels).
struct ConnectionState {
    shared: Arc<Shared>,
    pipeline: pipeline::Connection,
    metrics: Mutex<Option<MetricHandles>>,
}

#[derive(Debug)]
struct MetricHandles {
    route: Option<Arc<Route>>,
    status: StatusCode,
    code: Option<ErrorCode>,
    requests: IntCounter,
    latency: Histogram,
}

fn same_route(a: Option<&Arc<Route>>, b: Option<&Arc<Route>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

async fn serve_request(connection: &ConnectionState, request: Request<Incoming>) -> Response<Body> {
    let shared = &connection.shared;
    let started = Instant::now();
    let generation = shared.current.load_full();
    // Copy what the access line needs only when it will be written.
    let logged = tracing::enabled!(target: "portcullis_sidecar::access", tracing::Level::INFO);
    let (method, host, path) = if logged {
        (
            Some(request.method().clone()),
            pipeline::routing_host(request.headers(), request.uri(), generation.settings().mode)
                .map(|h| clip(h).to_owned())
                .unwrap_or_default(),
            clip(request.uri().path()).to_owned(),
        )
    } else {
        (None, String::new(), String::new())
    };
    // Boxed for the time of the request (~1.8 KB): hyper keeps a slot the
    // size of the service's future per connection, idle or not, and 1,000
    // idle connections should not hold 1,000 of these.
    let (response, decision) =
        Box::pin(pipeline::handle(generation, &connection.pipeline, request)).await;
    let latency = started.elapsed();
    let route = decision.route.as_ref().map_or("none", |r| r.name());
    let code = decision.code.map_or("ok", ErrorCode::as_str);
    let status = response.status();
    let metrics = &shared.metrics;
    {
        let mut cached = connection.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let handles = match cached.as_mut() {
            Some(h) if same_route(h.route.as_ref(), decision.route.as_ref()) => {
                if h.status != status || h.code != decision.code {
                    h.requests =
                        metrics
                            .requests
                            .with_label_values(&[route, status.as_str(), code]);
                    h.status = status;
                    h.code = decision.code;
                }
                h
            }
            _ => cached.insert(MetricHandles {
                route: decision.route.clone(),
                status,
                code: decision.code,
                requests: metrics
                    .requests
                    .with_label_values(&[route, status.as_str(), code]),
                latency: metrics.latency.with_label_values(&[route]),
            }),
        };
        handles.requests.inc();
        handles.latency.observe(latency.as_secs_f64());
    }
    if matches!(
        decision.code,
        Some(ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout)
    ) {
        metrics
            .upstream_errors
            .with_label_values(&[route, code])
            .inc();
    }
    if !logged {
        return response;
    }
    tracing::info!(
        target: "portcullis_sidecar::access",
        method = %method.unwrap_or_default(),
        host = %host,
        path = %path,
        status = status.as_u16(),
        code,
        user = decision.user().as_deref().unwrap_or("-"),
        route,
        client = %connection.pipeline.peer().ip(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn serve_admin(shared: &Shared, request: &Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/metrics" => response::text(
            StatusCode::OK,
            shared.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => response::text(StatusCode::OK, "ok\n", "text/plain; charset=utf-8"),
        "/readyz" => {
            let status = shared.current.load().keys.status();
            let ready = status.is_fresh();
            let body = serde_json::json!({
                "ready": ready,
                "keys_loaded": status.loaded,
                "key_count": status.key_count,
                "key_age_secs": status.age.map(|a| a.as_secs()),
                "key_max_age_secs": status.max_age.map(|a| a.as_secs()),
                "last_error": status.last_error,
            });
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response::text(code, body.to_string(), "application/json")
        }
        _ => response::text(
            StatusCode::NOT_FOUND,
            "not found\n",
            "text/plain; charset=utf-8",
        ),
    }
}
