//! Start-up, the two listeners, background jobs and graceful shutdown.
//!
//! [`Services::open`] is what every subcommand shares: it opens storage
//! (running migrations), loads the master key and checks it against the
//! database, and binds each configured app to its AUD tag. [`start`] adds
//! the listeners and background jobs and returns a [`RunningGateway`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::crypto::{MasterKey, MasterKeyError, random_hex};
use crate::gateway::{App, Gateway, Peer};
use crate::issue::TokenIssuer;
use crate::keys::{KeyError, KeyManager};
use crate::metrics::Metrics;
use crate::proxy::Forwarder;
use crate::ratelimit::FailureLimiter;
use crate::service_tokens::ServiceTokens;
use crate::store::{SqlStore, Storage, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The master key is unusable.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// The master key differs from the one the database was created with.
    #[error(
        "the master key (fingerprint {ours}) is not the one this database was created with \
         (fingerprint {stored}); use the same PORTCULLIS_MASTER_KEY or master.key file on every replica"
    )]
    MasterKeyMismatch {
        /// Fingerprint in use.
        ours: String,
        /// Fingerprint recorded in the database.
        stored: String,
    },
    /// Keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Identity providers could not be set up.
    #[error(transparent)]
    Login(#[from] crate::login::LoginSetupError),
    /// The public listener's worker threads could not be started.
    #[error("cannot start the public listener's worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// Storage, keys and tokens opened for a configuration.
#[derive(Debug)]
pub struct Services {
    /// The configuration.
    pub config: Arc<Config>,
    /// Storage.
    pub store: Arc<dyn Storage>,
    /// The master key.
    pub master: Arc<MasterKey>,
    /// Apps with their AUD tags, in config order.
    pub apps: Vec<App>,
    /// Signing keys (not yet loaded; see [`KeyManager::start`]).
    pub keys: Arc<KeyManager>,
    /// Service tokens.
    pub tokens: Arc<ServiceTokens>,
    /// The audience of org (team session) tokens, generated once.
    pub org_aud: String,
}

const MASTER_KEY_META: &str = "master_key_fingerprint";
const ORG_AUD_META: &str = "org_aud";

impl Services {
    /// Opens storage and binds apps to AUD tags.
    pub async fn open(config: Config) -> Result<Services, StartError> {
        let config = Arc::new(config);
        let store: Arc<dyn Storage> =
            Arc::new(SqlStore::open(&config.storage.url, config.storage.max_connections).await?);
        let master = Arc::new(MasterKey::load_or_create(
            config.storage.master_key.as_deref(),
            &config.storage.data_dir,
        )?);
        let stored = store
            .meta_insert_or_get(MASTER_KEY_META, master.fingerprint())
            .await?;
        if stored != master.fingerprint() {
            return Err(StartError::MasterKeyMismatch {
                ours: master.fingerprint().to_owned(),
                stored,
            });
        }
        let now = crate::clock::now();
        let mut apps = Vec::new();
        for app in &config.apps {
            let aud = store
                .ensure_app(&app.name, &random_hex::<32>(), now)
                .await?;
            apps.push(App::new(app.clone(), aud));
        }
        let org_aud = store
            .meta_insert_or_get(ORG_AUD_META, &random_hex::<32>())
            .await?;
        let keys = Arc::new(KeyManager::new(
            store.clone(),
            master.clone(),
            config.keys.clone(),
            config.server.team_domain.clone(),
            apps.iter()
                .map(|a| a.aud.clone())
                .chain(std::iter::once(org_aud.clone()))
                .collect(),
        ));
        let tokens = Arc::new(ServiceTokens::new(
            store.clone(),
            config.service_tokens.clone(),
        ));
        Ok(Services {
            config,
            store,
            master,
            apps,
            keys,
            tokens,
            org_aud,
        })
    }
}

/// A gateway that is serving.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where the public listener is bound.
    pub addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// The shared state.
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Stops accepting, lets in-flight requests finish (up to
    /// `shutdown_grace`), commits queued audit rows and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Binds the configured addresses and starts serving. The public address
/// gets one `SO_REUSEPORT` socket per worker, so the kernel spreads
/// connections evenly over the workers (see
/// [`portcullis_core::proxy::bind_workers`]).
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let listen = config.server.listen;
    let public =
        portcullis_core::proxy::bind_workers(listen, config.server.workers).map_err(|source| {
            StartError::Bind {
                addr: listen,
                source,
            }
        })?;
    let admin_addr = config.server.admin_listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;
    start_on(config, public, admin).await
}

/// Starts serving on listeners bound by the caller (tests bind port 0).
/// Every worker accepts on its own handle of `listener` (one socket: the
/// worker that wakes first takes the connection, so the spread over
/// workers is less even than [`start`]'s).
pub async fn start_with_listeners(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
) -> Result<RunningGateway, StartError> {
    let listener = listener.into_std().map_err(StartError::Workers)?;
    let public = (0..config.server.workers)
        .map(|_| listener.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Workers)?;
    start_on(config, public, admin_listener).await
}

/// Starts serving: one worker per socket in `public` (all bound to the
/// same address), the admin API on `admin_listener`.
async fn start_on(
    config: Config,
    public: Vec<std::net::TcpListener>,
    admin_listener: TcpListener,
) -> Result<RunningGateway, StartError> {
    let listen = config.server.listen;
    let addr = public
        .first()
        .ok_or_else(|| StartError::Workers(std::io::Error::other("no listening socket")))?
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let services = Services::open(config).await?;
    let login = crate::login::Login::new(
        &services.config,
        services.master.clone(),
        services.store.clone(),
        services.org_aud.clone(),
    )?;
    login.sessions.refresh_revoked().await?;
    let metrics = Metrics::new()?;
    services.keys.set_metrics(metrics.core.clone());
    services.keys.start().await?;
    services
        .tokens
        .refresh_states()
        .await
        .map_err(StartError::Store)?;
    let config = services.config.clone();
    let (audit, audit_task) =
        crate::audit::start(services.store.clone(), &config.audit, metrics.clone());
    let gateway = Arc::new(Gateway {
        issuer: TokenIssuer::new(
            services.keys.clone(),
            config.server.team_domain.clone(),
            metrics.clone(),
        ),
        limiter: FailureLimiter::new(
            config.service_tokens.failure_window,
            config.service_tokens.max_failures_per_client,
            config.service_tokens.max_failures_per_address,
        ),
        // Idle origin connections stay with the worker thread that opened them.
        forwarder: Forwarder::new(
            config.server.upstream_connect_timeout,
            config.server.upstream_timeout,
            Duration::from_secs(90),
        )
        .over_tls(config.server.tls.is_some())
        .pool_per_thread(),
        config: config.clone(),
        store: services.store.clone(),
        keys: services.keys.clone(),
        tokens: services.tokens.clone(),
        apps: services.apps,
        audit,
        metrics,
        login,
    });
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.server.admin_listen,
            source,
        })?;
    if config.server.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured (PORTCULLIS_ADMIN_TOKEN); the admin API refuses every call"
        );
    }
    let (stop, stopped) = watch::channel(false);
    let jobs = tokio::spawn(background_jobs(gateway.clone(), stopped.clone()));
    let retention = tokio::spawn(crate::audit::retention(
        gateway.store.clone(),
        config.audit.clone(),
        gateway.metrics.clone(),
        stopped.clone(),
    ));
    // The public listener is served thread-per-core: each worker thread
    // runs a single-threaded runtime accepting on its own listening socket
    // (or handle of the caller's) and serving its connections start to end (client
    // connection, admission, storage lookups, pooled origin connection),
    // with no work-stealing or cross-thread wake-ups per request. The admin
    // listener and the background jobs stay on this (the main) runtime.
    // Storage is shared: SQLite connections run on their own threads, and a
    // PostgreSQL connection is driven by the reactor of the runtime that
    // opened it, which runs for as long as the gateway does (a connection
    // whose runtime has stopped fails its liveness check and is replaced).
    let public = {
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        let mut workers = Vec::with_capacity(public.len());
        for (index, listener) in public.into_iter().enumerate() {
            workers.push(spawn_worker(
                index,
                listener,
                tls.clone(),
                stopped.clone(),
                config.server.shutdown_grace,
                {
                    let gw = gateway.clone();
                    move |req, peer| gw.clone().handle(req, peer)
                },
            )?);
        }
        tokio::spawn(async move {
            for done in workers {
                let _ = done.await;
            }
        })
    };
    let admin = {
        let gw = gateway.clone();
        tokio::spawn(serve(
            admin_listener,
            None,
            stopped.clone(),
            config.server.shutdown_grace,
            move |req, _| crate::admin::handle(gw.clone(), req),
        ))
    };
    tracing::info!(%addr, %admin_addr, tls = config.server.tls.is_some(), storage = gateway.store.backend(), apps = gateway.apps.len(), "gateway serving");
    let gw = gateway.clone();
    let done = tokio::spawn(async move {
        let _ = public.await;
        let _ = admin.await;
        jobs.abort();
        let _ = retention.await;
        gw.audit.flush().await;
        // The writer ends once every sink is gone; the flush above has
        // already committed what was queued.
        drop(audit_task);
        tracing::info!("gateway stopped");
    });
    Ok(RunningGateway {
        addr,
        admin_addr,
        gateway,
        stop,
        done,
    })
}

