//! Forwarding to the upstream: hop-by-hop headers (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, a pooled hyper client, streamed bodies, timeouts and
//! HTTP upgrades (WebSocket).
//!
//! Bodies are never collected: the incoming request body is handed to the
//! client as it arrives and the upstream's response body is returned as is,
//! so memory stays flat whatever the body size.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_core::ErrorCode;

use crate::response::Body;

pub use portcullis_core::forward::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, remove_hop_by_hop,
};

/// Appends this hop to `X-Forwarded-For`, `X-Forwarded-Proto` (`proto`:
/// `http`, or `https` behind the gateway's TLS) and `X-Forwarded-Host`
/// (the request's host).
pub fn append_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &str,
    host: Option<&HeaderValue>,
) {
    append(headers, X_FORWARDED_FOR, &client.to_string());
    append(headers, X_FORWARDED_PROTO, proto);
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        append(headers, X_FORWARDED_HOST, host);
    }
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut joined = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(value);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// The upstream URI for a request: upstream authority, its path prefix, and
/// the request's path and query (the request's own authority is ignored).
pub fn upstream_uri(authority: &str, prefix: &str, uri: &Uri) -> Option<Uri> {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        // `OPTIONS *` and other non-origin forms.
        "/"
    };
    format!("http://{}{}{}", authority, prefix, path_and_query)
        .parse()
        .ok()
}

/// A pooled HTTP/1.1 client to the upstreams.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    read_timeout: Duration,
    proto: &'static str,
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
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .build(connector);
        Forwarder {
            client,
            read_timeout,
            proto: "http",
        }
    }

    /// Marks requests as received over TLS (`X-Forwarded-Proto: https`).
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.proto = if tls { "https" } else { "http" };
        self
    }

    /// Sends `outgoing` to the origin at `authority` (under `prefix`) and returns its response, streaming.
    pub async fn forward(
        &self,
        outgoing: Outgoing,
        authority: &str,
        prefix: &str,
        client: SocketAddr,
    ) -> Result<Response<Body>, ErrorCode> {
        let Outgoing {
            mut parts,
            body,
            upgrade,
            on_upgrade,
        } = outgoing;
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        append_forwarded(&mut parts.headers, client.ip(), self.proto, host.as_ref());
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, proto.clone());
        }
        parts.uri =
            upstream_uri(authority, prefix, &parts.uri).ok_or(ErrorCode::UpstreamUnavailable)?;
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        let mut response =
            match tokio::time::timeout(self.read_timeout, self.client.request(request)).await {
                Err(_) => return Err(ErrorCode::UpstreamTimeout),
                Ok(Err(e)) => return Err(classify(&e)),
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
            return Ok(Response::from_parts(parts, crate::response::empty()));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
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

/// Connect timeouts are `upstream_timeout`; every other failure to get a
/// response head is `upstream_unavailable`.
fn classify(error: &hyper_util::client::legacy::Error) -> ErrorCode {
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
        let uri: Uri = "http://evil.example/x/y?z=1".parse().unwrap();
        assert_eq!(
            upstream_uri("127.0.0.1:3000", "/base", &uri).unwrap(),
            "http://127.0.0.1:3000/base/x/y?z=1"
        );
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(
            upstream_uri("127.0.0.1:3000", "/base", &uri).unwrap(),
            "http://127.0.0.1:3000/base/"
        );
    }
}
