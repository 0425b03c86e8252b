//! The configuration file: typed serde structs, validated once at start-up.
//!
//! [`Config::load`] reads TOML, applies the `PORTCULLIS_…` environment
//! overrides for secrets, and checks every key; each problem is reported as a
//! [`ConfigIssue`] naming the key and the fix. Nothing re-reads the file or
//! the environment afterwards.
//!
//! ```
//! let config = portcullis_gateway::config::Config::from_toml_str(r#"
//! [server]
//! team_domain = "http://auth.example.test:8080"
//!
//! [[apps]]
//! name = "grafana"
//! domain = "grafana.example.test:8080"
//! origin = "http://127.0.0.1:3000"
//!
//! [[apps.policies]]
//! name = "bots"
//! decision = "service_auth"
//! include = [{ service_token = "report-bot" }]
//! "#, std::path::Path::new(".")).unwrap();
//! assert_eq!(config.apps[0].name, "grafana");
//! ```
//!
//! Relative paths (the SQLite file, the data directory) are resolved
//! against the directory of the configuration file, so every subcommand
//! finds the same database whatever its working directory.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{Decision, Policy, Selector};

/// Environment variable overriding `server.admin_token`.
pub const ADMIN_TOKEN_ENV: &str = "PORTCULLIS_ADMIN_TOKEN";
/// Environment variable holding the master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "PORTCULLIS_MASTER_KEY";
/// Environment variable overriding `storage.url` (it may hold a password).
pub const STORAGE_URL_ENV: &str = "PORTCULLIS_STORAGE_URL";

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key, e.g. `apps[0].policies[1].include[0].ip`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

fn issue(key: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    service_tokens: RawServiceTokens,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    login: RawLogin,
    #[serde(default)]
    identity_providers: Vec<RawIdentityProvider>,
    #[serde(default)]
    apps: Vec<RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    session_duration: Option<String>,
    max_failures_per_account: Option<u32>,
    max_failures_per_address: Option<u32>,
    failure_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityProvider {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    scopes: Option<Vec<String>>,
    groups_claim: Option<String>,
    users_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin_listen")]
    admin_listen: String,
    team_domain: Option<String>,
    admin_token: Option<String>,
    #[serde(default = "default_country_header")]
    country_header: String,
    #[serde(default = "d_connect_timeout")]
    upstream_connect_timeout: String,
    #[serde(default = "d_upstream_timeout")]
    upstream_timeout: String,
    #[serde(default = "d_shutdown_grace")]
    shutdown_grace: String,
    #[serde(default = "d_json")]
    log_format: String,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    workers: Option<usize>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9902".into()
}
fn default_country_header() -> String {
    "cf-ipcountry".into()
}
fn d_connect_timeout() -> String {
    "5s".into()
}
fn d_upstream_timeout() -> String {
    "60s".into()
}
fn d_shutdown_grace() -> String {
    "10s".into()
}
fn d_json() -> String {
    "json".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<String>,
    data_dir: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    rotate_every: Option<String>,
    publish_ahead: Option<String>,
    keep_previous: Option<String>,
    certs_max_age: Option<String>,
    reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceTokens {
    default_duration: Option<String>,
    rotation_grace: Option<String>,
    max_failures_per_client: Option<u32>,
    max_failures_per_address: Option<u32>,
    failure_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    batch_size: Option<usize>,
    flush_interval: Option<String>,
    queue_capacity: Option<usize>,
    retention: Option<String>,
    purge_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    domain: String,
    origin: String,
    session_duration: Option<String>,
    service_token_header: Option<String>,
    identity_providers: Option<Vec<String>>,
    token_groups: Option<Vec<String>>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    decision: String,
    #[serde(default)]
    include: Vec<RawSelector>,
    #[serde(default)]
    require: Vec<RawSelector>,
    #[serde(default)]
    exclude: Vec<RawSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    everyone: Option<bool>,
    email: Option<String>,
    email_domain: Option<String>,
    group: Option<String>,
    ip: Option<String>,
    service_token: Option<String>,
    any_valid_service_token: Option<bool>,
    login_method: Option<String>,
    country: Option<String>,
}

// ---------------------------------------------------------------------------
// The validated configuration.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[keys]`.
    pub keys: KeysConfig,
    /// `[service_tokens]`.
    pub service_tokens: ServiceTokensConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[login]`.
    pub login: LoginConfig,
    /// `[[identity_providers]]`, in listed order.
    pub identity_providers: Vec<IdentityProviderConfig>,
    /// `[[apps]]`.
    pub apps: Vec<AppConfig>,
}

/// `[login]`: team sessions and local-password attempts.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// `session_duration`: lifetime of the team-domain session (default 24h).
    pub session_duration: Duration,
    /// `max_failures_per_account` within `failure_window` before an account
    /// is locked out (default 5).
    pub max_failures_per_account: u32,
    /// `max_failures_per_address` within `failure_window` before an
    /// address is locked out (default 20).
    pub max_failures_per_address: u32,
    /// `failure_window` (default 15m).
    pub failure_window: Duration,
}

/// One `[[identity_providers]]` entry.
#[derive(Debug, Clone)]
pub struct IdentityProviderConfig {
    /// `id`: unique; what `login_method` selectors and `apps.identity_providers` name.
    pub id: String,
    /// `name`: shown on the login page (default: the id).
    pub name: String,
    /// What kind of provider it is.
    pub kind: IdentityProviderKind,
}

impl IdentityProviderConfig {
    /// `oidc` or `local`.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            IdentityProviderKind::Oidc(_) => "oidc",
            IdentityProviderKind::Local(_) => "local",
        }
    }
}

/// The kind of an identity provider and its settings.
#[derive(Debug, Clone)]
pub enum IdentityProviderKind {
    /// `type = "oidc"`.
    Oidc(OidcProviderConfig),
    /// `type = "local"`.
    Local(LocalProviderConfig),
}

/// Settings of an OpenID Connect provider.
#[derive(Clone)]
pub struct OidcProviderConfig {
    /// `issuer`: discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`, or the variable named by `client_secret_env`.
    pub client_secret: Option<String>,
    /// `scopes` (default `["openid", "email", "profile"]`).
    pub scopes: Vec<String>,
    /// `groups_claim`: the claim holding groups, in the ID token or userinfo.
    pub groups_claim: Option<String>,
}

impl fmt::Debug for OidcProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProviderConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .finish()
    }
}

