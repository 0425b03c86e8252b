//! The README's nginx `auth_request` snippet, run for real against the
//! sidecar in forward-auth mode. Skipped (with a note) where nginx is not
//! installed, except under `CI=true` with `PORTCULLIS_REQUIRE_NGINX=1`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use portcullis_core::test_support::{CertsServer, TestKey, user_claims};

fn nginx_binary() -> Option<String> {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return Some(candidate.to_owned());
        }
    }
    if std::env::var("PORTCULLIS_REQUIRE_NGINX").as_deref() == Ok("1") {
        panic!("nginx is required (PORTCULLIS_REQUIRE_NGINX=1) but not installed");
    }
    eprintln!("skipped: nginx is not installed");
    None
}

/// The ```nginx block of the README.
fn readme_snippet() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("```nginx\n")
        .expect("README has an nginx block")
        + "```nginx\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

/// nginx runs as one process (`master_process off`): killing it leaves no
/// orphaned worker holding the port.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_nginx_auth_request_snippet_works() {
    let Some(nginx) = nginx_binary() else { return };
    let key = TestKey::rsa();
    let certs = CertsServer::start(&[&key]).await.unwrap();
    let upstream = Upstream::start().await;
    let team = certs.team_domain();
    let sidecar = sidecar(&[
        "--team-domain",
        &team,
        "--audience",
        AUD,
        "--mode",
        "forward-auth",
    ])
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let snippet = readme_snippet()
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:9000", &sidecar.addr().to_string())
        .replace("127.0.0.1:3000", &upstream.addr.to_string());
    let dir = std::env::temp_dir().join(format!("portcullis-sidecar-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "master_process off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{snippet}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx)
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            conf_path.to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _nginx = Nginx(child);
    let url = format!("http://127.0.0.1:{port}/page");
    let client = Client::new();
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await,
        "nginx starts"
    );

    let token = key.sign(&user_claims(&team, AUD, "ada@example.com"));
    let a = client
        .get(
            &url,
            &[
                ("host", "app.example.com"),
                ("cookie", &format!("CF_Authorization={token}")),
                ("x-forwarded-email", "ceo@example.com"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "hello");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-email"], "ada@example.com");
    assert_eq!(seen.headers["x-forwarded-user"], "ada@example.com");

    let before = upstream.count();
    let a = client
        .get(
            &url,
            &[
                ("host", "app.example.com"),
                ("x-forwarded-email", "ceo@example.com"),
            ],
        )
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(upstream.count(), before, "nothing reached the app");
    sidecar.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
