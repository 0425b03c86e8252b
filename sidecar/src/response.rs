//! Responses the sidecar makes itself: the contract's JSON rejections,
//! login redirects and forward-auth answers.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use portcullis_core::ErrorCode;

/// The body type of every response: streamed from the upstream or made here.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body made here from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// The contract's rejection: status of `code`, and
/// `{"error":"<code>","message":"<sentence>"}`.
pub fn rejection(code: ErrorCode) -> Response<Body> {
    let mut response = Response::new(full(code.json_body(code.default_message())));
    *response.status_mut() = code.http_status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A `302 Found` to `location`.
pub fn redirect(location: HeaderValue) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::FOUND;
    response.headers_mut().insert(LOCATION, location);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain-text response (admin endpoints).
pub fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejection_shape() {
        let r = rejection(ErrorCode::UnknownHost);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "unknown_host");
        assert!(v["message"].as_str().unwrap().len() > 5);
    }
}
