//! The real Cloudflare Access token and the certs document that signed it.

use std::sync::Arc;

use portcullis_core::test_support::shared_fixture;
use portcullis_core::{ErrorCode, FixedClock, KeySource, SystemClock, Validator};

const ISSUER: &str = "https://molten.cloudflareaccess.com";
const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";
const ISSUED_AT: i64 = 1_717_979_639;

fn fixture() -> Option<(String, KeySource)> {
    let token = std::fs::read_to_string(shared_fixture("cloudflare/app_token.jwt")?).unwrap();
    let source = KeySource::from_file(shared_fixture("cloudflare/certs.json")?).unwrap();
    Some((token.trim().to_owned(), source))
}

fn at_issue_time(source: KeySource, issuer: &str, aud: &str) -> Validator {
    Validator::builder(issuer)
        .audience(aud)
        .key_source(source)
        .clock(Arc::new(FixedClock::new(ISSUED_AT + 60)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn accepted_at_its_own_time_with_claims_exposed() {
    let Some((token, source)) = fixture() else {
        return;
    };
    assert_eq!(source.snapshot().keys().len(), 2);
    let claims = at_issue_time(source, ISSUER, AUD)
        .validate(&token)
        .await
        .unwrap();
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.aud, vec![AUD]);
    assert!(claims.email.as_deref().is_some_and(|e| e.contains('@')));
    assert!(claims.sub.as_deref().is_some_and(|s| !s.is_empty()));
    assert_eq!(claims.country.as_deref(), Some("AU"));
    assert_eq!(claims.token_type.as_deref(), Some("app"));
    assert_eq!(claims.get("custom"), Some(serde_json::json!({"email": ""})));
    assert_eq!(claims.get("/custom/email"), Some(serde_json::json!("")));
    assert!(!claims.is_service_token());
    assert_eq!(claims.identity().email(), claims.email.as_deref());
}

#[tokio::test]
async fn refused_as_expired_now_which_proves_the_signature_checked_out() {
    let Some((token, source)) = fixture() else {
        return;
    };
    let validator = Validator::builder(ISSUER)
        .audience(AUD)
        .key_source(source)
        .clock(Arc::new(SystemClock))
        .build()
        .unwrap();
    assert_eq!(
        validator.validate(&token).await.unwrap_err().code(),
        ErrorCode::Expired
    );
}

#[tokio::test]
async fn another_audience_or_issuer_is_refused() {
    let Some((token, source)) = fixture() else {
        return;
    };
    let other_aud = at_issue_time(source.clone(), ISSUER, &AUD.replace('4', "5"));
    assert_eq!(
        other_aud.validate(&token).await.unwrap_err().code(),
        ErrorCode::WrongAudience
    );
    // A prefix or substring of the real AUD is not a match.
    let prefix = at_issue_time(source.clone(), ISSUER, &AUD[..32]);
    assert_eq!(
        prefix.validate(&token).await.unwrap_err().code(),
        ErrorCode::WrongAudience
    );
    let other_iss = at_issue_time(source.clone(), "https://other.cloudflareaccess.com", AUD);
    assert_eq!(
        other_iss.validate(&token).await.unwrap_err().code(),
        ErrorCode::WrongIssuer
    );
    // The trailing slash of a configured team domain is normalised away.
    let slash = at_issue_time(source, "https://molten.cloudflareaccess.com/", AUD);
    assert!(slash.validate(&token).await.is_ok());
}

#[tokio::test]
async fn team_name_constructor_gives_the_cloudflare_issuer() {
    let Some((token, source)) = fixture() else {
        return;
    };
    let validator = Validator::from_team_name("molten")
        .audience(AUD)
        .key_source(source)
        .clock(Arc::new(FixedClock::new(ISSUED_AT)))
        .build()
        .unwrap();
    assert!(validator.validate(&token).await.is_ok());
}

#[tokio::test]
async fn a_tampered_fixture_payload_is_a_bad_signature() {
    let Some((token, source)) = fixture() else {
        return;
    };
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = b64.encode(payload.replace("\"AU\"", "\"US\""));
    let forged = parts.join(".");
    let err = at_issue_time(source, ISSUER, AUD)
        .validate(&forged)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadSignature);
}
