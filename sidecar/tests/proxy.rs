//! The sidecar in-process over real sockets: injection, stripping, every
//! error code, forward-auth, WebSocket, keys outages and readiness.

mod common;

use std::time::Duration;

use common::*;
use portcullis_core::test_support::{CertsServer, TestKey, now, service_claims, user_claims};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_upstream_with_identity_headers() {
    let s = Setup::new(&[
        "--inject-header",
        "X-Country=country",
        "--inject-header",
        "X-Os=/device_posture/os",
    ])
    .await;
    let mut claims = user_claims(&s.certs.team_domain(), AUD, "ada@example.com");
    claims["groups"] = json!(["eng", "ops"]);
    claims["device_posture"] = json!({"os": "linux"});
    let token = s.key.sign(&claims);
    let a = s
        .client
        .get(
            &s.url("/some/path?q=1"),
            &[
                ("cf-access-jwt-assertion", &token),
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-kept", "1"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "hello");
    let seen = s.upstream.last();
    let h = &seen.headers;
    assert_eq!(seen.path, "/some/path");
    assert_eq!(h["x-forwarded-email"], "ada@example.com");
    assert_eq!(h["x-forwarded-user"], "ada@example.com");
    assert_eq!(h["x-forwarded-groups"], "eng,ops");
    assert_eq!(h["cf-access-authenticated-user-email"], "ada@example.com");
    assert_eq!(h["x-country"], "NZ");
    assert_eq!(h["x-os"], "linux");
    assert_eq!(h["cf-access-jwt-assertion"], token.as_str());
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.sidecar.addr().to_string().as_str());
    assert_eq!(h["host"], s.sidecar.addr().to_string().as_str());
    assert!(
        h.get("x-drop-me").is_none(),
        "Connection-listed headers are hop-by-hop"
    );
    assert_eq!(h["x-kept"], "1");

    // The cookie works too, and the token is passed on in the header.
    let a = s
        .client
        .get(
            &s.url("/"),
            &[("cookie", &format!("theme=dark; CF_Authorization={token}"))],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        s.upstream.last().headers["cf-access-jwt-assertion"],
        token.as_str()
    );

    // Service tokens: no email, user is the common name.
    let svc = s
        .key
        .sign(&service_claims(&s.certs.team_domain(), AUD, "bot.access"));
    let a = s
        .client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &svc)])
        .await;
    assert_eq!(a.status, 200);
    let h = s.upstream.last().headers;
    assert!(h.get("x-forwarded-email").is_none());
    assert_eq!(h["x-forwarded-user"], "bot.access");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let s = Setup::new(&["--inject-header", "X-Role=role"]).await;
    let token = s.token("mallory@example.com");
    let a = s
        .client
        .get(
            &s.url("/"),
            &[
                ("cf-access-jwt-assertion", &token),
                ("X-Forwarded-Email", "ceo@example.com"),
                ("x-forwarded-user", "ceo@example.com"),
                ("X-FORWARDED-GROUPS", "admins"),
                ("cf-access-authenticated-user-email", "ceo@example.com"),
                ("x-role", "admin"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let h = s.upstream.last().headers;
    assert_eq!(
        h.get_all("x-forwarded-email").iter().collect::<Vec<_>>(),
        ["mallory@example.com"]
    );
    assert_eq!(
        h.get_all("x-forwarded-user").iter().collect::<Vec<_>>(),
        ["mallory@example.com"]
    );
    assert!(
        h.get("x-forwarded-groups").is_none(),
        "no groups claim, so no header"
    );
    assert!(h.get("x-role").is_none(), "no role claim, so no header");
    assert_eq!(
        h["cf-access-authenticated-user-email"],
        "mallory@example.com"
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_error_code_with_its_status_and_body() {
    let s = Setup::new(&["--max-token-bytes", "4096"]).await;
    let team = s.certs.team_domain();
    let other = TestKey::rsa();
    let base = || user_claims(&team, AUD, "ada@example.com");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base();
        f(&mut c);
        s.key.sign(&c)
    };
    let cases: Vec<(String, &str)> = vec![
        ("not.a.jwt".into(), "malformed_token"),
        ("x".repeat(5000), "malformed_token"),
        (
            s.key
                .sign_with_header(&json!({"alg":"HS256","kid":s.key.kid()}), &base()),
            "disallowed_algorithm",
        ),
        (other.sign(&base()), "unknown_key"),
        (
            other.sign_with_header(&json!({"alg":"RS256","kid":s.key.kid()}), &base()),
            "bad_signature",
        ),
        (with(&|c| c["exp"] = json!(now() - 3600)), "expired"),
        (with(&|c| c["nbf"] = json!(now() + 3600)), "not_yet_valid"),
        (
            with(&|c| c["iss"] = json!("https://other.cloudflareaccess.com")),
            "wrong_issuer",
        ),
        (with(&|c| c["aud"] = json!([AUD2])), "wrong_audience"),
    ];
    for (token, code) in cases {
        let a = s
            .client
            .get(&s.url("/"), &[("cf-access-jwt-assertion", &token)])
            .await;
        a.assert_rejection(401, code);
        assert!(
            !a.text().contains(&token[..token.len().min(40)]),
            "body never echoes the token"
        );
    }
    s.client
        .get(&s.url("/"), &[])
        .await
        .assert_rejection(401, "missing_token");
    assert_eq!(s.upstream.count(), 0, "nothing reached the upstream");

    // Metrics count them by code.
    let m = s.client.get(&s.admin("/metrics"), &[]).await.text();
    assert!(m.contains(r#"portcullis_sidecar_requests_total{code="wrong_audience",route="default",status="401"} 1"#), "{m}");
    assert!(m.contains("portcullis_key_refreshes_total"), "{m}");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigations_are_redirected_to_login_and_fetches_get_401() {
    let s = Setup::new(&["--login-url", "https://login.example.com/start"]).await;
    let nav = [
        ("sec-fetch-mode", "navigate"),
        ("host", "app.example.com"),
        ("x-forwarded-proto", "https"),
    ];
    let a = s.client.get(&s.url("/deep/page?x=1"), &nav).await;
    assert_eq!(a.status, 302);
    let location = url::Url::parse(a.headers["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("login.example.com"));
    let redirect: Vec<_> = location
        .query_pairs()
        .filter(|(k, _)| k == "redirect_url")
        .collect();
    assert_eq!(redirect[0].1, "https://app.example.com/deep/page?x=1");

    let a = s
        .client
        .get(&s.url("/"), &[("sec-fetch-mode", "cors")])
        .await;
    a.assert_rejection(401, "missing_token");
    let a = s
        .client
        .get(
            &s.url("/"),
            &[
                ("sec-fetch-mode", "navigate"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        )
        .await;
    a.assert_rejection(401, "missing_token");
    s.client
        .get(&s.url("/"), &[])
        .await
        .assert_rejection(401, "missing_token");
    // A bad token on a navigation is not a login matter.
    let a = s
        .client
        .get(
            &s.url("/"),
            &[
                ("sec-fetch-mode", "navigate"),
                ("cf-access-jwt-assertion", "a.b.c"),
            ],
        )
        .await;
    a.assert_rejection(401, "malformed_token");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_refuses_other_sources_before_anything_else() {
    let s = Setup::new(&[
        "--allow-from",
        "10.0.0.0/8",
        "--allow-from",
        "2400:cb00::/32",
    ])
    .await;
    let token = s.token("ada@example.com");
    let a = s
        .client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &token)])
        .await;
    a.assert_rejection(403, "forbidden");
    assert_eq!(s.upstream.count(), 0);
    s.sidecar.shutdown().await;

    let s = Setup::new(&["--allow-from", "127.0.0.0/8"]).await;
    let token = s.token("ada@example.com");
    let a = s
        .client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &token)])
        .await;
    assert_eq!(a.status, 200);
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_is_504() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    // A port that was free a moment ago: connection refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let team = certs.team_domain();
    let dead_url = format!("http://{dead}");
    let sc = sidecar(&[
        "--team-domain",
        &team,
        "--audience",
        AUD,
        "--upstream",
        &dead_url,
    ])
    .await;
    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let client = Client::new();
    let a = client
        .get(
            &format!("http://{}/", sc.addr()),
            &[("cf-access-jwt-assertion", &token)],
        )
        .await;
    a.assert_rejection(502, "upstream_unavailable");
    let m = client
        .get(&format!("http://{}/metrics", sc.admin_addr()), &[])
        .await
        .text();
    assert!(m.contains(r#"portcullis_sidecar_upstream_errors_total{code="upstream_unavailable",route="default"} 1"#), "{m}");
    sc.shutdown().await;

    let upstream = Upstream::start().await;
    let up = upstream.url();
    let sc = sidecar(&[
        "--team-domain",
        &team,
        "--audience",
        AUD,
        "--upstream",
        &up,
        "--read-timeout",
        "300ms",
    ])
    .await;
    let a = client
        .get(
            &format!("http://{}/slow/3000", sc.addr()),
            &[("cf-access-jwt-assertion", &token)],
        )
        .await;
    a.assert_rejection(504, "upstream_timeout");
    let a = client
        .get(
            &format!("http://{}/slow/10", sc.addr()),
            &[("cf-access-jwt-assertion", &token)],
        )
        .await;
    assert_eq!(a.status, 200);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_unknown_host_is_404() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let grafana = Upstream::start().await;
    let jenkins = Upstream::start().await;
    let dir =
        std::env::temp_dir().join(format!("portcullis-sidecar-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes.toml");
    std::fs::write(
        &file,
        format!(
            r#"
team_domain = "{team}"
[[routes]]
host = "grafana.example.com"
upstream = "{g}"
audiences = ["{AUD}"]
headers = {{ "X-WEBAUTH-USER" = "email" }}
[[routes]]
host = "jenkins.example.com"
upstream = "{j}"
audiences = ["{AUD2}"]
"#,
            team = certs.team_domain(),
            g = grafana.url(),
            j = jenkins.url()
        ),
    )
    .unwrap();
    let sc = sidecar(&["--config", file.to_str().unwrap()]).await;
    let team = certs.team_domain();
    let t1 = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let t2 = key.sign(&user_claims(&team, AUD2, "bob@example.com"));
    let client = Client::new();
    let url = format!("http://{}/", sc.addr());

    let a = client
        .get(
            &url,
            &[
                ("host", "Grafana.Example.com:443"),
                ("cf-access-jwt-assertion", &t1),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(grafana.last().headers["x-webauth-user"], "ada@example.com");
    // Jenkins' own route never injects X-WEBAUTH-USER, yet strips it.
    let a = client
        .get(
            &url,
            &[
                ("host", "jenkins.example.com"),
                ("cf-access-jwt-assertion", &t2),
                ("x-webauth-user", "admin"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(jenkins.last().headers.get("x-webauth-user").is_none());
    // A token for grafana is not one for jenkins.
    client
        .get(
            &url,
            &[
                ("host", "jenkins.example.com"),
                ("cf-access-jwt-assertion", &t1),
            ],
        )
        .await
        .assert_rejection(401, "wrong_audience");
    client
        .get(
            &url,
            &[
                ("host", "other.example.com"),
                ("cf-access-jwt-assertion", &t1),
            ],
        )
        .await
        .assert_rejection(404, "unknown_host");
    sc.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_with_identity_headers() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let team = certs.team_domain();
    let sc = sidecar(&[
        "--team-domain",
        &team,
        "--audience",
        AUD,
        "--mode",
        "forward-auth",
    ])
    .await;
    let mut claims = user_claims(&team, AUD, "ada@example.com");
    claims["groups"] = json!(["eng"]);
    let token = key.sign(&claims);
    let client = Client::new();
    let url = format!("http://{}/auth", sc.addr());
    let a = client
        .get(
            &url,
            &[
                ("cookie", &format!("CF_Authorization={token}")),
                ("x-forwarded-email", "evil@example.com"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-forwarded-email"], "ada@example.com");
    assert_eq!(a.headers["x-forwarded-user"], "ada@example.com");
    assert_eq!(a.headers["x-forwarded-groups"], "eng");
    assert_eq!(a.headers["cf-access-jwt-assertion"], token.as_str());
    client
        .get(&url, &[])
        .await
        .assert_rejection(401, "missing_token");
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_after_validation() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let ws = WsUpstream::start().await;
    let team = certs.team_domain();
    let up = format!("http://{}", ws.addr);
    let sc = sidecar(&["--team-domain", &team, "--audience", AUD, "--upstream", &up]).await;
    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));

    let mut request = format!("ws://{}/socket", sc.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cf-access-jwt-assertion", token.parse().unwrap());
    request
        .headers_mut()
        .insert("x-forwarded-email", "evil@example.com".parse().unwrap());
    let (mut stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        stream
            .send(Message::text(format!("ping {i}")))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    stream.close(None).await.unwrap();
    let seen = ws.headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-email"], "ada@example.com");

    // Without a token the upgrade is refused with the contract's 401.
    let request = format!("ws://{}/socket", sc.addr())
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_outage_after_start_keeps_serving() {
    let s = Setup::new(&[]).await;
    let token = s.token("ada@example.com");
    let ok = s
        .client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &token)])
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(s.client.get(&s.admin("/readyz"), &[]).await.status, 200);
    s.certs.set_status(503);
    // Force a refresh attempt: an unknown kid makes the source re-fetch.
    let other = TestKey::rsa();
    let stranger = other.sign(&user_claims(&s.certs.team_domain(), AUD, "x@example.com"));
    s.client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &stranger)])
        .await
        .assert_rejection(401, "unknown_key");
    let fresh = s.token("bob@example.com");
    let a = s
        .client
        .get(&s.url("/"), &[("cf-access-jwt-assertion", &fresh)])
        .await;
    assert_eq!(a.status, 200, "cached keys keep serving: {}", a.text());
    let ready = s.client.get(&s.admin("/readyz"), &[]).await;
    assert_eq!(
        ready.status, 200,
        "keys are still younger than their max age"
    );
    assert!(ready.json()["last_error"].is_string());
    assert_eq!(s.client.get(&s.admin("/healthz"), &[]).await.status, 200);
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_unavailable_at_start_then_readyz_flips() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    certs.set_status(503);
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let up = upstream.url();
    let sc = sidecar(&["--team-domain", &team, "--audience", AUD, "--upstream", &up]).await;
    let client = Client::new();
    let admin = format!("http://{}/readyz", sc.admin_addr());
    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let url = format!("http://{}/", sc.addr());

    let r = client.get(&admin, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["ready"], false);
    client
        .get(&url, &[("cf-access-jwt-assertion", &token)])
        .await
        .assert_rejection(503, "keys_unavailable");

    certs.set_status(200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.get(&admin, &[]).await.status == 200
        })
        .await,
        "/readyz turns 200 once the keys load"
    );
    let a = client
        .get(&url, &[("cf-access-jwt-assertion", &token)])
        .await;
    assert_eq!(a.status, 200);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let s = Setup::new(&["--max-header-bytes", "4096"]).await;
    let big = "y".repeat(8000);
    let a = s.client.get(&s.url("/"), &[("x-big", &big)]).await;
    assert_eq!(a.status, 431);
    assert_eq!(s.upstream.count(), 0);
    s.sidecar.shutdown().await;
}
