//! Forwarding to the upstream: hop-by-hop headers (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, a pooled hyper client, streamed bodies, timeouts and
//! HTTP upgrades (WebSocket).
//!
//! Bodies are never collected: the incoming request body is handed to the
//! client as it arrives and the upstream's response body is returned as is,
//! so memory stays flat whatever the body size.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_core::ErrorCode;

use crate::config::Upstream;
use crate::response::Body;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop fields that are never forwarded (besides those the
/// `Connection` header lists).
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes hop-by-hop headers: the fixed set and every field named in
/// `Connection`. Returns the `Upgrade` value when the message asks for a
/// protocol upgrade (`Connection: upgrade` plus `Upgrade`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names first: most messages carry none of these
    // (no `Connection` means nothing listed either), and a scan is cheaper
    // than hashing nine names for removal.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return None;
    }
    let mut wants_upgrade = false;
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| {
            let token = token.trim();
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            }
            HeaderName::from_bytes(token.as_bytes()).ok()
        })
        .collect();
    let upgrade = headers.get(UPGRADE).cloned().filter(|_| wants_upgrade);
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    upgrade
}

/// Appends this hop to `X-Forwarded-For`, `X-Forwarded-Proto` (`http`) and
/// `X-Forwarded-Host` (the request's host).
pub fn append_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&HeaderValue>) {
    append_forwarded_for(headers, &forwarded_for(client), host);
}

/// `client` as an `X-Forwarded-For` element (computed once per connection).
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    // An IP address's text is always a valid header value.
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`append_forwarded`] with the client's `X-Forwarded-For` element ready.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue, host: Option<&HeaderValue>) {
    append(headers, X_FORWARDED_FOR, client);
    append(
        headers,
        X_FORWARDED_PROTO,
        &HeaderValue::from_static("http"),
    );
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
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Incoming>,
    read_timeout: Duration,
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
        }
    }

    /// Sends `outgoing` to `upstream` and returns its response, streaming.
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
        append_forwarded_for(&mut parts.headers, forwarded_for, host.as_ref());
        if let Some(host) = host.filter(|_| !has_host) {
            parts.headers.insert(HOST, host);
        }
        if let Some(proto) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, proto.clone());
        }
        parts.uri = upstream_uri(upstream, &parts.uri).ok_or(ErrorCode::UpstreamUnavailable)?;
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
    fn hop_by_hop_and_connection_listed_fields_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let upgrade = remove_hop_by_hop(&mut h);
        assert_eq!(upgrade.unwrap(), "websocket");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            remove_hop_by_hop(&mut h).is_none(),
            "Upgrade without Connection: upgrade"
        );
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        append_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
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
