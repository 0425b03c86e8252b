//! What a refused request gets: the contract's JSON error, a redirect to
//! the login page (page navigations only), or a gRPC status.
//!
//! ```
//! use portcullis_core::ValidationError;
//! use portcullis_tower::Rejection;
//!
//! let response = Rejection::json(ValidationError::MissingToken).to_response();
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.headers()["content-type"], "application/json");
//! assert_eq!(
//!     response.body().as_ref(),
//!     br#"{"error":"missing_token","message":"No access token was presented."}"#
//! );
//! ```
//!
//! Bodies are built from the error code's fixed sentence, so nothing from
//! the request (least of all the token) is ever echoed.

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use portcullis_core::ValidationError;

/// `Sec-Fetch-Mode`, sent by browsers on every request.
pub const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
/// `X-Requested-With`, set to `XMLHttpRequest` by many JavaScript clients.
pub const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");
/// `grpc-status` (in a trailers-only gRPC response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message` (percent-encoded).
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The query parameter of the login URL that carries the page to return to.
pub const REDIRECT_URL_PARAM: &str = "redirect_url";

/// How rejections are rendered for gRPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// gRPC status when the request's `Content-Type` is `application/grpc*`,
    /// HTTP otherwise (the default).
    #[default]
    Auto,
    /// Always HTTP (JSON body or redirect).
    Http,
    /// Always a gRPC trailers-only response (for a tonic server).
    Grpc,
}

/// gRPC status codes used for rejections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 16: no valid token.
    Unauthenticated = 16,
    /// 7: valid token, refused by a rule.
    PermissionDenied = 7,
    /// 14: keys could not be loaded.
    Unavailable = 14,
}

impl GrpcCode {
    /// The gRPC code for a validation error.
    pub fn of(error: &ValidationError) -> Self {
        match error.http_status() {
            StatusCode::FORBIDDEN => GrpcCode::PermissionDenied,
            StatusCode::SERVICE_UNAVAILABLE => GrpcCode::Unavailable,
            _ => GrpcCode::Unauthenticated,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Json,
    Redirect(HeaderValue),
    Grpc,
}

/// A refused request: the error and the form its response takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    error: ValidationError,
    form: Form,
}

impl Rejection {
    /// The contract's JSON error with the error's status.
    pub fn json(error: ValidationError) -> Self {
        Rejection {
            error,
            form: Form::Json,
        }
    }

    /// A gRPC trailers-only response.
    pub fn grpc(error: ValidationError) -> Self {
        Rejection {
            error,
            form: Form::Grpc,
        }
    }

    /// Chooses the form for a request: gRPC per `protocol`; a redirect to
    /// `login_url` only for a 401 on a [page navigation](is_page_navigation);
    /// JSON otherwise. `path_and_query` becomes the login URL's
    /// `redirect_url` parameter.
    pub fn for_request(
        error: ValidationError,
        headers: &HeaderMap,
        protocol: Protocol,
        login_url: Option<&str>,
        path_and_query: &str,
    ) -> Self {
        let grpc = match protocol {
            Protocol::Grpc => true,
            Protocol::Http => false,
            Protocol::Auto => is_grpc(headers),
        };
        if grpc {
            return Self::grpc(error);
        }
        if let Some(login) = login_url
            && error.http_status() == StatusCode::UNAUTHORIZED
            && is_page_navigation(headers)
            && let Ok(location) = HeaderValue::from_str(&login_location(login, path_and_query))
        {
            return Rejection {
                error,
                form: Form::Redirect(location),
            };
        }
        Self::json(error)
    }

    /// The error behind the rejection.
    pub fn error(&self) -> &ValidationError {
        &self.error
    }

    /// Consumes the rejection, returning the error.
    pub fn into_error(self) -> ValidationError {
        self.error
    }

    /// The redirect target, when this rejection is a redirect.
    pub fn location(&self) -> Option<&HeaderValue> {
        match &self.form {
            Form::Redirect(l) => Some(l),
            _ => None,
        }
    }

    /// True for a gRPC response.
    pub fn is_grpc(&self) -> bool {
        self.form == Form::Grpc
    }

    /// The HTTP status of the response: the error's (401/403/503), 302
    /// for a redirect, 200 for gRPC (the status travels in `grpc-status`).
    pub fn status(&self) -> StatusCode {
        match self.form {
            Form::Json => self.error.http_status(),
            Form::Redirect(_) => StatusCode::FOUND,
            Form::Grpc => StatusCode::OK,
        }
    }

    /// Renders the response. Every form carries `Cache-Control: no-store`;
    /// JSON and redirect responses carry the JSON error body.
    pub fn to_response(&self) -> Response<Bytes> {
        let code = self.error.code();
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self.form {
            Form::Grpc => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(
                    GRPC_STATUS,
                    HeaderValue::from(GrpcCode::of(&self.error) as u16),
                );
                let message = format!("{code}: {}", code.default_message());
                if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&message)) {
                    headers.insert(GRPC_MESSAGE, v);
                }
            }
            form => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Form::Redirect(location) = form {
                    headers.insert(LOCATION, location.clone());
                }
                *response.body_mut() = Bytes::from(self.error.json_body());
            }
        }
        response
    }
}