/// Settings of the local-users provider.
#[derive(Debug, Clone)]
pub struct LocalProviderConfig {
    /// `users_file`, resolved against the configuration's directory.
    pub users_file: PathBuf,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `[server]`.
#[derive(Clone)]
pub struct ServerConfig {
    /// `listen`: team domain and app hosts.
    pub listen: SocketAddr,
    /// `admin_listen`: metrics, health and the admin API.
    pub admin_listen: SocketAddr,
    /// `team_domain`: the issuer, without a trailing slash.
    pub team_domain: String,
    /// The host (with port, when not the scheme's default) of the team domain.
    pub team_host: String,
    /// Whether the team domain is https (cookies get `Secure`).
    pub secure_cookies: bool,
    /// `admin_token` or `PORTCULLIS_ADMIN_TOKEN`; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// `country_header`: request header holding the two-letter country.
    pub country_header: http::HeaderName,
    /// `upstream_connect_timeout`.
    pub upstream_connect_timeout: Duration,
    /// `upstream_timeout`: until the origin's response head.
    pub upstream_timeout: Duration,
    /// `shutdown_grace`: how long in-flight requests may finish.
    pub shutdown_grace: Duration,
    /// `log_format`: `json` (default) or `text`.
    pub log_format: LogFormat,
    /// `tls_cert` and `tls_key` (PEM), read and checked at load: the public
    /// listener serves TLS with this configuration when set.
    pub tls: Option<TlsFiles>,
    /// `workers`: threads serving the public listener, each with its own
    /// single-threaded runtime (default: one per core; 1–256).
    pub workers: usize,
}

/// `[server] tls_cert` / `tls_key`, loaded.
#[derive(Clone)]
pub struct TlsFiles {
    /// `tls_cert`: the certificate chain (PEM), resolved against the config file.
    pub cert: PathBuf,
    /// `tls_key`: the private key (PEM), resolved against the config file.
    pub key: PathBuf,
    /// The rustls configuration built from them.
    pub config: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("team_domain", &self.team_domain)
            .field("tls", &self.tls)
            .field("workers", &self.workers)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// `[storage]`.
#[derive(Clone)]
pub struct StorageConfig {
    /// `url`: `sqlite://…` (default, under the data directory) or `postgres://…`.
    pub url: String,
    /// `data_dir`: holds the SQLite file and the master key file.
    pub data_dir: PathBuf,
    /// `max_connections` of the pool.
    pub max_connections: u32,
    /// `PORTCULLIS_MASTER_KEY`, when set.
    pub master_key: Option<String>,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &redact_url(&self.url))
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// A database URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `[keys]`.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// `rotate_every` (default 42 days).
    pub rotate_every: Duration,
    /// `publish_ahead`: a new key is published this long before it signs
    /// (default 1 h; at least `certs_max_age`).
    pub publish_ahead: Duration,
    /// `keep_previous`: a key stays published this long after it stops
    /// signing (default 7 days).
    pub keep_previous: Duration,
    /// `certs_max_age`: `Cache-Control: max-age` of the certs document (default 5 min).
    pub certs_max_age: Duration,
    /// `reload_interval`: how often keys are re-read from the database (default 10 s).
    pub reload_interval: Duration,
}

/// `[service_tokens]`.
#[derive(Debug, Clone)]
pub struct ServiceTokensConfig {
    /// `default_duration` of new tokens (default 8760h).
    pub default_duration: Duration,
    /// `rotation_grace`: the old secret keeps working this long after a rotation (default 24h).
    pub rotation_grace: Duration,
    /// `max_failures_per_client` within `failure_window` before 429 (default 10).
    pub max_failures_per_client: u32,
    /// `max_failures_per_address` within `failure_window` before 429 (default 30).
    pub max_failures_per_address: u32,
    /// `failure_window` (default 1 min).
    pub failure_window: Duration,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `batch_size`: distinct rows per write (default 256).
    pub batch_size: usize,
    /// `flush_interval`: longest time a decision waits; identical decisions
    /// within it share a row (default 200ms).
    pub flush_interval: Duration,
    /// `queue_capacity`: decisions buffered before new ones are dropped and counted (default 65536).
    pub queue_capacity: usize,
    /// `retention`: rows older than this are deleted (default 90d).
    pub retention: Duration,
    /// `purge_interval`: how often the retention purge runs (default 1h).
    pub purge_interval: Duration,
}

/// One `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `name`: unique; the AUD tag is bound to it.
    pub name: String,
    /// Host to match (lowercase, port included when given).
    pub host: String,
    /// Whether `domain` named a port.
    pub host_has_port: bool,
    /// Optional path prefix of `domain` (`""` or `/prefix`).
    pub path_prefix: String,
    /// `origin`: the http origin (authority `host:port` and path prefix,
    /// `""` or `/base`).
    pub origin: portcullis_core::proxy::Upstream,
    /// `session_duration`: lifetime of app tokens (default 24h).
    pub session_duration: Duration,
    /// `service_token_header`: one header holding both credentials as JSON.
    pub service_token_header: Option<http::HeaderName>,
    /// `identity_providers`: ids of the providers offered at login
    /// (default: all, in listed order).
    pub identity_providers: Vec<String>,
    /// `token_groups`: when set, only these groups go into the app's
    /// tokens (policies still see every group of the session).
    pub token_groups: Option<Vec<String>>,
    /// `policies`, in listed order.
    pub policies: Vec<Policy>,
}

