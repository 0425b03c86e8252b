//! Two gateway replicas on one PostgreSQL database behind a front door:
//! key rotation on one is honoured everywhere; `kill -9` of one during load
//! on both loses nothing committed, and the audit log matches what was
//! answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_core::wire::{AUTHORIZATION_COOKIE, CERTS_PATH, JWT_ASSERTION_HEADER};
use portcullis_tests::Scratch;
use portcullis_tests::apps::{LegacyApp, PlainOrigin};
use portcullis_tests::front::Front;
use portcullis_tests::gateway::{Gateway, GatewayConfig, ServiceToken, cookie_token};
use portcullis_tests::net::{free_port, plain_client};
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

async fn audit_rows(db: &PgDatabase, identity: &str) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE identity = $1")
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

    // Audit: B's rows equal B's answers once flushed.
    let want_b = tb.answered.len() as i64;
    let mut rows_b = 0;
    for _ in 0..100 {
        rows_b = audit_rows(&db, &bot_b.client_id).await;
        if rows_b >= want_b {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows_b, want_b, "B's audit rows match B's answered requests");
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