/// True for a browser page navigation, the only kind of request that may
/// be redirected to a login page: `Sec-Fetch-Mode: navigate`, or — when
/// `Sec-Fetch-Mode` is absent — an `Accept` that admits `text/html`.
/// `X-Requested-With: XMLHttpRequest` is never a navigation.
pub fn is_page_navigation(headers: &HeaderMap) -> bool {
    if headers
        .get(X_REQUESTED_WITH)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"))
    {
        return false;
    }
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"navigate");
    }
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(accepts_html)
}

/// One `Accept` member: `text/html` with a non-zero `q`.
fn accepts_html(member: &str) -> bool {
    let mut parts = member.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("text/html") {
        return false;
    }
    !parts.any(|p| {
        p.trim()
            .strip_prefix("q=")
            .and_then(|q| q.trim().parse::<f32>().ok())
            .is_some_and(|q| q <= 0.0)
    })
}

/// True when the request's `Content-Type` is `application/grpc` or
/// `application/grpc+<codec>`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// `login_url` with `redirect_url=<path_and_query>` appended.
fn login_location(login_url: &str, path_and_query: &str) -> String {
    let sep = if login_url.contains('?') { '&' } else { '?' };
    let target: String = url::form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
    format!("{login_url}{sep}{REDIRECT_URL_PARAM}={target}")
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside 0x20..=0x7E,
/// and `%`, are escaped.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn navigation_detection() {
        assert!(is_page_navigation(&headers(&[(
            "sec-fetch-mode",
            "navigate"
        )])));
        assert!(!is_page_navigation(&headers(&[
            ("sec-fetch-mode", "cors"),
            ("accept", "text/html")
        ])));
        assert!(is_page_navigation(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )])));
        assert!(!is_page_navigation(&headers(&[(
            "accept",
            "application/json"
        )])));
        assert!(!is_page_navigation(&headers(&[(
            "accept",
            "text/html;q=0"
        )])));
        assert!(!is_page_navigation(&headers(&[("accept", "*/*")])));
        assert!(!is_page_navigation(&headers(&[])));
        assert!(!is_page_navigation(&headers(&[
            ("accept", "text/html"),
            ("x-requested-with", "xmlhttprequest")
        ])));
        assert!(!is_page_navigation(&headers(&[
            ("sec-fetch-mode", "navigate"),
            ("x-requested-with", "XMLHttpRequest")
        ])));
    }

    #[test]
    fn redirect_only_for_401_navigations() {
        let nav = headers(&[("sec-fetch-mode", "navigate")]);
        let login = Some("https://team.example/cdn-cgi/access/login/app");
        let r = Rejection::for_request(
            ValidationError::MissingToken,
            &nav,
            Protocol::Auto,
            login,
            "/a b?x=1&y=2",
        );
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(
            r.location().unwrap(),
            "https://team.example/cdn-cgi/access/login/app?redirect_url=%2Fa+b%3Fx%3D1%26y%3D2"
        );
        let forbidden = ValidationError::Forbidden { reason: "x".into() };
        let r = Rejection::for_request(forbidden, &nav, Protocol::Auto, login, "/");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = Rejection::for_request(
            ValidationError::MissingToken,
            &headers(&[("sec-fetch-mode", "cors")]),
            Protocol::Auto,
            login,
            "/",
        );
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = Rejection::for_request(
            ValidationError::MissingToken,
            &nav,
            Protocol::Auto,
            Some("/login?app=1"),
            "/x",
        );
        assert_eq!(r.location().unwrap(), "/login?app=1&redirect_url=%2Fx");
    }

    #[test]
    fn grpc_form() {
        let grpc = headers(&[("content-type", "application/grpc+proto")]);
        let r = Rejection::for_request(
            ValidationError::Expired { exp: 1 },
            &grpc,
            Protocol::Auto,
            None,
            "/svc/Method",
        );
        let resp = r.to_response();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "16");
        assert_eq!(
            resp.headers()["grpc-message"],
            "expired: The access token has expired."
        );
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert!(resp.body().is_empty());
        let r = Rejection::for_request(
            ValidationError::Forbidden { reason: "x".into() },
            &HeaderMap::new(),
            Protocol::Grpc,
            None,
            "/",
        );
        assert_eq!(r.to_response().headers()["grpc-status"], "7");
        let r = Rejection::for_request(
            ValidationError::MissingToken,
            &grpc,
            Protocol::Http,
            None,
            "/",
        );
        assert_eq!(r.status(), 401);
        assert!(!is_grpc(&headers(&[("content-type", "application/grpcx")])));
        assert_eq!(grpc_percent_encode("a%b\u{e9}"), "a%25b%C3%A9");
    }

    #[test]
    fn json_form_never_echoes_the_request() {
        let r = Rejection::json(ValidationError::MalformedToken { reason: "bad" });
        let resp = r.to_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["error"], "malformed_token");
        assert_eq!(body.as_object().unwrap().len(), 2);
    }
}
