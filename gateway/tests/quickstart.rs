//! The quickstart command and hash-password, as a user runs them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-gateway");

struct Running {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn quickstart(dir: &std::path::Path, port: u16) -> Running {
    let mut child = Command::new(BIN)
        .args(["quickstart", "--data-dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("quickstart printed {lines:?}"));
        lines.push(line);
    }
    Running { child, lines }
}

fn field(lines: &[String], name: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

async fn log_in(url: &str, email: &str, password: &str, port: u16) -> serde_json::Value {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("auth.localhost", addr)
        .resolve("whoami.localhost", addr)
        .build()
        .unwrap();
    let mut cookies: std::collections::HashMap<String, String> = Default::default();
    let mut get = |resp: &reqwest::Response| {
        for sc in resp.headers().get_all("set-cookie") {
            let pair = sc.to_str().unwrap().split(';').next().unwrap().to_owned();
            let (k, v) = pair.split_once('=').unwrap();
            cookies.insert(k.to_owned(), v.to_owned());
        }
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let r = client
        .get(url)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let login = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(login.starts_with(&format!(
        "http://auth.localhost:{port}/cdn-cgi/access/login/whoami.localhost:{port}"
    )));
    let r = client.get(&login).send().await.unwrap();
    let cookie = get(&r);
    let page = r.text().await.unwrap();
    let csrf = form_value(&page, "csrf_token");
    let target = form_value(&page, "redirect_url");
    let r = client
        .post(&login)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("email", email),
                    ("password", password),
                    ("csrf_token", &csrf),
                    ("redirect_url", &target),
                ])
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let authorized = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client.get(&authorized).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let cookie = get(&r);
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client
        .get(&back)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn quickstart_serves_its_url_and_logs_in_with_its_password() {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-qs-{}",
        portcullis_core::test_support::random_hex(6)
    ));
    let port = free_port();
    let first = quickstart(&dir, port);
    let url = field(&first.lines, "Open:");
    let email = field(&first.lines, "User:");
    let password = field(&first.lines, "Password:");
    assert_eq!(url, format!("http://whoami.localhost:{port}/"));
    let who = log_in(&url, &email, &password, port).await;
    assert_eq!(who["validated_by"], "portcullis-core");
    assert_eq!(who["email"], email);
    assert_eq!(who["login_method"], "local");
    let kid1 = who["claims"].clone();
    drop(first);
    // A second run reuses the directory: same user, same password, same keys.
    let port2 = free_port();
    let second = quickstart(&dir, port2);
    assert_eq!(field(&second.lines, "Password:"), password);
    assert!(second.lines.iter().any(|l| l.contains("reused")));
    let who = log_in(&field(&second.lines, "Open:"), &email, &password, port2).await;
    assert_eq!(who["email"], email);
    assert!(kid1.is_object());
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hash_password_prints_an_argon2id_phc_string() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret words\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    use argon2::PasswordVerifier as _;
    let parsed = argon2::PasswordHash::new(phc.trim()).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret words", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret words\n", &parsed)
            .is_err()
    );
    let empty = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
}
