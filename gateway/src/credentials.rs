//! Finding service credentials in a request.
//!
//! Either the `CF-Access-Client-Id` and `CF-Access-Client-Secret` headers,
//! or — for apps that set `service_token_header` — one header holding
//! `{"cf-access-client-id":"…","cf-access-client-secret":"…"}`. A request
//! with a header repeated, only half a pair, or both forms at once is
//! refused: ambiguity in credentials is how confused-deputy bugs start.
//! A `service_token_header` value that is not a JSON object is not a
//! credential (the app may use, say, `Authorization` for itself).

use http::{HeaderMap, HeaderName};
use portcullis_core::wire::{
    CLIENT_ID_HEADER, CLIENT_ID_JSON_MEMBER, CLIENT_SECRET_HEADER, CLIENT_SECRET_JSON_MEMBER,
};

/// A presented credential pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The client id as presented.
    pub client_id: String,
    /// The secret as presented (never logged).
    pub client_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Why the credential headers are unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// A credential header appears more than once.
    Duplicate,
    /// Only the id or only the secret.
    Partial,
    /// Both the header pair and the JSON header.
    Mixed,
    /// Not valid UTF-8 / JSON strings.
    Malformed,
}

/// Largest credential header value considered.
const MAX_VALUE: usize = 1024;

fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Duplicate);
    }
    if first.len() > MAX_VALUE {
        return Err(CredentialError::Malformed);
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| CredentialError::Malformed)
}

/// Extracts credentials; `Ok(None)` when the request carries none.
pub fn extract(
    headers: &HeaderMap,
    json_header: Option<&HeaderName>,
) -> Result<Option<Credentials>, CredentialError> {
    let id = single(headers, CLIENT_ID_HEADER)?;
    let secret = single(headers, CLIENT_SECRET_HEADER)?;
    let pair = match (id, secret) {
        (None, None) => None,
        (Some(id), Some(secret)) => Some(Credentials {
            client_id: id.to_owned(),
            client_secret: secret.to_owned(),
        }),
        _ => return Err(CredentialError::Partial),
    };
    let from_json = match json_header {
        None => None,
        Some(name) => json_credentials(headers, name)?,
    };
    match (pair, from_json) {
        (Some(_), Some(_)) => Err(CredentialError::Mixed),
        (Some(c), None) | (None, Some(c)) => Ok(Some(c)),
        (None, None) => Ok(None),
    }
}

fn json_credentials(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<Credentials>, CredentialError> {
    let mut found = None;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        if !text.starts_with('{') {
            continue;
        }
        if text.len() > MAX_VALUE {
            return Err(CredentialError::Malformed);
        }
        let Ok(serde_json::Value::Object(map)) =
            portcullis_core::parse_strict_json(text.as_bytes())
        else {
            return Err(CredentialError::Malformed);
        };
        let member = |key: &str| match map.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(CredentialError::Malformed),
        };
        let creds = match (
            member(CLIENT_ID_JSON_MEMBER)?,
            member(CLIENT_SECRET_JSON_MEMBER)?,
        ) {
            (Some(client_id), Some(client_secret)) => Credentials {
                client_id,
                client_secret,
            },
            (None, None) => continue,
            _ => return Err(CredentialError::Partial),
        };
        if found.is_some() {
            return Err(CredentialError::Duplicate);
        }
        found = Some(creds);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn pairs_json_and_refusals() {
        let auth = HeaderName::from_static("authorization");
        let ok = extract(
            &h(&[
                ("CF-Access-Client-Id", "a"),
                ("cf-access-client-secret", "b"),
            ]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ok.client_id.as_str(), ok.client_secret.as_str()),
            ("a", "b")
        );
        assert_eq!(extract(&h(&[]), None), Ok(None));
        assert_eq!(
            extract(&h(&[("cf-access-client-id", "a")]), None),
            Err(CredentialError::Partial)
        );
        assert_eq!(
            extract(&h(&[("cf-access-client-secret", "b")]), None),
            Err(CredentialError::Partial)
        );
        assert_eq!(
            extract(
                &h(&[
                    ("cf-access-client-id", "a"),
                    ("cf-access-client-id", "c"),
                    ("cf-access-client-secret", "b")
                ]),
                None
            ),
            Err(CredentialError::Duplicate)
        );
        let json = r#"{"cf-access-client-id":"a","cf-access-client-secret":"b"}"#;
        let got = extract(&h(&[("authorization", json)]), Some(&auth))
            .unwrap()
            .unwrap();
        assert_eq!(got.client_id, "a");
        // The JSON header only counts for apps that configured it.
        assert_eq!(extract(&h(&[("authorization", json)]), None), Ok(None));
        assert_eq!(
            extract(
                &h(&[
                    ("authorization", json),
                    ("cf-access-client-id", "a"),
                    ("cf-access-client-secret", "b")
                ]),
                Some(&auth)
            ),
            Err(CredentialError::Mixed)
        );
        assert_eq!(
            extract(
                &h(&[("authorization", json), ("authorization", json)]),
                Some(&auth)
            ),
            Err(CredentialError::Duplicate)
        );
        assert_eq!(
            extract(
                &h(&[("authorization", r#"{"cf-access-client-id":"a"}"#)]),
                Some(&auth)
            ),
            Err(CredentialError::Partial)
        );
        assert_eq!(
            extract(
                &h(&[(
                    "authorization",
                    r#"{"cf-access-client-id":1,"cf-access-client-secret":"b"}"#
                )]),
                Some(&auth)
            ),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            extract(
                &h(&[(
                    "authorization",
                    r#"{"cf-access-client-id":"a","cf-access-client-id":"x","cf-access-client-secret":"b"}"#
                )]),
                Some(&auth)
            ),
            Err(CredentialError::Malformed),
            "duplicate JSON members are refused"
        );
        assert_eq!(
            extract(&h(&[("authorization", "Bearer abc")]), Some(&auth)),
            Ok(None)
        );
    }
}
