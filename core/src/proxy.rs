//! Forwarding to an upstream, shared by the two proxies (the sidecar and
//! the gateway): hop-by-hop headers (RFC 9110 §7.6.1, see [`crate::forward`]),
//! `X-Forwarded-*`, a pooled HTTP/1.1 client over hyper's connection API,
//! streamed bodies, timeouts and HTTP upgrades (WebSocket). Behind the
//! `proxy` feature; the validator itself never needs it.
//!
//! Bodies are never collected: the incoming request body is handed to the
//! client as it arrives and the upstream's response body is returned as is,
//! so memory stays flat whatever the body size.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use http::uri::Scheme;
use http_body_util::{Full, combinators::BoxBody};

use crate::ErrorCode;
pub use crate::forward::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, remove_hop_by_hop};

/// The body type of every proxied or locally made response.
pub type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// A body made here from bytes.
pub fn full(bytes: impl Into<bytes::Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(bytes::Bytes::new())
}

/// The contract's rejection: the status of `code`, `Cache-Control:
/// no-store` and `{"error":"<code>","message":"<message>"}` as JSON.
pub fn rejection_with(code: ErrorCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(code.json_body(message)));
    *response.status_mut() = code.http_status();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// [`rejection_with`] the code's own sentence.
pub fn rejection(code: ErrorCode) -> Response<Body> {
    rejection_with(code, code.default_message())
}

/// An `http://` upstream: where requests go, and the path prefix they go under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Authority,
    /// Path prefix without a trailing slash (empty for none).
    pub prefix: String,
}

impl Upstream {
    /// Parses `http://host[:port][/prefix]`; the error is a sentence
    /// naming the problem.
    pub fn parse(value: &str) -> Result<Self, String> {
        let uri: Uri = value
            .trim()
            .parse()
            .map_err(|_| format!("{value:?} is not a URL such as http://127.0.0.1:3000"))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) if *s == Scheme::HTTPS => {
                return Err(format!(
                    "{value:?}: only http:// upstreams are supported (run the proxy beside the app)"
                ));
            }
            _ => {
                return Err(format!(
                    "{value:?} is not an http:// URL such as http://127.0.0.1:3000"
                ));
            }
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{value:?} has no host"))?;
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(format!("{value:?}: no query or user info allowed"));
        }
        Ok(Upstream {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// Appends this hop to `X-Forwarded-For`, `X-Forwarded-Proto` (`proto`:
/// `http`, or `https` behind TLS) and `X-Forwarded-Host` (the request's host).
pub fn append_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    append_forwarded_for(
        headers,
        &forwarded_for(client),
        &HeaderValue::from_static(proto),
        host,
    );
}

/// `client` as an `X-Forwarded-For` element (computed once per connection).
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    // An IP address's text is always a valid header value.
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`append_forwarded`] with the client's `X-Forwarded-For` element ready.
fn append_forwarded_for(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    append(headers, X_FORWARDED_FOR, client);
    append(headers, X_FORWARDED_PROTO, proto);
    if let Some(host) = host.filter(|h| h.to_str().is_ok()) {
        append(headers, X_FORWARDED_HOST, host);
    }
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    use http::header::Entry;
    let mut entry = match headers.entry(name) {
        // The usual case, the first proxy: no copy, no formatting.
        Entry::Vacant(vacant) => {
            vacant.insert(value.clone());
            return;
        }
        Entry::Occupied(occupied) => occupied,
    };
    let mut joined = entry
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    // Callers pass visible ASCII only.
    joined.push_str(value.to_str().unwrap_or_default());
    match HeaderValue::from_str(&joined) {
        Ok(v) => {
            entry.insert(v);
        }
        Err(_) => {
            entry.remove();
        }
    }
}

