//! The gateway over real sockets, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, Backend, Harness, core_validate, pyjwt_validate, wait_audit};
use portcullis_core::wire::{
    AUTHENTICATED_USER_EMAIL_HEADER, CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, JWT_ASSERTION_HEADER,
};
use serde_json::Value;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::Backend::postgres().await {
                        super::$name(b).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    service_token_admitted_and_origin_token_validates,
    bad_credentials_are_refused_and_audited,
    revoked_expired_and_rotated_tokens,
    key_rotation_keeps_earlier_tokens_valid,
    routing_policies_and_admin,
    audit_retention_purges_old_rows,
    repeated_decisions_share_audit_rows,
);

/// Presents service credentials to the echo app (200 expected) and returns
/// the app cookie (`CF_Authorization=…`) the gateway set.
async fn exchange_for_cookie(h: &Harness, client_id: &str, client_secret: &str) -> String {
    let r = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, client_id)
        .header(CLIENT_SECRET_HEADER, client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn body(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn service_token_admitted_and_origin_token_validates(backend: Backend) {
    let h = Harness::start(backend).await;
    let creds = h
        .services()
        .await
        .tokens
        .create("report-bot", None)
        .await
        .unwrap();
    let aud = h.aud("echo");
    assert_eq!(aud.len(), 64);

    let r = h
        .client
        .get(h.url("echo.test", "/reports?x=1"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        // Spoofed identity headers never reach the origin.
        .header(JWT_ASSERTION_HEADER, "forged")
        .header(AUTHENTICATED_USER_EMAIL_HEADER, "ceo@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("CF_Authorization="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"));
    assert!(set_cookie.contains("SameSite=Lax"));
    assert!(!set_cookie.contains("Secure"), "team domain is http");
    let seen: Value = body(r).await;
    let token = seen[JWT_ASSERTION_HEADER].as_str().unwrap().to_owned();
    assert_ne!(token, "forged");
    assert!(
        seen.get(AUTHENTICATED_USER_EMAIL_HEADER).is_none(),
        "no email for service tokens"
    );
    assert!(
        seen.get(CLIENT_SECRET_HEADER).is_none(),
        "secret not forwarded"
    );
    assert_eq!(seen[":path"], "/reports?x=1");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    // portcullis-core, against the gateway's certs URL.
    let claims = core_validate(&h, &token, &aud).await.unwrap();
    assert_eq!(claims.aud, vec![aud.clone()]);
    assert_eq!(
        claims.common_name.as_deref(),
        Some(creds.client_id.as_str())
    );
    assert_eq!(claims.sub.as_deref(), Some(""));
    assert!(claims.is_app_token());
    assert!(claims.email.is_none());
    assert!(
        claims
            .identity_nonce
            .as_deref()
            .is_some_and(|n| !n.is_empty())
    );
    // Not for another app.
    assert_eq!(
        core_validate(&h, &token, &h.aud("jsonapp"))
            .await
            .unwrap_err()
            .code(),
        portcullis_core::ErrorCode::WrongAudience
    );

    // An independent library: PyJWT.
    let certs = h
        .client
        .get(h.url("auth.test", portcullis_core::wire::CERTS_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(certs.status(), 200);
    let certs: Value = body(certs).await;
    assert!(
        certs["public_cert"]["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        certs["public_certs"].as_array().unwrap().len(),
        certs["keys"].as_array().unwrap().len()
    );
    if let Some(py) = pyjwt_validate(&certs.to_string(), &token, &aud, &h.team_domain()) {
        assert_eq!(py["common_name"], creds.client_id.as_str());
        assert_eq!(py["aud"], serde_json::json!([aud]));
        assert_eq!(py["type"], "app");
    }

    // The token is reused (no new signature per request) ...
    let again = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(body(again).await[JWT_ASSERTION_HEADER], token.as_str());
    // ... and the cookie alone admits, carrying the same token on.
    let cookie_value = set_cookie.split(';').next().unwrap().to_owned();
    let by_cookie = h
        .client
        .get(h.url("echo.test", "/c"))
        .header("cookie", &cookie_value)
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    assert!(by_cookie.headers().get("set-cookie").is_none());
    assert_eq!(body(by_cookie).await[JWT_ASSERTION_HEADER], token.as_str());
    // So do the assertion header and cloudflared's cf-access-token header.
    for header in [JWT_ASSERTION_HEADER, "cf-access-token"] {
        let r = h
            .client
            .get(h.url("echo.test", "/"))
            .header(header, &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{header}");
    }
    // Without anything: 401 missing_token; a token of another app: refused.
    let none = h.client.get(h.url("echo.test", "/")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["content-type"], "application/json");
    assert_eq!(body(none).await["error"], "missing_token");

    // The JSON-header form on the app that enables it.
    let json_creds = serde_json::json!({
        "cf-access-client-id": creds.client_id, "cf-access-client-secret": creds.client_secret
    })
    .to_string();
    let r = h
        .client
        .get(h.url("json.test", "/"))
        .header("authorization", &json_creds)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = body(r).await;
    assert!(
        seen.get("authorization").is_none(),
        "credential header not forwarded"
    );
    let json_token = seen[JWT_ASSERTION_HEADER].as_str().unwrap();
    assert_eq!(
        core_validate(&h, json_token, &h.aud("jsonapp"))
            .await
            .unwrap()
            .common_name
            .as_deref(),
        Some(creds.client_id.as_str())
    );
    // The app's own Authorization header passes through untouched.
    let r = h
        .client
        .get(h.url("json.test", "/"))
        .header("authorization", "Bearer app-own")
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["authorization"], "Bearer app-own");

    // last-used is recorded in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = h.services().await.tokens.list().await.unwrap();
    assert!(list[0].last_used_at.is_some());
    h.finish().await;
}

async fn bad_credentials_are_refused_and_audited(backend: Backend) {
    let h = Harness::start(backend).await;
    let creds = h
        .services()
        .await
        .tokens
        .create("report-bot", None)
        .await
        .unwrap();
    let wrong = "0".repeat(64);
    let r = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b = body(r).await;
    assert_eq!(b["error"], "bad_credentials");
    assert!(!b.to_string().contains(&wrong));
    let row = wait_audit(&h, "app=echo&decision=deny", |r| {
        r["reason"] == "bad_credentials"
    })
    .await;
    assert_eq!(row["source_ip"], "127.0.0.1");
    assert_eq!(row["app"], "echo");
    assert_eq!(
        row["identity"],
        creds.client_id.as_str(),
        "the presented client id is audited"
    );

    // Partial, duplicate and mixed credentials are refused.
    let partial = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 401);
    let json_creds = serde_json::json!({
        "cf-access-client-id": creds.client_id, "cf-access-client-secret": creds.client_secret
    })
    .to_string();
    let mixed = h
        .client
        .get(h.url("json.test", "/"))
        .header("authorization", &json_creds)
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 401);
    let dup = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 401);

    // Repeated failures per client id → 429, even with the right secret.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = h
            .client
            .get(h.url("echo.test", "/"))
            .header(CLIENT_ID_HEADER, &creds.client_id)
            .header(CLIENT_SECRET_HEADER, &wrong)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let r = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(body(r).await["error"], "rate_limited");
    h.finish().await;
}

async fn revoked_expired_and_rotated_tokens(backend: Backend) {
    let h = Harness::start(backend).await;
    let cli = h.services().await;
    let send = |id: String, secret: String| {
        let req = h
            .client
            .get(h.url("echo.test", "/"))
            .header(CLIENT_ID_HEADER, id)
            .header(CLIENT_SECRET_HEADER, secret);
        async move { req.send().await.unwrap() }
    };
    // Revocation made by another process counts at once for credentials ...
    let bot = cli.tokens.create("report-bot", None).await.unwrap();
    let ok = send(bot.client_id.clone(), bot.client_secret.clone()).await;
    assert_eq!(ok.status(), 200);
    let cookie = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    cli.tokens.revoke("report-bot").await.unwrap();
    let r = send(bot.client_id.clone(), bot.client_secret.clone()).await;
    assert_eq!(r.status(), 401);
    // ... and within the state refresh for the app cookie it already holds.
    let mut refused = false;
    for _ in 0..40 {
        let r = h
            .client
            .get(h.url("echo.test", "/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the revoked token's cookie must stop working");

    // Expired.
    let short = cli
        .tokens
        .create("other-bot", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send(short.client_id.clone(), short.client_secret.clone())
            .await
            .status(),
        401
    );

    // Rotated: the old secret works during the grace period, not after.
    let bot2 = cli.tokens.create("report-bot", None).await.unwrap();
    let rotated = cli
        .tokens
        .rotate("report-bot", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(rotated.client_id, bot2.client_id);
    assert_ne!(rotated.client_secret, bot2.client_secret);
    assert_eq!(
        send(bot2.client_id.clone(), bot2.client_secret.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        send(bot2.client_id.clone(), rotated.client_secret.clone())
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send(bot2.client_id.clone(), bot2.client_secret.clone())
            .await
            .status(),
        401
    );
    assert_eq!(
        send(bot2.client_id.clone(), rotated.client_secret.clone())
            .await
            .status(),
        200
    );
    h.finish().await;
}

async fn key_rotation_keeps_earlier_tokens_valid(backend: Backend) {
    let h = Harness::start(backend).await;
    let cli = h.services().await;
    let aud = h.aud("echo");
    let a = cli.tokens.create("report-bot", None).await.unwrap();
    let first = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &a.client_id)
        .header(CLIENT_SECRET_HEADER, &a.client_secret)
        .send()
        .await
        .unwrap();
    let old_token = body(first).await[JWT_ASSERTION_HEADER]
        .as_str()
        .unwrap()
        .to_owned();
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();

    // Rotation through the admin API: published now, signing after publish_ahead (2 s).
    let rotated = std::time::Instant::now();
    let r = h
        .client
        .post(h.admin_url("/admin/v1/keys/rotate"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info = body(r).await;
    assert_eq!(info["state"], "pending");
    let new_kid = info["kid"].as_str().unwrap().to_owned();
    let certs: Value = body(
        h.client
            .get(h.url("auth.test", "/cdn-cgi/access/certs"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kids: Vec<&str> = certs["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "published before it signs"
    );
    // (Only while inside the publish-ahead window: a loaded machine may
    // take longer than that between the two calls.)
    if rotated.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            certs["public_cert"]["kid"],
            old_kid.as_str(),
            "old key still signs"
        );
    }

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let b = cli.tokens.create("other-bot", None).await.unwrap();
    let second = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &b.client_id)
        .header(CLIENT_SECRET_HEADER, &b.client_secret)
        .send()
        .await
        .unwrap();
    let new_token = body(second).await[JWT_ASSERTION_HEADER]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    // Both validate for origins and at the gateway.
    core_validate(&h, &old_token, &aud).await.unwrap();
    core_validate(&h, &new_token, &aud).await.unwrap();
    let r = h
        .client
        .get(h.url("echo.test", "/"))
        .header(JWT_ASSERTION_HEADER, &old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "earlier token still admitted");
    let keys = h.admin_get("/admin/v1/keys").await;
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["previous", "signing"]);
    h.finish().await;
}

async fn routing_policies_and_admin(backend: Backend) {
    let h = Harness::start(backend).await;
    let cli = h.services().await;
    // Unknown host: 404 unknown_host.
    let r = h
        .client
        .get(h.url("nowhere.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(body(r).await["error"], "unknown_host");
    // Bypass forwards without identity, stripping spoofed headers.
    let r = h
        .client
        .get(h.url("public.test", "/"))
        .header(JWT_ASSERTION_HEADER, "forged")
        .header(AUTHENTICATED_USER_EMAIL_HEADER, "ceo@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = body(r).await;
    assert!(seen.get(JWT_ASSERTION_HEADER).is_none());
    assert!(seen.get(AUTHENTICATED_USER_EMAIL_HEADER).is_none());
    // A valid token no policy admits: 403; a block policy: 403.
    let stranger = cli.tokens.create("stranger", None).await.unwrap();
    let r = h
        .client
        .get(h.url("echo.test", "/"))
        .header(CLIENT_ID_HEADER, &stranger.client_id)
        .header(CLIENT_SECRET_HEADER, &stranger.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(body(r).await["error"], "forbidden");
    let bot = cli.tokens.create("report-bot", None).await.unwrap();
    let r = h
        .client
        .get(h.url("blocked.test", "/"))
        .header(CLIENT_ID_HEADER, &bot.client_id)
        .header(CLIENT_SECRET_HEADER, &bot.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "block policy");
    assert_eq!(body(r).await["error"], "forbidden");
    wait_audit(&h, "decision=block&app=blocked", |r| {
        r["policy"] == "no-bots"
    })
    .await;
    // Admin API: 401 without the bearer, JSON with it.
    let r = h
        .client
        .get(h.admin_url("/admin/v1/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client
        .get(h.admin_url("/admin/v1/apps"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let apps = h.admin_get("/admin/v1/apps").await;
    assert_eq!(apps[0]["name"], "echo");
    assert_eq!(apps[0]["aud"], h.aud("echo").as_str());
    let created = h
        .client
        .post(h.admin_url("/admin/v1/service-tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .body(serde_json::json!({"name": "api-bot", "duration": "1h"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created = body(created).await;
    assert!(created["client_id"].as_str().unwrap().ends_with(".access"));
    assert_eq!(created["client_secret"].as_str().unwrap().len(), 64);
    let listed = h.admin_get("/admin/v1/service-tokens").await;
    assert!(
        !listed
            .to_string()
            .contains(created["client_secret"].as_str().unwrap()),
        "secrets never listed"
    );
    let dup = h
        .client
        .post(h.admin_url("/admin/v1/service-tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .body(serde_json::json!({"name": "api-bot"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    let revoke = h
        .client
        .post(h.admin_url("/admin/v1/service-tokens/api-bot/revoke"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = h.client.get(h.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // Audit: allowed, denied and bypassed decisions, filterable.
    wait_audit(&h, "decision=bypass&app=public", |r| {
        r["policy"] == "everyone"
    })
    .await;
    let forbidden = wait_audit(&h, "decision=deny", |r| r["reason"] == "forbidden").await;
    assert_eq!(forbidden["identity"], stranger.client_id.as_str());
    let far_future = h.admin_get("/admin/v1/audit?since=4102444800").await;
    assert_eq!(far_future, serde_json::json!([]));
    h.finish().await;
}

/// WebSocket upgrades pass through once a service token is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_the_gateway() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    // A WebSocket echo origin.
    let ws_origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_origin.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = ws_origin.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let extra = format!(
        "[[apps]]\nname = \"ws\"\ndomain = \"ws.test\"\norigin = \"http://{ws_addr}\"\n\n\
         [[apps.policies]]\nname = \"bots\"\ndecision = \"service_auth\"\ninclude = [{{ any_valid_service_token = true }}]\n"
    );
    let h = Harness::start_with(Backend::sqlite(), &extra).await;
    let creds = h
        .services()
        .await
        .tokens
        .create("report-bot", None)
        .await
        .unwrap();
    let mut request = format!("ws://ws.test:{}/socket", h.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert(CLIENT_ID_HEADER, creds.client_id.parse().unwrap());
    request
        .headers_mut()
        .insert(CLIENT_SECRET_HEADER, creds.client_secret.parse().unwrap());
    let stream = tokio::net::TcpStream::connect(h.gw().addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
    let _ = ws.close(None).await;

    // Without credentials the upgrade is refused.
    let request = format!("ws://ws.test:{}/socket", h.port)
        .into_client_request()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(h.gw().addr).await.unwrap();
    assert!(
        tokio_tungstenite::client_async(request, stream)
            .await
            .is_err()
    );
    h.finish().await;
}

/// The public listener over TLS (`[server] tls_cert` / `tls_key`): a client
/// that trusts the self-signed certificate gets the certs document and a
/// service-token request through; the cookie is `Secure`, the origin sees
/// `X-Forwarded-Proto: https`; plain HTTP and a client that does not trust
/// the certificate get nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_certs_and_service_tokens() {
    let backend = Backend::sqlite();
    // webpki does not match a wildcard directly under a single-label name
    // (`*.test`), so the hosts are listed too.
    let cert = rcgen::generate_simple_self_signed(vec![
        "*.test".to_owned(),
        "auth.test".to_owned(),
        "echo.test".to_owned(),
        "127.0.0.1".to_owned(),
    ])
    .unwrap();
    std::fs::write(backend.dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(
        backend.dir.join("key.pem"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let echo = common::Echo::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin_port = admin.local_addr().unwrap().port();
    let text = common::config_text(&backend, port, admin_port, echo.addr, "")
        .replace("team_domain = \"http://", "team_domain = \"https://")
        .replace(
            "log_format = \"text\"",
            "log_format = \"text\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
        );
    let config = portcullis_gateway::Config::from_toml_str(&text, &backend.dir).unwrap();
    assert!(config.server.tls.is_some());
    let services = portcullis_gateway::Services::open(config.clone())
        .await
        .unwrap();
    let creds = services.tokens.create("report-bot", None).await.unwrap();
    let gw = portcullis_gateway::start_with_listeners(config, listener, admin)
        .await
        .unwrap();

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = |trusted: &str| {
        reqwest::Client::builder()
            .resolve("auth.test", addr)
            .resolve("echo.test", addr)
            .tls_certs_only([reqwest::Certificate::from_pem(trusted.as_bytes()).unwrap()])
            .build()
            .unwrap()
    };
    let trusting = client(&cert.cert.pem());

    let certs = trusting
        .get(format!("https://auth.test:{port}/cdn-cgi/access/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(certs.status(), 200);
    let doc = body(certs).await;
    assert!(!doc["keys"].as_array().unwrap().is_empty(), "{doc}");
    assert!(doc["public_cert"]["kid"].is_string(), "{doc}");
    // The same over the IP address in the certificate.
    let by_ip = trusting
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(by_ip.status().as_u16() < 500, "{}", by_ip.status());

    let r = trusting
        .get(format!("https://echo.test:{port}/over-tls"))
        .header(CLIENT_ID_HEADER, &creds.client_id)
        .header(CLIENT_SECRET_HEADER, &creds.client_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
    let seen = body(r).await;
    assert_eq!(seen["x-forwarded-proto"], "https");
    let token = seen[JWT_ASSERTION_HEADER].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], format!("https://auth.test:{port}"));
    assert_eq!(claims["common_name"], creds.client_id.as_str());

    // Plain HTTP on the TLS port, and a client that trusts another
    // certificate, are refused.
    let plain = reqwest::Client::builder()
        .resolve("auth.test", addr)
        .build()
        .unwrap()
        .get(format!("http://auth.test:{port}/cdn-cgi/access/certs"))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP must not be served on the TLS listener"
    );
    let stranger = rcgen::generate_simple_self_signed(vec!["auth.test".to_owned()]).unwrap();
    let untrusting = client(&stranger.cert.pem());
    assert!(
        untrusting
            .get(format!("https://auth.test:{port}/cdn-cgi/access/certs"))
            .send()
            .await
            .is_err()
    );

    gw.shutdown().await;
    backend.cleanup().await;
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// portcullis-core's counters of the gateway's own validator are in the
/// admin listener's `/metrics`: cookie reuse counts `ok`, a forged cookie
/// counts its rejection code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validations_are_counted_on_the_admin_listener() {
    let h = Harness::start(Backend::sqlite()).await;
    let metrics = || async {
        let r = h.client.get(h.admin_url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let before = metrics().await;
    assert!(
        before.contains("# TYPE portcullis_validations_total counter"),
        "{before}"
    );
    assert_eq!(
        sample(&before, "portcullis_validations_total{result=\"ok\"}"),
        Some(0.0),
        "{before}"
    );
    let creds = h
        .services()
        .await
        .tokens
        .create("report-bot", None)
        .await
        .unwrap();
    let cookie = exchange_for_cookie(&h, &creds.client_id, &creds.client_secret).await;
    for _ in 0..3 {
        let r = h
            .client
            .get(h.url("echo.test", "/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let forged = h
        .client
        .get(h.url("echo.test", "/"))
        .header("cookie", "CF_Authorization=not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let after = metrics().await;
    let ok = sample(&after, "portcullis_validations_total{result=\"ok\"}").unwrap_or(0.0);
    assert!(ok >= 3.0, "three cookie validations: {after}");
    let malformed = sample(
        &after,
        "portcullis_validations_total{result=\"malformed_token\"}",
    )
    .unwrap_or(0.0);
    assert!(malformed >= 1.0, "the forged cookie: {after}");
    assert!(
        after.contains("portcullis_token_cache_hits_total"),
        "{after}"
    );
    assert!(
        after.contains("portcullis_gateway_requests_total"),
        "{after}"
    );
    h.finish().await;
}

/// `[audit] retention`: rows older than it are deleted in batches by the
/// background purge (more rows than one batch here), newer ones stay, and
/// the purge is counted in `/metrics`.
async fn audit_retention_purges_old_rows(backend: Backend) {
    let h = Harness::start_with(backend, "retention = \"1h\"\npurge_interval = \"100ms\"").await;
    assert_eq!(h.config.audit.retention, Duration::from_secs(3600));
    let store = h.gw().gateway.store.clone();
    let now = portcullis_gateway::clock::now_ms();
    let row = |app: &str, at_ms: i64| portcullis_gateway::store::AuditRecord {
        id: 0,
        at_ms,
        last_at_ms: at_ms,
        decisions: 1,
        app: app.to_owned(),
        identity: String::new(),
        identity_kind: "anonymous".to_owned(),
        policy: None,
        decision: "deny".to_owned(),
        reason: "missing_token".to_owned(),
        source_ip: "127.0.0.1".to_owned(),
    };
    let old = portcullis_gateway::audit::PURGE_BATCH as usize * 2 + 500;
    let mut rows: Vec<_> = (0..old)
        .map(|i| row("old", now - 2 * 3_600_000 - i as i64))
        .collect();
    rows.push(row("recent", now - 30 * 60_000));
    rows.push(row("recent", now));
    store.append_audit(&rows).await.unwrap();

    let count = |app: &'static str| {
        let store = store.clone();
        async move {
            store
                .audit(&portcullis_gateway::store::AuditQuery {
                    app: Some(app.to_owned()),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    let mut left = count("old").await;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = count("old").await;
    }
    assert_eq!(left, 0, "rows older than the retention are purged");
    assert_eq!(count("recent").await, 2, "rows within the retention stay");
    let metrics = h
        .client
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, "portcullis_gateway_audit_rows_purged_total"),
        Some(old as f64),
        "{metrics}"
    );
    h.finish().await;
}

/// Identical decisions made close together (a client repeating its
/// cookie) are one audit row counting them; every decision is accounted
/// for, and different decisions keep their own rows.
async fn repeated_decisions_share_audit_rows(backend: Backend) {
    let h = Harness::start(backend).await;
    let creds = h
        .services()
        .await
        .tokens
        .create("report-bot", None)
        .await
        .unwrap();
    let cookie = exchange_for_cookie(&h, &creds.client_id, &creds.client_secret).await;
    const N: usize = 40;
    let requests = (0..N).map(|i| {
        h.client
            .get(h.url("echo.test", &format!("/r{i}")))
            .header("cookie", &cookie)
            .send()
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    // Two refusals of one kind, one of another.
    for secret in ["0".repeat(64), "1".repeat(64)] {
        let r = h
            .client
            .get(h.url("echo.test", "/"))
            .header(CLIENT_ID_HEADER, &creds.client_id)
            .header(CLIENT_SECRET_HEADER, secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = h.client.get(h.url("echo.test", "/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    h.gw().gateway.audit.flush().await;

    let rows = h
        .admin_get("/admin/v1/audit?app=echo&limit=10000")
        .await
        .as_array()
        .unwrap()
        .clone();
    let decisions = |decision: &str, reason: &str| -> (usize, i64) {
        let matching: Vec<&Value> = rows
            .iter()
            .filter(|r| r["decision"] == decision && r["reason"] == reason)
            .collect();
        for r in &matching {
            assert!(r["decisions"].as_i64().unwrap() >= 1, "{r}");
            assert!(r["last_at_ms"].as_i64() >= r["at_ms"].as_i64(), "{r}");
        }
        (
            matching.len(),
            matching
                .iter()
                .map(|r| r["decisions"].as_i64().unwrap())
                .sum(),
        )
    };
    let (admitted_rows, admitted) = decisions("service_auth", "ok");
    assert_eq!(
        admitted,
        N as i64 + 1,
        "every admission is counted: {rows:?}"
    );
    assert!(
        admitted_rows < N,
        "{N} concurrent identical admissions share rows ({admitted_rows} rows)"
    );
    assert_eq!(decisions("deny", "bad_credentials").1, 2, "{rows:?}");
    assert_eq!(decisions("deny", "missing_token").1, 1, "{rows:?}");
    let refused = rows
        .iter()
        .find(|r| r["reason"] == "bad_credentials")
        .unwrap();
    assert_eq!(refused["identity"], creds.client_id.as_str());
    assert_eq!(refused["source_ip"], "127.0.0.1");
    h.finish().await;
}

/// `start` binds the public address itself, one `SO_REUSEPORT` socket per
/// worker: the gateway serves there on every new connection, and an
/// address already taken, also by another gateway's workers (whose group
/// `SO_REUSEPORT` alone would let it join), is refused, not shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_binds_a_socket_per_worker_and_refuses_a_taken_address() {
    let backend = Backend::sqlite();
    let echo = common::Echo::start().await;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin_port) = (free_port(), free_port());
    let text = common::config_text(&backend, port, admin_port, echo.addr, "").replace(
        "log_format = \"text\"",
        "log_format = \"text\"\nworkers = 2",
    );
    let config = portcullis_gateway::Config::from_toml_str(&text, &backend.dir).unwrap();
    assert_eq!(config.server.workers, 2);
    let gw = portcullis_gateway::start(config).await.unwrap();
    assert_eq!(gw.addr.port(), port);
    for i in 0..8 {
        // A client per request: a new connection each time.
        let r = common::client_for(port)
            .get(format!("http://public.test:{port}/conn/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(body(r).await[":path"], format!("/conn/{i}"));
    }

    let taken = |listen: u16| {
        let text = text
            .replace(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"127.0.0.1:{listen}\""),
            )
            .replace(
                &format!("127.0.0.1:{admin_port}"),
                &format!("127.0.0.1:{}", free_port()),
            );
        let config = portcullis_gateway::Config::from_toml_str(&text, &backend.dir).unwrap();
        async move {
            match portcullis_gateway::start(config).await {
                Err(portcullis_gateway::server::StartError::Bind { addr, .. }) => addr.port(),
                Err(e) => panic!("expected a bind error, got {e}"),
                Ok(_) => panic!("a second gateway started on a taken address"),
            }
        }
    };
    assert_eq!(taken(port).await, port);
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    assert_eq!(taken(other_port).await, other_port);
    gw.shutdown().await;
}
