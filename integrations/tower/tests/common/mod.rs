//! The contract every integration must honour over a real socket, written
//! once and run against each integration's test app (the actix tests
//! include this file by path).
//!
//! A test app serves:
//! - `/whoami` (identity required): `user:<email>` or `service:<common name>`
//! - `/home` (optional login): `anonymous` or as `/whoami`
//! - `/admin`: the handler itself requires group `admins`, else 403
//! - `/healthz` (excluded): `ok`
//! - `/partner/whoami`: a scope accepting [`PARTNER_AUD`] instead of [`AUD`]
//!
//! The app-wide guard requires an `example.com` email or the service token
//! `bot.access`, redirects page navigations to [`Fixture::login_url`], and
//! excludes `/partner` (which has its own guard).

#![allow(dead_code)]

use std::time::Duration;

use portcullis_core::test_support::{
    CertsServer, TestKey, now, random_hex, service_claims, user_claims,
};
use portcullis_core::wire::{AUTHORIZATION_COOKIE, JWT_ASSERTION_HEADER, LOGIN_PATH_PREFIX};
use portcullis_core::{CoreMetrics, KeySource, Validator};
use serde_json::{Value, json};

/// The application's AUD tag.
pub const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";
/// Another application's AUD tag, accepted only under `/partner`.
pub const PARTNER_AUD: &str = "9e1b4c0a2f7d4e6b8a3c5d7e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2";
/// The service token the app-wide rule admits.
pub const BOT: &str = "bot.access";

/// Keys, a certs endpoint and metrics for one test.
pub struct Fixture {
    pub key: TestKey,
    pub certs: CertsServer,
    pub registry: prometheus::Registry,
    pub metrics: CoreMetrics,
}

impl Fixture {
    pub async fn new() -> Self {
        let key = TestKey::rsa();
        let certs = CertsServer::start(&[&key]).await.expect("certs server");
        let registry = prometheus::Registry::new();
        let metrics = CoreMetrics::register(&registry).expect("metrics");
        Fixture {
            key,
            certs,
            registry,
            metrics,
        }
    }

    /// A validator for [`AUD`] fetching keys from the certs server.
    pub fn validator(&self) -> Validator {
        Validator::builder(self.certs.team_domain())
            .audience(AUD)
            .key_source(
                KeySource::remote(self.certs.certs_url())
                    .build()
                    .expect("key source"),
            )
            .metrics(self.metrics.clone())
            .build()
            .expect("validator")
    }

    pub fn login_url(&self) -> String {
        format!(
            "{}{LOGIN_PATH_PREFIX}app.example.com",
            self.certs.team_domain()
        )
    }

    pub fn claims(&self, aud: &str, email: &str) -> Value {
        user_claims(&self.certs.team_domain(), aud, email)
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign(claims)
    }

    pub fn user(&self, email: &str) -> String {
        self.sign(&self.claims(AUD, email))
    }

    pub fn service(&self, common_name: &str) -> String {
        self.sign(&service_claims(&self.certs.team_domain(), AUD, common_name))
    }

    /// Rejections (and successes) counted under `result = code`.
    pub fn count(&self, code: &str) -> u64 {
        self.metrics.validations.with_label_values(&[code]).get()
    }
}

/// A running test app; dropping it stops the server.
pub struct TestApp {
    pub base: String,
    pub fx: Fixture,
    pub server: Box<dyn Send>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A client that does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(app.url(path));
    if let Some(token) = token {
        req = req.header(JWT_ASSERTION_HEADER, token);
    }
    req.send().await.expect("request")
}

pub async fn ok_body(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(status, 200, "body: {body}");
    body
}

/// Exact status, `Content-Type: application/json`, the code in `error`
/// and nothing but `error` and `message`; returns the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = resp.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    assert_eq!(body["error"], code, "body: {text}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "body: {text}");
    text
}

pub async fn header_token(app: TestApp) {
    let token = app.fx.user("ada@example.com");
    let body = ok_body(get(&app, "/whoami", Some(&token)).await).await;
    assert_eq!(body, "user:ada@example.com");
    assert!(app.fx.count("ok") >= 1);
}

