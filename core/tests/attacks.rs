//! Each attack and failure as its own test, asserting the exact error code.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::test_support::{
    TestKey, certs_document, service_claims, static_source, user_claims,
};
use portcullis_core::{
    Algorithm, ConfigError, CoreMetrics, ErrorCode, FixedClock, KeySource, Validator,
};
use serde_json::{Value, json};

const ISS: &str = "https://acme.cloudflareaccess.com";
const AUD: &str = "aud-0123456789abcdef";

struct Fixture {
    key: TestKey,
    validator: Validator,
}

fn fixture() -> Fixture {
    let key = TestKey::rsa();
    let validator = Validator::builder(ISS)
        .audience(AUD)
        .key_source(static_source(&[&key]))
        .build()
        .unwrap();
    Fixture { key, validator }
}

fn claims() -> Value {
    user_claims(ISS, AUD, "ada@example.com")
}

async fn code_of(v: &Validator, token: &str) -> ErrorCode {
    v.validate(token)
        .await
        .expect_err("token must be refused")
        .code()
}

fn unsigned(header: Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[tokio::test]
async fn a_valid_token_without_typ_is_accepted() {
    let f = fixture();
    let token = f.key.sign(&claims());
    let header: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert!(header.get("typ").is_none());
    let c = f.validator.validate(&token).await.unwrap();
    assert_eq!(c.email.as_deref(), Some("ada@example.com"));
}

#[tokio::test]
async fn alg_none_is_disallowed() {
    let f = fixture();
    for alg in ["none", "None", "NONE"] {
        let token = unsigned(json!({"alg": alg, "kid": f.key.kid()}), &claims(), "");
        assert_eq!(
            code_of(&f.validator, &token).await,
            ErrorCode::DisallowedAlgorithm,
            "{alg}"
        );
    }
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_disallowed() {
    let f = fixture();
    // The classic confusion: HS256 keyed with the RSA public key's bytes.
    for secret in [f.key.public_pem().into_bytes(), f.key.spki_der().to_vec()] {
        let header = json!({"alg": "HS256", "kid": f.key.kid()});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims().to_string())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
            signing_input.as_bytes(),
        );
        let token = format!("{signing_input}.{}", B64.encode(tag));
        assert_eq!(
            code_of(&f.validator, &token).await,
            ErrorCode::DisallowedAlgorithm
        );
    }
}

#[tokio::test]
async fn hmac_can_never_be_allowed() {
    let err = Validator::builder(ISS)
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::HS256])
        .key_source(static_source(&[&TestKey::ed25519()]))
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Algorithms(_)), "{err}");
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_disallowed() {
    let ec = TestKey::ec_p256();
    let v = Validator::builder(ISS)
        .audience(AUD)
        .key_source(static_source(&[&ec]))
        .build()
        .unwrap();
    assert_eq!(
        code_of(&v, &ec.sign(&claims())).await,
        ErrorCode::DisallowedAlgorithm
    );
}

#[tokio::test]
async fn alg_must_match_the_key_type() {
    let rsa = TestKey::rsa();
    let ec = TestKey::ec_p256();
    let v = Validator::builder(ISS)
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::ES256])
        .key_source(static_source(&[&rsa, &ec]))
        .build()
        .unwrap();
    // An ES256 signature presented under the RSA key's kid.
    let token = ec.sign_with_header(&json!({"alg": "ES256", "kid": rsa.kid()}), &claims());
    let err = v.validate(&token).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DisallowedAlgorithm);
    // PS256 is RSA too, but the JWK pins RS256.
    let token = rsa.sign_with_header(&json!({"alg": "PS256", "kid": rsa.kid()}), &claims());
    let v = Validator::builder(ISS)
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::PS256])
        .key_source(static_source(&[&rsa]))
        .build()
        .unwrap();
    assert_eq!(code_of(&v, &token).await, ErrorCode::DisallowedAlgorithm);
}

