//! The request pipeline, as small stages each testable alone:
//!
//! 1. [`check_source`]: `--allow-from` (403 `forbidden` before anything else);
//! 2. [`sanitize`]: one `Host`, hop-by-hop headers and every injectable
//!    identity header removed, whatever the outcome;
//! 3. route by host (404 `unknown_host`);
//! 4. [`authenticate`]: find and validate the token (401/503, or a
//!    [`login_redirect`] for page navigations);
//! 5. inject the identity headers, then forward ([`crate::proxy`]) or, in
//!    forward-auth mode, answer 200 with them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use ipnet::IpNet;
use portcullis_core::{AccessClaims, ErrorCode, ValidationError, wire};

use crate::config::Mode;
use crate::proxy::{
    Outgoing, X_FORWARDED_HOST, X_FORWARDED_PROTO, forwarded_for, remove_hop_by_hop,
};
use crate::response::{self, Body};
use crate::routes::Route;
use crate::server::Generation;

/// What happened to a request, for the access log and metrics.
#[derive(Debug, Default, Clone)]
pub struct Decision {
    /// The route that served it, when one was found.
    pub route: Option<Arc<Route>>,
    /// The error code, when the sidecar refused or the upstream failed.
    pub code: Option<ErrorCode>,
    /// The accepted token's claims (shared with core's cache, not copied).
    pub claims: Option<Arc<AccessClaims>>,
}

impl Decision {
    /// The accepted identity's display name (email or common name), for
    /// the access log; only computed when the line is written.
    pub fn user(&self) -> Option<String> {
        self.claims.as_ref().map(|c| c.identity().name().to_owned())
    }
}

/// What stays the same between the requests of one client connection,
/// computed once per connection rather than once per request.
#[derive(Debug)]
pub struct Connection {
    peer: SocketAddr,
    forwarded_for: HeaderValue,
    /// The identity headers of the last accepted token on this connection
    /// (clients repeat their token, and core's cache hands back the same
    /// `Arc` for it).
    injected: Mutex<Option<Injected>>,
}

