//! Finding the token in a request.
//!
//! Order: the `Cf-Access-Jwt-Assertion` header (what the edge sends), then
//! the `CF_Authorization` cookie (what a browser holds), then — only when
//! enabled — `Authorization: Bearer`. `http::HeaderMap` compares names
//! case-insensitively; several `Cookie` headers and several cookies per
//! header are handled.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::wire::{AUTHORIZATION_COOKIE, JWT_ASSERTION_HEADER};

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLocation {
    /// The `Cf-Access-Jwt-Assertion` header.
    Header,
    /// The `CF_Authorization` cookie.
    Cookie,
    /// `Authorization: Bearer`.
    Bearer,
}

/// Extraction settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extractor {
    /// Also accept `Authorization: Bearer <token>` (off by default: the
    /// edge never sends it, and apps often use that header for their own
    /// credentials).
    pub allow_bearer: bool,
}

impl Extractor {
    /// Finds the token; `None` when the request carries none.
    pub fn extract<'h>(&self, headers: &'h HeaderMap) -> Option<(&'h str, TokenLocation)> {
        if let Some(token) = headers
            .get(JWT_ASSERTION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some((token, TokenLocation::Header));
        }
        if let Some(token) = cookie(headers, AUTHORIZATION_COOKIE) {
            return Some((token, TokenLocation::Cookie));
        }
        if self.allow_bearer {
            for value in headers.get_all(AUTHORIZATION) {
                let Ok(value) = value.to_str() else { continue };
                let mut parts = value.trim().splitn(2, ' ');
                if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
                    let token = token.trim();
                    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
                        return Some((token, TokenLocation::Bearer));
                    }
                }
            }
        }
        None
    }
}

/// Extracts the token with default settings (header, then cookie).
pub fn extract_token(headers: &HeaderMap) -> Option<&str> {
    Extractor::default().extract(headers).map(|(t, _)| t)
}

/// The first non-empty value of cookie `name` across all `Cookie` headers
/// (a header that is not UTF-8 is skipped; the value is not checked
/// further: a token is validated anyway).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        // `from_utf8` checks a word at a time; `HeaderValue::to_str` checks
        // byte by byte, which showed on the gateway's cookie path (a token
        // cookie is ~900 bytes).
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_wins_over_cookie_and_names_are_case_insensitive() {
        let h = headers(&[
            ("CF-ACCESS-JWT-ASSERTION", "h.h.h"),
            ("cookie", "CF_Authorization=c.c.c"),
        ]);
        assert_eq!(
            Extractor::default().extract(&h),
            Some(("h.h.h", TokenLocation::Header))
        );
    }

    #[test]
    fn cookie_among_several_headers_and_cookies() {
        let h = headers(&[
            ("cookie", "a=1; b=2"),
            ("cookie", "theme=dark; CF_Authorization=c.c.c; z=3"),
        ]);
        assert_eq!(extract_token(&h), Some("c.c.c"));
        let h = headers(&[("cookie", "XCF_Authorization=no; CF_Authorization_x=no")]);
        assert_eq!(extract_token(&h), None);
    }

    #[test]
    fn cookie_values_are_trimmed_and_unquoted_and_other_cookies_may_be_utf8() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(
                "name=J\u{fc}rgen;  CF_Authorization = \"q.q.q\" ; x=1".as_bytes(),
            )
            .unwrap(),
        );
        assert_eq!(extract_token(&h), Some("q.q.q"));
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"CF_Authorization=\xff.x.y").unwrap(),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("CF_Authorization=ok.ok.ok"),
        );
        assert_eq!(
            extract_token(&h),
            Some("ok.ok.ok"),
            "a non-UTF-8 header is skipped"
        );
    }

    #[test]
    fn bearer_is_opt_in() {
        let h = headers(&[("authorization", "Bearer b.b.b")]);
        assert_eq!(extract_token(&h), None);
        assert_eq!(
            Extractor { allow_bearer: true }.extract(&h),
            Some(("b.b.b", TokenLocation::Bearer))
        );
        let h = headers(&[("authorization", "Basic Zm9vOmJhcg==")]);
        assert_eq!(Extractor { allow_bearer: true }.extract(&h), None);
    }

    #[test]
    fn empty_values_are_missing() {
        let h = headers(&[
            ("cf-access-jwt-assertion", " "),
            ("cookie", "CF_Authorization="),
        ]);
        assert_eq!(extract_token(&h), None);
    }
}
