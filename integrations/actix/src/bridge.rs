//! Between actix-web's `http` 0.2 types and the `http` 1 types that core
//! and the shared [`AccessConfig`](portcullis_tower::AccessConfig) use.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap as ActixHeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use portcullis_tower::CONSULTED_HEADERS;

/// Copies the few request headers the decision reads (token header,
/// cookies, `Accept`, `Sec-Fetch-Mode`, ...) into an `http` 1 map.
pub(crate) fn consulted_headers(from: &ActixHeaderMap) -> http::HeaderMap {
    let mut to = http::HeaderMap::new();
    for name in CONSULTED_HEADERS {
        for value in from.get_all(name.as_str()) {
            if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                to.append(name.clone(), value);
            }
        }
    }
    to
}

/// Turns a rendered rejection into an actix-web response.
pub(crate) fn into_actix(response: http::Response<Bytes>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let status =
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::build(status);
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((name, value));
        }
    }
    out.body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::ValidationError;
    use portcullis_tower::Rejection;

    #[test]
    fn copies_only_consulted_headers_all_values() {
        let mut h = ActixHeaderMap::new();
        h.append(
            HeaderName::from_static("cookie"),
            HeaderValue::from_static("a=1"),
        );
        h.append(
            HeaderName::from_static("cookie"),
            HeaderValue::from_static("CF_Authorization=t"),
        );
        h.append(
            HeaderName::from_static("x-other"),
            HeaderValue::from_static("x"),
        );
        let copied = consulted_headers(&h);
        assert_eq!(copied.get_all("cookie").iter().count(), 2);
        assert!(copied.get("x-other").is_none());
        assert_eq!(portcullis_core::extract_token(&copied), Some("t"));
    }

    #[test]
    fn rejection_converts() {
        let resp = into_actix(Rejection::json(ValidationError::MissingToken).to_response());
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/json"
        );
    }
}
