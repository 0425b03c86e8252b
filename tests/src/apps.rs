//! Origins behind the edge: a legacy app that only trusts identity headers
//! (for the sidecar), and an axum app guarded by
//! `portcullis_tower::AccessLayer`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Every host name the scenarios use; clients and the browser send them to
/// 127.0.0.1.
pub const TEST_HOSTS: &[&str] = &[
    "legacy.test",
    "axum.test",
    "app-a.test",
    "app-b.test",
    "echo.test",
];

/// A legacy app that knows nothing about tokens: it greets whoever
/// `X-Forwarded-Email` (else `X-Forwarded-User`) names, and answers 500
/// when neither header is present — it relies on the proxy in front.
#[derive(Debug)]
pub struct LegacyApp {
    /// Where it listens.
    pub addr: SocketAddr,
    answered: Arc<AtomicUsize>,
}

impl LegacyApp {
    /// Starts on a free port of 127.0.0.1, inside the current runtime.
    pub async fn start() -> LegacyApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let count = count.clone();
                        async move { Ok::<_, Infallible>(legacy_answer(&req, &count)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        LegacyApp { addr, answered }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it answered with 200.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

/// An origin that trusts its edge completely: it answers 200 to everything
/// (saying whether `Cf-Access-Jwt-Assertion` arrived) and counts.
#[derive(Debug)]
pub struct PlainOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    answered: Arc<AtomicUsize>,
}

impl PlainOrigin {
    /// Starts on a free port of 127.0.0.1, inside the current runtime.
    pub async fn start() -> PlainOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let count = count.clone();
                        async move {
                            count.fetch_add(1, Ordering::Relaxed);
                            let has = req
                                .headers()
                                .contains_key(portcullis_core::wire::JWT_ASSERTION_HEADER);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "origin: token {}",
                                if has { "present" } else { "absent" }
                            )))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        PlainOrigin { addr, answered }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it answered.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

fn legacy_answer(req: &Request<Incoming>, count: &AtomicUsize) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let who = header("x-forwarded-email").or_else(|| header("x-forwarded-user"));
    let Some(who) = who else {
        return Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"no identity header")))
            .expect("response");
    };
    count.fetch_add(1, Ordering::Relaxed);
    let body = format!(
        "<html><body><h1>Legacy app</h1><p id=\"who\">hello {who}</p><p id=\"email\">{}</p></body></html>",
        header("x-forwarded-email").unwrap_or_default()
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// An axum app guarded by `portcullis_tower::AccessLayer`, validating
/// against the gateway's certs endpoint: `/` greets the identity,
/// `/healthz` is excluded.
#[derive(Debug)]
pub struct AxumApp {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl AxumApp {
    /// Starts the app on `port` of 127.0.0.1 (chosen ahead: the gateway's
    /// configuration names it before the AUD tag is known). `team_domain`
    /// is the issuer, whose certs endpoint the app fetches.
    pub async fn start(port: u16, team_domain: &str, aud: &str) -> AxumApp {
        let source = portcullis_core::KeySource::remote(format!(
            "{team_domain}{}",
            portcullis_core::wire::CERTS_PATH
        ))
        .build()
        .expect("key source");
        let validator = portcullis_core::Validator::builder(team_domain)
            .audience(aud)
            .key_source(source)
            .build()
            .expect("validator");
        let app = Router::new()
            .route(
                "/",
                get(|who: portcullis_tower::axum::Identity| async move {
                    format!("hello {} (service: {})", who.0.name(), who.0.is_service())
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .layer(portcullis_tower::AccessLayer::new(validator).exclude("/healthz"));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AxumApp { addr }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