#[tokio::test]
async fn ec_and_ed25519_keys_verify_when_allowed() {
    let ec = TestKey::ec_p256();
    let ed = TestKey::ed25519();
    let v = Validator::builder(ISS)
        .audience(AUD)
        .algorithms([Algorithm::ES256, Algorithm::EdDSA])
        .key_source(static_source(&[&ec, &ed]))
        .build()
        .unwrap();
    assert!(v.validate(&ec.sign(&claims())).await.is_ok());
    assert!(v.validate(&ed.sign(&claims())).await.is_ok());
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let f = fixture();
    let token = f
        .key
        .sign_with_header(&json!({"alg": "RS256", "kid": "nope"}), &claims());
    assert_eq!(code_of(&f.validator, &token).await, ErrorCode::UnknownKey);
}

#[tokio::test]
async fn missing_kid_is_accepted_only_with_exactly_one_key() {
    let f = fixture();
    let token = f.key.sign_with_header(&json!({"alg": "RS256"}), &claims());
    assert!(f.validator.validate(&token).await.is_ok());
    let other = TestKey::rsa();
    let two = Validator::builder(ISS)
        .audience(AUD)
        .key_source(static_source(&[&f.key, &other]))
        .build()
        .unwrap();
    assert_eq!(code_of(&two, &token).await, ErrorCode::UnknownKey);
}

#[tokio::test]
async fn a_tampered_payload_is_a_bad_signature() {
    let f = fixture();
    let token = f.key.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["email"] = "mallory@example.com".into();
    let forged = format!("{}.{}.{}", parts[0], B64.encode(c.to_string()), parts[2]);
    assert_eq!(
        code_of(&f.validator, &forged).await,
        ErrorCode::BadSignature
    );
}

#[tokio::test]
async fn a_signature_by_another_key_under_our_kid_is_a_bad_signature() {
    let f = fixture();
    let attacker = TestKey::rsa();
    let token = attacker.sign_with_header(&json!({"alg": "RS256", "kid": f.key.kid()}), &claims());
    assert_eq!(code_of(&f.validator, &token).await, ErrorCode::BadSignature);
    let empty_sig = format!("{}.", token.rsplit_once('.').unwrap().0);
    assert_eq!(
        code_of(&f.validator, &empty_sig).await,
        ErrorCode::BadSignature
    );
}

#[tokio::test]
async fn embedded_keys_and_key_urls_are_never_used() {
    let f = fixture();
    let attacker = TestKey::rsa();
    let mut jwk = attacker.jwk();
    jwk["kid"] = f.key.kid().into();
    for header in [
        json!({"alg": "RS256", "kid": f.key.kid(), "jwk": jwk}),
        json!({"alg": "RS256", "kid": f.key.kid(), "jku": "http://127.0.0.1:1/jwks"}),
        json!({"alg": "RS256", "kid": f.key.kid(), "x5u": "http://127.0.0.1:1/cert"}),
    ] {
        let token = attacker.sign_with_header(&header, &claims());
        assert_eq!(
            code_of(&f.validator, &token).await,
            ErrorCode::BadSignature,
            "{header}"
        );
    }
    // The attacker's own kid with its jwk embedded: still not a loaded key.
    let token = attacker.sign_with_header(
        &json!({"alg": "RS256", "kid": attacker.kid(), "jwk": attacker.jwk()}),
        &claims(),
    );
    assert_eq!(code_of(&f.validator, &token).await, ErrorCode::UnknownKey);
}

#[tokio::test]
async fn a_crit_header_is_refused() {
    let f = fixture();
    let token = f.key.sign_with_header(
        &json!({"alg": "RS256", "kid": f.key.kid(), "crit": ["exp"], "exp": 1}),
        &claims(),
    );
    assert_eq!(
        code_of(&f.validator, &token).await,
        ErrorCode::MalformedToken
    );
}

