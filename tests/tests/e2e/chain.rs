//! Whole chain: bot with a service token → gateway → sidecar → a legacy app
//! that only reads `X-Forwarded-Email`/`X-Forwarded-User`; and gateway → an
//! axum app guarded by `portcullis_tower::AccessLayer`.

use std::time::Instant;

use portcullis_core::test_support::{TestKey, service_claims};
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use portcullis_tests::Scratch;
use portcullis_tests::apps::{AxumApp, LegacyApp};
use portcullis_tests::gateway::{Gateway, GatewayConfig, cookie_token};
use portcullis_tests::net::{free_port, plain_client};
use portcullis_tests::sidecar::{Sidecar, SidecarArgs};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_through_gateway_and_sidecar_to_legacy_app() {
    let started = Instant::now();
    let scratch = Scratch::new("chain-legacy");
    let legacy = LegacyApp::start().await;
    let sidecar_port = free_port();
    let config = GatewayConfig::sqlite(&scratch).app(
        "legacy",
        "legacy.test",
        &format!("http://127.0.0.1:{sidecar_port}"),
        "",
    );
    let gw = Gateway::start(&scratch, "gateway", &config).await;
    let aud = gw.aud("legacy").await;
    let sidecar = Sidecar::start(
        &scratch,
        "sidecar",
        sidecar_port,
        &SidecarArgs {
            team_domain: gw.team_domain.clone(),
            certs_url: None,
            audience: aud.clone(),
            upstream: legacy.url(),
        },
    )
    .await;
    let bot = gw.service_token("report-bot").await;

    // The bot reaches the legacy app, which learns who it is from plain
    // headers; a spoofed X-Forwarded-Email is not believed.
    let r = bot
        .apply(gw.client.get(gw.url("legacy.test", "/reports")))
        .header("x-forwarded-email", "admin@evil.example")
        .header("x-forwarded-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = cookie_token(&r).expect("the gateway sets the app cookie");
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!("hello {}", bot.client_id)),
        "the legacy app sees the service token's common name: {body}"
    );
    assert!(!body.contains("evil"), "spoofed header passed: {body}");
    assert!(
        body.contains("<p id=\"email\"></p>"),
        "no email for a bot: {body}"
    );
    assert_eq!(legacy.answered(), 1);

    // The cookie the gateway set works on its own for the next request.
    let r = gw
        .client
        .get(gw.url("legacy.test", "/reports"))
        .header("cookie", format!("CF_Authorization={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(legacy.answered(), 2);

    // No credentials: refused at the gateway, nothing reaches the app.
    let r = gw
        .client
        .get(gw.url("legacy.test", "/reports"))
        .header("sec-fetch-mode", "cors")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Wrong secret.
    let r = gw
        .client
        .get(gw.url("legacy.test", "/"))
        .header("cf-access-client-id", &bot.client_id)
        .header("cf-access-client-secret", "0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "bad_credentials");

    // Around the gateway, straight to the sidecar: no token, a token from
    // another key, a spoofed email header — none reaches the app.
    let direct = plain_client();
    let r = direct
        .get(format!("{}/reports", sidecar.url()))
        .header("x-forwarded-email", "admin@evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "missing_token");
    let forged = TestKey::rsa().sign(&service_claims(&gw.team_domain, &aud, "forged"));
    let r = direct
        .get(format!("{}/reports", sidecar.url()))
        .header(JWT_ASSERTION_HEADER, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "unknown_key");
    // The gateway's own token, presented directly, is accepted.
    let r = direct
        .get(format!("{}/reports", sidecar.url()))
        .header(JWT_ASSERTION_HEADER, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(legacy.answered(), 3);
    eprintln!("chain via sidecar: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_through_gateway_to_axum_app_with_tower_layer() {
    let started = Instant::now();
    let scratch = Scratch::new("chain-axum");
    let axum_port = free_port();
    let legacy = LegacyApp::start().await;
    let config = GatewayConfig::sqlite(&scratch)
        .app(
            "axum",
            "axum.test",
            &format!("http://127.0.0.1:{axum_port}"),
            "",
        )
        .app("legacy", "legacy.test", &legacy.url(), "");
    let gw = Gateway::start(&scratch, "gateway", &config).await;
    let aud = gw.aud("axum").await;
    let app = AxumApp::start(axum_port, &gw.team_domain, &aud).await;
    let bot = gw.service_token("axum-bot").await;

    let r = bot
        .apply(gw.client.get(gw.url("axum.test", "/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body, format!("hello {} (service: true)", bot.client_id));

    // Straight to the app: no token; a gateway token of another app.
    let direct = plain_client();
    let r = direct.get(format!("{}/", app.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "missing_token");
    let other = bot
        .apply(gw.client.get(gw.url("legacy.test", "/")))
        .send()
        .await
        .unwrap();
    let other_token = cookie_token(&other).expect("legacy app token");
    let r = direct
        .get(format!("{}/", app.url()))
        .header(JWT_ASSERTION_HEADER, other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "wrong_audience");
    let r = direct
        .get(format!("{}/healthz", app.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "excluded path needs no token");
    eprintln!("chain to axum: {:?}", started.elapsed());
}

/// The `error` member of a JSON rejection.
pub async fn error_code(r: reqwest::Response) -> String {
    let text = r.text().await.expect("rejection body");
    let v: Value = serde_json::from_str(&text).expect("JSON rejection body");
    v["error"].as_str().unwrap_or_default().to_owned()
}
