//! The remote key source against a real certs endpoint on 127.0.0.1:
//! rotation, kid floods, outages, Cache-Control and readiness.

use std::time::Duration;

use portcullis_core::test_support::{CertsServer, TestKey, random_hex, user_claims};
use portcullis_core::{ErrorCode, KeySource, Validator};
use serde_json::json;

const AUD: &str = "aud-remote";

fn validator(server: &CertsServer, source: KeySource) -> Validator {
    Validator::builder(server.team_domain())
        .audience(AUD)
        .key_source(source)
        .build()
        .unwrap()
}

fn remote(server: &CertsServer) -> KeySource {
    KeySource::remote(server.certs_url()).build().unwrap()
}

fn token(server: &CertsServer, key: &TestKey) -> String {
    key.sign(&user_claims(
        &server.team_domain(),
        AUD,
        "grace@example.com",
    ))
}

#[tokio::test]
async fn keys_are_fetched_on_first_use_and_then_cached() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let v = validator(&server, remote(&server));
    assert_eq!(server.requests(), 0, "nothing is fetched before first use");
    for _ in 0..20 {
        v.validate(&token(&server, &key)).await.unwrap();
    }
    assert_eq!(server.requests(), 1);
    let status = v.key_source().status();
    assert!(status.loaded && status.is_fresh());
    assert_eq!(status.key_count, 1);
    assert_eq!(status.max_age, Some(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_token_signed_by_a_new_key_is_accepted_after_one_refresh() {
    let old = TestKey::rsa();
    let server = CertsServer::start(&[&old]).await.unwrap();
    let v = validator(&server, remote(&server));
    v.validate(&token(&server, &old)).await.unwrap();
    assert_eq!(server.requests(), 1);
    let new = TestKey::rsa();
    server.set_keys(&[&old, &new]);
    v.validate(&token(&server, &new)).await.unwrap();
    assert_eq!(server.requests(), 2, "exactly one refresh for the new kid");
    v.validate(&token(&server, &old)).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_flood_of_random_kids_causes_at_most_one_fetch_per_interval() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let v = validator(&server, remote(&server));
    v.validate(&token(&server, &key)).await.unwrap();
    let before = server.requests();
    let claims = user_claims(&server.team_domain(), AUD, "x@example.com");
    let tokens: Vec<String> = (0..1000)
        .map(|_| key.sign_with_header(&json!({"alg": "RS256", "kid": random_hex(32)}), &claims))
        .collect();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let v = v.clone();
            tokio::spawn(async move { v.validate(&t).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap_err().code(),
            ErrorCode::UnknownKey
        );
    }
    let fetched = server.requests() - before;
    assert!(fetched <= 1, "{fetched} fetches for 1000 unknown kids");
    // Valid tokens still pass during the flood's aftermath, without fetching.
    v.validate(&token(&server, &key)).await.unwrap();
    assert_eq!(server.requests() - before, fetched);
}

#[tokio::test]
async fn the_unknown_kid_interval_is_configurable() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let source = KeySource::remote(server.certs_url())
        .unknown_kid_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let v = validator(&server, source);
    v.validate(&token(&server, &key)).await.unwrap();
    let stranger = TestKey::rsa();
    let t = token(&server, &stranger);
    assert_eq!(
        v.validate(&t).await.unwrap_err().code(),
        ErrorCode::UnknownKey
    );
    let after_first = server.requests();
    assert_eq!(
        v.validate(&t).await.unwrap_err().code(),
        ErrorCode::UnknownKey
    );
    assert_eq!(
        server.requests(),
        after_first,
        "within the interval: no fetch"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_keys(&[&key, &stranger]);
    v.validate(&t).await.unwrap();
}

#[tokio::test]
async fn validation_keeps_working_on_cached_keys_when_the_endpoint_goes_down() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let v = validator(&server, remote(&server));
    v.validate(&token(&server, &key)).await.unwrap();
    server.set_status(503);
    let err = v.key_source().refresh().await.unwrap_err();
    assert!(err.contains("503"), "{err}");
    v.validate(&token(&server, &key)).await.unwrap();
    let status = v.key_source().status();
    assert!(status.loaded);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503"))
    );
    // Back up: the error clears.
    server.set_status(200);
    v.key_source().refresh().await.unwrap();
    assert!(v.key_source().status().last_error.is_none());
}

