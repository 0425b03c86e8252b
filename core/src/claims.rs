//! Typed claims of an Access application token and the identity behind it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::wire::{claims as names, token_type};

/// The claims of a validated Access token.
///
/// The members Cloudflare Access sends are typed; everything else (custom
/// claims from the identity provider, `groups`, device posture...) stays in
/// [`AccessClaims::extra`] and can be read with [`AccessClaims::get`] or
/// [`AccessClaims::pointer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccessClaims {
    /// Audiences (application AUD tags). Accepted as a string or an array.
    #[serde(deserialize_with = "string_or_seq")]
    pub aud: Vec<String>,
    /// The user's email; absent for service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user id; empty for service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The issuer: the team domain URL.
    pub iss: String,
    /// Issued at, seconds since the epoch.
    #[serde(
        default,
        deserialize_with = "opt_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<i64>,
    /// Not before, seconds since the epoch.
    #[serde(
        default,
        deserialize_with = "opt_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<i64>,
    /// Expiry, seconds since the epoch (required).
    #[serde(deserialize_with = "numeric_date")]
    pub exp: i64,
    /// Token type: `app` or `org`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Identity nonce (for the get-identity endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_nonce: Option<String>,
    /// Two-letter country of the request that logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Service-token client id; present only for service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// Every other claim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AccessClaims {
    /// Who the token speaks for.
    pub fn identity(&self) -> Identity {
        match (&self.common_name, &self.email) {
            (Some(cn), None) if !cn.is_empty() => Identity::Service {
                common_name: cn.clone(),
            },
            _ => Identity::User {
                email: self.email.clone().unwrap_or_default(),
                sub: self.sub.clone().unwrap_or_default(),
            },
        }
    }

    /// True for service-token tokens.
    pub fn is_service_token(&self) -> bool {
        matches!(self.identity(), Identity::Service { .. })
    }

    /// True when `type` is `app`.
    pub fn is_app_token(&self) -> bool {
        self.token_type.as_deref() == Some(token_type::APP)
    }

    /// The `groups` claim as strings (empty when absent; a single string
    /// counts as one group).
    pub fn groups(&self) -> Vec<&str> {
        match self.extra.get(names::GROUPS) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            _ => Vec::new(),
        }
    }

    /// Looks a claim up by name (typed members included) or, when `path`
    /// starts with `/`, by JSON pointer into the whole claim set
    /// (e.g. `/device_posture/os`).
    pub fn get(&self, path: &str) -> Option<Value> {
        if path.starts_with('/') {
            return self.pointer(path);
        }
        match path {
            names::AUD => Some(Value::from(self.aud.clone())),
            names::EMAIL => self.email.clone().map(Value::from),
            names::SUB => self.sub.clone().map(Value::from),
            names::ISS => Some(Value::from(self.iss.clone())),
            names::IAT => self.iat.map(Value::from),
            names::NBF => self.nbf.map(Value::from),
            names::EXP => Some(Value::from(self.exp)),
            names::TYPE => self.token_type.clone().map(Value::from),
            names::IDENTITY_NONCE => self.identity_nonce.clone().map(Value::from),
            names::COUNTRY => self.country.clone().map(Value::from),
            names::COMMON_NAME => self.common_name.clone().map(Value::from),
            other => self.extra.get(other).cloned(),
        }
    }

    /// JSON pointer lookup over all claims.
    pub fn pointer(&self, pointer: &str) -> Option<Value> {
        let mut parts = pointer.strip_prefix('/')?.splitn(2, '/');
        let first = parts.next()?.replace("~1", "/").replace("~0", "~");
        let top = self.get(&first)?;
        match parts.next() {
            None => Some(top),
            Some(rest) => top.pointer(&format!("/{rest}")).cloned(),
        }
    }

    /// A claim rendered for an HTTP header: strings as-is, arrays of
    /// strings comma-joined, other JSON as compact JSON.
    pub fn get_as_header_value(&self, path: &str) -> Option<String> {
        Some(match self.get(path)? {
            Value::String(s) => s,
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            Value::Null => return None,
            other => other.to_string(),
        })
    }
}

/// Who a token speaks for: a person or a service token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A person who logged in through an identity provider.
    User {
        /// The user's email.
        email: String,
        /// The user's id at the edge.
        sub: String,
    },
    /// A bot authenticated with service credentials.
    Service {
        /// The service token's client id.
        common_name: String,
    },
}

impl Identity {
    /// The email of a user; `None` for a service token.
    pub fn email(&self) -> Option<&str> {
        match self {
            Identity::User { email, .. } if !email.is_empty() => Some(email),
            _ => None,
        }
    }
    /// The user id; `None` for a service token.
    pub fn sub(&self) -> Option<&str> {
        match self {
            Identity::User { sub, .. } if !sub.is_empty() => Some(sub),
            _ => None,
        }
    }
    /// The service token's client id; `None` for a user.
    pub fn common_name(&self) -> Option<&str> {
        match self {
            Identity::Service { common_name } => Some(common_name),
            Identity::User { .. } => None,
        }
    }
    /// True for a service token.
    pub fn is_service(&self) -> bool {
        matches!(self, Identity::Service { .. })
    }
    /// A display name: the email, else the sub, else the common name.
    pub fn name(&self) -> &str {
        match self {
            Identity::User { email, sub } if email.is_empty() => sub,
            Identity::User { email, .. } => email,
            Identity::Service { common_name } => common_name,
        }
    }
}

fn string_or_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(f.floor() as i64),
        _ => Err(serde::de::Error::custom("NumericDate out of range")),
    }
}

fn opt_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    numeric_date(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> AccessClaims {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn aud_string_or_array() {
        let c = claims(json!({"aud":"x","iss":"i","exp":1}));
        assert_eq!(c.aud, vec!["x"]);
        let c = claims(json!({"aud":["x","y"],"iss":"i","exp":1.5}));
        assert_eq!(c.aud, vec!["x", "y"]);
        assert_eq!(c.exp, 1);
        assert!(
            serde_json::from_value::<AccessClaims>(json!({"aud":5,"iss":"i","exp":1})).is_err()
        );
        assert!(
            serde_json::from_value::<AccessClaims>(json!({"aud":"x","iss":"i","exp":"1"})).is_err()
        );
    }

    #[test]
    fn identity_tells_users_from_services() {
        let user = claims(json!({"aud":"a","iss":"i","exp":1,"email":"a@b.c","sub":"42"}));
        assert_eq!(user.identity().email(), Some("a@b.c"));
        assert!(!user.is_service_token());
        let svc = claims(json!({"aud":"a","iss":"i","exp":1,"sub":"","common_name":"abc.access"}));
        assert_eq!(svc.identity().common_name(), Some("abc.access"));
        assert_eq!(svc.identity().name(), "abc.access");
        assert!(svc.identity().email().is_none());
    }

    #[test]
    fn lookup_by_name_and_pointer() {
        let c = claims(json!({"aud":"a","iss":"i","exp":1,"country":"AU",
            "groups":["eng","ops"],"device_posture":{"os":"linux"},"custom":{"email":""}}));
        assert_eq!(c.get("country"), Some(json!("AU")));
        assert_eq!(c.get("/device_posture/os"), Some(json!("linux")));
        assert_eq!(c.get("/country"), Some(json!("AU")));
        assert_eq!(c.get("/nope/x"), None);
        assert_eq!(c.groups(), vec!["eng", "ops"]);
        assert_eq!(c.get_as_header_value("groups").as_deref(), Some("eng,ops"));
        assert_eq!(
            c.get_as_header_value("custom").as_deref(),
            Some(r#"{"email":""}"#)
        );
    }
}
