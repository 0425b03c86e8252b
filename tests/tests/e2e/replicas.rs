//! Two gateway replicas on one PostgreSQL database: a login through one
//! works on the other and a revocation on one is honoured by the other
//! within 5 s; key rotation on one is honoured everywhere (behind a front
//! door); `kill -9` of one during load on both loses nothing committed,
//! and the audit log matches what was answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_core::wire::{AUTHORIZATION_COOKIE, CERTS_PATH, JWT_ASSERTION_HEADER};
use portcullis_tests::Scratch;
use portcullis_tests::agent::Agent;
use portcullis_tests::apps::{LegacyApp, PlainOrigin};
use portcullis_tests::front::Front;
use portcullis_tests::gateway::{Gateway, GatewayConfig, ServiceToken, cookie_token};
use portcullis_tests::net::{free_port, plain_client};
use portcullis_tests::oidc::{ACCOUNT_EMAIL, OidcProvider};
use portcullis_tests::pg::PgDatabase;
use portcullis_tests::sidecar::{Sidecar, SidecarArgs};
use serde_json::Value;
use tokio::net::TcpListener;

struct Pair {
    a: Gateway,
    b: Gateway,
    front: Front,
    origin: PlainOrigin,
}

async fn pair(db: &PgDatabase, scratch: &Scratch) -> Pair {
    let origin = PlainOrigin::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let team_port = listener.local_addr().unwrap().port();
    let config = GatewayConfig::postgres(db, scratch)
        .team_port(team_port)
        .app("echo", "echo.test", &origin.url(), "");
    let a = Gateway::start(scratch, "gateway-a", &config).await;
    let b = Gateway::start(scratch, "gateway-b", &config).await;
    let front = Front::start(listener, vec![a.port, b.port]);
    Pair {
        a,
        b,
        front,
        origin,
    }
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn token_via(gw: &Gateway, bot: &ServiceToken) -> String {
    let r = bot
        .apply(gw.client.get(gw.url("echo.test", "/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cookie_token(&r).expect("app token cookie")
}

async fn accepted_by(gw: &Gateway, token: &str) -> bool {
    gw.client
        .get(gw.url("echo.test", "/"))
        .header("cookie", format!("{AUTHORIZATION_COOKIE}={token}"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_one_replica_is_honoured_everywhere() {
    let _shared = crate::PG_RESTART.read().await;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new("replicas-rotate");
    let p = pair(&db, &scratch).await;
    let aud = p.a.aud("echo").await;
    assert_eq!(aud, p.b.aud("echo").await, "one AUD tag per app");

    // A service token created on A works on B.
    let bot = p.a.service_token("bot-1").await;
    let old = token_via(&p.b, &bot).await;
    let old_kid = kid_of(&old);

    // An origin validating through the front door's certs endpoint.
    let legacy = LegacyApp::start().await;
    let sidecar = Sidecar::start(
        &scratch,
        "sidecar",
        free_port(),
        &SidecarArgs {
            team_domain: p.a.team_domain.clone(),
            certs_url: Some(format!("http://127.0.0.1:{}{CERTS_PATH}", p.front.port)),
            audience: aud.clone(),
            upstream: legacy.url(),
        },
    )
    .await;
    let via_sidecar = |token: String| {
        plain_client()
            .get(format!("{}/", sidecar.url()))
            .header(JWT_ASSERTION_HEADER, token)
            .send()
    };
    assert_eq!(via_sidecar(old.clone()).await.unwrap().status(), 200);

    // Rotate on A (published ahead, then signing); B learns of it from the
    // database and signs with the new key.
    let (status, body) =
        p.a.admin_post("/admin/v1/keys/rotate", &serde_json::json!({}))
            .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 1;
    let new = loop {
        n += 1;
        let bot = p.b.service_token(&format!("bot-{n}")).await;
        let token = token_via(&p.b, &bot).await;
        if kid_of(&token) != old_kid {
            break token;
        }
        assert!(
            Instant::now() < deadline,
            "B never signed with the rotated key"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let new_kid = kid_of(&new);
    for gw in [&p.a, &p.b] {
        let kids: Vec<Value> = gw.certs().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        assert!(
            kids.contains(&Value::from(new_kid.clone())),
            "new key published"
        );
        assert!(
            kids.contains(&Value::from(old_kid.clone())),
            "old key still published"
        );
        assert!(accepted_by(gw, &new).await, "new token on a replica");
        assert!(accepted_by(gw, &old).await, "old token on a replica");
    }
    // The sidecar sees an unknown kid and refetches.
    assert_eq!(via_sidecar(new.clone()).await.unwrap().status(), 200);
    assert_eq!(via_sidecar(old.clone()).await.unwrap().status(), 200);
    if portcullis_tests::tools::pyjwt_available() {
        let certs_url = format!("http://127.0.0.1:{}{CERTS_PATH}", p.front.port);
        for t in [&old, &new] {
            portcullis_tests::interop::pyjwt_verify(&certs_url, t, &aud, &p.a.team_domain)
                .expect("PyJWT validates both generations");
        }
    }
    eprintln!("replica rotation: {:?}", started.elapsed());
}

/// Answers counted by one load worker set.
#[derive(Default)]
struct Tally {
    answered: Vec<Instant>,
    errors: usize,
}

async fn load(gw_port: u16, bot: ServiceToken, stop: Arc<AtomicBool>, workers: usize) -> Tally {
    let client = portcullis_tests::gateway::gateway_client(gw_port);
    let url = format!("http://echo.test:{gw_port}/");
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (client, url, bot, stop) = (client.clone(), url.clone(), bot.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let r = bot
                    .apply(client.get(&url))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => t.answered.push(Instant::now()),
                    _ => t.errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            t
        }));
    }
    let mut total = Tally::default();
    for h in handles {
        let t = h.await.unwrap();
        total.answered.extend(t.answered);
        total.errors += t.errors;
    }
    total
}

/// Decisions audited for `identity` (a row may count several identical ones).
async fn audit_rows(db: &PgDatabase, identity: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(decisions), 0)::BIGINT FROM audit_log WHERE identity = $1",
    )
    .bind(identity)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_replica_during_load_on_both() {
    const WORKERS: usize = 3;
    let _shared = crate::PG_RESTART.read().await;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new("replicas-kill9");
    let mut p = pair(&db, &scratch).await;
    let bot_a = p.a.service_token("load-a").await;
    let bot_b = p.b.service_token("load-b").await;
    let keys_before = p.b.admin_get("/admin/v1/keys").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load_a = tokio::spawn(load(p.a.port, bot_a.clone(), stop.clone(), WORKERS));
    let load_b = tokio::spawn(load(p.b.port, bot_b.clone(), stop.clone(), WORKERS));

    tokio::time::sleep(Duration::from_secs(10)).await;
    let committed_a = audit_rows(&db, &bot_a.client_id).await;
    p.a.proc.kill9();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    let (ta, tb) = (load_a.await.unwrap(), load_b.await.unwrap());

    // B served throughout, without a single failure.
    assert_eq!(tb.errors, 0, "B failed requests during the kill of A");
    let b_after_kill = tb.answered.iter().filter(|t| **t > killed_at).count();
    assert!(
        b_after_kill > 100,
        "B kept serving: {b_after_kill} after the kill"
    );
    assert!(ta.errors > 0, "A's load saw the kill");
    assert!(ta.answered.iter().all(|t| *t <= killed_at));

    // Audit: the decisions B audited equal B's answers once flushed.
    let want_b = tb.answered.len() as i64;
    let mut rows_b = 0;
    for _ in 0..100 {
        rows_b = audit_rows(&db, &bot_b.client_id).await;
        if rows_b >= want_b {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows_b, want_b,
        "B's audited decisions match B's answered requests"
    );
    // A: every row seen committed before the kill is still there; rows
    // exist for what A answered, except what was still in its batch
    // (flushed every 50 ms) when it died; none beyond what was in flight.
    let rows_a = audit_rows(&db, &bot_a.client_id).await;
    let answered_a = ta.answered.len() as i64;
    let last_second = ta
        .answered
        .iter()
        .filter(|t| killed_at.duration_since(**t) < Duration::from_secs(1))
        .count() as i64;
    assert!(
        rows_a >= committed_a,
        "committed rows lost: {rows_a} < {committed_a}"
    );
    assert!(
        rows_a >= answered_a - last_second,
        "A lost audit rows older than its flush window: {rows_a} rows for {answered_a} answers"
    );
    assert!(
        rows_a <= answered_a + WORKERS as i64,
        "more rows than requests: {rows_a} for {answered_a} answers"
    );

    // Nothing committed lost: A restarts on the same database with the same
    // keys, and both service tokens work on both replicas.
    p.a.restart(&scratch).await;
    assert_eq!(p.a.admin_get("/admin/v1/keys").await, keys_before);
    for gw in [&p.a, &p.b] {
        for bot in [&bot_a, &bot_b] {
            let r = bot
                .apply(gw.client.get(gw.url("echo.test", "/")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    assert!(p.origin.answered() as i64 >= answered_a + want_b);
    eprintln!(
        "kill -9 under load: A answered {answered_a} (rows {rows_a}), B answered {want_b} ({b_after_kill} after the kill), in {:?}",
        started.elapsed()
    );
}

/// Login through replica A (the real provider's form, driven by a
/// cookie-keeping agent), the app cookie used on replica B; the user
/// revoked on B is refused by A within 5 s (measured from the admin API's
/// answer; A re-reads revocations every `min(keys.reload_interval, 5 s)`,
/// 1 s in the harness's configuration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_on_one_replica_cookie_on_the_other_and_revocation_across() {
    let _shared = crate::PG_RESTART.read().await;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new("replicas-login");
    // The team domain is replica A's own address: the login page, the
    // provider's callback and the code exchange all go through A.
    let a_port = free_port();
    let callback = format!("http://127.0.0.1:{a_port}/cdn-cgi/access/callback");
    let Some(provider) = OidcProvider::start(
        &scratch,
        OidcProvider::reserve_port(),
        std::slice::from_ref(&callback),
    )
    .await
    else {
        return;
    };
    let origin = PlainOrigin::start().await;
    let config = GatewayConfig::postgres(&db, &scratch)
        .team_port(a_port)
        .section(&provider.gateway_section("e2e", "E2E IdP"))
        .app(
            "app-a",
            "app-a.test",
            &origin.url(),
            &format!(
                "[[apps.policies]]\nname = \"people\"\ndecision = \"allow\"\ninclude = [{{ email = \"{ACCOUNT_EMAIL}\" }}]\n"
            ),
        );
    let a = Gateway::start_on(&scratch, "gateway-a", &config, a_port).await;
    let b = Gateway::start(&scratch, "gateway-b", &config).await;
    let on_a = format!("http://app-a.test:{}/", a.port);
    let on_b = format!("http://app-a.test:{}/", b.port);

    // Log in through A: app → A's login → the provider's form → A's
    // callback → A's code exchange → the app.
    let mut agent = Agent::new();
    let page = agent.oidc_login(&on_a, &provider).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.url, on_a);
    assert_eq!(page.body, "origin: token present");
    assert!(
        page.went_through(&callback),
        "callback on A: {:?}",
        page.hops
    );
    assert!(
        !page
            .hops
            .iter()
            .any(|(_, u)| u.contains(&format!(":{}/", b.port))),
        "nothing went to B: {:?}",
        page.hops
    );
    let cookie = agent
        .cookie(AUTHORIZATION_COOKIE, "app-a.test")
        .expect("app cookie for app-a.test");

    // The cookie on B: the app, and get-identity naming the user.
    let with_cookie = |gw: &Gateway, path: &str| {
        gw.client
            .get(gw.url("app-a.test", path))
            .header("cookie", format!("{AUTHORIZATION_COOKIE}={cookie}"))
            .timeout(Duration::from_secs(5))
            .send()
    };
    let r = with_cookie(&b, "/").await.unwrap();
    assert_eq!(r.status(), 200, "the cookie from A on B");
    assert_eq!(r.text().await.unwrap(), "origin: token present");
    let r = with_cookie(&b, "/cdn-cgi/access/get-identity")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let identity: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(identity["email"], ACCOUNT_EMAIL, "{identity}");
    assert_eq!(identity["idp"]["id"], "e2e", "{identity}");
    // And as a browser would: a navigation to B, no login asked.
    let page = agent.navigate(&on_b).await;
    assert_eq!((page.status, page.hops.len()), (200, 1), "{page:?}");

    // Revoke the user on B: B refuses at once, A within 5 s.
    let (status, body) = b
        .admin_post(
            "/admin/v1/sessions/revoke",
            &serde_json::json!({ "email": ACCOUNT_EMAIL }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked"].as_u64() >= Some(1), "{body}");
    let revoked_at = Instant::now();
    let refused_on_b = with_cookie(&b, "/").await.unwrap().status();
    assert!(
        matches!(refused_on_b.as_u16(), 401 | 403),
        "B after its own revocation: {refused_on_b}"
    );
    let refused_on_a = loop {
        let status = with_cookie(&a, "/").await.unwrap().status();
        if status != 200 {
            break status;
        }
        assert!(
            revoked_at.elapsed() <= Duration::from_secs(5),
            "A still served the revoked session 5 s after the revocation on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let propagation = revoked_at.elapsed();
    assert!(propagation <= Duration::from_secs(5), "{propagation:?}");
    assert!(
        matches!(refused_on_a.as_u16(), 401 | 403),
        "A refused with {refused_on_a}"
    );
    // The team session is gone too: A sends the browser through its login
    // page to the provider again (which still knows the user: no form).
    let page = agent.navigate(&on_a).await;
    assert!(
        page.went_through(&format!("{}/cdn-cgi/access/login/", a.team_domain))
            && page.went_through(&provider.issuer),
        "no new login after the revocation: {:?}",
        page.hops
    );
    assert_eq!((page.status, page.url.as_str()), (200, on_a.as_str()));
    eprintln!(
        "revocation on B refused on A after {propagation:?}; replica login scenario {:?}",
        started.elapsed()
    );
}