#[tokio::test]
async fn validation_survives_the_endpoint_disappearing_entirely() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let team = server.team_domain();
    let v = validator(&server, remote(&server));
    v.validate(&token(&server, &key)).await.unwrap();
    drop(server);
    assert!(v.key_source().refresh().await.is_err());
    let t = key.sign(&user_claims(&team, AUD, "a@example.com"));
    v.validate(&t).await.unwrap();
}

#[tokio::test]
async fn endpoint_down_at_first_start_is_keys_unavailable() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    server.set_status(500);
    let v = validator(&server, remote(&server));
    let err = v.validate(&token(&server, &key)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::KeysUnavailable);
    assert_eq!(err.http_status(), 503);
    assert!(!v.key_source().status().is_fresh());
    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let v = Validator::builder(format!("http://{closed}"))
        .audience(AUD)
        .build()
        .unwrap();
    let t = key.sign(&user_claims(
        &format!("http://{closed}"),
        AUD,
        "a@example.com",
    ));
    assert_eq!(
        v.validate(&t).await.unwrap_err().code(),
        ErrorCode::KeysUnavailable
    );
}

#[tokio::test]
async fn a_broken_document_keeps_the_last_good_keys() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    let v = validator(&server, remote(&server));
    v.validate(&token(&server, &key)).await.unwrap();
    for doc in [
        "not json",
        r#"{"keys":[]}"#,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    ] {
        server.set_document(doc.to_owned());
        assert!(v.key_source().refresh().await.is_err(), "{doc}");
        v.validate(&token(&server, &key)).await.unwrap();
    }
}

#[tokio::test]
async fn cache_control_max_age_is_honoured_within_bounds() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    server.set_cache_control(Some("public, max-age=999999"));
    let source = KeySource::remote(server.certs_url())
        .max_max_age(Duration::from_secs(3600))
        .build()
        .unwrap();
    source.refresh().await.unwrap();
    assert_eq!(source.status().max_age, Some(Duration::from_secs(3600)));
    server.set_cache_control(Some("max-age=1"));
    source.refresh().await.unwrap();
    assert_eq!(
        source.status().max_age,
        Some(Duration::from_secs(60)),
        "raised to the minimum"
    );
    server.set_cache_control(None);
    source.refresh().await.unwrap();
    assert_eq!(
        source.status().max_age,
        Some(Duration::from_secs(600)),
        "default without max-age"
    );
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background_before_they_expire() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    server.set_cache_control(Some("max-age=1"));
    let source = KeySource::remote(server.certs_url())
        .min_max_age(Duration::from_secs(1))
        .build()
        .unwrap();
    source.refresh().await.unwrap();
    // 80 % of a one-second max age, with a one-second floor between fetches.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        server.requests() >= 2,
        "background refresh did not run ({} fetches)",
        server.requests()
    );
    assert!(source.status().is_fresh());
}

#[tokio::test]
async fn readiness_flips_when_keys_outlive_their_max_age() {
    let key = TestKey::rsa();
    let server = CertsServer::start(&[&key]).await.unwrap();
    server.set_cache_control(Some("max-age=1"));
    let source = KeySource::remote(server.certs_url())
        .min_max_age(Duration::from_secs(1))
        .unknown_kid_interval(Duration::from_secs(30))
        .build()
        .unwrap();
    source.refresh().await.unwrap();
    assert!(source.status().is_fresh());
    server.set_status(503);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = source.status();
    assert!(status.loaded, "stale keys are still served");
    assert!(
        !status.is_fresh(),
        "but readiness reports them stale: {status:?}"
    );
}

#[tokio::test]
async fn dropping_a_key_clears_cached_verdicts() {
    let old = TestKey::rsa();
    let new = TestKey::rsa();
    let server = CertsServer::start(&[&old, &new]).await.unwrap();
    let v = validator(&server, remote(&server));
    let t = token(&server, &old);
    v.validate(&t).await.unwrap();
    v.validate(&t).await.unwrap();
    server.set_keys(&[&new]);
    v.key_source().refresh().await.unwrap();
    assert_eq!(
        v.validate(&t).await.unwrap_err().code(),
        ErrorCode::UnknownKey
    );
}
