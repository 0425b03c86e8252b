//! The browser scenario on the gateway's login flow: open app A (gateway →
//! sidecar → legacy app) → gateway login page → choose the provider → sign
//! in on the provider's own form → app A shows the identity → app B (axum
//! with the tower layer) without a login → log out of A → A asks again;
//! the admin revokes the user → B refuses within 5 s.

use std::time::{Duration, Instant};

use portcullis_tests::Scratch;
use portcullis_tests::apps::{AxumApp, LegacyApp};
use portcullis_tests::browser::Browser;
use portcullis_tests::gateway::{Gateway, GatewayConfig};
use portcullis_tests::net::free_port;
use portcullis_tests::oidc::{
    ACCOUNT_EMAIL, ACCOUNT_PASSWORD, CLIENT_ID, CLIENT_SECRET, OidcProvider,
};
use portcullis_tests::sidecar::{Sidecar, SidecarArgs};
use portcullis_tests::tools::artifacts_dir;

const LOGIN_OR_FORM: &str = "document.readyState === 'complete' && !!(document.querySelector('a.button') || document.querySelector('#email'))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_sso_logout_and_revocation() {
    let started = Instant::now();
    let scratch = Scratch::new("browser-login");
    let gw_port = free_port();
    let callback = format!("http://127.0.0.1:{gw_port}/cdn-cgi/access/callback");
    let Some(provider) = OidcProvider::start(
        &scratch,
        OidcProvider::reserve_port(),
        std::slice::from_ref(&callback),
    )
    .await
    else {
        return;
    };
    let Some(mut browser) = Browser::launch(&scratch).await else {
        return;
    };
    let legacy = LegacyApp::start().await;
    let (sidecar_port, axum_port) = (free_port(), free_port());
    let people = format!(
        "[[apps.policies]]\nname = \"people\"\ndecision = \"allow\"\ninclude = [{{ email = \"{ACCOUNT_EMAIL}\" }}]\n"
    );
    let config = GatewayConfig::sqlite(&scratch)
        // Two providers, so that the login page offers a choice.
        .section(&idp("e2e", "E2E IdP", &provider.issuer))
        .section(&idp("backup", "Backup IdP", &provider.issuer))
        .app(
            "app-a",
            "app-a.test",
            &format!("http://127.0.0.1:{sidecar_port}"),
            &people,
        )
        .app(
            "app-b",
            "app-b.test",
            &format!("http://127.0.0.1:{axum_port}"),
            &people,
        );
    let gw = Gateway::start_on(&scratch, "gateway", &config, gw_port).await;
    let _sidecar = Sidecar::start(
        &scratch,
        "sidecar",
        sidecar_port,
        &SidecarArgs {
            team_domain: gw.team_domain.clone(),
            certs_url: None,
            audience: gw.aud("app-a").await,
            upstream: legacy.url(),
        },
    )
    .await;
    let _axum = AxumApp::start(axum_port, &gw.team_domain, &gw.aud("app-b").await).await;
    let app_a = format!("http://app-a.test:{gw_port}/");
    let app_b = format!("http://app-b.test:{gw_port}/");
    let hello = format!("hello {ACCOUNT_EMAIL}");

    // App A → the gateway's login page → the provider's form → back on A.
    browser.goto(&app_a).await;
    browser
        .wait_for(
            "!!document.querySelector('a.button')",
            Duration::from_secs(20),
        )
        .await;
    assert!(browser.text().await.contains("E2E IdP"), "provider offered");
    browser
        .screenshot(&artifacts_dir().join("gateway-login.png"))
        .await;
    let chose = browser
        .eval("(() => { const a = [...document.querySelectorAll('a.button')].find(a => a.innerText.includes('E2E IdP')); if (!a) return false; a.click(); return true; })()")
        .await;
    assert_eq!(chose, Ok(serde_json::json!(true)), "no button for E2E IdP");
    browser
        .wait_for(
            "!!document.querySelector('#email')",
            Duration::from_secs(20),
        )
        .await;
    assert!(browser.url().await.starts_with(&provider.issuer));
    browser.fill("#email", ACCOUNT_EMAIL).await;
    browser.fill("#password", ACCOUNT_PASSWORD).await;
    browser.click("#submit").await;
    browser.wait_for_text(&hello, Duration::from_secs(20)).await;
    assert!(browser.url().await.starts_with(&app_a));
    browser.screenshot(&artifacts_dir().join("app-a.png")).await;
    assert!(legacy.answered() >= 1);

    // App B: single sign-on, no login asked.
    browser.goto(&app_b).await;
    browser
        .wait_for_text(
            &format!("{hello} (service: false)"),
            Duration::from_secs(20),
        )
        .await;

    // Log out of A: A asks again.
    browser
        .goto(&format!(
            "http://app-a.test:{gw_port}/cdn-cgi/access/logout"
        ))
        .await;
    browser.goto(&app_a).await;
    browser
        .wait_for(LOGIN_OR_FORM, Duration::from_secs(20))
        .await;
    assert!(
        !browser.text().await.contains(&hello),
        "A still served after logout"
    );

    // The admin revokes the user: B refuses within 5 s.
    let (status, body) = gw
        .admin_post(
            "/admin/v1/sessions/revoke",
            &serde_json::json!({ "email": ACCOUNT_EMAIL }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = Instant::now();
    loop {
        browser.goto(&app_b).await;
        if !browser.text().await.contains(&hello) {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "B still served 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "B refused {:?} after the revocation; browser scenario {:?}",
        revoked_at.elapsed(),
        started.elapsed()
    );
}

fn idp(id: &str, name: &str, issuer: &str) -> String {
    format!(
        "[[identity_providers]]\nid = \"{id}\"\nname = \"{name}\"\ntype = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
    )
}