impl Config {
    /// Reads, overrides from the environment, and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![issue(
                path.display().to_string(),
                format!("cannot read the configuration file: {e}"),
            )])
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base, &|name| std::env::var(name).ok())
    }

    /// Validates TOML text without consulting the environment; relative
    /// paths resolve against `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        Self::parse(text, base, &|_| None)
    }

    /// Validates TOML text with `env` as the environment.
    pub fn parse(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let key = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "file".into());
            ConfigErrors(vec![issue(key, message)])
        })?;
        let mut issues = Vec::new();
        let config = validate(raw, base, env, &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(issues))
        }
    }

    /// The app configured for a name.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }
}

fn duration(
    key: &str,
    value: Option<&str>,
    default: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Duration {
    let text = value.unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            issues.push(issue(
                key,
                format!("{text:?} is not a positive duration; write e.g. \"30s\", \"10m\", \"24h\" or \"42d\""),
            ));
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(1))
        }
    }
}

fn socket(key: &str, value: &str, issues: &mut Vec<ConfigIssue>) -> SocketAddr {
    value.parse().unwrap_or_else(|_| {
        issues.push(issue(
            key,
            format!("{value:?} is not an address with a port, e.g. \"127.0.0.1:8080\""),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate(
    raw: RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Config {
    // [server]
    let s = raw.server;
    let listen = socket("server.listen", &s.listen, issues);
    let admin_listen = socket("server.admin_listen", &s.admin_listen, issues);
    let (team_domain, team_host, secure_cookies) = match s.team_domain.as_deref() {
        None => {
            issues.push(issue(
                "server.team_domain",
                "missing; set the issuer URL, e.g. \"https://auth.example.com\"",
            ));
            (String::new(), String::new(), false)
        }
        Some(td) => match team_domain_parts(td) {
            Some(parts) => parts,
            None => {
                issues.push(issue(
                    "server.team_domain",
                    format!("{td:?} must be an absolute http(s) URL with no path, e.g. \"https://auth.example.com\""),
                ));
                (String::new(), String::new(), false)
            }
        },
    };
    let admin_token = env(ADMIN_TOKEN_ENV)
        .or(s.admin_token)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if let Some(t) = &admin_token
        && t.len() < 16
    {
        issues.push(issue(
            "server.admin_token",
            format!("too short; use at least 16 characters (set {ADMIN_TOKEN_ENV}, e.g. from `openssl rand -hex 32`)"),
        ));
    }
    let country_header = http::HeaderName::from_bytes(s.country_header.trim().as_bytes())
        .unwrap_or_else(|_| {
            issues.push(issue(
                "server.country_header",
                format!("{:?} is not a valid header name", s.country_header),
            ));
            http::HeaderName::from_static("cf-ipcountry")
        });
    let log_format = match s.log_format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            issues.push(issue(
                "server.log_format",
                format!("{other:?} is not one of \"json\", \"text\""),
            ));
            LogFormat::Json
        }
    };
    let tls = match (s.tls_cert.as_deref(), s.tls_key.as_deref()) {
        (None, None) => None,
        (Some(_), None) => {
            issues.push(issue(
                "server.tls_key",
                "missing; tls_cert needs the matching private key (PEM) in tls_key",
            ));
            None
        }
        (None, Some(_)) => {
            issues.push(issue(
                "server.tls_cert",
                "missing; tls_key needs the certificate chain (PEM) in tls_cert",
            ));
            None
        }
        (Some(cert), Some(key)) => {
            let (cert, key) = (resolve(base, cert), resolve(base, key));
            match crate::tls::load(&cert, &key) {
                Ok(config) => Some(TlsFiles { cert, key, config }),
                Err(found) => {
                    issues.extend(found.into_iter().map(|i| issue(i.key, i.message)));
                    None
                }
            }
        }
    };
    let workers = match s.workers {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n) if (1..=256).contains(&n) => n,
        Some(n) => {
            issues.push(issue(
                "server.workers",
                format!("{n} is out of range; use 1 to 256 (default: one per core)"),
            ));
            1
        }
    };
    let server = ServerConfig {
        tls,
        workers,
        listen,
        admin_listen,
        team_domain,
        team_host,
        secure_cookies,
        admin_token,
        country_header,
        upstream_connect_timeout: duration(
            "server.upstream_connect_timeout",
            Some(&s.upstream_connect_timeout),
            "5s",
            issues,
        ),
        upstream_timeout: duration(
            "server.upstream_timeout",
            Some(&s.upstream_timeout),
            "60s",
            issues,
        ),
        shutdown_grace: duration(
            "server.shutdown_grace",
            Some(&s.shutdown_grace),
            "10s",
            issues,
        ),
        log_format,
    };

    // [storage]
    let st = raw.storage;
    let data_dir = resolve(base, st.data_dir.as_deref().unwrap_or("portcullis-data"));
    let url = env(STORAGE_URL_ENV)
        .or(st.url)
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("portcullis.db").display()));
    let url = match normalize_storage_url(&url, base) {
        Some(u) => u,
        None => {
            issues.push(issue(
                "storage.url",
                format!(
                    "{:?} is neither sqlite://PATH nor postgres://USER@HOST/DB",
                    redact_url(&url)
                ),
            ));
            url
        }
    };
    let storage = StorageConfig {
        url,
        data_dir,
        max_connections: st.max_connections.unwrap_or(8).max(1),
        master_key: env(MASTER_KEY_ENV).filter(|k| !k.trim().is_empty()),
    };
    if let Some(k) = &storage.master_key
        && crate::crypto::MasterKey::from_hex(k, MASTER_KEY_ENV).is_err()
    {
        issues.push(issue(
            MASTER_KEY_ENV,
            "must hold exactly 64 hex characters; generate one with `openssl rand -hex 32`",
        ));
    }

    // [keys]
    let k = raw.keys;
    let keys = KeysConfig {
        rotate_every: duration(
            "keys.rotate_every",
            k.rotate_every.as_deref(),
            "42d",
            issues,
        ),
        publish_ahead: duration(
            "keys.publish_ahead",
            k.publish_ahead.as_deref(),
            "1h",
            issues,
        ),
        keep_previous: duration(
            "keys.keep_previous",
            k.keep_previous.as_deref(),
            "7d",
            issues,
        ),
        certs_max_age: duration(
            "keys.certs_max_age",
            k.certs_max_age.as_deref(),
            "5m",
            issues,
        ),
        reload_interval: duration(
            "keys.reload_interval",
            k.reload_interval.as_deref(),
            "10s",
            issues,
        ),
    };
    if keys.publish_ahead < keys.certs_max_age {
        issues.push(issue(
            "keys.publish_ahead",
            "must be at least keys.certs_max_age, or validators holding cached certs meet an unknown kid",
        ));
    }
    if keys.publish_ahead >= keys.rotate_every {
        issues.push(issue(
            "keys.publish_ahead",
            "must be shorter than keys.rotate_every",
        ));
    }

    // [service_tokens]
    let t = raw.service_tokens;
    let service_tokens = ServiceTokensConfig {
        default_duration: duration(
            "service_tokens.default_duration",
            t.default_duration.as_deref(),
            "8760h",
            issues,
        ),
        rotation_grace: duration(
            "service_tokens.rotation_grace",
            t.rotation_grace.as_deref(),
            "24h",
            issues,
        ),
        max_failures_per_client: t.max_failures_per_client.unwrap_or(10).max(1),
        max_failures_per_address: t.max_failures_per_address.unwrap_or(30).max(1),
        failure_window: duration(
            "service_tokens.failure_window",
            t.failure_window.as_deref(),
            "1m",
            issues,
        ),
    };

    // [audit]
    let a = raw.audit;
    let audit = AuditConfig {
        batch_size: a.batch_size.unwrap_or(256).clamp(1, 5000),
        flush_interval: duration(
            "audit.flush_interval",
            a.flush_interval.as_deref(),
            "200ms",
            issues,
        ),
        queue_capacity: a.queue_capacity.unwrap_or(65536).max(16),
        retention: duration("audit.retention", a.retention.as_deref(), "90d", issues),
        purge_interval: duration(
            "audit.purge_interval",
            a.purge_interval.as_deref(),
            "1h",
            issues,
        ),
    };

    // [login]
    let l = raw.login;
    let login = LoginConfig {
        session_duration: duration(
            "login.session_duration",
            l.session_duration.as_deref(),
            "24h",
            issues,
        ),
        max_failures_per_account: l.max_failures_per_account.unwrap_or(5).max(1),
        max_failures_per_address: l.max_failures_per_address.unwrap_or(20).max(1),
        failure_window: duration(
            "login.failure_window",
            l.failure_window.as_deref(),
            "15m",
            issues,
        ),
    };
    if login.session_duration > keys.keep_previous {
        issues.push(issue(
            "login.session_duration",
            "must not exceed keys.keep_previous, or sessions would outlive the key that signed them",
        ));
    }

    // [[identity_providers]]
    let identity_providers = identity_providers(raw.identity_providers, base, env, issues);

    // [[apps]]
    let mut names = HashSet::new();
    let mut routes = HashSet::new();
    let mut apps = Vec::new();
    for (i, app) in raw.apps.into_iter().enumerate() {
        let key = format!("apps[{i}]");
        if app.name.trim().is_empty() {
            issues.push(issue(format!("{key}.name"), "must not be empty"));
        } else if !names.insert(app.name.clone()) {
            issues.push(issue(
                format!("{key}.name"),
                format!("{:?} is used by two apps; names must be unique", app.name),
            ));
        }
        let (host, host_has_port, path_prefix) = match parse_domain(&app.domain) {
            Some(parts) => parts,
            None => {
                issues.push(issue(
                    format!("{key}.domain"),
                    format!("{:?} must be a host name with optional :port and /path, without a scheme, e.g. \"grafana.example.com\"", app.domain),
                ));
                (String::new(), false, String::new())
            }
        };
        if !host.is_empty() && !routes.insert((host.clone(), path_prefix.clone())) {
            issues.push(issue(
                format!("{key}.domain"),
                format!("{:?} is routed to two apps", app.domain),
            ));
        }
        if !host.is_empty() && host.eq_ignore_ascii_case(&server.team_host) {
            issues.push(issue(
                format!("{key}.domain"),
                "must differ from the team domain's host",
            ));
        }
        let origin = match parse_origin(&app.origin) {
            Some(origin) => origin,
            None => {
                issues.push(issue(
                    format!("{key}.origin"),
                    format!(
                        "{:?} must be an http:// URL such as \"http://127.0.0.1:3000\"",
                        app.origin
                    ),
                ));
                // Never used: a configuration with issues is refused.
                portcullis_core::proxy::Upstream {
                    authority: http::uri::Authority::from_static("invalid.invalid:1"),
                    prefix: String::new(),
                }
            }
        };
        let session_duration = duration(
            &format!("{key}.session_duration"),
            app.session_duration.as_deref(),
            "24h",
            issues,
        );
        if session_duration < Duration::from_secs(60) {
            issues.push(issue(
                format!("{key}.session_duration"),
                "must be at least one minute, e.g. \"24h\"",
            ));
        }
        if session_duration > keys.keep_previous {
            issues.push(issue(
                format!("{key}.session_duration"),
                "must not exceed keys.keep_previous, or tokens would outlive the key that signed them",
            ));
        }
        let service_token_header = app.service_token_header.as_deref().and_then(|h| {
            match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(name) if is_reserved_header(&name) => {
                    issues.push(issue(
                        format!("{key}.service_token_header"),
                        format!("{h:?} is reserved; pick another header such as \"Authorization\""),
                    ));
                    None
                }
                Ok(name) => Some(name),
                Err(_) => {
                    issues.push(issue(
                        format!("{key}.service_token_header"),
                        format!("{h:?} is not a valid header name"),
                    ));
                    None
                }
            }
        });
        let mut policies = Vec::new();
        let mut policy_names = HashSet::new();
        for (j, p) in app.policies.into_iter().enumerate() {
            let pkey = format!("{key}.policies[{j}]");
            if !policy_names.insert(p.name.clone()) {
                issues.push(issue(
                    format!("{pkey}.name"),
                    format!("{:?} is used twice in this app", p.name),
                ));
            }
            let decision = match p.decision.as_str() {
                "allow" => Decision::Allow,
                "block" => Decision::Block,
                "bypass" => Decision::Bypass,
                "service_auth" => Decision::ServiceAuth,
                other => {
                    issues.push(issue(
                        format!("{pkey}.decision"),
                        format!("{other:?} is not one of allow, block, bypass, service_auth"),
                    ));
                    Decision::Block
                }
            };
            if p.include.is_empty() {
                issues.push(issue(
                    format!("{pkey}.include"),
                    "must list at least one selector, e.g. [{ everyone = true }]",
                ));
            }
            let mut sel = |list: Vec<RawSelector>, part: &str| -> Vec<Selector> {
                list.into_iter()
                    .enumerate()
                    .filter_map(|(n, s)| selector(s, &format!("{pkey}.{part}[{n}]"), issues))
                    .collect()
            };
            let include = sel(p.include, "include");
            let require = sel(p.require, "require");
            let exclude = sel(p.exclude, "exclude");
            policies.push(Policy {
                name: p.name,
                decision,
                include,
                require,
                exclude,
            });
        }
        let app_providers = match app.identity_providers {
            None => identity_providers.iter().map(|p| p.id.clone()).collect(),
            Some(list) => {
                for (n, id) in list.iter().enumerate() {
                    if !identity_providers.iter().any(|p| &p.id == id) {
                        issues.push(issue(
                            format!("{key}.identity_providers[{n}]"),
                            format!("{id:?} is not the id of any [[identity_providers]] entry"),
                        ));
                    }
                }
                list
            }
        };
        apps.push(AppConfig {
            identity_providers: app_providers,
            token_groups: app.token_groups,
            name: app.name,
            host,
            host_has_port,
            path_prefix,
            origin,
            session_duration,
            service_token_header,
            policies,
        });
    }
    Config {
        server,
        storage,
        keys,
        service_tokens,
        audit,
        login,
        identity_providers,
        apps,
    }
}

