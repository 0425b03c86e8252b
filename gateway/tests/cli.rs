//! The binary: `check`, `apps list`, `service-token`, `keys`, and a
//! `kill -9` of `serve` that must lose no committed token or audit row.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ADMIN_TOKEN, Backend, Echo, client_for, config_text};
use portcullis_core::wire::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_STORAGE_URL")
        .output()
        .unwrap()
}

fn ok_stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_names_each_bad_key() {
    let dir = common::temp_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nteam_domain = \"nope\"\nlisten = \"x\"\n[[apps]]\nname = \"a\"\ndomain = \"a.test\"\norigin = \"ftp://x\"\n",
    )
    .unwrap();
    let out = run(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["server.team_domain", "server.listen", "apps[0].origin"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[server]\nteam_domain = \"http://auth.test:8080\"\n[[apps]]\nname = \"a\"\ndomain = \"a.test:8080\"\norigin = \"http://127.0.0.1:3000\"\n",
    )
    .unwrap();
    let out = run(&["check", "--config", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = ok_stdout(&["--help"]);
    for sub in ["serve", "check", "apps", "service-token", "keys"] {
        assert!(help.contains(sub), "{sub} not in --help");
    }
    let _ = std::fs::remove_dir_all(dir);
}

struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config: &str) -> Serve {
    let child = Command::new(BIN)
        .args(["serve", "--config", config])
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_STORAGE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Serve { child }
}

async fn wait_ready(client: &reqwest::Client, admin_port: u16) {
    for _ in 0..200 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{admin_port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not become ready");
}

async fn kill9_loses_nothing_committed(backend: Backend) {
    let echo = Echo::start().await;
    let (port, admin_port) = (free_port(), free_port());
    let config_path = backend.dir.join("gateway.toml");
    std::fs::write(
        &config_path,
        config_text(&backend, port, admin_port, echo.addr, ""),
    )
    .unwrap();
    let config = config_path.to_str().unwrap();
    let client = client_for(port);

    let mut serve = spawn_serve(config);
    wait_ready(&client, admin_port).await;

    // The CLI works against the running gateway's database.
    let apps: Value =
        serde_json::from_str(&ok_stdout(&["apps", "list", "--config", config, "--json"])).unwrap();
    assert_eq!(apps[0]["name"], "echo");
    let aud = apps[0]["aud"].as_str().unwrap().to_owned();
    assert_eq!(aud.len(), 64);
    let created: Value = serde_json::from_str(&ok_stdout(&[
        "service-token",
        "create",
        "--config",
        config,
        "--name",
        "report-bot",
        "--duration",
        "8760h",
        "--json",
    ]))
    .unwrap();
    let (id, secret) = (
        created["client_id"].as_str().unwrap().to_owned(),
        created["client_secret"].as_str().unwrap().to_owned(),
    );
    for member in ["name", "expires_at"] {
        assert!(created.get(member).is_some());
    }
    let request = |secret: String| {
        client
            .get(format!("http://echo.test:{port}/"))
            .header(CLIENT_ID_HEADER, id.clone())
            .header(CLIENT_SECRET_HEADER, secret)
            .send()
    };
    assert_eq!(request(secret.clone()).await.unwrap().status(), 200);
    assert_eq!(request("0".repeat(64)).await.unwrap().status(), 401);

    // Wait until the audit rows are committed, then kill -9.
    let audit_url = format!("http://127.0.0.1:{admin_port}/admin/v1/audit?app=echo");
    let mut before = Value::Null;
    for _ in 0..100 {
        let rows: Value = serde_json::from_slice(
            &client
                .get(&audit_url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        if rows.as_array().unwrap().len() >= 2 {
            before = rows;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        before.as_array().map(Vec::len),
        Some(2),
        "audit rows committed before the kill"
    );
    let keys_before = ok_stdout(&["keys", "list", "--config", config, "--json"]);
    serve.child.kill().unwrap(); // SIGKILL
    serve.child.wait().unwrap();

    // Restart on the same database: the token, the audit rows and the keys are intact.
    let _serve = spawn_serve(config);
    wait_ready(&client, admin_port).await;
    assert_eq!(request(secret.clone()).await.unwrap().status(), 200);
    let rows: Value = serde_json::from_slice(
        &client
            .get(&audit_url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let after: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            before
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["id"] == r["id"])
        })
        .collect();
    assert_eq!(
        after.len(),
        2,
        "every audit row written before the kill survives"
    );
    let keys_after: Value =
        serde_json::from_str(&ok_stdout(&["keys", "list", "--config", config, "--json"])).unwrap();
    let keys_before: Value = serde_json::from_str(&keys_before).unwrap();
    assert_eq!(
        keys_after[0]["kid"], keys_before[0]["kid"],
        "same signing key after restart"
    );

    // rotate / revoke / list through the CLI.
    let rotated: Value = serde_json::from_str(&ok_stdout(&[
        "service-token",
        "rotate",
        "--config",
        config,
        "--name",
        "report-bot",
        "--grace",
        "1h",
        "--json",
    ]))
    .unwrap();
    assert_eq!(rotated["client_id"], id.as_str());
    assert_eq!(
        request(rotated["client_secret"].as_str().unwrap().to_owned())
            .await
            .unwrap()
            .status(),
        200
    );
    ok_stdout(&[
        "service-token",
        "revoke",
        "--config",
        config,
        "--name",
        "report-bot",
    ]);
    assert_eq!(request(secret.clone()).await.unwrap().status(), 401);
    let list: Value = serde_json::from_str(&ok_stdout(&[
        "service-token",
        "list",
        "--config",
        config,
        "--json",
    ]))
    .unwrap();
    assert_eq!(list[0]["status"], "revoked");
    let out = ok_stdout(&["keys", "rotate", "--config", config]);
    assert!(out.contains("published"), "{out}");
    drop(_serve);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_sqlite() {
    kill9_loses_nothing_committed(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_postgres() {
    if let Some(b) = Backend::postgres().await {
        kill9_loses_nothing_committed(b).await;
    }
}
