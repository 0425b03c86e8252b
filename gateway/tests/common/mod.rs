//! Shared harness of the gateway's socket tests: a backend (SQLite in a
//! temporary directory, or a fresh PostgreSQL database), an echo origin, a
//! running gateway, and an HTTP client that resolves the test host names
//! to 127.0.0.1.

#![allow(dead_code)]

pub mod mock_op;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_gateway::config::Config;
use portcullis_gateway::{RunningGateway, Services};
use tokio::net::TcpListener;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Where state lives for one test.
#[derive(Debug, Clone)]
pub struct Backend {
    pub dir: PathBuf,
    pub url: String,
    pub pg_db: Option<String>,
}

fn random_name() -> String {
    portcullis_core::test_support::random_hex(6)
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-gw-{}", random_name()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Backend {
    pub fn sqlite() -> Backend {
        let dir = temp_dir();
        Backend {
            url: format!("sqlite://{}/data/portcullis.db", dir.display()),
            dir,
            pg_db: None,
        }
    }

    /// A fresh database on the local PostgreSQL; `None` (with a note)
    /// when none is reachable outside CI. In CI its absence fails.
    pub async fn postgres() -> Option<Backend> {
        use sqlx::Connection as _;
        let conn = sqlx::PgConnection::connect(PG_ADMIN_URL).await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL at 127.0.0.1:5432 is required in CI: {e}");
                }
                eprintln!("note: skipping PostgreSQL test, no server at 127.0.0.1:5432 ({e})");
                return None;
            }
        };
        let db = format!("portcullis_gw_{}", random_name());
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut conn)
            .await
            .unwrap();
        Some(Backend {
            dir: temp_dir(),
            url: format!("postgres://postgres@127.0.0.1:5432/{db}"),
            pg_db: Some(db),
        })
    }

    pub async fn cleanup(&self) {
        if let Some(db) = &self.pg_db {
            use sqlx::Connection as _;
            if let Ok(mut conn) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An origin that answers every request with its method, path and headers as JSON.
pub struct Echo {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let mut headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            headers.insert(":path".into(), req.uri().to_string());
                            log.lock().unwrap().push(headers.clone());
                            let body = serde_json::to_vec(&headers).unwrap();
                            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(body))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Echo { addr, seen }
    }

    pub fn last(&self) -> HashMap<String, String> {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

pub fn config_text(
    backend: &Backend,
    port: u16,
    admin_port: u16,
    origin: SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
team_domain = "http://auth.test:{port}"
admin_token = "{ADMIN_TOKEN}"
log_format = "text"

[storage]
url = "{url}"
data_dir = "{dir}/data"

[keys]
publish_ahead = "2s"
certs_max_age = "1s"
reload_interval = "1s"

[service_tokens]
max_failures_per_client = 5
max_failures_per_address = 1000

[audit]
flush_interval = "50ms"

{extra}

[[apps]]
name = "echo"
domain = "echo.test:{port}"
origin = "http://{origin}"
session_duration = "1h"

[[apps.policies]]
name = "bots"
decision = "service_auth"
include = [{{ service_token = "report-bot" }}, {{ service_token = "other-bot" }}]

[[apps.policies]]
name = "public-health"
decision = "bypass"
include = [{{ ip = "10.99.0.0/16" }}]

[[apps]]
name = "jsonapp"
domain = "json.test:{port}"
origin = "http://{origin}"
service_token_header = "Authorization"

[[apps.policies]]
name = "any-bot"
decision = "service_auth"
include = [{{ any_valid_service_token = true }}]

[[apps]]
name = "public"
domain = "public.test:{port}"
origin = "http://{origin}"

[[apps.policies]]
name = "everyone"
decision = "bypass"
include = [{{ everyone = true }}]

[[apps]]
name = "blocked"
domain = "blocked.test:{port}"
origin = "http://{origin}"

[[apps.policies]]
name = "no-bots"
decision = "block"
include = [{{ service_token = "report-bot" }}]

[[apps.policies]]
name = "people"
decision = "allow"
include = [{{ everyone = true }}]
"#,
        url = backend.url,
        dir = backend.dir.display(),
    )
}

pub struct Harness {
    pub backend: Backend,
    pub echo: Echo,
    pub gateway: Option<RunningGateway>,
    pub config: Config,
    pub port: u16,
    pub client: reqwest::Client,
}

pub fn client_for(port: u16) -> reqwest::Client {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for host in [
        "auth.test",
        "echo.test",
        "json.test",
        "public.test",
        "blocked.test",
        "nowhere.test",
    ] {
        b = b.resolve(host, addr);
    }
    b.build().unwrap()
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, "").await
    }

    pub async fn start_with(backend: Backend, extra: &str) -> Harness {
        let echo = Echo::start().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let admin_port = admin.local_addr().unwrap().port();
        let text = config_text(&backend, port, admin_port, echo.addr, extra);
        let config = Config::from_toml_str(&text, &backend.dir).unwrap();
        let gateway = portcullis_gateway::start_with_listeners(config.clone(), listener, admin)
            .await
            .unwrap();
        Harness {
            backend,
            echo,
            gateway: Some(gateway),
            config,
            port,
            client: client_for(port),
        }
    }

    pub fn gw(&self) -> &RunningGateway {
        self.gateway.as_ref().unwrap()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw().admin_addr)
    }

    pub fn team_domain(&self) -> String {
        format!("http://auth.test:{}", self.port)
    }

    pub fn aud(&self, app: &str) -> String {
        self.gw()
            .gateway
            .apps
            .iter()
            .find(|a| a.config.name == app)
            .unwrap()
            .aud
            .clone()
    }

    /// Another process's view of the same database (as the CLI has).
    pub async fn services(&self) -> Services {
        Services::open(self.config.clone()).await.unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    pub async fn finish(mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.shutdown().await;
        }
        self.backend.cleanup().await;
    }
}

