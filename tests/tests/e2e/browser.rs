//! The real browser and the real OpenID provider. Until the gateway's
//! login flow lands, this proves the pieces the browser scenario stands on:
//! Chromium signs in on the provider's own form, and the authorization
//! code it brings back redeems for an ID token naming the test account.

use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_tests::Scratch;
use portcullis_tests::apps::PlainOrigin;
use portcullis_tests::browser::Browser;
use portcullis_tests::net::plain_client;
use portcullis_tests::oidc::{
    ACCOUNT_EMAIL, ACCOUNT_PASSWORD, CLIENT_ID, CLIENT_SECRET, OidcProvider,
};
use portcullis_tests::tools::artifacts_dir;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_signs_in_on_the_providers_form() {
    let started = Instant::now();
    let scratch = Scratch::new("browser-idp");
    let client_app = PlainOrigin::start().await;
    let redirect = format!("{}/callback", client_app.url());
    let Some(provider) = OidcProvider::start(
        &scratch,
        OidcProvider::reserve_port(),
        std::slice::from_ref(&redirect),
    )
    .await
    else {
        return;
    };
    let Some(mut browser) = Browser::launch(&scratch).await else {
        return;
    };
    let authorize = format!(
        "{}/auth?client_id={CLIENT_ID}&redirect_uri={}&response_type=code&scope=openid%20email%20profile&state=e2e-state&nonce=e2e-nonce",
        provider.issuer,
        urlencode(&redirect)
    );
    browser.goto(&authorize).await;
    browser
        .wait_for(
            "!!document.querySelector('#email')",
            Duration::from_secs(20),
        )
        .await;
    browser
        .screenshot(&artifacts_dir().join("provider-login.png"))
        .await;

    // A wrong password is refused on the provider's page.
    browser.fill("#email", ACCOUNT_EMAIL).await;
    browser.fill("#password", "wrong").await;
    browser.click("#submit").await;
    browser
        .wait_for_text("Wrong email or password.", Duration::from_secs(20))
        .await;

    browser.fill("#email", ACCOUNT_EMAIL).await;
    browser.fill("#password", ACCOUNT_PASSWORD).await;
    browser.click("#submit").await;
    browser
        .wait_for_url(&redirect, Duration::from_secs(20))
        .await;
    let url = browser.url().await;
    let url = reqwest::Url::parse(&url).unwrap();
    let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(query.get("state").map(String::as_str), Some("e2e-state"));
    let code = query.get("code").expect("authorization code").clone();

    // The code redeems for an ID token about the test account.
    let r = plain_client()
        .post(format!("{}/token", provider.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            urlencode(&code),
            urlencode(&redirect)
        ))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().expect("id_token");
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id_token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["email"], ACCOUNT_EMAIL);
    assert_eq!(payload["nonce"], "e2e-nonce");
    assert_eq!(payload["iss"], provider.issuer.as_str());
    eprintln!("browser sign-in at the provider: {:?}", started.elapsed());
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
