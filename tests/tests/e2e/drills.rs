//! Failure drills: the certs endpoint goes down (the sidecar keeps
//! validating with cached keys); PostgreSQL drops the gateway's
//! connections or restarts (the gateway reconnects by itself).

use std::time::{Duration, Instant};

use portcullis_core::test_support::{CertsServer, TestKey, user_claims};
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use portcullis_tests::Scratch;
use portcullis_tests::apps::{LegacyApp, PlainOrigin};
use portcullis_tests::gateway::{Gateway, GatewayConfig};
use portcullis_tests::net::{free_port, plain_client, wait_until};
use portcullis_tests::pg::PgDatabase;
use portcullis_tests::sidecar::{Sidecar, SidecarArgs};
use portcullis_tests::tools::in_ci;
use sqlx::Connection as _;

use crate::chain::error_code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_keeps_validating_when_certs_endpoint_goes_down() {
    let started = Instant::now();
    let scratch = Scratch::new("drill-certs");
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let aud = portcullis_core::test_support::random_hex(32);
    let legacy = LegacyApp::start().await;
    let sidecar = Sidecar::start(
        &scratch,
        "sidecar",
        free_port(),
        &SidecarArgs {
            team_domain: certs.team_domain(),
            certs_url: Some(certs.certs_url()),
            audience: aud.clone(),
            upstream: legacy.url(),
        },
    )
    .await;
    let client = plain_client();
    let get = |token: String| {
        client
            .get(format!("{}/", sidecar.url()))
            .header(JWT_ASSERTION_HEADER, token)
            .send()
    };
    let token = key.sign(&user_claims(&certs.team_domain(), &aud, "ada@example.com"));
    assert_eq!(get(token.clone()).await.unwrap().status(), 200);

    // The endpoint fails from now on. A token with an unknown kid makes the
    // sidecar try to refresh (and fail); the cached key keeps working.
    certs.set_status(503);
    let before = certs.requests();
    let stranger = TestKey::rsa().sign(&user_claims(&certs.team_domain(), &aud, "x@example.com"));
    let r = get(stranger).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "unknown_key");
    wait_until(
        "a refresh attempt against the failing endpoint",
        Duration::from_secs(20),
        || {
            let n = certs.requests();
            async move { n > before }
        },
    )
    .await;
    assert_eq!(get(token).await.unwrap().status(), 200, "cached token");
    let fresh = key.sign(&user_claims(
        &certs.team_domain(),
        &aud,
        "grace@example.com",
    ));
    let r = get(fresh).await.unwrap();
    assert_eq!(r.status(), 200, "new token, cached key");
    assert!(r.text().await.unwrap().contains("grace@example.com"));
    let metrics = client
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_key_refreshes_total{outcome=\"error\"}")),
        "failed refreshes are counted:\n{metrics}"
    );

    // The endpoint returns: keys are refreshed again.
    certs.set_status(200);
    let key2 = TestKey::rsa();
    certs.set_keys(&[&key, &key2]);
    let rotated = key2.sign(&user_claims(&certs.team_domain(), &aud, "new@example.com"));
    wait_until(
        "the sidecar picks up the new key",
        Duration::from_secs(20),
        || {
            let r = get(rotated.clone());
            async move { r.await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    eprintln!("certs-down drill: {:?}", started.elapsed());
}

/// Whether the real server restart may run: it disturbs every other user
/// of the shared PostgreSQL server, so only in CI (where this suite is the
/// only user at that moment) or when asked with
/// `PORTCULLIS_E2E_PG_RESTART=1`.
fn may_restart_postgres() -> bool {
    in_ci() || std::env::var("PORTCULLIS_E2E_PG_RESTART").as_deref() == Ok("1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnects_after_postgresql_drops_connections_or_restarts() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new("drill-pg");
    let origin = PlainOrigin::start().await;
    let config = GatewayConfig::postgres(&db, &scratch).app("echo", "echo.test", &origin.url(), "");
    let gw = Gateway::start(&scratch, "gateway", &config).await;
    let bot = gw.service_token("before-bot").await;
    let ok = |req: reqwest::RequestBuilder| async move {
        req.send().await.is_ok_and(|r| r.status() == 200)
    };
    assert!(ok(bot.apply(gw.client.get(gw.url("echo.test", "/")))).await);

    // 1. Every connection of the gateway is terminated by the server.
    let mut admin = sqlx::PgConnection::connect(portcullis_tests::pg::PG_ADMIN_URL)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(db.url().rsplit('/').next().unwrap())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed > 0, "the gateway held connections");
    let took = recovered(&gw, "after-terminate-bot").await;
    eprintln!("recovered {took:?} after {killed} connections were terminated");

    // 2. The server itself restarts.
    if !may_restart_postgres() {
        eprintln!(
            "skipped: the PostgreSQL server restart (shared server; runs under CI=true or PORTCULLIS_E2E_PG_RESTART=1)"
        );
    } else {
        let _restart = crate::PG_RESTART.write().await;
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("/etc/postgresql")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("a cluster version");
        let status = std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "restart"])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster restart failed");
        let took = recovered(&gw, "after-restart-bot").await;
        eprintln!("recovered {took:?} after a PostgreSQL restart");
    }
    assert!(gw.proc.log().lines().count() > 0);
    eprintln!("postgres drill: {:?}", started.elapsed());
}

/// Waits until the gateway can write (a new service token) and read (that
/// token authenticates) again, and is ready. Returns how long it took.
async fn recovered(gw: &Gateway, name: &str) -> Duration {
    let start = Instant::now();
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        let (status, body) = gw
            .admin_post(
                "/admin/v1/service-tokens",
                &serde_json::json!({ "name": format!("{name}-{attempt}") }),
            )
            .await;
        if status == 201 {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the gateway did not write to PostgreSQL again within 30 s (last: {status} {body})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = gw
        .client
        .get(gw.url("echo.test", "/"))
        .header(
            "cf-access-client-id",
            created["client_id"].as_str().unwrap(),
        )
        .header(
            "cf-access-client-secret",
            created["client_secret"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a token created after the outage works");
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    start.elapsed()
}
