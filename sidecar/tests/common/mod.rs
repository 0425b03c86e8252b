//! Shared helpers for the sidecar's socket tests: a test upstream, a
//! WebSocket echo upstream, an HTTP client, and runners for the sidecar
//! in-process or as the real binary.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser as _;
use futures_util::StreamExt as _;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_core::test_support::{CertsServer, TestKey};
use portcullis_sidecar::{Cli, Running, Settings};

pub const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";
pub const AUD2: &str = "9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

pub type TestBody = BoxBody<Bytes, Infallible>;

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// What the test upstream saw of the last request.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub headers: HeaderMap,
    pub path: String,
    pub body_bytes: u64,
}

/// A small hyper upstream:
/// - `/upload`: counts the body, answers the count;
/// - `/download/<n>`: streams n bytes;
/// - `/slow/<ms>`: waits, then answers;
/// - anything else: 200 `hello`.
///
/// It records the headers of every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| upstream_handle(seen.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn upstream_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let mut body = req.into_body();
    let mut count = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => count += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    seen.lock().unwrap().push(Seen {
        headers,
        path: path.clone(),
        body_bytes: count,
    });
    if let Some(n) = path.strip_prefix("/download/") {
        let total: usize = n.parse().unwrap_or(0);
        return Ok(Response::new(stream_body(total)));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Ok(Response::new(full("slow done")));
    }
    if path == "/upload" {
        return Ok(Response::new(full(count.to_string())));
    }
    Ok(Response::new(full("hello")))
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A body of `total` bytes produced lazily in 64 KiB chunks.
pub fn stream_body(total: usize) -> TestBody {
    let chunks = total / CHUNK.len();
    let rest = total % CHUNK.len();
    let stream = futures_util::stream::iter(
        (0..chunks)
            .map(|_| Bytes::from_static(&CHUNK))
            .chain((rest > 0).then(|| Bytes::from_static(&CHUNK[..rest]))),
    )
    .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(stream))
}

/// A WebSocket echo server (raw tokio-tungstenite) that records the
/// handshake headers.
pub struct WsUpstream {
    pub addr: SocketAddr,
    pub headers: Arc<Mutex<Option<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    // tungstenite's handshake callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    pub async fn start() -> Self {
        use futures_util::SinkExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
        let shared = headers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let callback =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            *shared.lock().unwrap() = Some(req.headers().clone());
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        WsUpstream {
            addr,
            headers,
            task,
        }
    }
}

/// A plain HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, TestBody>,
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts the contract's rejection: status, code, JSON content type.
    pub fn assert_rejection(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let v = self.json();
        assert_eq!(v["error"], code, "body: {}", self.text());
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub async fn send(&self, req: Request<TestBody>) -> Answer {
        let resp = self
            .inner
            .request(req)
            .await
            .expect("request reaches the sidecar");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// GET with headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        let mut b = Request::get(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(full(Bytes::new())).unwrap()).await
    }
}

/// Runs the sidecar in-process with these flags (listen and admin on port 0).
pub async fn sidecar(args: &[&str]) -> Running {
    start_sidecar("127.0.0.1:0", args).await.unwrap()
}

/// Starts the sidecar in-process listening on `listen` (admin on port 0)
/// with these flags; the start's own error when it cannot.
pub async fn start_sidecar(
    listen: &str,
    args: &[&str],
) -> Result<Running, portcullis_sidecar::StartError> {
    let mut all = vec![
        "portcullis-sidecar",
        "--listen",
        listen,
        "--admin-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).unwrap();
    let settings = Settings::load(&cli).unwrap();
    portcullis_sidecar::start(cli, settings).await
}

/// Certs endpoint, key and a basic in-process sidecar in front of `upstream`.
pub struct Setup {
    pub key: TestKey,
    pub certs: CertsServer,
    pub upstream: Upstream,
    pub sidecar: Running,
    pub client: Client,
}

impl Setup {
    pub async fn new(extra: &[&str]) -> Self {
        let key = TestKey::rsa();
        let certs = CertsServer::start(&[&key]).await.unwrap();
        let upstream = Upstream::start().await;
        let team = certs.team_domain();
        let up = upstream.url();
        let mut args = vec!["--team-domain", &team, "--audience", AUD, "--upstream", &up];
        args.extend_from_slice(extra);
        let sidecar = sidecar(&args).await;
        Setup {
            key,
            certs,
            upstream,
            sidecar,
            client: Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.addr())
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.admin_addr())
    }

    pub fn token(&self, email: &str) -> String {
        self.key.sign(&portcullis_core::test_support::user_claims(
            &self.certs.team_domain(),
            AUD,
            email,
        ))
    }
}

/// The sidecar binary as a child process, logging JSON to stdout.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-sidecar"));
    // Flags only: keep a developer's environment out of the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Process {
    /// Starts the binary and waits for its `listening` line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = binary()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the sidecar");
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(sender) = &tx
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
                    let admin: SocketAddr = v["admin_addr"].as_str().unwrap().parse().unwrap();
                    let _ = sender.send((addr, admin));
                    tx = None;
                }
                shared.lock().unwrap().push(line);
            }
        });
        let (addr, admin_addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the sidecar logs its listening line");
        Process {
            child,
            addr,
            admin_addr,
            lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Log lines parsed as JSON, waiting up to `wait` for one that matches.
    pub fn wait_for_line(
        &self,
        wait: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v));
            if found.is_some() || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls `check` until it is true or `wait` passes.
pub async fn eventually<F, Fut>(wait: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn headers_map(h: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h {
        out.entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_owned());
    }
    out
}