/// Starts worker thread `index`: a single-threaded runtime serving what it
/// accepts on `listener` until `stopped`, then draining (see [`serve`]).
/// The receiver resolves when the thread is done.
fn spawn_worker<F, Fut>(
    index: usize,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) -> Result<tokio::sync::oneshot::Receiver<()>, StartError>
where
    F: Fn(hyper::Request<hyper::body::Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<crate::response::Body>> + Send + 'static,
{
    portcullis_core::proxy::spawn_worker(
        format!("gateway-worker-{index}"),
        listener,
        move |listener| serve(listener, tls, stopped, grace, handler),
    )
    .map_err(StartError::Workers)
}

async fn background_jobs(gw: Arc<Gateway>, mut stopped: watch::Receiver<bool>) {
    let key_every = gw.config.keys.reload_interval;
    // Revocations must reach every replica within 5 s: reload well inside it.
    let token_every = key_every.min(Duration::from_secs(2));
    let mut keys = tokio::time::interval(key_every);
    let mut tokens = tokio::time::interval(token_every);
    keys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokens.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge_in = 0u32;
    loop {
        tokio::select! {
            _ = keys.tick() => {
                if let Err(e) = gw.keys.maintain(crate::clock::now()).await {
                    tracing::error!(error = %e, "signing key maintenance failed");
                }
            }
            _ = tokens.tick() => {
                if let Err(e) = gw.tokens.refresh_states().await {
                    tracing::warn!(error = %e, "service token refresh failed");
                }
                if let Err(e) = gw.login.sessions.refresh_revoked().await {
                    tracing::warn!(error = %e, "session revocation refresh failed");
                }
                purge_in += 1;
                if purge_in >= 120 {
                    purge_in = 0;
                    if let Err(e) = gw.store.purge_expired(crate::clock::now()).await {
                        tracing::warn!(error = %e, "purging expired login state failed");
                    }
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<crate::response::Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let conn = Peer::new(peer);
        let service = service_fn(move |req| {
            let fut = handler(req, conn.clone());
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // The handshake runs here, off the accept loop.
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
