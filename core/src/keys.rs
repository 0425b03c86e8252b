//! Verifying keys and key sets parsed from JWKS / Cloudflare certs documents.
//!
//! A document may hold keys this crate must not use; those are skipped with a
//! debug log rather than failing the whole set: keys whose `use` is not
//! `sig`, whose `key_ops` lack `verify`, symmetric (`oct`) keys, unsupported
//! curves and RSA moduli under 2048 bits. The Cloudflare members
//! `public_cert` / `public_certs` carry the same keys as X.509 certificates;
//! the JWKs in `keys` are authoritative.

use std::collections::HashSet;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::jws::{decode_b64, parse_strict_json};

/// The family of a verifying key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA (RS256/384/512, PS256/384/512).
    Rsa,
    /// EC P-256 (ES256).
    EcP256,
    /// EC P-384 (ES384).
    EcP384,
    /// Ed25519 (EdDSA).
    Ed25519,
}

impl KeyType {
    /// Whether a token algorithm may be verified with this kind of key.
    pub fn supports(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            KeyType::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            KeyType::EcP256 => alg == A::ES256,
            KeyType::EcP384 => alg == A::ES384,
            KeyType::Ed25519 => alg == A::EdDSA,
        }
    }
}

/// One public key, parsed once per algorithm it may verify and reused for
/// every token it signs.
///
/// Verification goes to aws-lc-rs directly through pre-parsed
/// [`ParsedPublicKey`]s: `jsonwebtoken::crypto::verify` rebuilds the key
/// from its components on every call, which costs a few microseconds per
/// token.
pub struct VerifyingKey {
    kid: Option<String>,
    key_type: KeyType,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<Algorithm>,
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn verification_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use Algorithm as A;
    Some(match alg {
        A::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        A::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        A::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        A::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        A::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        A::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        A::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        A::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        A::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, value: &[u8]) {
        let pad = value.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        push_len(out, value.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    /// The key's family.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }
    /// The algorithm the JWK pins, if any.
    pub fn alg(&self) -> Option<Algorithm> {
        self.alg
    }
    /// Whether a token with this `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.supports(alg) && self.alg.is_none_or(|a| a == alg)
    }
    /// Verifies `signature` over `message` with algorithm `alg`; false
    /// when the key does not accept `alg` or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }

    /// Parses one JWK. `Ok(None)` means "a valid JWK this crate must not
    /// use for verification" (skipped), `Err` a broken one.
    pub fn from_jwk(jwk: &Value) -> Result<Option<Self>, String> {
        let obj = jwk.as_object().ok_or("a JWK is not a JSON object")?;
        let str_member = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("JWK member {name:?} is not a string")),
            }
        };
        if let Some(usage) = str_member("use")?
            && usage != "sig"
        {
            return Ok(None);
        }
        if let Some(ops) = obj.get("key_ops") {
            let ops = ops.as_array().ok_or("JWK key_ops is not an array")?;
            if !ops.iter().any(|op| op == "verify") {
                return Ok(None);
            }
        }
        let kid = str_member("kid")?.map(str::to_owned);
        let alg = match str_member("alg")? {
            None => None,
            Some(name) => match crate::jws::asymmetric_alg(name) {
                Ok(alg) => Some(alg),
                // A key pinned to an algorithm we never verify is not usable.
                Err(_) => return Ok(None),
            },
        };
        let b64_member = |name: &str| -> Result<Vec<u8>, String> {
            let value = str_member(name)?.ok_or_else(|| format!("JWK lacks {name:?}"))?;
            decode_b64(value).map_err(|_| format!("JWK member {name:?} is not base64url"))
        };
        let (key_type, material) = match str_member("kty")? {
            Some("RSA") => {
                let n = b64_member("n")?;
                let e = b64_member("e")?;
                let n = strip_leading_zeros(&n);
                if n.len() * 8 < 2048 || n.len() > 1024 {
                    return Ok(None);
                }
                (KeyType::Rsa, rsa_public_key_der(n, strip_leading_zeros(&e)))
            }
            Some("EC") => {
                let (key_type, len) = match str_member("crv")? {
                    Some("P-256") => (KeyType::EcP256, 32),
                    Some("P-384") => (KeyType::EcP384, 48),
                    _ => return Ok(None),
                };
                let x = b64_member("x")?;
                let y = b64_member("y")?;
                if x.len() != len || y.len() != len {
                    return Err("EC JWK coordinates have the wrong length".into());
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (key_type, point)
            }
            Some("OKP") => {
                if str_member("crv")? != Some("Ed25519") {
                    return Ok(None);
                }
                let x = b64_member("x")?;
                if x.len() != 32 {
                    return Err("Ed25519 JWK has the wrong length".into());
                }
                (KeyType::Ed25519, x)
            }
            // Symmetric or unknown key types are never used to verify.
            _ => return Ok(None),
        };
        if let Some(alg) = alg
            && !key_type.supports(alg)
        {
            return Err("JWK alg does not match its key type".into());
        }
        let candidates: &[Algorithm] = match (alg, key_type) {
            (Some(pinned), _) => &[pinned][..],
            (None, KeyType::Rsa) => &RSA_ALGS,
            (None, KeyType::EcP256) => &[Algorithm::ES256],
            (None, KeyType::EcP384) => &[Algorithm::ES384],
            (None, KeyType::Ed25519) => &[Algorithm::EdDSA],
        };
        let mut parsed = Vec::with_capacity(candidates.len());
        for &candidate in candidates {
            let verification = verification_algorithm(candidate).ok_or("unsupported algorithm")?;
            let key = ParsedPublicKey::new(verification, &material)
                .map_err(|e| format!("the public key is not valid: {e}"))?;
            parsed.push((candidate, key));
        }
        Ok(Some(VerifyingKey {
            kid,
            key_type,
            alg,
            parsed,
        }))
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// An immutable set of verifying keys, published as a whole.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    skipped: usize,
}

impl KeySet {
    /// Parses a JWKS or Cloudflare certs document (`{"keys":[...]}`).
    ///
    /// Fails when the document is not JSON, has no `keys` array, repeats a
    /// `kid`, or yields no usable key at all. Broken or unusable JWKs are
    /// skipped (and counted in [`KeySet::skipped`]).
    pub fn from_json(document: &[u8]) -> Result<Self, String> {
        let doc = parse_strict_json(document).map_err(|e| format!("not valid JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the document has no \"keys\" array")?;
        Self::from_jwks(keys)
    }

    /// Builds a set from parsed JWKs; see [`KeySet::from_json`].
    pub fn from_jwks(jwks: &[Value]) -> Result<Self, String> {
        let mut set = KeySet::default();
        let mut kids = HashSet::new();
        for (i, jwk) in jwks.iter().enumerate() {
            match VerifyingKey::from_jwk(jwk) {
                Ok(Some(key)) => {
                    if let Some(kid) = key.kid()
                        && !kids.insert(kid.to_owned())
                    {
                        return Err(format!("key #{i}: kid {kid:?} appears twice"));
                    }
                    set.keys.push(Arc::new(key));
                }
                Ok(None) => {
                    tracing::debug!(
                        index = i,
                        "skipping a JWK that is not a usable verification key"
                    );
                    set.skipped += 1;
                }
                // One key the provider publishes in a form we cannot read
                // must not take the others down with it.
                Err(reason) => {
                    tracing::warn!(index = i, %reason, "skipping a broken JWK");
                    set.skipped += 1;
                }
            }
        }
        if set.keys.is_empty() {
            return Err("the document holds no usable verification key".into());
        }
        Ok(set)
    }

    /// The keys, in document order.
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many JWKs of the document were skipped as unusable.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Selects the key for a token: by `kid`, or the only key when the
    /// token names none and exactly one key is loaded.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// True when some key of `self` (by kid) is absent from `newer`.
    pub(crate) fn drops_keys_in(&self, newer: &KeySet) -> bool {
        self.keys
            .iter()
            .any(|k| !newer.keys.iter().any(|n| n.kid() == k.kid()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N: &str = "u5pYAJwSIuD8a9Ahuw53yPPEwRvnHqoyeZqpyBs_WqKtIHeLZ7pcWy-nU7x-NFiAkFzxOSGuxKPzzr-G6McJYwWl7FRwHk13HwM4THNRJ66apyUFRGuTRsrAsiGkPfiE3x4u77rAcc_ruP3i_-gJ-NkyNaJrKgYkyHSuqI-vH0qTYFWgHk9F_IbpsUncFnZV8qbis_eIyNRpN5cxdqS2H1ky0vCHpQ1H6Ll-09SRbDGgYNUo-rHwNJobzFUMjDu0oGfZXt7FasAO8-FlwrMOcn01bb4NOvbR8nBi-Fpod_EHsDETfitSkS18a2Zjm8XE3w_45JMSfk5TjRqVFKstiw";

    fn rsa(extra: Value) -> Value {
        let mut v = json!({"kty":"RSA","kid":"a","n":N,"e":"AQAB"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn use_and_key_ops_gate_verification_keys() {
        assert!(
            VerifyingKey::from_jwk(&rsa(json!({"use":"sig"})))
                .unwrap()
                .is_some()
        );
        assert!(
            VerifyingKey::from_jwk(&rsa(json!({"use":"enc"})))
                .unwrap()
                .is_none()
        );
        assert!(
            VerifyingKey::from_jwk(&rsa(json!({"key_ops":["encrypt"]})))
                .unwrap()
                .is_none()
        );
        assert!(
            VerifyingKey::from_jwk(&rsa(json!({"key_ops":["sign","verify"]})))
                .unwrap()
                .is_some()
        );
        assert!(
            VerifyingKey::from_jwk(&rsa(json!({"alg":"HS256"})))
                .unwrap()
                .is_none()
        );
        assert!(
            VerifyingKey::from_jwk(&json!({"kty":"oct","k":"AAAA"}))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn broken_documents_are_errors() {
        assert!(KeySet::from_json(b"{}").is_err());
        assert!(KeySet::from_json(b"not json").is_err());
        assert!(KeySet::from_json(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::from_json(br#"{"keys":[{"kty":"RSA","n":"!","e":"AQAB"}]}"#).is_err());
        let one_broken =
            json!({"keys":[{"kty":"RSA","n":"!","e":"AQAB"}, rsa(json!({}))]}).to_string();
        assert_eq!(
            KeySet::from_json(one_broken.as_bytes()).unwrap().skipped(),
            1
        );
        let dup = json!({"keys":[rsa(json!({})), rsa(json!({}))]}).to_string();
        assert!(
            KeySet::from_json(dup.as_bytes())
                .unwrap_err()
                .contains("twice")
        );
        let alg_mismatch = json!({"keys":[rsa(json!({"alg":"ES256"}))]}).to_string();
        assert!(KeySet::from_json(alg_mismatch.as_bytes()).is_err());
    }

    #[test]
    fn kidless_selection_needs_exactly_one_key() {
        let one = KeySet::from_jwks(&[rsa(json!({}))]).unwrap();
        assert!(one.find(None).is_some());
        assert!(one.find(Some("a")).is_some());
        assert!(one.find(Some("b")).is_none());
        let two = KeySet::from_jwks(&[rsa(json!({})), rsa(json!({"kid":"b"}))]).unwrap();
        assert!(two.find(None).is_none());
        assert!(one.drops_keys_in(&KeySet::from_jwks(&[rsa(json!({"kid":"b"}))]).unwrap()));
        assert!(!one.drops_keys_in(&two));
    }

    #[test]
    fn alg_pinning() {
        let key = VerifyingKey::from_jwk(&rsa(json!({"alg":"PS256"})))
            .unwrap()
            .unwrap();
        assert!(key.accepts(Algorithm::PS256));
        assert!(!key.accepts(Algorithm::RS256));
        assert!(!key.accepts(Algorithm::ES256));
    }
}