pub async fn cookie_token(app: TestApp) {
    let token = app.fx.user("ada@example.com");
    let resp = client()
        .get(app.url("/whoami"))
        .header(
            "cookie",
            format!("theme=dark; {AUTHORIZATION_COOKIE}={token}; z=1"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(ok_body(resp).await, "user:ada@example.com");
}

pub async fn missing_token(app: TestApp) {
    assert_error(get(&app, "/whoami", None).await, 401, "missing_token").await;
    assert_error(get(&app, "/admin", None).await, 401, "missing_token").await;
    assert!(app.fx.count("missing_token") >= 2);
}

pub async fn expired_token(app: TestApp) {
    let mut claims = app.fx.claims(AUD, "ada@example.com");
    let t = now();
    claims["exp"] = json!(t - 3600);
    claims["iat"] = json!(t - 7200);
    claims["nbf"] = json!(t - 7200);
    let token = app.fx.sign(&claims);
    let body = assert_error(get(&app, "/whoami", Some(&token)).await, 401, "expired").await;
    assert!(!body.contains(&token));
    assert_eq!(app.fx.count("expired"), 1);
}

pub async fn wrong_audience(app: TestApp) {
    let token = app.fx.sign(&app.fx.claims(PARTNER_AUD, "ada@example.com"));
    assert_error(
        get(&app, "/whoami", Some(&token)).await,
        401,
        "wrong_audience",
    )
    .await;
    // The partner scope has its own configuration: its audience is fine
    // there, and the app's own audience is not.
    let body = ok_body(get(&app, "/partner/whoami", Some(&token)).await).await;
    assert_eq!(body, "user:ada@example.com");
    let own = app.fx.user("ada@example.com");
    assert_error(
        get(&app, "/partner/whoami", Some(&own)).await,
        401,
        "wrong_audience",
    )
    .await;
    // A token that is not a JWT at all, and one signed by another key.
    let body = assert_error(
        get(&app, "/whoami", Some("not-a-token")).await,
        401,
        "malformed_token",
    )
    .await;
    assert!(!body.contains("not-a-token"));
    let stranger = TestKey::rsa().sign(&app.fx.claims(AUD, "ada@example.com"));
    assert_error(
        get(&app, "/whoami", Some(&stranger)).await,
        401,
        "unknown_key",
    )
    .await;
}

pub async fn forbidden(app: TestApp) {
    // The app-wide rule: email domain or the bot.
    let eve = app.fx.user("eve@evil.example");
    let body = assert_error(get(&app, "/whoami", Some(&eve)).await, 403, "forbidden").await;
    assert!(!body.contains(&eve));
    let other_bot = app.fx.service("other.access");
    assert_error(
        get(&app, "/whoami", Some(&other_bot)).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(app.fx.count("forbidden"), 2);
    // A handler's own rule: group `admins`.
    let ada = app.fx.user("ada@example.com");
    assert_error(get(&app, "/admin", Some(&ada)).await, 403, "forbidden").await;
    let mut claims = app.fx.claims(AUD, "root@example.com");
    claims["groups"] = json!(["staff", "admins"]);
    let root = app.fx.sign(&claims);
    assert_eq!(
        ok_body(get(&app, "/admin", Some(&root)).await).await,
        "admin:root@example.com"
    );
}

pub async fn excluded_and_optional_paths(app: TestApp) {
    assert_eq!(ok_body(get(&app, "/healthz", None).await).await, "ok");
    // Excluded even with a broken token: nothing is validated there.
    assert_eq!(
        ok_body(get(&app, "/healthz", Some("garbage")).await).await,
        "ok"
    );
    // Not a prefix: the exclusion is exact.
    assert_error(get(&app, "/healthz/x", None).await, 401, "missing_token").await;
    assert_eq!(ok_body(get(&app, "/home", None).await).await, "anonymous");
    let ada = app.fx.user("ada@example.com");
    assert_eq!(
        ok_body(get(&app, "/home", Some(&ada)).await).await,
        "user:ada@example.com"
    );
    assert_eq!(
        ok_body(get(&app, "/home", Some("garbage")).await).await,
        "anonymous"
    );
}

pub async fn service_vs_user(app: TestApp) {
    let bot = app.fx.service(BOT);
    assert_eq!(
        ok_body(get(&app, "/whoami", Some(&bot)).await).await,
        "service:bot.access"
    );
    let ada = app.fx.user("ada@example.com");
    assert_eq!(
        ok_body(get(&app, "/whoami", Some(&ada)).await).await,
        "user:ada@example.com"
    );
    // The handler's group rule does not admit the bot either.
    assert_error(get(&app, "/admin", Some(&bot)).await, 403, "forbidden").await;
}

pub async fn redirect_for_browsers_only(app: TestApp) {
    let login = app.fx.login_url();
    let expected = format!("{login}?redirect_url=%2Fwhoami%3Fa%3D1");
    let navigate = client()
        .get(app.url("/whoami?a=1"))
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .expect("request");
    assert_eq!(navigate.status(), 302);
    assert_eq!(navigate.headers()["location"], expected.as_str());
    // No Sec-Fetch-Mode (older browsers): Accept decides.
    let html = client()
        .get(app.url("/whoami?a=1"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("request");
    assert_eq!(html.status(), 302);
    assert_eq!(html.headers()["location"], expected.as_str());
    // fetch() and XHR always get the JSON 401.
    let fetch = client()
        .get(app.url("/whoami"))
        .header("sec-fetch-mode", "cors")
        .header("accept", "text/html")
        .send()
        .await
        .expect("request");
    assert_error(fetch, 401, "missing_token").await;
    let xhr = client()
        .get(app.url("/whoami"))
        .header("accept", "text/html")
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .expect("request");
    assert_error(xhr, 401, "missing_token").await;
    let api = client()
        .get(app.url("/whoami"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_error(api, 401, "missing_token").await;
    // Expired cookie in a browser: back to the login page.
    let mut claims = app.fx.claims(AUD, "ada@example.com");
    claims["exp"] = json!(now() - 3600);
    let cookie = format!("{AUTHORIZATION_COOKIE}={}", app.fx.sign(&claims));
    let resp = client()
        .get(app.url("/whoami"))
        .header("sec-fetch-mode", "navigate")
        .header("cookie", cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 302);
    // A refusal by a rule is not a login problem: 403, no redirect.
    let eve = app.fx.user("eve@evil.example");
    let resp = client()
        .get(app.url("/whoami"))
        .header("sec-fetch-mode", "navigate")
        .header(JWT_ASSERTION_HEADER, eve)
        .send()
        .await
        .expect("request");
    assert_error(resp, 403, "forbidden").await;
    // The partner scope has no redirect configured: JSON even for browsers.
    let resp = client()
        .get(app.url("/partner/whoami"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("request");
    assert_error(resp, 401, "missing_token").await;
}

/// The middleware's fast path (a repeated header token, decided without
/// waiting) answers as the first, verifying request did; so do refusals
/// decided there, which still read the other headers.
pub async fn repeated_header_tokens(app: TestApp) {
    let ada = app.fx.user("ada@example.com");
    for _ in 0..5 {
        let body = ok_body(get(&app, "/whoami", Some(&ada)).await).await;
        assert_eq!(body, "user:ada@example.com");
    }
    // Whitespace around the value is trimmed, as on the first request.
    let padded = format!(" {ada}\t");
    assert_eq!(
        ok_body(get(&app, "/whoami", Some(&padded)).await).await,
        "user:ada@example.com"
    );
    assert_eq!(app.fx.count("ok"), 6);
    // A rule refuses a repeated token each time.
    let eve = app.fx.user("eve@evil.example");
    for _ in 0..2 {
        assert_error(get(&app, "/whoami", Some(&eve)).await, 403, "forbidden").await;
    }
    // An expired header token, twice, from a browser: the login page.
    let mut claims = app.fx.claims(AUD, "ada@example.com");
    claims["exp"] = json!(now() - 3600);
    let expired = app.fx.sign(&claims);
    for _ in 0..2 {
        let resp = client()
            .get(app.url("/whoami"))
            .header("sec-fetch-mode", "navigate")
            .header(JWT_ASSERTION_HEADER, &expired)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 302);
    }
    assert_eq!(app.fx.count("expired"), 2);
}

pub async fn concurrent_distinct_tokens(app: TestApp) {
    let client = client();
    let tokens: Vec<(String, String)> = (0..200)
        .map(|i| {
            let email = format!("user{i}-{}@example.com", random_hex(2));
            let token = app.fx.user(&email);
            (email, token)
        })
        .collect();
    let requests = tokens.iter().map(|(email, token)| {
        let req = client
            .get(app.url("/whoami"))
            .header(JWT_ASSERTION_HEADER, token.as_str());
        async move {
            let resp = req.send().await.expect("request");
            (
                email.clone(),
                resp.status().as_u16(),
                resp.text().await.expect("body"),
            )
        }
    });
    let results = futures_util::future::join_all(requests).await;
    assert_eq!(results.len(), 200);
    for (email, status, body) in results {
        assert_eq!(status, 200, "{email}: {body}");
        assert_eq!(body, format!("user:{email}"));
    }
    assert_eq!(app.fx.count("ok"), 200);
}

/// One `#[tokio::test]` per scenario, against the app `$start` builds.
#[macro_export]
macro_rules! contract_tests {
    ($start:path) => {
        $crate::contract_tests!(@each $start;
            header_token, cookie_token, missing_token, expired_token,
            wrong_audience, forbidden, excluded_and_optional_paths,
            service_vs_user, redirect_for_browsers_only, repeated_header_tokens,
            concurrent_distinct_tokens);
    };
    (@each $start:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                common::$name($start().await).await;
            }
        )*
    };
}