#[derive(Debug)]
struct Injected {
    route: Arc<Route>,
    claims: Arc<AccessClaims>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Connection {
    /// State for a connection from `peer`.
    pub fn new(peer: SocketAddr) -> Self {
        Connection {
            peer,
            forwarded_for: forwarded_for(peer.ip()),
            injected: Mutex::new(None),
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sets `route`'s identity headers for `claims` in `headers`, rendering
    /// them only when the token differs from the previous request's.
    fn inject(&self, route: &Arc<Route>, claims: &Arc<AccessClaims>, headers: &mut HeaderMap) {
        let mut cached = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cached
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.claims, claims) && Arc::ptr_eq(&c.route, route));
        if !hit {
            *cached = Some(Injected {
                route: route.clone(),
                claims: claims.clone(),
                headers: route.headers().render(claims),
            });
        }
        if let Some(c) = cached.as_ref() {
            // Grow the map once, for these and the three X-Forwarded-*.
            headers.reserve(c.headers.len() + 3);
            for (name, value) in &c.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Stage 1: is the peer allowed? An empty list allows everyone.
pub fn check_source(peer: IpAddr, allow: &[IpNet]) -> Result<(), ErrorCode> {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    if allow.is_empty() || allow.iter().any(|net| net.contains(&peer)) {
        Ok(())
    } else {
        Err(ErrorCode::Forbidden)
    }
}

/// Stage 2: keeps a single `Host`, removes hop-by-hop headers and every
/// header in `injectable`. Returns the requested `Upgrade` protocol.
pub fn sanitize(headers: &mut HeaderMap, injectable: &[HeaderName]) -> Option<HeaderValue> {
    let host = headers.get(HOST).cloned();
    let upgrade = remove_hop_by_hop(headers);
    // Scan once; hash and remove only when a client sent one of them.
    if headers.keys().any(|name| injectable.contains(name)) {
        for name in injectable {
            headers.remove(name);
        }
    }
    // `insert` also drops any second Host, so the upstream routes by the
    // same value we did (skipped when the first one is already alone).
    if let Some(host) = host {
        let mut hosts = headers.get_all(HOST).iter();
        let alone = matches!((hosts.next(), hosts.next()), (Some(first), None) if *first == host);
        if !alone {
            headers.insert(HOST, host);
        }
    }
    upgrade
}

/// The host a request is routed by: in forward-auth mode the proxy in front
/// passes the original one in `X-Forwarded-Host`.
pub fn routing_host<'h>(headers: &'h HeaderMap, uri: &'h Uri, mode: Mode) -> Option<&'h str> {
    let forwarded = match mode {
        Mode::ForwardAuth => headers
            .get(X_FORWARDED_HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty()),
        Mode::Proxy => None,
    };
    forwarded
        .or_else(|| headers.get(HOST).and_then(|v| v.to_str().ok()))
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Stage 4: finds the token (header, then cookie) and validates it with the
/// route's validator. Returns the claims and the token to pass on.
pub async fn authenticate(
    route: &Route,
    headers: &HeaderMap,
) -> Result<(Arc<AccessClaims>, HeaderValue), ValidationError> {
    let validator = route.validator();
    // The usual request repeats the token this thread verified last: its
    // raw header bytes are recognised without extraction (no byte-by-byte
    // visible-ASCII check of ~700 bytes, no second lookup), and the header
    // value is shared (reference-counted) instead of copied.
    let header = headers.get(wire::JWT_ASSERTION_HEADER);
    if let Some(value) = header
        && let Some(result) = validator.validate_remembered(value.as_bytes())
    {
        return result.map(|claims| (claims, value.clone()));
    }
    let Some((token, _)) = validator.extractor().extract(headers) else {
        if let Some(m) = validator.metrics() {
            m.record(ErrorCode::MissingToken.as_str());
        }
        return Err(ValidationError::MissingToken);
    };
    let claims = match validator.validate_now(token) {
        Some(result) => result?,
        // Only when keys must be fetched first; boxed so that the fetch's
        // future does not size every request's future (which hyper keeps
        // allocated per connection and moves per request).
        None => Box::pin(validator.validate(token)).await?,
    };
    // Usually the token is the whole `Cf-Access-Jwt-Assertion` value: share
    // it instead of copying it.
    if let Some(value) = header.filter(|v| v.as_bytes() == token.as_bytes()) {
        return Ok((claims, value.clone()));
    }
    // Valid tokens are base64url and dots, so this cannot fail; refuse
    // rather than panic if it ever did.
    let value = HeaderValue::from_str(token).map_err(|_| ValidationError::MalformedToken {
        reason: "token is not a valid header value",
    })?;
    Ok((claims, value))
}

/// Whether a request is a top-level page navigation (and not fetch/XHR).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    let navigate = headers
        .get("sec-fetch-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"));
    let xhr = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    navigate && !xhr && (method == Method::GET || method == Method::HEAD)
}

/// The URL the client asked for, for `redirect_url`.
pub fn original_url(headers: &HeaderMap, uri: &Uri, mode: Mode) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if mode == Mode::ForwardAuth
        && let Some(url) = header("x-original-url")
            .and_then(|u| url::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
    {
        return Some(url.to_string());
    }
    let scheme = match header(X_FORWARDED_PROTO.as_str()) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let host = routing_host(headers, uri, mode)?;
    let host: http::uri::Authority = host.parse().ok()?;
    let path = match mode {
        Mode::ForwardAuth => header("x-forwarded-uri")
            .filter(|p| p.starts_with('/'))
            .or_else(|| uri.path_and_query().map(|p| p.as_str())),
        Mode::Proxy => uri.path_and_query().map(|p| p.as_str()),
    }
    .unwrap_or("/");
    let url = url::Url::parse(&format!("{scheme}://{host}{path}")).ok()?;
    Some(url.to_string())
}

/// The login page with `redirect_url` set to `original`.
pub fn login_redirect(login: &url::Url, original: &str) -> Option<HeaderValue> {
    let mut target = login.clone();
    target
        .query_pairs_mut()
        .append_pair("redirect_url", original);
    HeaderValue::from_str(target.as_str()).ok()
}

/// Runs the whole pipeline for one request.
pub async fn handle(
    generation: Arc<Generation>,
    connection: &Connection,
    request: Request<Incoming>,
) -> (Response<Body>, Decision) {
    let peer = connection.peer;
    let mut decision = Decision::default();
    let settings = generation.settings();
    if let Err(code) = check_source(peer.ip(), &settings.allow_from) {
        decision.code = Some(code);
        return (response::rejection(code), decision);
    }
    let mut request = request;
    let upgrade = sanitize(request.headers_mut(), generation.routes().injectable());
    let Some(route) = generation
        .routes()
        .find(routing_host(
            request.headers(),
            request.uri(),
            settings.mode,
        ))
        .cloned()
    else {
        decision.code = Some(ErrorCode::UnknownHost);
        return (response::rejection(ErrorCode::UnknownHost), decision);
    };
    decision.route = Some(route.clone());
    let (claims, token) = match authenticate(&route, request.headers()).await {
        Ok(ok) => ok,
        Err(e) => {
            let code = e.code();
            decision.code = Some(code);
            if matches!(code, ErrorCode::MissingToken | ErrorCode::Expired)
                && let Some(login) = &settings.login_url
                && is_navigation(request.method(), request.headers())
                && let Some(location) =
                    original_url(request.headers(), request.uri(), settings.mode)
                        .and_then(|original| login_redirect(login, &original))
            {
                return (response::redirect(location), decision);
            }
            return (response::rejection(code), decision);
        }
    };
    decision.claims = Some(claims.clone());

    match settings.mode {
        Mode::ForwardAuth => {
            let mut response = Response::new(response::empty());
            *response.status_mut() = StatusCode::OK;
            connection.inject(&route, &claims, response.headers_mut());
            response
                .headers_mut()
                .insert(wire::JWT_ASSERTION_HEADER, token);
            (response, decision)
        }
        Mode::Proxy => {
            let Some(upstream) = route.upstream() else {
                // Settings refuse proxy routes without an upstream.
                decision.code = Some(ErrorCode::UpstreamUnavailable);
                return (
                    response::rejection(ErrorCode::UpstreamUnavailable),
                    decision,
                );
            };
            let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
            let (mut parts, body) = request.into_parts();
            connection.inject(&route, &claims, &mut parts.headers);
            parts.headers.insert(wire::JWT_ASSERTION_HEADER, token);
            let outgoing = Outgoing {
                parts,
                body,
                upgrade,
                on_upgrade,
            };
            match generation
                .forwarder()
                .forward(outgoing, upstream, &connection.forwarded_for)
                .await
            {
                Ok(response) => (response, decision),
                Err(code) => {
                    decision.code = Some(code);
                    (response::rejection(code), decision)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_check() {
        let allow: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2400:cb00::/32".parse().unwrap(),
        ];
        assert!(check_source("10.1.2.3".parse().unwrap(), &allow).is_ok());
        assert!(check_source("::ffff:10.1.2.3".parse().unwrap(), &allow).is_ok());
        assert!(check_source("2400:cb00::1".parse().unwrap(), &allow).is_ok());
        assert_eq!(
            check_source("127.0.0.1".parse().unwrap(), &allow),
            Err(ErrorCode::Forbidden)
        );
        assert!(check_source("127.0.0.1".parse().unwrap(), &[]).is_ok());
    }

    #[test]
    fn sanitize_strips_spoofable_headers_and_extra_hosts() {
        let mut h = HeaderMap::new();
        h.append(HOST, HeaderValue::from_static("a.example"));
        h.append(HOST, HeaderValue::from_static("b.example"));
        h.insert(
            "X-Forwarded-Email",
            HeaderValue::from_static("evil@example.com"),
        );
        h.insert("connection", HeaderValue::from_static("host, upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let names = vec![HeaderName::from_static("x-forwarded-email")];
        let upgrade = sanitize(&mut h, &names);
        assert_eq!(upgrade.unwrap(), "websocket");
        assert_eq!(h.get_all(HOST).iter().count(), 1);
        assert_eq!(h[HOST], "a.example");
        assert!(h.get("x-forwarded-email").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn navigation_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_navigation(&Method::GET, &h));
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(is_navigation(&Method::GET, &h));
        assert!(!is_navigation(&Method::POST, &h));
        h.insert(
            "x-requested-with",
            HeaderValue::from_static("XMLHttpRequest"),
        );
        assert!(!is_navigation(&Method::GET, &h));
        h.remove("x-requested-with");
        h.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        assert!(!is_navigation(&Method::GET, &h));
    }

    #[test]
    fn redirect_carries_the_original_url() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("app.example.com"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let uri: Uri = "/a/b?c=d&e=f".parse().unwrap();
        let original = original_url(&h, &uri, Mode::Proxy).unwrap();
        assert_eq!(original, "https://app.example.com/a/b?c=d&e=f");
        let login = url::Url::parse("https://login.example.com/start?x=1").unwrap();
        let location = login_redirect(&login, &original).unwrap();
        let parsed = url::Url::parse(location.to_str().unwrap()).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("x".into(), "1".into()));
        assert_eq!(pairs[1], ("redirect_url".into(), original));
    }

    #[test]
    fn forward_auth_uses_forwarded_host_and_uri() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:9000"));
        h.insert(
            X_FORWARDED_HOST,
            HeaderValue::from_static("app.example.com"),
        );
        h.insert("x-forwarded-uri", HeaderValue::from_static("/deep?q=1"));
        let uri: Uri = "/auth".parse().unwrap();
        assert_eq!(
            routing_host(&h, &uri, Mode::ForwardAuth),
            Some("app.example.com")
        );
        assert_eq!(routing_host(&h, &uri, Mode::Proxy), Some("127.0.0.1:9000"));
        assert_eq!(
            original_url(&h, &uri, Mode::ForwardAuth).unwrap(),
            "http://app.example.com/deep?q=1"
        );
    }
}