fn identity_providers(
    raw: Vec<RawIdentityProvider>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<IdentityProviderConfig> {
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let key = format!("identity_providers[{i}]");
        let id_ok = !p.id.is_empty()
            && p.id.len() <= 64
            && p.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            issues.push(issue(
                format!("{key}.id"),
                "must be 1 to 64 letters, digits, '-', '_' or '.', e.g. \"corp\"",
            ));
        } else if !ids.insert(p.id.clone()) {
            issues.push(issue(
                format!("{key}.id"),
                format!("{:?} is used by two identity providers", p.id),
            ));
        }
        let unexpected = |field: &str, present: bool, issues: &mut Vec<ConfigIssue>| {
            if present {
                issues.push(issue(
                    format!("{key}.{field}"),
                    format!("does not apply to type {:?}", p.kind),
                ));
            }
        };
        let kind = match p.kind.as_str() {
            "oidc" => {
                unexpected("users_file", p.users_file.is_some(), issues);
                let issuer = match p.issuer.as_deref().map(str::trim) {
                    Some(u)
                        if url::Url::parse(u)
                            .is_ok_and(|u| matches!(u.scheme(), "https" | "http")) =>
                    {
                        u.to_owned()
                    }
                    Some(u) => {
                        issues.push(issue(
                            format!("{key}.issuer"),
                            format!("{u:?} is not an http(s) URL; use the provider's issuer, e.g. \"https://sso.example.com/\""),
                        ));
                        String::new()
                    }
                    None => {
                        issues.push(issue(
                            format!("{key}.issuer"),
                            "missing; set the provider's issuer URL (discovery is at {issuer}/.well-known/openid-configuration)",
                        ));
                        String::new()
                    }
                };
                let client_id = p
                    .client_id
                    .clone()
                    .filter(|c| !c.trim().is_empty())
                    .unwrap_or_else(|| {
                        issues.push(issue(
                            format!("{key}.client_id"),
                            "missing; set the client id registered at the provider",
                        ));
                        String::new()
                    });
                let client_secret = match (&p.client_secret, &p.client_secret_env) {
                    (Some(_), Some(_)) => {
                        issues.push(issue(
                            format!("{key}.client_secret_env"),
                            "set either client_secret or client_secret_env, not both",
                        ));
                        None
                    }
                    (Some(secret), None) => Some(secret.clone()),
                    (None, Some(var)) => match env(var).filter(|v| !v.is_empty()) {
                        Some(v) => Some(v),
                        None => {
                            issues.push(issue(
                                format!("{key}.client_secret_env"),
                                format!("the environment variable {var} is not set; export it with the client secret"),
                            ));
                            None
                        }
                    },
                    (None, None) => None,
                };
                let scopes = p
                    .scopes
                    .clone()
                    .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
                if !scopes.iter().any(|s| s == "openid") {
                    issues.push(issue(format!("{key}.scopes"), "must include \"openid\""));
                }
                if scopes
                    .iter()
                    .any(|s| s.is_empty() || s.contains(char::is_whitespace))
                {
                    issues.push(issue(
                        format!("{key}.scopes"),
                        "scopes must be single words",
                    ));
                }
                IdentityProviderKind::Oidc(OidcProviderConfig {
                    issuer,
                    client_id,
                    client_secret,
                    scopes,
                    groups_claim: p.groups_claim.clone().filter(|g| !g.is_empty()),
                })
            }
            "local" => {
                for (field, present) in [
                    ("issuer", p.issuer.is_some()),
                    ("client_id", p.client_id.is_some()),
                    ("client_secret", p.client_secret.is_some()),
                    ("client_secret_env", p.client_secret_env.is_some()),
                    ("scopes", p.scopes.is_some()),
                    ("groups_claim", p.groups_claim.is_some()),
                ] {
                    unexpected(field, present, issues);
                }
                let users_file = match p.users_file.as_deref() {
                    Some(f) if !f.trim().is_empty() => resolve(base, f.trim()),
                    _ => {
                        issues.push(issue(
                            format!("{key}.users_file"),
                            "missing; name a TOML file of [[users]] (email, name, groups, password_hash)",
                        ));
                        PathBuf::new()
                    }
                };
                IdentityProviderKind::Local(LocalProviderConfig { users_file })
            }
            other => {
                issues.push(issue(
                    format!("{key}.type"),
                    format!("{other:?} is not one of \"oidc\", \"local\""),
                ));
                continue;
            }
        };
        out.push(IdentityProviderConfig {
            name: p
                .name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| p.id.clone()),
            id: p.id,
            kind,
        });
    }
    if out
        .iter()
        .filter(|p| matches!(p.kind, IdentityProviderKind::Local(_)))
        .count()
        > 1
    {
        issues.push(issue(
            "identity_providers",
            "at most one provider may have type \"local\"; list every user in its users_file",
        ));
    }
    out
}