/// The upstream URI for a request: upstream authority, its path prefix, and
/// the request's path and query (the request's own authority is ignored).
pub fn upstream_uri(upstream: &Upstream, uri: &Uri) -> Option<Uri> {
    let path_and_query = uri.path_and_query().filter(|p| p.as_str().starts_with('/'));
    if upstream.prefix.is_empty() {
        // No prefix: reuse the parsed parts (reference-counted, no reparse).
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(upstream.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        return Uri::from_parts(parts).ok();
    }
    // `OPTIONS *` and other non-origin forms go to `/`.
    let path_and_query = path_and_query.map_or("/", |p| p.as_str());
    format!(
        "http://{}{}{}",
        upstream.authority, upstream.prefix, path_and_query
    )
    .parse()
    .ok()
}

/// A pooled HTTP/1.1 client to the upstreams.
///
/// A small pool of its own over hyper's connection API rather than
/// hyper-util's generic client: one LIFO stack of idle connections per
/// upstream authority, found by a short linear scan (a sidecar has a
/// handful of upstreams), no per-request hashing of pool keys and no boxed
/// request future. A connection goes back to the stack when its response
/// body has been read to the end.
///
/// By default one pool serves every thread. A server that runs one
/// single-threaded runtime per core opts into [`Forwarder::pool_per_thread`]
/// so that a pooled connection is only ever used by the thread whose
/// runtime drives it.
#[derive(Debug, Clone)]
pub struct Forwarder {
    pool: Arc<Pool>,
    read_timeout: Duration,
    proto: HeaderValue,
}

#[derive(Debug)]
struct Pool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// One shard, or one per thread (see [`thread_slot`]).
    shards: Box<[Shard]>,
    reaper: std::sync::Once,
}

/// Per authority, idle connections, the most recently used last. Aligned
/// to its own cache lines so that threads locking their own shards do not
/// share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<(Authority, Vec<Idle>)>>);

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// Most idle connections kept per upstream (per shard).
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Shards of a per-thread pool; threads beyond this share shards, which
/// costs locality, never correctness.
const THREAD_SHARDS: usize = 64;

/// This thread's slot among the per-thread shards, handed out in the order
/// threads first use a per-thread pool: the N workers of a
/// thread-per-core server get N different shards.
fn thread_slot() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

impl Pool {
    fn new(connect_timeout: Duration, idle_timeout: Duration, shards: usize) -> Self {
        Pool {
            connect_timeout,
            idle_timeout,
            shards: (0..shards).map(|_| Shard::default()).collect(),
            reaper: std::sync::Once::new(),
        }
    }

    /// The shard of the calling thread.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Authority, Vec<Idle>)>> {
        let shard = match self.shards.len() {
            1 => &self.shards[0],
            n => &self.shards[thread_slot() % n],
        };
        shard.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection to `authority` that is still
    /// open and fresh.
    fn checkout(self: &Arc<Self>, authority: &Authority) -> Option<http1::SendRequest<Incoming>> {
        self.start_reaper();
        let mut idle = self.lock();
        let stack = idle
            .iter_mut()
            .find(|(a, _)| a.as_str() == authority.as_str())
            .map(|(_, stack)| stack)?;
        while let Some(conn) = stack.pop() {
            if conn.sender.is_ready() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn checkin(&self, authority: &Authority, sender: http1::SendRequest<Incoming>) {
        if !sender.is_ready() {
            return;
        }
        let conn = Idle {
            sender,
            since: Instant::now(),
        };
        let mut idle = self.lock();
        match idle
            .iter_mut()
            .find(|(a, _)| a.as_str() == authority.as_str())
        {
            Some((_, stack)) if stack.len() < MAX_IDLE_PER_UPSTREAM => stack.push(conn),
            Some(_) => {}
            None => idle.push((authority.clone(), vec![conn])),
        }
    }

    /// Closes connections idle for longer than the idle timeout, in the
    /// background, for as long as the pool exists.
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool = Arc::downgrade(self);
            let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(pool) = pool.upgrade() else { return };
                    for shard in pool.shards.iter() {
                        let mut idle = shard.0.lock().unwrap_or_else(|e| e.into_inner());
                        for (_, stack) in idle.iter_mut() {
                            stack.retain(|c| {
                                !c.sender.is_closed() && c.since.elapsed() < pool.idle_timeout
                            });
                        }
                    }
                }
            });
        });
    }

    /// A new connection to `authority`.
    async fn connect(
        &self,
        authority: &Authority,
    ) -> Result<http1::SendRequest<Incoming>, ErrorCode> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        // `[::1]` in a URL is `::1` to the resolver.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Err(_) => return Err(ErrorCode::UpstreamTimeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ErrorCode::UpstreamTimeout);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream connect failed");
                return Err(ErrorCode::UpstreamUnavailable);
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorCode::UpstreamUnavailable)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The upstream's response body; hands the connection back to the pool
/// once it has been read to the end.
struct PooledBody {
    inner: Incoming,
    giveback: Option<(Arc<Pool>, Authority, http1::SendRequest<Incoming>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, authority, sender)) = self.giveback.take() {
            pool.checkin(&authority, sender);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Err(_)) => this.giveback = None,
            Some(Ok(_)) => {}
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled. A body dropped
        // half-read leaves the connection unusable: it is not given back.
        if http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