#[tokio::test]
async fn non_canonical_base64url_is_malformed() {
    let f = fixture();
    let token = f.key.sign(&claims());
    let (head, rest) = token.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let std_alphabet =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(B64.decode(sig).unwrap());
    let mut variants = vec![
        format!("{head}=.{payload}.{sig}"),
        format!("{head}.{payload}=.{sig}"),
        format!("{head}.{payload}.{sig}=="),
        format!("{head}.{payload} .{sig}"),
        format!(
            "{head}.{payload}.{}",
            sig.replace('_', "/").replace('-', "+")
        ),
    ];
    if std_alphabet != sig {
        variants.push(format!("{head}.{payload}.{std_alphabet}"));
    }
    // Flip the unused trailing bits of the last signature character.
    let (body, last) = sig.split_at(sig.len() - 1);
    if sig.len() % 4 != 0 {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let idx = alphabet.find(last).unwrap();
        variants.push(format!(
            "{head}.{payload}.{body}{}",
            &alphabet[idx + 1..idx + 2]
        ));
    }
    for t in variants {
        assert_eq!(
            code_of(&f.validator, &t).await,
            ErrorCode::MalformedToken,
            "{t}"
        );
    }
}

#[tokio::test]
async fn trailing_data_is_malformed() {
    let f = fixture();
    let token = f.key.sign(&claims());
    for t in [
        format!("{token}."),
        format!("{token}.x"),
        format!("{token} "),
        format!("{token}\n"),
        format!(" {token}"),
    ] {
        assert_eq!(
            code_of(&f.validator, &t).await,
            ErrorCode::MalformedToken,
            "{t:?}"
        );
    }
    // Trailing bytes inside the signed payload JSON.
    let raw = f.key.sign_raw(
        &json!({"alg":"RS256","kid":f.key.kid()}).to_string(),
        &format!("{} x", claims()),
    );
    assert_eq!(code_of(&f.validator, &raw).await, ErrorCode::MalformedToken);
}

#[tokio::test]
async fn a_duplicated_claim_is_malformed_even_when_signed() {
    let f = fixture();
    let header = json!({"alg": "RS256", "kid": f.key.kid()}).to_string();
    let body = claims().to_string();
    let inner = body.trim_start_matches('{').trim_end_matches('}');
    // jsonwebtoken would let the last "email" (or "aud") silently win.
    for dup in [
        r#""email":"mallory@example.com""#,
        r#""aud":["other"]"#,
        r#""role":"user","role":"admin""#,
    ] {
        let payload = format!("{{{inner},{dup}}}");
        let token = f.key.sign_raw(&header, &payload);
        assert_eq!(
            code_of(&f.validator, &token).await,
            ErrorCode::MalformedToken,
            "{dup}"
        );
    }
    let dup_header = f.key.sign_raw(
        &format!(r#"{{"alg":"RS256","kid":"{}","kid":"x"}}"#, f.key.kid()),
        &body,
    );
    assert_eq!(
        code_of(&f.validator, &dup_header).await,
        ErrorCode::MalformedToken
    );
}

#[tokio::test]
async fn aud_iss_and_exp_are_required() {
    let f = fixture();
    for (claim, code) in [
        ("aud", ErrorCode::WrongAudience),
        ("iss", ErrorCode::WrongIssuer),
        ("exp", ErrorCode::MalformedToken),
    ] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            code_of(&f.validator, &f.key.sign(&c)).await,
            code,
            "without {claim}"
        );
    }
}

#[tokio::test]
async fn wrongly_typed_claims_are_malformed() {
    let f = fixture();
    for (claim, value) in [
        ("exp", json!("soon")),
        ("aud", json!(5)),
        ("nbf", json!(null)),
        ("iss", json!(["a"])),
    ] {
        let mut c = claims();
        c[claim] = value;
        assert_eq!(
            code_of(&f.validator, &f.key.sign(&c)).await,
            ErrorCode::MalformedToken,
            "{claim}"
        );
    }
    // Claims that are not an object at all.
    let token = f.key.sign_raw(
        &json!({"alg":"RS256","kid":f.key.kid()}).to_string(),
        "[1,2]",
    );
    assert_eq!(
        code_of(&f.validator, &token).await,
        ErrorCode::MalformedToken
    );
}