fn selector(s: RawSelector, key: &str, issues: &mut Vec<ConfigIssue>) -> Option<Selector> {
    let mut found = Vec::new();
    if let Some(v) = s.everyone {
        found.push(if v { Some(Selector::Everyone) } else { None }.ok_or("everyone must be true"));
    }
    if let Some(v) = s.email {
        found.push(if v.contains('@') {
            Ok(Selector::Email(v.to_ascii_lowercase()))
        } else {
            Err("email must be an address such as \"alice@example.com\"")
        });
    }
    if let Some(v) = s.email_domain {
        let v = v.trim_start_matches('@').to_ascii_lowercase();
        found.push(if !v.is_empty() && !v.contains('@') {
            Ok(Selector::EmailDomain(v))
        } else {
            Err("email_domain must be a domain such as \"example.com\"")
        });
    }
    if let Some(v) = s.group {
        found.push(if v.is_empty() {
            Err("group must not be empty")
        } else {
            Ok(Selector::Group(v))
        });
    }
    if let Some(v) = s.ip {
        let parsed = v
            .parse::<ipnet::IpNet>()
            .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        found.push(
            parsed
                .map(|n| Selector::Ip(n.trunc()))
                .map_err(|_| "ip must be an address or CIDR such as \"10.0.0.0/8\""),
        );
    }
    if let Some(v) = s.service_token {
        found.push(if v.is_empty() {
            Err("service_token must name a token")
        } else {
            Ok(Selector::ServiceToken(v))
        });
    }
    if let Some(v) = s.any_valid_service_token {
        found.push(if v {
            Ok(Selector::AnyValidServiceToken)
        } else {
            Err("any_valid_service_token must be true")
        });
    }
    if let Some(v) = s.login_method {
        found.push(if v.is_empty() {
            Err("login_method must name an identity provider id")
        } else {
            Ok(Selector::LoginMethod(v))
        });
    }
    if let Some(v) = s.country {
        found.push(
            if v.len() == 2 && v.chars().all(|c| c.is_ascii_alphabetic()) {
                Ok(Selector::Country(v.to_ascii_uppercase()))
            } else {
                Err("country must be a two-letter code such as \"DE\"")
            },
        );
    }
    match found.len() {
        0 => {
            issues.push(issue(key, "empty selector; write one of everyone, email, email_domain, group, ip, service_token, any_valid_service_token, login_method, country"));
            None
        }
        1 => match found.pop() {
            Some(Ok(s)) => Some(s),
            Some(Err(msg)) => {
                issues.push(issue(key, msg));
                None
            }
            None => None,
        },
        _ => {
            issues.push(issue(
                key,
                "one selector per entry; split it into several entries",
            ));
            None
        }
    }
}