/// Validates `token` as an origin would: portcullis-core with a remote key
/// source pointed at the gateway's certs URL.
pub async fn core_validate(
    h: &Harness,
    token: &str,
    aud: &str,
) -> Result<Arc<portcullis_core::AccessClaims>, portcullis_core::ValidationError> {
    let source = portcullis_core::KeySource::remote(format!(
        "{}{}",
        h.team_domain(),
        portcullis_core::wire::CERTS_PATH
    ))
    .http_client(h.client.clone())
    .build()
    .unwrap();
    let v = portcullis_core::Validator::builder(h.team_domain())
        .audience(aud)
        .key_source(source)
        .build()
        .unwrap();
    v.validate(token).await
}

const PYJWT_SCRIPT: &str = r#"
import json, sys
import jwt
doc = json.loads(sys.argv[1]); token = sys.argv[2]; aud = sys.argv[3]; iss = sys.argv[4]
kid = jwt.get_unverified_header(token)["kid"]
key = [k for k in doc["keys"] if k["kid"] == kid][0]
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["RS256"], audience=aud, issuer=iss)
print(json.dumps(claims))
"#;

/// Validates with PyJWT; `None` (with a note) when PyJWT is not installed
/// outside CI.
pub fn pyjwt_validate(certs: &str, token: &str, aud: &str, iss: &str) -> Option<serde_json::Value> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PyJWT[crypto] is required in CI");
        }
        eprintln!("note: skipping the PyJWT check, `import jwt` failed");
        return None;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", PYJWT_SCRIPT, certs, token, aud, iss])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Polls the admin audit API until `pred` holds for some row.
pub async fn wait_audit(
    h: &Harness,
    query: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..100 {
        let rows = h.admin_get(&format!("/admin/v1/audit?{query}")).await;
        if let Some(row) = rows.as_array().unwrap().iter().find(|r| pred(r)) {
            return row.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no audit row matched for {query}");
}