/// A request ready to forward: sanitized head, untouched streaming body.
#[derive(Debug)]
pub struct Outgoing {
    /// The request head (hop-by-hop headers already removed).
    pub parts: Parts,
    /// The body, streamed.
    pub body: Incoming,
    /// The `Upgrade` protocol the client asked for, if any.
    pub upgrade: Option<HeaderValue>,
    /// The client side of an upgrade, resolved after a `101`.
    pub on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Forwarder {
    /// A client with these timeouts; `idle` bounds pooled connections.
    pub fn new(connect_timeout: Duration, read_timeout: Duration, idle: Duration) -> Self {
        Forwarder {
            pool: Arc::new(Pool::new(connect_timeout, idle, 1)),
            read_timeout,
            proto: HeaderValue::from_static("http"),
        }
    }

    /// Keeps idle connections per thread rather than in one pool: for a
    /// server that runs one single-threaded runtime per core, where the
    /// task driving an upstream connection lives on the runtime of the
    /// request that opened it. A request then only reuses connections of
    /// its own thread, so the upstream connection's wake-ups never cross
    /// threads. Under a work-stealing runtime the shared pool (the
    /// default) reuses connections better.
    pub fn pool_per_thread(mut self) -> Self {
        let pool = &self.pool;
        self.pool = Arc::new(Pool::new(
            pool.connect_timeout,
            pool.idle_timeout,
            THREAD_SHARDS,
        ));
        self
    }

    /// Marks requests as received over TLS (`X-Forwarded-Proto: https`).
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        self
    }