fn is_reserved_header(name: &http::HeaderName) -> bool {
    use portcullis_core::wire::*;
    [
        JWT_ASSERTION_HEADER,
        AUTHENTICATED_USER_EMAIL_HEADER,
        CLIENT_ID_HEADER,
        CLIENT_SECRET_HEADER,
        ACCESS_TOKEN_HEADER,
        "host",
        "cookie",
    ]
    .contains(&name.as_str())
}

/// `(issuer, host, https)` of a team domain URL.
fn team_domain_parts(raw: &str) -> Option<(String, String, bool)> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = url::Url::parse(trimmed).ok()?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    Some((trimmed.to_owned(), host, https))
}

/// `(host[:port] lowercased, has_port, path_prefix)` of an app domain.
fn parse_domain(raw: &str) -> Option<(String, bool, String)> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains("://") {
        return None;
    }
    let (authority, path) = match raw.find('/') {
        Some(i) => (&raw[..i], raw[i..].trim_end_matches('/')),
        None => (raw, ""),
    };
    let authority: http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let host = authority.as_str().to_ascii_lowercase();
    Some((host, authority.port_u16().is_some(), path.to_owned()))
}

/// An http origin: authority (`host:port`, the port always explicit) and
/// path prefix.
fn parse_origin(raw: &str) -> Option<portcullis_core::proxy::Upstream> {
    let url = url::Url::parse(raw.trim()).ok()?;
    if url.scheme() != "http" || url.query().is_some() || !url.username().is_empty() {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(portcullis_core::proxy::Upstream {
        authority: format!("{host}:{port}").parse().ok()?,
        prefix: url.path().trim_end_matches('/').to_owned(),
    })
}

/// Makes a relative SQLite path absolute (against `base`) and adds
/// `mode=rwc`; PostgreSQL URLs pass unchanged.
fn normalize_storage_url(url: &str, base: &Path) -> Option<String> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        let path = resolve(base, path);
        let mut out = format!("sqlite://{}", path.display());
        match query {
            Some(q) if q.contains("mode=") => out.push_str(&format!("?{q}")),
            Some(q) => out.push_str(&format!("?{q}&mode=rwc")),
            None => out.push_str("?mode=rwc"),
        }
        return Some(out);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let parsed = url::Url::parse(url).ok()?;
        parsed.host_str()?;
        return Some(url.to_owned());
    }
    None
}

