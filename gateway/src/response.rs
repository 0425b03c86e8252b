//! Responses the gateway makes itself: the contract's JSON rejections and
//! small JSON / text bodies.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use portcullis_core::ErrorCode;

/// The body type of every response: streamed from the origin or made here.
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

/// The contract's rejection with the code's own sentence.
pub fn rejection(code: ErrorCode) -> Response<Body> {
    rejection_with(code, code.default_message())
}

/// The contract's rejection: status of `code`, and
/// `{"error":"<code>","message":"<message>"}`.
pub fn rejection_with(code: ErrorCode, message: &str) -> Response<Body> {
    let mut response = Response::new(full(code.json_body(message)));
    *response.status_mut() = code.http_status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    text(status, value.to_string(), "application/json")
}

/// A response with a body and content type.
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

/// A plain JSON error for the admin API (`{"error","message"}`).
pub fn admin_error(status: StatusCode, error: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": error, "message": message}),
    )
}
