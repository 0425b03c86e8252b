//! The `portcullis-gateway` binary as a process: a configuration builder,
//! start with readiness wait, restart on the same ports, `kill -9`, and the
//! admin API.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::net::{self, wait_http_ok};
use crate::pg::PgDatabase;
use crate::process::{Proc, Scratch};

/// Bearer token of the admin API of every gateway the harness starts.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// The host of the team domain in every test. An address rather than a
/// name: the sidecar and the axum app fetch certs from it with the system
/// resolver, which knows nothing of the `*.test` names.
pub const TEAM_HOST: &str = "127.0.0.1";

/// How long a gateway may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway configuration; replicas are started from clones of one value
/// (same storage, same master key, same team domain).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    storage_url: String,
    data_dir: PathBuf,
    master_key: String,
    team_port: Option<u16>,
    sections: Vec<String>,
    apps: Vec<String>,
}

impl GatewayConfig {
    /// SQLite in the scratch directory.
    pub fn sqlite(scratch: &Scratch) -> GatewayConfig {
        let data_dir = scratch.join("data");
        GatewayConfig::new(
            format!("sqlite://{}/portcullis.db", data_dir.display()),
            data_dir,
        )
    }

    /// The given PostgreSQL database; replicas may share it.
    pub fn postgres(db: &PgDatabase, scratch: &Scratch) -> GatewayConfig {
        GatewayConfig::new(db.url().to_owned(), scratch.join("data"))
    }

    fn new(storage_url: String, data_dir: PathBuf) -> GatewayConfig {
        GatewayConfig {
            storage_url,
            data_dir,
            master_key: portcullis_core::test_support::random_hex(32),
            team_port: None,
            sections: Vec::new(),
            apps: Vec::new(),
        }
    }

    /// The port named by the team domain `http://127.0.0.1:<port>`; by
    /// default each gateway names its own listen port. Replicas behind one
    /// address share it (clients then send `Host: 127.0.0.1:<port>`).
    pub fn team_port(mut self, port: u16) -> GatewayConfig {
        self.team_port = Some(port);
        self
    }

    /// Adds an app on `domain` (no port: it matches on any port) forwarding
    /// to `origin`, with `policies` as `[[apps.policies]]` TOML. Empty
    /// `policies` gives one `service_auth` policy for any valid service
    /// token.
    pub fn app(mut self, name: &str, domain: &str, origin: &str, policies: &str) -> Self {
        let policies = if policies.is_empty() {
            "[[apps.policies]]\nname = \"bots\"\ndecision = \"service_auth\"\ninclude = [{ any_valid_service_token = true }]\n"
        } else {
            policies
        };
        self.apps.push(format!(
            "[[apps]]\nname = \"{name}\"\ndomain = \"{domain}\"\norigin = \"{origin}\"\nsession_duration = \"1h\"\n\n{policies}\n"
        ));
        self
    }

    /// Adds raw TOML (for example `[[identity_providers]]`) after the fixed
    /// sections and before the apps.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_owned());
        self
    }

    fn render(&self, port: u16, admin_port: u16) -> String {
        let team_port = self.team_port.unwrap_or(port);
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
team_domain = "http://{TEAM_HOST}:{team_port}"
log_format = "text"
shutdown_grace = "2s"

[storage]
url = "{url}"
data_dir = "{data}"
max_connections = 8

[keys]
publish_ahead = "2s"
certs_max_age = "1s"
reload_interval = "1s"

[service_tokens]
max_failures_per_address = 100000

[audit]
flush_interval = "50ms"

{sections}

{apps}"#,
            url = self.storage_url,
            data = self.data_dir.display(),
            sections = self.sections.join("\n"),
            apps = self.apps.join("\n"),
        )
    }
}

/// A running `portcullis-gateway serve`.
#[derive(Debug)]
pub struct Gateway {
    /// The process.
    pub proc: Proc,
    /// Public listener port.
    pub port: u16,
    /// Admin listener port.
    pub admin_port: u16,
    /// The team domain URL (`http://127.0.0.1:<port>`).
    pub team_domain: String,
    /// A client that sends every host name to this gateway.
    pub client: reqwest::Client,
    config_path: PathBuf,
    name: String,
    master_key: String,
    team_authority: String,
}

impl Gateway {
    /// Writes `<scratch>/<name>.toml`, starts `serve` on fresh ports and
    /// waits for `/readyz`.
    pub async fn start(scratch: &Scratch, name: &str, config: &GatewayConfig) -> Gateway {
        Gateway::start_on(scratch, name, config, net::free_port()).await
    }