    /// Sends `request` on a pooled connection, or on a new one when none is
    /// idle or the pooled one turns out closed before the request went out.
    async fn send(
        &self,
        authority: &Authority,
        request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<Incoming>), ErrorCode> {
        let mut request = request;
        if let Some(mut sender) = self.pool.checkout(authority) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    // Not sent (the upstream closed the idle connection):
                    // safe to retry on a fresh one.
                    Some(unsent) => request = unsent,
                    None => return Err(classify(e.error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and its future (resolver,
        // connect, handshake) would otherwise size every request's future,
        // which servers keep allocated per connection and move per request.
        let mut sender = Box::pin(self.pool.connect(authority)).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Sends `outgoing` to `upstream` and returns its response, streaming.
    /// `forwarded_for` is the client's `X-Forwarded-For` element
    /// ([`forwarded_for`], computed once per connection).
    pub async fn forward(
        &self,
        outgoing: Outgoing,
        upstream: &Upstream,
        forwarded_for: &HeaderValue,
    ) -> Result<Response<Body>, ErrorCode> {
        let Outgoing {
            mut parts,
            body,
            upgrade,
            on_upgrade,
        } = outgoing;
        // Sanitizing left at most one Host; without one, the request's
        // authority (absolute-form URI) becomes it.
        let (host, has_host) = match parts.headers.get(HOST) {
            Some(host) => (Some(host.clone()), true),
            None => (
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                false,
            ),
        };
        append_forwarded_for(
            &mut parts.headers,
            forwarded_for,
            &self.proto,
            host.as_ref(),
        );
        if !has_host {
            // HTTP/1.1 needs a Host: the client's authority, else the
            // upstream's own (what hyper-util's client used to add).
            let host = host.or_else(|| HeaderValue::from_str(upstream.authority.as_str()).ok());
            if let Some(host) = host {
                parts.headers.insert(HOST, host);
            }
        }
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, proto.clone());
        }
        // Origin-form on the wire: the connection is already to the upstream.
        let target = upstream_uri(upstream, &parts.uri).ok_or(ErrorCode::UpstreamUnavailable)?;
        parts.uri = target
            .path_and_query()
            .cloned()
            .map(Uri::from)
            .ok_or(ErrorCode::UpstreamUnavailable)?;
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        let authority = &upstream.authority;
        let (mut response, sender) =
            match tokio::time::timeout(self.read_timeout, self.send(authority, request)).await {
                Err(_) => return Err(ErrorCode::UpstreamTimeout),
                Ok(Err(code)) => return Err(code),
                Ok(Ok(r)) => r,
            };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_side), Some(_)) = (on_upgrade, upgrade) else {
                // The upstream switched protocols unasked: nothing sane to relay.
                return Err(ErrorCode::UpstreamUnavailable);
            };
            let upstream_side = hyper::upgrade::on(&mut response);
            let granted = response.headers().get(UPGRADE).cloned();
            tokio::spawn(tunnel(client_side, upstream_side));
            let (mut parts, _) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(granted) = granted {
                parts.headers.insert(UPGRADE, granted);
            }
            return Ok(Response::from_parts(parts, empty()));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let body = PooledBody {
            inner: body,
            giveback: Some((self.pool.clone(), authority.clone(), sender)),
        };
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Copies bytes both ways once both sides have switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// Timeouts are `upstream_timeout`; every other failure to get a response
/// head is `upstream_unavailable`.
fn classify(error: &hyper::Error) -> ErrorCode {
    if error.is_timeout() {
        return ErrorCode::UpstreamTimeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return ErrorCode::UpstreamTimeout;
        }
        source = e.source();
    }
    ErrorCode::UpstreamUnavailable
}

/// Binds `workers` listening sockets on `addr`, all with `SO_REUSEPORT`,
/// one for each worker of a thread-per-core server: the kernel spreads
/// new connections evenly over them (by a hash of the addresses), where
/// one socket shared by every worker lets whichever wakes first take most
/// of them. A plain bind comes first, so a taken address is still an
/// error — also when the holder is another such group, which
/// `SO_REUSEPORT` alone would join and silently share the traffic with —
/// and port 0 is resolved to one port for all the sockets. Call it inside
/// a tokio runtime; pass each socket to [`spawn_worker`].
pub fn bind_workers(
    addr: std::net::SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..workers.max(1))
        .map(|_| {
            let socket = match addr {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?.into_std()
        })
        .collect()
}

/// Runs `serve` on a new thread called `name`, in a single-threaded tokio
/// runtime of its own, with `listener` registered there: the worker of a
/// thread-per-core server (the sidecar's and the gateway's public
/// listeners). What the runtime still holds when `serve` returns (pooled
/// upstream connections, relayed upgrades) ends with it; the receiver
/// resolves after that.
pub fn spawn_worker<F, Fut>(
    name: String,
    listener: std::net::TcpListener,
    serve: F,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let thread = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => serve(listener).await,
                Err(e) => tracing::error!(error = %e, worker = %thread, "worker cannot listen"),
            }
        });
        drop(runtime);
        let _ = done.send(());
    })?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        append_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some(&HeaderValue::from_static("app.example.com")),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 198.51.100.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https, http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example.com");
    }

    #[test]
    fn upstream_uris() {
        let up = Upstream::parse("http://127.0.0.1:3000/base").unwrap();
        let uri: Uri = "http://evil.example/x/y?z=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&up, &uri).unwrap(),
            "http://127.0.0.1:3000/base/x/y?z=1"
        );
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(
            upstream_uri(&up, &uri).unwrap(),
            "http://127.0.0.1:3000/base/"
        );
        let up = Upstream::parse("http://127.0.0.1:3000").unwrap();
        let uri: Uri = "http://evil.example/x/y?z=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&up, &uri).unwrap(),
            "http://127.0.0.1:3000/x/y?z=1"
        );
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(upstream_uri(&up, &uri).unwrap(), "http://127.0.0.1:3000/");
    }
}
