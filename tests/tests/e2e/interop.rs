//! Interop with JWT libraries nobody here wrote: gateway tokens validate in
//! PyJWT and in Node's jose against `/cdn-cgi/access/certs`; tokens minted
//! by jose with a Cloudflare-shaped certs document validate in the sidecar.

use std::time::Instant;

use portcullis_core::test_support::CertsServer;
use portcullis_core::wire::{AUTHORIZATION_COOKIE, CERTS_PATH, JWT_ASSERTION_HEADER};
use portcullis_tests::Scratch;
use portcullis_tests::apps::{LegacyApp, PlainOrigin};
use portcullis_tests::gateway::{Gateway, GatewayConfig, cookie_token};
use portcullis_tests::interop::{jose_mint, jose_verify, pyjwt_verify};
use portcullis_tests::net::{free_port, plain_client};
use portcullis_tests::sidecar::{Sidecar, SidecarArgs};
use portcullis_tests::tools::{node_modules_available, pyjwt_available};

use crate::chain::error_code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tokens_validate_in_pyjwt_and_jose() {
    let started = Instant::now();
    let scratch = Scratch::new("interop-out");
    let origin = PlainOrigin::start().await;
    let config = GatewayConfig::sqlite(&scratch).app("echo", "echo.test", &origin.url(), "");
    let gw = Gateway::start(&scratch, "gateway", &config).await;
    let aud = gw.aud("echo").await;
    let bot = gw.service_token("interop-bot").await;
    let r = bot
        .apply(gw.client.get(gw.url("echo.test", "/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = cookie_token(&r).expect("app token cookie");
    let certs_url = format!("{}{CERTS_PATH}", gw.team_domain);
    let signing_kid = gw.admin_get("/admin/v1/keys").await[0]["kid"].clone();

    let mut checked = 0;
    if pyjwt_available() {
        let out = pyjwt_verify(&certs_url, &token, &aud, &gw.team_domain).expect("PyJWT");
        assert_eq!(out["payload"]["common_name"], bot.client_id.as_str());
        assert_eq!(out["payload"]["type"], "app");
        assert_eq!(out["payload"]["sub"], "");
        assert_eq!(out["kid"], signing_kid);
        let wrong = pyjwt_verify(&certs_url, &token, &"0".repeat(64), &gw.team_domain);
        assert!(wrong.is_err(), "PyJWT accepted another audience");
        checked += 1;
    }
    if node_modules_available() {
        let out = jose_verify(&certs_url, &token, &aud, &gw.team_domain).expect("jose");
        assert_eq!(out["payload"]["common_name"], bot.client_id.as_str());
        assert_eq!(out["payload"]["aud"][0], aud.as_str());
        assert_eq!(out["kid"], signing_kid);
        let wrong = jose_verify(&certs_url, &token, &aud, "http://127.0.0.1:1");
        assert!(wrong.is_err(), "jose accepted another issuer");
        checked += 1;
    }
    eprintln!(
        "gateway tokens checked by {checked} independent libraries in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jose_minted_tokens_validate_in_sidecar() {
    if !node_modules_available() {
        return;
    }
    let started = Instant::now();
    let scratch = Scratch::new("interop-in");
    let issuer = "https://e2e.cloudflareaccess.com";
    let aud = portcullis_core::test_support::random_hex(32);
    let minted = jose_mint(issuer, &aud, "grace@jose.example");
    assert!(
        minted.certs["public_cert"]["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let certs = CertsServer::start(&[]).await.unwrap();
    certs.set_document(minted.certs.to_string());
    let legacy = LegacyApp::start().await;
    let sidecar = Sidecar::start(
        &scratch,
        "sidecar",
        free_port(),
        &SidecarArgs {
            team_domain: issuer.to_owned(),
            certs_url: Some(certs.certs_url()),
            audience: aud.clone(),
            upstream: legacy.url(),
        },
    )
    .await;
    let client = plain_client();
    let r = client
        .get(format!("{}/", sidecar.url()))
        .header(JWT_ASSERTION_HEADER, &minted.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("hello grace@jose.example"), "{body}");
    let r = client
        .get(format!("{}/", sidecar.url()))
        .header("cookie", format!("{AUTHORIZATION_COOKIE}={}", minted.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token in the CF_Authorization cookie");
    let r = client
        .get(format!("{}/", sidecar.url()))
        .header(JWT_ASSERTION_HEADER, &minted.expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "expired");
    assert_eq!(legacy.answered(), 2);
    eprintln!("jose -> sidecar: {:?}", started.elapsed());
}