    /// As [`Gateway::start`] with the public listener on `port`.
    pub async fn start_on(
        scratch: &Scratch,
        name: &str,
        config: &GatewayConfig,
        port: u16,
    ) -> Gateway {
        let admin_port = net::free_port();
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let config_path = scratch.join(&format!("{name}.toml"));
        std::fs::write(&config_path, config.render(port, admin_port)).expect("write config");
        let team_port = config.team_port.unwrap_or(port);
        let team_authority = format!("{TEAM_HOST}:{team_port}");
        let proc = spawn(scratch, name, &config_path, &config.master_key);
        let gw = Gateway {
            proc,
            port,
            admin_port,
            team_domain: format!("http://{team_authority}"),
            client: gateway_client(port),
            config_path,
            name: name.to_owned(),
            master_key: config.master_key.clone(),
            team_authority,
        };
        gw.wait_ready().await;
        gw
    }

    /// Starts the same configuration again on the same ports (after a kill)
    /// and waits for readiness.
    pub async fn restart(&mut self, scratch: &Scratch) {
        self.proc.kill9();
        self.proc = spawn(scratch, &self.name, &self.config_path, &self.master_key);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        wait_http_ok(
            &format!("{} /readyz", self.name),
            &self.admin_url("/readyz"),
            READY_TIMEOUT,
        )
        .await;
    }

    /// `http://<host>:<port><path>` on this gateway's public listener.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// A request to the team domain, sent to this replica (with the team
    /// domain's `Host`, which may name another port).
    pub fn team_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.url(TEAM_HOST, path))
            .header(http::header::HOST, &self.team_authority)
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `GET` on the admin API; panics unless 200.
    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("admin JSON")
    }

    /// `POST` on the admin API; returns status and JSON body.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The AUD tag of app `name`.
    pub async fn aud(&self, name: &str) -> String {
        let apps = self.admin_get("/admin/v1/apps").await;
        apps.as_array()
            .expect("apps array")
            .iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["aud"].as_str())
            .unwrap_or_else(|| panic!("no app {name}"))
            .to_owned()
    }

    /// Creates service token `name`; returns `(client_id, client_secret)`.
    pub async fn service_token(&self, name: &str) -> ServiceToken {
        let (status, body) = self
            .admin_post("/admin/v1/service-tokens", &json!({ "name": name }))
            .await;
        assert_eq!(status, 201, "create service token {name}: {body}");
        ServiceToken {
            client_id: body["client_id"].as_str().expect("client_id").to_owned(),
            client_secret: body["client_secret"]
                .as_str()
                .expect("client_secret")
                .to_owned(),
        }
    }

    /// The certs document as served by this replica.
    pub async fn certs(&self) -> Value {
        let r = self
            .team_get(portcullis_core::wire::CERTS_PATH)
            .send()
            .await
            .expect("GET certs");
        assert_eq!(r.status(), 200, "certs");
        serde_json::from_str(&r.text().await.expect("certs body")).expect("certs JSON")
    }
}

/// Service credentials; `Debug` does not print the secret.
#[derive(Clone)]
pub struct ServiceToken {
    /// `CF-Access-Client-Id`.
    pub client_id: String,
    /// `CF-Access-Client-Secret`.
    pub client_secret: String,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    /// Adds the two credential headers to `req`.
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header(portcullis_core::wire::CLIENT_ID_HEADER, &self.client_id)
            .header(
                portcullis_core::wire::CLIENT_SECRET_HEADER,
                &self.client_secret,
            )
    }
}

/// The app token the gateway set in the `CF_Authorization` cookie of a
/// response, if any.
pub fn cookie_token(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == portcullis_core::wire::AUTHORIZATION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// A client that sends every name to the gateway on `port`.
pub fn gateway_client(port: u16) -> reqwest::Client {
    // reqwest resolves only listed names; `*.test` names used by scenarios:
    net::client(crate::apps::TEST_HOSTS, port)
}

fn spawn(scratch: &Scratch, name: &str, config_path: &std::path::Path, master_key: &str) -> Proc {
    let mut cmd = Command::new(crate::tools::binary("portcullis-gateway"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PORTCULLIS_MASTER_KEY", master_key)
        .env_remove("PORTCULLIS_STORAGE_URL")
        .env(
            "RUST_LOG",
            std::env::var("PORTCULLIS_E2E_LOG").unwrap_or_else(|_| "info".into()),
        );
    Proc::spawn(scratch, name, cmd)
}
