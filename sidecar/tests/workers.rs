//! The sidecar with several worker threads (`--workers`), in-process over
//! real sockets: whichever worker accepts a connection, every guarantee
//! holds; a reload reaches every worker; shutdown drains and stops them all.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use portcullis_core::test_support::{CertsServer, TestKey, user_claims};

/// The per-worker accepted-connection counts from `/metrics`.
async fn accepted_per_worker(client: &Client, admin: &str) -> Vec<u64> {
    let text = client.get(admin, &[]).await.text();
    text.lines()
        .filter(|l| l.starts_with("portcullis_sidecar_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_any_worker_get_every_guarantee() {
    const CONNECTIONS: usize = 24;
    let s = Setup::new(&["--workers", "4"]).await;
    let team = s.certs.team_domain();
    let url = s.url("/x");
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        // One client each: one keep-alive connection each.
        let client = Client::new();
        let token = s
            .key
            .sign(&user_claims(&team, AUD, &format!("user{i}@example.com")));
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let spoofed = [
                ("cf-access-jwt-assertion", token.as_str()),
                ("x-forwarded-email", "evil@example.com"),
                ("x-forwarded-user", "evil@example.com"),
            ];
            for _ in 0..3 {
                let a = client.get(&url, &spoofed).await;
                assert_eq!(a.status, 200, "{}", a.text());
                client
                    .get(&url, &[("x-forwarded-email", "evil@example.com")])
                    .await
                    .assert_rejection(401, "missing_token");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let seen = s.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), CONNECTIONS * 3, "only accepted requests arrive");
    let mut emails = BTreeSet::new();
    for request in &seen {
        let h = &request.headers;
        assert_eq!(h["x-forwarded-email"], h["x-forwarded-user"]);
        assert_eq!(h.get_all("x-forwarded-email").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        emails.insert(h["x-forwarded-email"].to_str().unwrap().to_owned());
    }
    let expected: BTreeSet<String> = (0..CONNECTIONS)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    assert_eq!(
        emails, expected,
        "each connection's own identity, never another's"
    );

    let accepted = accepted_per_worker(&s.client, &s.admin("/metrics")).await;
    // Which worker wins each accept is up to the kernel; the sum is not.
    println!("connections accepted per worker: {accepted:?}");
    assert!(accepted.len() <= 4);
    assert_eq!(accepted.iter().sum::<u64>(), CONNECTIONS as u64);
    let metrics = s.client.get(&s.admin("/metrics"), &[]).await.text();
    assert!(
        metrics.contains(&format!(
            r#"portcullis_sidecar_requests_total{{code="ok",route="default",status="200"}} {}"#,
            CONNECTIONS * 3
        )),
        "{metrics}"
    );
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_shutdown_reach_every_worker() {
    const CONNECTIONS: usize = 12;
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let config = |aud: &str| {
        format!(
            "team_domain = \"{team}\"\naudience = [\"{aud}\"]\nupstream = \"{}\"\nworkers = 3\n",
            upstream.url()
        )
    };
    let dir = std::env::temp_dir().join(format!("portcullis-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sidecar.toml");
    std::fs::write(&file, config(AUD)).unwrap();
    let sc = sidecar(&["--config", file.to_str().unwrap()]).await;
    let url = format!("http://{}/", sc.addr());
    let old = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let new = key.sign(&user_claims(&team, AUD2, "ada@example.com"));
    let clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new()).collect();
    for client in &clients {
        assert_eq!(
            client
                .get(&url, &[("cf-access-jwt-assertion", &old)])
                .await
                .status,
            200
        );
    }

    // The new audience applies on every open connection, whatever its worker.
    std::fs::write(&file, config(AUD2)).unwrap();
    sc.reload().unwrap();
    for client in &clients {
        client
            .get(&url, &[("cf-access-jwt-assertion", &old)])
            .await
            .assert_rejection(401, "wrong_audience");
        assert_eq!(
            client
                .get(&url, &[("cf-access-jwt-assertion", &new)])
                .await
                .status,
            200
        );
    }

    // Requests in flight on every connection finish; then nothing listens.
    let before = upstream.count();
    let slow = format!("http://{}/slow/1000", sc.addr());
    let in_flight: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (slow, new) = (slow.clone(), new.clone());
            tokio::spawn(async move {
                client
                    .get(&slow, &[("cf-access-jwt-assertion", &new)])
                    .await
            })
        })
        .collect();
    // All of them have reached the upstream (which records, then waits).
    while upstream.count() < before + CONNECTIONS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = sc.addr();
    sc.shutdown().await;
    for answer in in_flight {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "slow done");
    }
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "every worker closed its handle of the listening socket"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_token_is_passed_on_alone() {
    let s = Setup::new(&["--workers", "2"]).await;
    let token = s
        .key
        .sign(&user_claims(&s.certs.team_domain(), AUD, "ada@example.com"));
    let url = s.url("/");
    // The second request is recognised as the token this worker verified.
    for _ in 0..2 {
        let a = s
            .client
            .get(&url, &[("cf-access-jwt-assertion", &token)])
            .await;
        assert_eq!(a.status, 200);
    }
    // A second, forged value after the validated one never reaches the app.
    let a = s
        .client
        .get(
            &url,
            &[
                ("cf-access-jwt-assertion", &token),
                ("cf-access-jwt-assertion", "forged"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let h = s.upstream.last().headers;
    let values: Vec<_> = h.get_all("cf-access-jwt-assertion").iter().collect();
    assert_eq!(values, [token.as_str()]);
    assert_eq!(h["x-forwarded-email"], "ada@example.com");
    s.sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_listen_address_is_refused_even_by_another_sidecar() {
    let s = Setup::new(&["--workers", "2"]).await;
    let team = s.certs.team_domain();
    let up = s.upstream.url();
    let args = ["--team-domain", &team, "--audience", AUD, "--upstream", &up];
    let start_on = |listen: String| async move { common::start_sidecar(&listen, &args).await };
    // Its workers' SO_REUSEPORT sockets do not let a second sidecar join.
    let err = start_on(s.sidecar.addr().to_string()).await.unwrap_err();
    assert!(
        err.to_string().starts_with("listen: cannot listen on"),
        "{err}"
    );
    // Nor does anything else listening there.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = start_on(other.local_addr().unwrap().to_string())
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("listen: cannot listen on"),
        "{err}"
    );
    s.sidecar.shutdown().await;
}
