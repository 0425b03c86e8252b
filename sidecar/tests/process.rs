//! The real `portcullis-sidecar` binary: start-up errors, SIGHUP reload,
//! memory while streaming 50 MB each way, graceful shutdown, `--help`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use portcullis_core::test_support::{CertsServer, TestKey, user_claims};

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("portcullis-sidecar-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = binary().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_at_start_exits_non_zero_naming_the_key() {
    let (code, err) = run_to_exit(&["--upstream", "http://127.0.0.1:1", "--audience", AUD]);
    assert_ne!(code, 0);
    assert!(err.contains("team_domain"), "{err}");

    let (code, err) = run_to_exit(&[
        "--team-domain",
        "https://acme.cloudflareaccess.com",
        "--audience",
        AUD,
        "--upstream",
        "ftp://127.0.0.1:1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("upstream"), "{err}");

    let file = temp_file(
        "typo",
        &format!(
            "team_domain = \"https://acme.cloudflareaccess.com\"\naudience = [\"{AUD}\"]\nupstreem = \"http://127.0.0.1:1\"\n"
        ),
    );
    let (code, err) = run_to_exit(&["--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("upstreem"), "{err}");

    let file = temp_file(
        "route",
        "team_domain = \"https://acme.cloudflareaccess.com\"\n[[routes]]\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\n",
    );
    let (code, err) = run_to_exit(&["--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("routes[0].audiences"), "{err}");

    // Environment variables are read too, and named in errors.
    let out = binary()
        .env(
            "PORTCULLIS_TEAM_DOMAIN",
            "https://acme.cloudflareaccess.com",
        )
        .env("PORTCULLIS_AUDIENCE", AUD)
        .env("PORTCULLIS_UPSTREAM", "http://127.0.0.1:1")
        .env("PORTCULLIS_CONNECT_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PORTCULLIS_CONNECT_TIMEOUT"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = binary().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--team-domain",
        "--audience",
        "--certs-url",
        "--mode",
        "--admin-listen",
        "--inject-header",
        "--login-url",
        "--allow-from",
        "--config",
        "--log-format",
        "--max-header-bytes",
        "--max-token-bytes",
        "--connect-timeout",
        "--read-timeout",
        "--idle-timeout",
        "--shutdown-timeout",
        "--workers",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("PORTCULLIS_TEAM_DOMAIN"));
    assert!(help.contains("127.0.0.1:9000") && help.contains("127.0.0.1:9901"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_new_audience_and_refuses_a_bad_config() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let write = |aud: &str| {
        format!(
            "team_domain = \"{team}\"\naudience = [\"{aud}\"]\nupstream = \"{}\"\n",
            upstream.url()
        )
    };
    let file = temp_file("reload", &write(AUD));
    let p = Process::start(&["--config", file.to_str().unwrap()]);
    let client = Client::new();
    let t1 = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let t2 = key.sign(&user_claims(&team, AUD2, "ada@example.com"));
    assert_eq!(
        client
            .get(&p.url("/"), &[("cf-access-jwt-assertion", &t1)])
            .await
            .status,
        200
    );
    client
        .get(&p.url("/"), &[("cf-access-jwt-assertion", &t2)])
        .await
        .assert_rejection(401, "wrong_audience");

    std::fs::write(&file, write(AUD2)).unwrap();
    p.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            client
                .get(&p.url("/"), &[("cf-access-jwt-assertion", &t2)])
                .await
                .status
                == 200
        })
        .await,
        "the new audience is accepted after SIGHUP"
    );
    client
        .get(&p.url("/"), &[("cf-access-jwt-assertion", &t1)])
        .await
        .assert_rejection(401, "wrong_audience");

    // A broken file is refused; the running configuration stays.
    std::fs::write(
        &file,
        "team_domain = \"https://x.example\"\naudience = []\nupstream = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    p.signal("HUP");
    let refused = p.wait_for_line(Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("reload refused"))
    });
    let refused = refused.expect("the refusal is logged");
    assert!(
        refused["key"].as_str().unwrap().starts_with("audience"),
        "{refused}"
    );
    assert_eq!(
        client
            .get(&p.url("/"), &[("cf-access-jwt-assertion", &t2)])
            .await
            .status,
        200
    );

    // One access line per request, with no token in it.
    let line = p
        .wait_for_line(Duration::from_secs(5), |v| {
            v["message"] == "request" && v["status"] == 200
        })
        .unwrap();
    for field in [
        "method",
        "host",
        "path",
        "status",
        "code",
        "user",
        "latency_ms",
    ] {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(line["user"], "ada@example.com");
    let all = p.lines.lock().unwrap().join("\n");
    assert!(
        !all.contains(&t1) && !all.contains(&t2),
        "tokens never reach the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_each_way_stream_without_growing_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let up = upstream.url();
    let p = Process::start(&["--team-domain", &team, "--audience", AUD, "--upstream", &up]);
    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let client = Client::new();
    // Warm up: pools, buffers, the token cache.
    for _ in 0..3 {
        let r = client
            .send(
                http::Request::post(p.url("/upload"))
                    .header("cf-access-jwt-assertion", &token)
                    .body(stream_body(1024 * 1024))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200);
        let r = client
            .get(
                &p.url("/download/1048576"),
                &[("cf-access-jwt-assertion", &token)],
            )
            .await;
        assert_eq!(r.body.len(), 1024 * 1024);
    }
    let before = p.rss_kib();

    let started = Instant::now();
    let r = client
        .send(
            http::Request::post(p.url("/upload"))
                .header("cf-access-jwt-assertion", &token)
                .body(stream_body(SIZE))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), SIZE.to_string(), "the upstream got every byte");
    let after_upload = p.rss_kib();

    // Download, counting frames as they arrive rather than collecting.
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<TestBody>()
        .request(
            http::Request::get(p.url(&format!("/download/{SIZE}")))
                .header("cf-access-jwt-assertion", &token)
                .body(full(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut peak = after_upload;
    let mut frames = 0u64;
    use http_body_util::BodyExt as _;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
        frames += 1;
        if frames.is_multiple_of(64) {
            peak = peak.max(p.rss_kib());
        }
    }
    assert_eq!(received, SIZE);
    let after = p.rss_kib().max(peak);
    let growth = after.saturating_sub(before);
    eprintln!(
        "sidecar RSS: before {before} KiB, after upload {after_upload} KiB, peak {after} KiB, growth {growth} KiB; 100 MB moved in {:?}",
        started.elapsed()
    );
    assert!(
        growth < 6 * 1024,
        "RSS grew by {growth} KiB while streaming 100 MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let up = upstream.url();
    let mut p = Process::start(&["--team-domain", &team, "--audience", AUD, "--upstream", &up]);
    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let client = Client::new();
    let url = p.url("/slow/1500");
    let in_flight = {
        let client = client.clone();
        let token = token.clone();
        tokio::spawn(async move {
            client
                .get(&url, &[("cf-access-jwt-assertion", &token)])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.signal("TERM");
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "slow done");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar exits after draining"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}
