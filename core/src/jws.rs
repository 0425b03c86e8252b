//! Strict parsing of compact JWS tokens.
//!
//! Deliberately stricter than RFC 7515 requires and than most libraries are:
//! exactly three segments, canonical unpadded base64url (no padding, no
//! whitespace, no non-zero trailing bits), JSON objects without duplicated
//! member names at any depth, and a refused `crit` header. Header members
//! that would let the token choose its own key (`jwk`, `jku`, `x5u`, `x5c`)
//! are ignored: keys only ever come from the configured key source.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

use crate::error::{ValidationError, sanitize};

/// The parts of a compact JWS that validation needs.
#[derive(Debug)]
pub(crate) struct Compact<'a> {
    /// `header.payload` — the bytes the signature covers.
    pub signing_input: &'a str,
    /// The payload segment, still base64url.
    pub payload_b64: &'a str,
    /// The signature segment, still base64url (already checked canonical).
    pub signature_b64: &'a str,
    /// The decoded header.
    pub header: JoseHeader,
}

/// The protected header members validation looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoseHeader {
    pub alg: String,
    pub kid: Option<String>,
}

/// Splits and checks a compact JWS; decodes the header.
pub(crate) fn parse_compact(token: &str) -> Result<Compact<'_>, ValidationError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ValidationError::malformed(
            "a compact JWS has exactly three segments",
        ));
    };
    if h.is_empty() {
        return Err(ValidationError::malformed("empty header segment"));
    }
    check_canonical_b64(p)?;
    check_canonical_b64(s)?;
    let header_bytes = decode_b64(h)?;
    let header = parse_header(&header_bytes)?;
    Ok(Compact {
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature_b64: s,
        header,
    })
}

/// Decodes canonical unpadded base64url, refusing anything else.
pub(crate) fn decode_b64(segment: &str) -> Result<Vec<u8>, ValidationError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| ValidationError::malformed("segment is not canonical unpadded base64url"))
}

/// Checks that a segment is canonical unpadded base64url without
/// allocating. The engine's decoder refuses padding, non-alphabet
/// characters and non-zero trailing bits; this mirrors that cheaply.
fn check_canonical_b64(segment: &str) -> Result<(), ValidationError> {
    let bytes = segment.as_bytes();
    let bad = || {
        Err(ValidationError::malformed(
            "segment is not canonical unpadded base64url",
        ))
    };
    if bytes.len() % 4 == 1 {
        return bad();
    }
    let mut last = 0u8;
    for &b in bytes {
        last = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return bad(),
        };
    }
    // The unused low bits of the final character must be zero.
    match bytes.len() % 4 {
        2 if last & 0b1111 != 0 => bad(),
        3 if last & 0b11 != 0 => bad(),
        _ => Ok(()),
    }
}

fn parse_header(bytes: &[u8]) -> Result<JoseHeader, ValidationError> {
    let Value::Object(map) = parse_strict_json(bytes).map_err(|_| {
        ValidationError::malformed("header is not a JSON object without duplicate members")
    })?
    else {
        return Err(ValidationError::malformed("header is not a JSON object"));
    };
    if map.contains_key("crit") {
        return Err(ValidationError::malformed(
            "critical header extensions are not supported",
        ));
    }
    if matches!(map.get("b64"), Some(v) if v != &Value::Bool(true)) {
        return Err(ValidationError::malformed(
            "unencoded payloads are not supported",
        ));
    }
    let alg = match map.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(_) => return Err(ValidationError::malformed("alg is not a string")),
        None => return Err(ValidationError::malformed("header has no alg")),
    };
    let kid = match map.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        None => None,
        Some(_) => return Err(ValidationError::malformed("kid is not a string")),
    };
    Ok(JoseHeader { alg, kid })
}

/// Maps a JOSE algorithm name to the asymmetric algorithms this crate verifies.
/// HMAC and `none` are never returned, whatever the allow-list says.
pub(crate) fn asymmetric_alg(name: &str) -> Result<jsonwebtoken::Algorithm, ValidationError> {
    use jsonwebtoken::Algorithm as A;
    Ok(match name {
        "RS256" => A::RS256,
        "RS384" => A::RS384,
        "RS512" => A::RS512,
        "PS256" => A::PS256,
        "PS384" => A::PS384,
        "PS512" => A::PS512,
        "ES256" => A::ES256,
        "ES384" => A::ES384,
        "EdDSA" => A::EdDSA,
        other => {
            return Err(ValidationError::DisallowedAlgorithm {
                alg: sanitize(other),
                key_mismatch: false,
            });
        }
    })
}

/// Parses JSON into a [`Value`], refusing duplicated member names at any
/// depth (serde_json alone lets the last duplicate silently win).
pub fn parse_strict_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn strict_json_refuses_duplicates_at_any_depth() {
        assert!(parse_strict_json(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict_json(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_strict_json(br#"[{"b":1,"b":1}]"#).is_err());
        assert!(parse_strict_json(br#"{"a":1} x"#).is_err());
        assert_eq!(
            parse_strict_json(br#"{"a":[1,{"b":null}]}"#).unwrap()["a"][1]["b"],
            Value::Null
        );
    }

    #[test]
    fn canonical_base64_check_agrees_with_the_decoder() {
        for s in [
            "", "QQ", "QUI", "QUJD", "QR", "QUJ", "QQ==", "Q", "QU+D", "QU/D", "QU D", "QUJD\n",
        ] {
            assert_eq!(
                check_canonical_b64(s).is_ok(),
                URL_SAFE_NO_PAD.decode(s).is_ok(),
                "disagreement on {s:?}"
            );
        }
    }

    #[test]
    fn header_rules() {
        let tok = |h: &str| format!("{}.{}.c2ln", b64(h), b64("{}"));
        assert_eq!(
            parse_compact(&tok(r#"{"alg":"RS256","kid":"k"}"#))
                .unwrap()
                .header
                .kid
                .as_deref(),
            Some("k")
        );
        for bad in [
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"RS256","alg":"none"}"#,
            r#"{"kid":"k"}"#,
            r#"{"alg":1}"#,
            r#"{"alg":"RS256","kid":5}"#,
            r#"{"alg":"RS256","b64":false}"#,
            r#"["alg"]"#,
        ] {
            let err = parse_compact(&tok(bad)).unwrap_err();
            assert!(
                matches!(err, ValidationError::MalformedToken { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn structure_rules() {
        let h = b64(r#"{"alg":"RS256"}"#);
        for bad in [
            String::new(),
            format!("{h}.e30"),
            format!("{h}.e30.c2ln.extra"),
            ".e30.c2ln".to_string(),
            format!("{h}.e30=.c2ln"),
            format!("{h}.e30.c2ln "),
            format!("{h}.e30.c2l"), // non-zero trailing bits
        ] {
            assert!(parse_compact(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hmac_and_none_are_never_asymmetric() {
        for alg in ["none", "HS256", "HS384", "HS512", "rs256", ""] {
            assert!(matches!(
                asymmetric_alg(alg),
                Err(ValidationError::DisallowedAlgorithm { .. })
            ));
        }
        assert_eq!(
            asymmetric_alg("ES256").unwrap(),
            jsonwebtoken::Algorithm::ES256
        );
    }
}
