//! Identity headers: which ones a route injects, stripping them from
//! incoming requests, and filling them from validated claims.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use portcullis_sidecar::inject::HeaderMapping;
//!
//! let mapping = HeaderMapping::defaults();
//! let mut headers = HeaderMap::new();
//! headers.insert("x-forwarded-email", HeaderValue::from_static("spoofed@example.com"));
//! mapping.strip(&mut headers);
//! assert!(headers.is_empty());
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{AccessClaims, wire};

/// `X-Forwarded-Email`: the user's email (absent for service tokens).
pub const FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
/// `X-Forwarded-User`: email, else `sub`, or the service token's common name.
pub const FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
/// `X-Forwarded-Groups`: the comma-joined `groups` claim.
pub const FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");

/// Where an injected header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// The display name of the identity: email, else `sub`, else the
    /// service token's `common_name`.
    User,
    /// A claim name or a JSON pointer (`/device_posture/os`), rendered by
    /// [`AccessClaims::get_as_header_value`].
    Claim(String),
}

/// The headers a route injects, in order. Every name here is also removed
/// from incoming requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMapping {
    entries: Vec<(HeaderName, HeaderSource)>,
}

impl HeaderMapping {
    /// `X-Forwarded-Email`, `X-Forwarded-User`, `X-Forwarded-Groups`, and the
    /// edge's `Cf-Access-Authenticated-User-Email` (set from the token, so it
    /// cannot be spoofed either).
    pub fn defaults() -> Self {
        HeaderMapping {
            entries: vec![
                (
                    FORWARDED_EMAIL,
                    HeaderSource::Claim(wire::claims::EMAIL.into()),
                ),
                (FORWARDED_USER, HeaderSource::User),
                (
                    FORWARDED_GROUPS,
                    HeaderSource::Claim(wire::claims::GROUPS.into()),
                ),
                (
                    HeaderName::from_static(wire::AUTHENTICATED_USER_EMAIL_HEADER),
                    HeaderSource::Claim(wire::claims::EMAIL.into()),
                ),
            ],
        }
    }

    /// Adds a header, replacing an entry of the same name.
    pub fn set(&mut self, name: HeaderName, source: HeaderSource) {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = source,
            None => self.entries.push((name, source)),
        }
    }

    /// The header names.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.entries.iter().map(|(n, _)| n)
    }

    /// Removes every header of this mapping from `headers`.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for name in self.names() {
            headers.remove(name);
        }
    }

    /// Sets the headers from `claims`; a claim that is absent, empty or not
    /// representable in a header leaves its header unset.
    pub fn inject(&self, claims: &AccessClaims, headers: &mut HeaderMap) {
        for (name, value) in self.render(claims) {
            headers.insert(name, value);
        }
    }

    /// The headers [`inject`](Self::inject) sets, rendered once (the sidecar
    /// keeps them per connection while the same verified token repeats).
    pub fn render(&self, claims: &AccessClaims) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.entries.len());
        // Only the user entry needs the identity; render it at most once.
        let mut user: Option<Option<HeaderValue>> = None;
        for (name, source) in &self.entries {
            let value = match source {
                HeaderSource::User => user
                    .get_or_insert_with(|| header_value(name, claims.identity().name()))
                    .clone(),
                HeaderSource::Claim(path) => claims
                    .get_as_header_value(path)
                    .and_then(|v| header_value(name, &v)),
            };
            if let Some(value) = value {
                out.push((name.clone(), value));
            }
        }
        out
    }
}

/// `value` as a header value; `None` when empty or not representable.
fn header_value(name: &HeaderName, value: &str) -> Option<HeaderValue> {
    if value.is_empty() {
        return None;
    }
    match HeaderValue::from_str(value) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::debug!(header = %name, "claim value cannot be sent in a header; skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: serde_json::Value) -> AccessClaims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn user_headers() {
        let c = claims(
            json!({"aud":"a","iss":"i","exp":1,"email":"ada@example.com","sub":"42",
            "groups":["eng","ops"],"device_posture":{"os":"linux"}}),
        );
        let mut m = HeaderMapping::defaults();
        m.set(
            HeaderName::from_static("x-device"),
            HeaderSource::Claim("/device_posture/os".into()),
        );
        let mut h = HeaderMap::new();
        m.inject(&c, &mut h);
        assert_eq!(h["x-forwarded-email"], "ada@example.com");
        assert_eq!(h["x-forwarded-user"], "ada@example.com");
        assert_eq!(h["x-forwarded-groups"], "eng,ops");
        assert_eq!(h["cf-access-authenticated-user-email"], "ada@example.com");
        assert_eq!(h["x-device"], "linux");
    }

    #[test]
    fn service_token_headers() {
        let c = claims(json!({"aud":"a","iss":"i","exp":1,"sub":"","common_name":"bot.access"}));
        let mut h = HeaderMap::new();
        HeaderMapping::defaults().inject(&c, &mut h);
        assert!(h.get("x-forwarded-email").is_none());
        assert_eq!(h["x-forwarded-user"], "bot.access");
        assert!(h.get("x-forwarded-groups").is_none());
    }

    #[test]
    fn unrepresentable_values_are_skipped() {
        let c = claims(json!({"aud":"a","iss":"i","exp":1,"email":"a\nb@example.com"}));
        let mut h = HeaderMap::new();
        HeaderMapping::defaults().inject(&c, &mut h);
        assert!(h.get("x-forwarded-email").is_none());
    }
}
