//! Between actix-web's `http` 0.2 types and the `http` 1 types that core
//! and the shared [`AccessConfig`](portcullis_tower::AccessConfig) use.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap as ActixHeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use portcullis_tower::CONSULTED_HEADERS;

/// The token header, as actix-web's name type (a `&str` name would be
/// parsed, and allocated, on every lookup).
pub(crate) const TOKEN_HEADER: HeaderName = HeaderName::from_static(JWT_ASSERTION_HEADER);

/// The token from the (first) value of the `Cf-Access-Jwt-Assertion`
/// header (`headers.get(&TOKEN_HEADER)`), read in place
/// exactly as core's [`Extractor`](portcullis_core::Extractor) reads it
/// first (the first value, visible ASCII, trimmed, not empty). `None`
/// means core's extractor would look further (cookie, `Bearer`): callers
/// then hand it the [consulted headers](consulted_headers).
pub(crate) fn header_token(value: Option<&HeaderValue>) -> Option<&str> {
    value
        .and_then(|v| visible_ascii(v.as_bytes()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `HeaderValue::to_str`: the value when every byte is visible ASCII or a
/// tab. `http` 0.2's version stops at the first bad byte, so its loop does
/// not vectorize (about 11 instructions per byte of an ~850-byte token);
/// this one, like `http` 1's, checks all bytes, then lets the standard
/// library confirm (cheaply, for ASCII) that they are UTF-8.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    let bad = bytes.iter().fold(false, |bad, &b| {
        bad | !((32..127).contains(&b) || b == b'\t')
    });
    if bad {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

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
    fn visible_ascii_is_to_str() {
        for b in 0..=255u8 {
            for value in [
                vec![b],
                vec![b'a', b, b'z'],
                [b'x'; 40].iter().chain([&b]).copied().collect(),
            ] {
                let Ok(header) = HeaderValue::from_bytes(&value) else {
                    continue;
                };
                assert_eq!(visible_ascii(&value), header.to_str().ok(), "{value:?}");
            }
        }
    }

    #[test]
    fn header_token_reads_as_core_extracts() {
        for value in [
            &b"a.b.c"[..],
            b"  a.b.c\t",
            b" ",
            b"\t",
            b"a.b\x01.c",
            b"a.b\x7f.c",
            "a.b\u{e9}.c".as_bytes(),
            b"a b",
        ] {
            let mut actix = ActixHeaderMap::new();
            let Ok(v) = HeaderValue::from_bytes(value) else {
                continue;
            };
            actix.append(TOKEN_HEADER, v);
            let copied = consulted_headers(&actix);
            let core = portcullis_core::extract_token(&copied);
            assert_eq!(header_token(actix.get(&TOKEN_HEADER)), core, "{value:?}");
        }
        assert_eq!(header_token(None), None);
        // The first of several values counts, as in core.
        let mut actix = ActixHeaderMap::new();
        actix.append(TOKEN_HEADER, HeaderValue::from_static("first"));
        actix.append(TOKEN_HEADER, HeaderValue::from_static("second"));
        assert_eq!(header_token(actix.get(&TOKEN_HEADER)), Some("first"));
        assert_eq!(
            portcullis_core::extract_token(&consulted_headers(&actix)),
            Some("first")
        );
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
