//! Responses the gateway makes itself: the contract's JSON rejections and
//! small JSON / text bodies.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};

pub use portcullis_core::proxy::{Body, empty, full, rejection, rejection_with};

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