/// The SQLite file of a `sqlite://` URL, if it is one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9902"
team_domain = "https://auth.example.test/"

[keys]
rotate_every = "42d"

[[apps]]
name = "grafana"
domain = "Grafana.example.test:8080/admin/"
origin = "http://127.0.0.1:3000/base"
session_duration = "24h"
service_token_header = "Authorization"

[[apps.policies]]
name = "bots"
decision = "service_auth"
include = [{ service_token = "report-bot" }, { ip = "10.0.0.0/8" }]
exclude = [{ country = "ru" }]
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/portcullis")).unwrap();
        assert_eq!(c.server.team_domain, "https://auth.example.test");
        assert!(c.server.secure_cookies);
        assert_eq!(c.audit.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.audit.purge_interval, Duration::from_secs(3600));
        let app = &c.apps[0];
        assert_eq!(app.host, "grafana.example.test:8080");
        assert_eq!(app.path_prefix, "/admin");
        assert_eq!(app.origin.authority, "127.0.0.1:3000");
        assert_eq!(app.origin.prefix, "/base");
        assert_eq!(app.policies[0].include.len(), 2);
        assert_eq!(
            app.policies[0].exclude,
            vec![Selector::Country("RU".into())]
        );
        assert!(
            c.storage
                .url
                .starts_with("sqlite:///etc/portcullis/portcullis-data/portcullis.db?")
        );
        assert_eq!(c.keys.rotate_every, Duration::from_secs(42 * 86400));
    }

    #[test]
    fn example_config_is_valid() {
        let env = |name: &str| (name == "CORP_CLIENT_SECRET").then(|| "s3cret".to_owned());
        let c = Config::parse(
            include_str!("../gateway.example.toml"),
            Path::new("/srv"),
            &env,
        )
        .unwrap();
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].policies.len(), 3);
        assert_eq!(c.identity_providers.len(), 2);
        assert_eq!(c.apps[0].identity_providers, ["corp", "local"]);
        assert_eq!(
            c.apps[0].token_groups.as_deref(),
            Some(&["eng".to_owned(), "ops".to_owned()][..])
        );
        match &c.identity_providers[0].kind {
            IdentityProviderKind::Oidc(o) => {
                assert_eq!(o.client_secret.as_deref(), Some("s3cret"));
                assert!(!format!("{o:?}").contains("s3cret"), "secrets are redacted");
            }
            other => panic!("{other:?}"),
        }
        match &c.identity_providers[1].kind {
            IdentityProviderKind::Local(l) => {
                assert_eq!(l.users_file, Path::new("/srv/users.toml"))
            }
            other => panic!("{other:?}"),
        }
        let err = Config::from_toml_str(include_str!("../gateway.example.toml"), Path::new("/srv"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("identity_providers[0].client_secret_env"),
            "{err}"
        );
    }

    #[test]
    fn identity_provider_keys_are_checked() {
        let text = r#"
[server]
team_domain = "https://auth.example.test"

[[identity_providers]]
id = "corp"
type = "oidc"
issuer = "not a url"
scopes = ["email"]
users_file = "x.toml"

[[identity_providers]]
id = "corp"
type = "saml"

[[identity_providers]]
id = "pw"
type = "local"

[[apps]]
name = "a"
domain = "a.example.test"
origin = "http://127.0.0.1:1"
identity_providers = ["nope"]
"#;
        let err = Config::from_toml_str(text, Path::new("."))
            .unwrap_err()
            .to_string();
        for key in [
            "identity_providers[0].issuer",
            "identity_providers[0].client_id",
            "identity_providers[0].scopes",
            "identity_providers[0].users_file",
            "identity_providers[1].id",
            "identity_providers[1].type",
            "identity_providers[2].users_file",
            "apps[0].identity_providers[0]",
        ] {
            assert!(err.contains(key), "{key} missing from:\n{err}");
        }
    }

    #[test]
    fn env_overrides_secrets() {
        let env = |name: &str| match name {
            ADMIN_TOKEN_ENV => Some("0123456789abcdef0123".to_owned()),
            STORAGE_URL_ENV => Some("postgres://postgres@127.0.0.1:5432/test".to_owned()),
            _ => None,
        };
        let c = Config::parse(GOOD, Path::new("."), &env).unwrap();
        assert_eq!(
            c.server.admin_token.as_deref(),
            Some("0123456789abcdef0123")
        );
        assert!(c.storage.url.starts_with("postgres://"));
        assert!(!format!("{:?}", c.server).contains("0123456789abcdef0123"));
    }

    #[test]
    fn every_bad_key_is_named() {
        let bad = r#"
[server]
listen = "nope"
team_domain = "ftp://x"

[keys]
rotate_every = "soon"

[[apps]]
name = "a"
domain = "https://a.test"
origin = "https://127.0.0.1:1"
service_token_header = "cf-access-client-id"

[[apps.policies]]
name = "p"
decision = "maybe"
include = [{ ip = "300.1.1.1/8" }, { everyone = true, email = "a@b" }, {}]

[[apps]]
name = "a"
domain = "b.test"
origin = "http://127.0.0.1:2"
session_duration = "30d"
"#;
        let err = Config::from_toml_str(bad, Path::new(".")).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|i| i.key.as_str()).collect();
        for expected in [
            "server.listen",
            "server.team_domain",
            "keys.rotate_every",
            "apps[0].domain",
            "apps[0].origin",
            "apps[0].service_token_header",
            "apps[0].policies[0].decision",
            "apps[0].policies[0].include[0]",
            "apps[0].policies[0].include[1]",
            "apps[0].policies[0].include[2]",
            "apps[1].name",
            "apps[1].session_duration",
        ] {
            assert!(
                keys.contains(&expected),
                "{expected} not reported in {keys:?}"
            );
        }
    }

    #[test]
    fn workers_default_to_the_cores_and_are_bounded() {
        let dir = std::env::temp_dir();
        let with = |extra: &str| {
            Config::from_toml_str(
                &format!("[server]\nteam_domain = \"http://auth.example.test\"\n{extra}\n"),
                &dir,
            )
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(with("").unwrap().server.workers, cores);
        assert_eq!(with("workers = 3").unwrap().server.workers, 3);
        for bad in ["workers = 0", "workers = 1000"] {
            let err = with(bad).unwrap_err();
            assert!(
                err.0.iter().any(|i| i.key == "server.workers"),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn tls_keys_are_checked_at_load() {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cfg-tls-{}",
            crate::crypto::random_hex::<6>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["auth.example.test".to_owned()]).unwrap();
        std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
        std::fs::write(dir.join("other.pem"), other.signing_key.serialize_pem()).unwrap();
        let with = |extra: &str| {
            Config::from_toml_str(
                &format!("[server]\nteam_domain = \"https://auth.example.test\"\n{extra}\n"),
                &dir,
            )
        };
        let ok = with("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"").unwrap();
        let tls = ok.server.tls.as_ref().unwrap();
        assert_eq!(tls.key, dir.join("key.pem"));
        let keys = |extra: &str| -> Vec<(String, String)> {
            with(extra)
                .unwrap_err()
                .0
                .into_iter()
                .map(|i| (i.key, i.message))
                .collect()
        };
        let only_cert = keys("tls_cert = \"cert.pem\"");
        assert_eq!(only_cert[0].0, "server.tls_key", "{only_cert:?}");
        let only_key = keys("tls_key = \"key.pem\"");
        assert_eq!(only_key[0].0, "server.tls_cert", "{only_key:?}");
        let missing = keys("tls_cert = \"absent.pem\"\ntls_key = \"key.pem\"");
        assert_eq!(missing[0].0, "server.tls_cert", "{missing:?}");
        assert!(missing[0].1.contains("absent.pem"), "{missing:?}");
        let swapped = keys("tls_cert = \"key.pem\"\ntls_key = \"cert.pem\"");
        let named: Vec<&str> = swapped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(named, ["server.tls_cert", "server.tls_key"], "{swapped:?}");
        let mismatch = keys("tls_cert = \"cert.pem\"\ntls_key = \"other.pem\"");
        assert_eq!(mismatch[0].0, "server.tls_key", "{mismatch:?}");
        assert!(mismatch[0].1.contains("does not belong"), "{mismatch:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let err = Config::from_toml_str(
            "[server]\nteam_domain = \"http://a\"\nlisten_port = 3\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(err.to_string().contains("listen_port"), "{err}");
    }
}