#[tokio::test]
async fn audience_matching_is_exact_and_accepts_string_or_array() {
    let f = fixture();
    for aud in [json!(AUD), json!(["x", AUD]), json!([AUD])] {
        let mut c = claims();
        c["aud"] = aud.clone();
        assert!(f.validator.validate(&f.key.sign(&c)).await.is_ok(), "{aud}");
    }
    for aud in [
        json!(&AUD[..10]),
        json!(format!("{AUD}x")),
        json!([format!("x{AUD}")]),
        json!([]),
        json!(AUD.to_uppercase()),
    ] {
        let mut c = claims();
        c["aud"] = aud.clone();
        assert_eq!(
            code_of(&f.validator, &f.key.sign(&c)).await,
            ErrorCode::WrongAudience,
            "{aud}"
        );
    }
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let f = fixture();
    for iss in [
        "https://evil.cloudflareaccess.com",
        "https://acme.cloudflareaccess.com.evil.com",
        "http://acme.cloudflareaccess.com",
    ] {
        let mut c = claims();
        c["iss"] = iss.into();
        assert_eq!(
            code_of(&f.validator, &f.key.sign(&c)).await,
            ErrorCode::WrongIssuer,
            "{iss}"
        );
    }
}

fn at(clock: &Arc<FixedClock>, key: &TestKey) -> Validator {
    Validator::builder(ISS)
        .audience(AUD)
        .leeway(Duration::from_secs(60))
        .clock(clock.clone())
        .key_source(static_source(&[key]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn expiry_honours_the_leeway() {
    let key = TestKey::rsa();
    let mut c = claims();
    c["iat"] = 1_000.into();
    c["nbf"] = 1_000.into();
    c["exp"] = 2_000.into();
    let token = key.sign(&c);
    let clock = Arc::new(FixedClock::new(2_059));
    assert!(
        at(&clock, &key).validate(&token).await.is_ok(),
        "inside the leeway"
    );
    clock.set(2_061);
    assert_eq!(code_of(&at(&clock, &key), &token).await, ErrorCode::Expired);
}

#[tokio::test]
async fn nbf_and_iat_in_the_future_are_not_yet_valid() {
    let key = TestKey::rsa();
    let clock = Arc::new(FixedClock::new(10_000));
    for claim in ["nbf", "iat"] {
        let mut c = claims();
        c["iat"] = 10_000.into();
        c["nbf"] = 10_000.into();
        c["exp"] = 20_000.into();
        c[claim] = 10_061.into();
        assert_eq!(
            code_of(&at(&clock, &key), &key.sign(&c)).await,
            ErrorCode::NotYetValid,
            "{claim}"
        );
        c[claim] = 10_059.into();
        assert!(
            at(&clock, &key).validate(&key.sign(&c)).await.is_ok(),
            "{claim} within leeway"
        );
    }
}

#[tokio::test]
async fn huge_time_values_do_not_overflow() {
    let f = fixture();
    for exp in [json!(i64::MAX), json!(u64::MAX), json!(1e300), json!(-1)] {
        let mut c = claims();
        c["exp"] = exp.clone();
        let r = f.validator.validate(&f.key.sign(&c)).await;
        if exp == json!(i64::MAX) {
            assert!(r.is_ok());
        } else {
            assert!(r.is_err(), "{exp}");
        }
    }
}

#[tokio::test]
async fn oversized_and_empty_tokens() {
    let f = fixture();
    let mut c = claims();
    c["padding"] = "x".repeat(20 * 1024).into();
    assert_eq!(
        code_of(&f.validator, &f.key.sign(&c)).await,
        ErrorCode::MalformedToken
    );
    assert_eq!(code_of(&f.validator, "").await, ErrorCode::MissingToken);
    assert_eq!(
        code_of(&f.validator, "garbage").await,
        ErrorCode::MalformedToken
    );
}

#[tokio::test]
async fn headers_cookies_and_missing_tokens() {
    let f = fixture();
    let token = f.key.sign(&claims());
    let mut h = http::HeaderMap::new();
    assert_eq!(
        f.validator.validate_headers(&h).await.unwrap_err().code(),
        ErrorCode::MissingToken
    );
    h.insert(
        "cookie",
        format!("a=b; CF_Authorization={token}; c=d")
            .parse()
            .unwrap(),
    );
    assert!(f.validator.validate_headers(&h).await.is_ok());
    h.insert("Cf-Access-Jwt-Assertion", "not.a.token".parse().unwrap());
    assert_eq!(
        f.validator.validate_headers(&h).await.unwrap_err().code(),
        ErrorCode::MalformedToken
    );
}

#[tokio::test]
async fn service_tokens_are_told_apart_from_users() {
    let f = fixture();
    let svc = f
        .validator
        .validate(&f.key.sign(&service_claims(ISS, AUD, "0123abcd.access")))
        .await
        .unwrap();
    assert!(svc.is_service_token());
    assert_eq!(svc.identity().common_name(), Some("0123abcd.access"));
    let user = f.validator.validate(&f.key.sign(&claims())).await.unwrap();
    assert_eq!(user.identity().email(), Some("ada@example.com"));
}

#[tokio::test]
async fn repeated_tokens_hit_the_cache_but_times_are_rechecked() {
    let key = TestKey::rsa();
    let registry = prometheus::Registry::new();
    let metrics = CoreMetrics::register(&registry).unwrap();
    let clock = Arc::new(FixedClock::new(portcullis_core::test_support::now()));
    let v = Validator::builder(ISS)
        .audience(AUD)
        .clock(clock.clone())
        .metrics(metrics.clone())
        .key_source(static_source(&[&key]))
        .build()
        .unwrap();
    let token = key.sign(&claims());
    let first = v.validate(&token).await.unwrap();
    let second = v.validate(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "the second answer comes from the cache"
    );
    assert_eq!(metrics.cache_hits.get(), 1);
    clock.advance(3600 + 61);
    assert_eq!(
        v.validate(&token).await.unwrap_err().code(),
        ErrorCode::Expired
    );
    assert_eq!(metrics.validations.with_label_values(&["ok"]).get(), 2);
    assert_eq!(metrics.validations.with_label_values(&["expired"]).get(), 1);
}

#[tokio::test]
async fn a_cached_token_for_one_audience_is_not_accepted_by_another_validator() {
    let f = fixture();
    let token = f.key.sign(&claims());
    assert!(f.validator.validate(&token).await.is_ok());
    let other = f.validator.with_audiences(["another-app"]).unwrap();
    assert_eq!(code_of(&other, &token).await, ErrorCode::WrongAudience);
}

#[tokio::test]
async fn keys_with_use_enc_or_without_verify_are_ignored() {
    let key = TestKey::rsa();
    for (member, value) in [("use", json!("enc")), ("key_ops", json!(["encrypt"]))] {
        let mut jwk = key.jwk();
        jwk[member] = value;
        if member == "key_ops" {
            jwk.as_object_mut().unwrap().remove("use");
        }
        let doc = json!({"keys": [jwk, TestKey::rsa().jwk()]}).to_string();
        let v = Validator::builder(ISS)
            .audience(AUD)
            .key_source(KeySource::from_json(&doc).unwrap())
            .build()
            .unwrap();
        assert_eq!(
            code_of(&v, &key.sign(&claims())).await,
            ErrorCode::UnknownKey,
            "{member}"
        );
    }
    assert!(KeySource::from_json(&certs_document(&[])).is_err());
}

#[tokio::test]
async fn error_messages_never_echo_the_token() {
    let f = fixture();
    let token = f.key.sign_with_header(
        &json!({"alg": "RS256", "kid": "k\u{1b}[31m-very-long-".repeat(20)}),
        &claims(),
    );
    let err = f.validator.validate(&token).await.unwrap_err();
    let text = format!("{err} {err:?} {}", err.json_body());
    assert!(!text.contains(&token));
    assert!(!text.contains('\u{1b}'));
    assert!(!text.contains("ada@example.com"));
}

#[tokio::test]
async fn a_near_copy_of_a_cached_token_is_verified_afresh() {
    let f = fixture();
    let token = f.key.sign(&claims());
    f.validator.validate(&token).await.unwrap();
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    let last = sig.len() - 1;
    sig[last] ^= 1;
    let near = format!("{head}.{}", B64.encode(&sig));
    assert_eq!(code_of(&f.validator, &near).await, ErrorCode::BadSignature);
    assert!(f.validator.validate(&token).await.is_ok());
}
