//! Configuration: the command line ([`Cli`]), the optional TOML file
//! ([`FileConfig`]) and the validated result ([`Settings`]).
//!
//! Precedence, highest first: flag, `PORTCULLIS_<FLAG>` environment
//! variable, config file, built-in default. Everything is checked once, here;
//! an error names the setting and says how to fix it.
//!
//! ```
//! use clap::Parser as _;
//! use portcullis_sidecar::config::{Cli, Settings};
//!
//! let cli = Cli::try_parse_from([
//!     "portcullis-sidecar",
//!     "--upstream", "http://127.0.0.1:3000",
//!     "--team-domain", "https://acme.cloudflareaccess.com",
//!     "--audience", "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4",
//! ]).unwrap();
//! let settings = Settings::load(&cli).unwrap();
//! assert_eq!(settings.certs_url, "https://acme.cloudflareaccess.com/cdn-cgi/access/certs");
//! ```

// The flag docs are also the `--help` text, where URLs must stay plain.
#![allow(rustdoc::bare_urls)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;
use ipnet::IpNet;
use portcullis_core::wire;
use serde::Deserialize;

use crate::inject::{HeaderMapping, HeaderSource};

/// Default proxy listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default cap on the total size of a request head.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Default cap on the size of a token.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for the upstream to start answering.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default idle timeout of client connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time allowed for in-flight requests to finish at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The most `--workers` accepted.
pub const MAX_WORKERS: usize = 1024;

/// How the sidecar answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Validate, then forward the request to the upstream.
    #[default]
    Proxy,
    /// Answer every request itself: 200 with the identity headers, or the
    /// rejection (for nginx `auth_request`, Traefik ForwardAuth, Caddy
    /// `forward_auth`).
    ForwardAuth,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

const ABOUT: &str = "Validating, header-injecting reverse proxy and forward-auth server for \
Cloudflare Access-compatible JWTs.";

const LONG_ABOUT: &str = "Validating, header-injecting reverse proxy and forward-auth server for \
Cloudflare Access-compatible JWTs.

Nothing reaches the upstream without a valid token (the Cf-Access-Jwt-Assertion header or the \
CF_Authorization cookie). Accepted requests carry the identity in X-Forwarded-Email, \
X-Forwarded-User, X-Forwarded-Groups (and any --inject-header); every header the sidecar can \
inject is removed from incoming requests first, so clients cannot spoof them.

Every flag can also be set with the environment variable PORTCULLIS_<FLAG> (e.g. \
PORTCULLIS_TEAM_DOMAIN; repeatable flags take a comma-separated list) or in the --config file \
(the flag name in snake_case, e.g. team_domain). Flags win over the environment, which wins over \
the file. Send SIGHUP to reload the config file; SIGTERM or SIGINT drains in-flight requests and \
exits.";

/// The command line. Every flag also reads `PORTCULLIS_<FLAG>`.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "portcullis-sidecar", version, about = ABOUT, long_about = LONG_ABOUT)]
#[non_exhaustive]
pub struct Cli {
    /// TOML file holding any of these settings (snake_case keys) plus
    /// `[[routes]]` (host, upstream, audiences, headers). Reloaded on SIGHUP.
    #[arg(long, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to accept proxied requests on [default: 127.0.0.1:9000].
    #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// The application behind the sidecar, e.g. http://127.0.0.1:3000
    /// (plain http; an optional path is prefixed to every request path).
    /// Required in proxy mode unless every host has a route.
    #[arg(long, env = "PORTCULLIS_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// The issuer: the team domain URL, e.g. https://acme.cloudflareaccess.com.
    #[arg(long, env = "PORTCULLIS_TEAM_DOMAIN", value_name = "URL")]
    pub team_domain: Option<String>,

    /// Accepted application AUD tag (repeatable). A token must name at least
    /// one of them.
    #[arg(
        long,
        env = "PORTCULLIS_AUDIENCE",
        value_name = "AUD",
        value_delimiter = ','
    )]
    pub audience: Vec<String>,

    /// Where the signing keys are published
    /// [default: {team-domain}/cdn-cgi/access/certs].
    #[arg(long, env = "PORTCULLIS_CERTS_URL", value_name = "URL")]
    pub certs_url: Option<String>,

    /// proxy: validate and forward to the upstream. forward-auth: answer
    /// 200 with the identity headers (or the rejection) for nginx
    /// auth_request, Traefik ForwardAuth or Caddy forward_auth
    /// [default: proxy].
    #[arg(long, env = "PORTCULLIS_MODE", value_name = "MODE")]
    pub mode: Option<Mode>,

    /// Address of the admin server: /metrics (Prometheus), /healthz (alive),
    /// /readyz (200 only while signing keys are loaded and fresh)
    /// [default: 127.0.0.1:9901].
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// Extra identity header (repeatable): NAME=CLAIM, where CLAIM is a claim
    /// name or a JSON pointer into the claims, e.g. X-Country=country or
    /// X-Device=/device_posture/os. Arrays of strings are comma-joined.
    #[arg(
        long,
        env = "PORTCULLIS_INJECT_HEADER",
        value_name = "NAME=CLAIM",
        value_delimiter = ','
    )]
    pub inject_header: Vec<String>,

    /// Login page: page navigations (Sec-Fetch-Mode: navigate) without a
    /// token, or with an expired one, are redirected there with the
    /// original URL in the redirect_url query parameter. Everything else
    /// gets the 401.
    #[arg(long, env = "PORTCULLIS_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,

    /// Accept requests only from these source networks (repeatable), e.g.
    /// the edge's IP ranges; others get 403 forbidden before anything else.
    #[arg(
        long,
        env = "PORTCULLIS_ALLOW_FROM",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_from: Vec<String>,

    /// Log format: text or json [default: text]. RUST_LOG sets the level
    /// (default info).
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Largest request head (request line and headers) accepted, in bytes;
    /// larger ones get 431 [default: 32768].
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Largest token accepted, in bytes; larger ones are malformed_token
    /// [default: 16384].
    #[arg(long, env = "PORTCULLIS_MAX_TOKEN_BYTES", value_name = "BYTES")]
    pub max_token_bytes: Option<usize>,

    /// Time allowed to connect to the upstream; beyond it the answer is 504
    /// upstream_timeout [default: 5s].
    #[arg(long, env = "PORTCULLIS_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Time allowed for the upstream to send its response head; beyond it the
    /// answer is 504 upstream_timeout [default: 60s].
    #[arg(long, env = "PORTCULLIS_READ_TIMEOUT", value_name = "DURATION")]
    pub read_timeout: Option<String>,

    /// A client connection that sends no complete request head for this long
    /// (after connecting or after the previous response) is closed; also the
    /// idle time of pooled upstream connections [default: 60s].
    #[arg(long, env = "PORTCULLIS_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// At SIGTERM/SIGINT, time allowed for in-flight requests to finish
    /// [default: 30s].
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,

    /// Worker threads serving proxied requests, like nginx's
    /// worker_processes: each accepts connections and serves them start to
    /// end on its own single-threaded runtime, with its own pooled upstream
    /// connections [default: one per CPU core].
    #[arg(long, env = "PORTCULLIS_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
}

/// The TOML config file: the flags in snake_case plus `[[routes]]`.
///
/// ```toml
/// team_domain = "https://acme.cloudflareaccess.com"
/// audience = ["41f1d8..."]
/// upstream = "http://127.0.0.1:3000"        # for hosts without a route
/// inject_header = ["X-Country=country"]     # added on every route
///
/// [[routes]]
/// host = "grafana.example.com"
/// upstream = "http://127.0.0.1:3001"
/// audiences = ["9a0b1c..."]
/// headers = { "X-WEBAUTH-USER" = "email" }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// See `--listen`.
    pub listen: Option<String>,
    /// See `--upstream`.
    pub upstream: Option<String>,
    /// See `--team-domain`.
    pub team_domain: Option<String>,
    /// See `--audience`.
    #[serde(default, alias = "audiences")]
    pub audience: Vec<String>,
    /// See `--certs-url`.
    pub certs_url: Option<String>,
    /// See `--mode`.
    pub mode: Option<Mode>,
    /// See `--admin-listen`.
    pub admin_listen: Option<String>,
    /// See `--inject-header`.
    #[serde(default)]
    pub inject_header: Vec<String>,
    /// See `--login-url`.
    pub login_url: Option<String>,
    /// See `--allow-from`.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// See `--log-format`.
    pub log_format: Option<LogFormat>,
    /// See `--max-header-bytes`.
    pub max_header_bytes: Option<usize>,
    /// See `--max-token-bytes`.
    pub max_token_bytes: Option<usize>,
    /// See `--connect-timeout`.
    pub connect_timeout: Option<String>,
    /// See `--read-timeout`.
    pub read_timeout: Option<String>,
    /// See `--idle-timeout`.
    pub idle_timeout: Option<String>,
    /// See `--shutdown-timeout`.
    pub shutdown_timeout: Option<String>,
    /// See `--workers`.
    pub workers: Option<usize>,
    /// Per-host routes.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteFile {
    /// The `Host` this route serves (without port; case-insensitive).
    pub host: String,
    /// Its upstream (defaults to the top-level `upstream`).
    pub upstream: Option<String>,
    /// Its accepted audiences (default: the top-level `audience`).
    #[serde(default, alias = "audience")]
    pub audiences: Vec<String>,
    /// Extra headers: NAME = CLAIM.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A configuration problem, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The setting, e.g. `team_domain` or `routes[1].upstream`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SettingsError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for SettingsError {}

pub use portcullis_core::proxy::Upstream;

/// One validated route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteSettings {
    /// `Host` served (lowercase, no port); `None` for the default route.
    pub host: Option<String>,
    /// Where accepted requests go (`None` only in forward-auth mode).
    pub upstream: Option<Upstream>,
    /// Accepted audiences (never empty).
    pub audiences: Vec<String>,
    /// Headers injected on acceptance, defaults included.
    pub headers: HeaderMapping,
}

impl RouteSettings {
    /// Label used in logs and metrics: the host, or `default`.
    pub fn name(&self) -> &str {
        self.host.as_deref().unwrap_or("default")
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Where the file came from, for reloads.
    pub config_file: Option<PathBuf>,
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Proxy or forward-auth.
    pub mode: Mode,
    /// The issuer.
    pub team_domain: String,
    /// Where keys are fetched.
    pub certs_url: String,
    /// Route used for hosts without their own (from the top-level settings).
    pub default_route: Option<RouteSettings>,
    /// Routes by host.
    pub routes: Vec<RouteSettings>,
    /// Login page for navigations.
    pub login_url: Option<url::Url>,
    /// Source networks allowed (empty: all).
    pub allow_from: Vec<IpNet>,
    /// Log format.
    pub log_format: LogFormat,
    /// Request head cap.
    pub max_header_bytes: usize,
    /// Token cap.
    pub max_token_bytes: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub read_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Drain time at shutdown.
    pub shutdown_timeout: Duration,
    /// Worker threads for proxied requests.
    pub workers: usize,
}

fn flag_key(key: &str) -> String {
    format!(
        "{key} (--{} / PORTCULLIS_{})",
        key.replace('_', "-"),
        key.to_ascii_uppercase()
    )
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn pick_list(flag: &[String], file: &[String]) -> Vec<String> {
    let list = if flag.is_empty() { file } else { flag };
    list.iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_addr(
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, SettingsError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    value.trim().parse().map_err(|_| {
        SettingsError::new(
            flag_key(key),
            format!("{value:?} is not an address such as {default}"),
        )
    })
}

fn parse_duration(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, SettingsError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d: Duration = humantime::parse_duration(value.trim()).map_err(|e| {
        SettingsError::new(
            flag_key(key),
            format!("{value:?} is not a duration such as 30s or 2m ({e})"),
        )
    })?;
    if d.is_zero() {
        return Err(SettingsError::new(flag_key(key), "must be more than zero"));
    }
    Ok(d)
}

fn parse_http_url(key: &str, value: &str) -> Result<url::Url, SettingsError> {
    match url::Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err(SettingsError::new(
            flag_key(key),
            format!("{value:?} is not an absolute http(s) URL"),
        )),
    }
}

impl Settings {
    /// Reads the config file named by `cli` (if any) and merges it with the
    /// flags and environment already in `cli`.
    pub fn load(cli: &Cli) -> Result<Self, SettingsError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SettingsError::new(
                        flag_key("config"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Self::parse_file(&text).map_err(|e| SettingsError {
                    key: e.key,
                    message: format!("{} (in {})", e.message, path.display()),
                })?
            }
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Parses config file text; unknown keys are errors.
    pub fn parse_file(text: &str) -> Result<FileConfig, SettingsError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let key = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    let snippet = text
                        .get(span.clone())
                        .unwrap_or_default()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    if snippet.is_empty() {
                        format!("config file line {line}")
                    } else {
                        format!("config file line {line} `{snippet}`")
                    }
                }
                None => "config file".to_owned(),
            };
            SettingsError::new(key, message)
        })
    }

    /// Merges flags/environment over a parsed file and validates the result.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self, SettingsError> {
        let mode = pick(cli.mode, file.mode).unwrap_or_default();
        let listen = parse_addr(
            "listen",
            pick(cli.listen.clone(), file.listen),
            DEFAULT_LISTEN,
        )?;
        let admin_listen = parse_addr(
            "admin_listen",
            pick(cli.admin_listen.clone(), file.admin_listen),
            DEFAULT_ADMIN_LISTEN,
        )?;
        let team_domain = pick(cli.team_domain.clone(), file.team_domain)
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                SettingsError::new(
                    flag_key("team_domain"),
                    "required: the issuer URL, e.g. https://acme.cloudflareaccess.com",
                )
            })?;
        parse_http_url("team_domain", &team_domain)?;
        let certs_url = match pick(cli.certs_url.clone(), file.certs_url) {
            Some(u) => {
                parse_http_url("certs_url", &u)?;
                u.trim().to_owned()
            }
            None => format!("{team_domain}{}", wire::CERTS_PATH),
        };
        let login_url = pick(cli.login_url.clone(), file.login_url)
            .filter(|s| !s.trim().is_empty())
            .map(|u| parse_http_url("login_url", &u))
            .transpose()?;
        let mut allow_from = Vec::new();
        for cidr in pick_list(&cli.allow_from, &file.allow_from) {
            let net = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    SettingsError::new(
                        flag_key("allow_from"),
                        format!(
                            "{cidr:?} is not a network such as 173.245.48.0/20 or 2400:cb00::/32"
                        ),
                    )
                })?;
            allow_from.push(net.trunc());
        }
        let max_header_bytes =
            pick(cli.max_header_bytes, file.max_header_bytes).unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        if max_header_bytes < 1024 {
            return Err(SettingsError::new(
                flag_key("max_header_bytes"),
                "must be at least 1024",
            ));
        }
        let max_token_bytes =
            pick(cli.max_token_bytes, file.max_token_bytes).unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        if max_token_bytes < 256 {
            return Err(SettingsError::new(
                flag_key("max_token_bytes"),
                "must be at least 256",
            ));
        }

        let workers = pick(cli.workers, file.workers).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(SettingsError::new(
                flag_key("workers"),
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }

        let audiences = pick_list(&cli.audience, &file.audience);
        let extra_headers = pick_list(&cli.inject_header, &file.inject_header);
        let mut global_headers = HeaderMapping::defaults();
        for spec in &extra_headers {
            let (name, claim) = spec.split_once('=').ok_or_else(|| {
                SettingsError::new(
                    flag_key("inject_header"),
                    format!("{spec:?} is not NAME=CLAIM, e.g. X-Country=country"),
                )
            })?;
            let (name, source) = parse_mapping(name, claim)
                .map_err(|m| SettingsError::new(flag_key("inject_header"), m))?;
            global_headers.set(name, source);
        }

        let top_upstream = pick(cli.upstream.clone(), file.upstream)
            .filter(|s| !s.trim().is_empty())
            .map(|u| Upstream::parse(&u).map_err(|m| SettingsError::new(flag_key("upstream"), m)))
            .transpose()?;

        let mut routes = Vec::new();
        for (i, r) in file.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let host = normalize_host(&r.host).ok_or_else(|| {
                SettingsError::new(
                    key("host"),
                    format!("{:?} is not a host name such as app.example.com", r.host),
                )
            })?;
            if routes
                .iter()
                .any(|o: &RouteSettings| o.host.as_deref() == Some(host.as_str()))
            {
                return Err(SettingsError::new(
                    key("host"),
                    format!("{host:?} has two routes"),
                ));
            }
            let upstream = match &r.upstream {
                Some(u) => {
                    Some(Upstream::parse(u).map_err(|m| SettingsError::new(key("upstream"), m))?)
                }
                None => top_upstream.clone(),
            };
            if upstream.is_none() && mode == Mode::Proxy {
                return Err(SettingsError::new(
                    key("upstream"),
                    "required in proxy mode (or set the top-level upstream)",
                ));
            }
            let route_audiences = if r.audiences.is_empty() {
                audiences.clone()
            } else {
                pick_list(&r.audiences, &[])
            };
            if route_audiences.is_empty() {
                return Err(SettingsError::new(
                    key("audiences"),
                    "required: the application's AUD tag (or set the top-level audience)",
                ));
            }
            let mut headers = global_headers.clone();
            for (name, claim) in &r.headers {
                let (name, source) = parse_mapping(name, claim)
                    .map_err(|m| SettingsError::new(key("headers"), m))?;
                headers.set(name, source);
            }
            routes.push(RouteSettings {
                host: Some(host),
                upstream,
                audiences: route_audiences,
                headers,
            });
        }

        // The top-level settings form the route for every other host, unless
        // routes exist and nothing top-level says where to send the rest.
        let serves_rest =
            !audiences.is_empty() && (top_upstream.is_some() || mode == Mode::ForwardAuth);
        let default_route = if routes.is_empty() || serves_rest {
            if audiences.is_empty() {
                return Err(SettingsError::new(
                    flag_key("audience"),
                    "required: the application's AUD tag (64 hex characters)",
                ));
            }
            if top_upstream.is_none() && mode == Mode::Proxy {
                return Err(SettingsError::new(
                    flag_key("upstream"),
                    "required in proxy mode, e.g. http://127.0.0.1:3000",
                ));
            }
            Some(RouteSettings {
                host: None,
                upstream: top_upstream,
                audiences,
                headers: global_headers,
            })
        } else {
            None
        };

        Ok(Settings {
            config_file: cli.config.clone(),
            listen,
            admin_listen,
            mode,
            team_domain,
            certs_url,
            default_route,
            routes,
            login_url,
            allow_from,
            log_format: pick(cli.log_format, file.log_format).unwrap_or_default(),
            max_header_bytes,
            max_token_bytes,
            connect_timeout: parse_duration(
                "connect_timeout",
                pick(cli.connect_timeout.clone(), file.connect_timeout),
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            read_timeout: parse_duration(
                "read_timeout",
                pick(cli.read_timeout.clone(), file.read_timeout),
                DEFAULT_READ_TIMEOUT,
            )?,
            idle_timeout: parse_duration(
                "idle_timeout",
                pick(cli.idle_timeout.clone(), file.idle_timeout),
                DEFAULT_IDLE_TIMEOUT,
            )?,
            shutdown_timeout: parse_duration(
                "shutdown_timeout",
                pick(cli.shutdown_timeout.clone(), file.shutdown_timeout),
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            workers,
        })
    }
}

/// Lowercases a host and drops a port; `None` when it is not a host.
pub(crate) fn normalize_host(value: &str) -> Option<String> {
    let authority: Authority = value.trim().parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Headers the sidecar must never inject: they steer the connection or carry
/// the token and client credentials.
const FORBIDDEN_INJECT: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "cookie",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    wire::JWT_ASSERTION_HEADER,
];

fn parse_mapping(name: &str, claim: &str) -> Result<(HeaderName, HeaderSource), String> {
    let name = name.trim();
    let claim = claim.trim();
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if FORBIDDEN_INJECT.contains(&header.as_str()) {
        return Err(format!("{name:?} cannot be injected"));
    }
    if claim.is_empty() {
        return Err(format!(
            "{name:?} needs a claim name or JSON pointer after '='"
        ));
    }
    Ok((header, HeaderSource::Claim(claim.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["portcullis-sidecar"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    fn file(text: &str) -> FileConfig {
        Settings::parse_file(text).unwrap()
    }

    #[test]
    fn defaults_and_derived_values() {
        let s = Settings::load(&cli(&[
            "--upstream",
            "http://127.0.0.1:3000/app/",
            "--team-domain",
            "https://acme.cloudflareaccess.com/",
            "--audience",
            AUD,
        ]))
        .unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(s.mode, Mode::Proxy);
        assert_eq!(s.team_domain, "https://acme.cloudflareaccess.com");
        assert_eq!(
            s.certs_url,
            "https://acme.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        let route = s.default_route.unwrap();
        assert_eq!(route.upstream.unwrap().prefix, "/app");
        assert_eq!(s.max_header_bytes, 32 * 1024);
        assert!(s.workers >= 1, "one worker per core");
    }

    #[test]
    fn flags_win_over_file() {
        let f = file(&format!(
            "team_domain = \"https://a.example\"\naudience = [\"{AUD}\"]\nupstream = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:7000\"\n"
        ));
        let s = Settings::merge(&cli(&["--listen", "127.0.0.1:7001"]), f).unwrap();
        assert_eq!(s.listen.port(), 7001);
        assert_eq!(s.team_domain, "https://a.example");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Settings::load(&cli(&["--upstream", "http://x"])).unwrap_err();
        assert!(e.key.starts_with("team_domain"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--upstream",
            "http://x",
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("audience"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--audience",
            AUD,
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("upstream"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--audience",
            AUD,
            "--upstream",
            "https://x",
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("upstream"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--audience",
            AUD,
            "--mode",
            "forward-auth",
            "--allow-from",
            "10.0.0.0/33",
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("allow_from"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--audience",
            AUD,
            "--mode",
            "forward-auth",
            "--inject-header",
            "Host=email",
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("inject_header"), "{e}");
        let e = Settings::load(&cli(&[
            "--team-domain",
            "https://a.example",
            "--audience",
            AUD,
            "--upstream",
            "http://127.0.0.1:1",
            "--workers",
            "0",
        ]))
        .unwrap_err();
        assert!(e.key.starts_with("workers"), "{e}");
        let e = Settings::parse_file("team_domian = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("team_domian"), "{e}");
        let e = Settings::merge(
            &cli(&[]),
            file("team_domain = \"https://a.example\"\n[[routes]]\nhost = \"a.example\"\nupstream = \"http://127.0.0.1:1\"\n"),
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].audiences");
    }

    #[test]
    fn routes_inherit_and_override() {
        let f = file(&format!(
            r#"
team_domain = "https://a.example"
audience = ["{AUD}"]
inject_header = ["X-Country=country"]
[[routes]]
host = "App.Example.com:8443"
upstream = "http://127.0.0.1:3001"
headers = {{ "X-Device" = "/device_posture/os" }}
[[routes]]
host = "other.example.com"
upstream = "http://127.0.0.1:3002"
audiences = ["other"]
"#
        ));
        let s = Settings::merge(&cli(&[]), f).unwrap();
        assert!(s.default_route.is_none());
        assert_eq!(s.routes[0].host.as_deref(), Some("app.example.com"));
        assert_eq!(s.routes[0].audiences, vec![AUD]);
        assert!(s.routes[0].headers.names().any(|n| n == "x-device"));
        assert!(s.routes[0].headers.names().any(|n| n == "x-country"));
        assert_eq!(s.routes[1].audiences, vec!["other"]);
    }

    #[test]
    fn forward_auth_keeps_a_default_route_beside_routes() {
        let f = file(&format!(
            "team_domain = \"https://a.example\"\naudience = [\"{AUD}\"]\nmode = \"forward-auth\"\n[[routes]]\nhost = \"b.example\"\naudiences = [\"other\"]\n"
        ));
        let s = Settings::merge(&cli(&[]), f).unwrap();
        assert_eq!(s.mode, Mode::ForwardAuth);
        assert!(s.default_route.is_some());
        assert!(s.routes[0].upstream.is_none());
    }

    #[test]
    fn upstream_parsing() {
        let u = Upstream::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(u.authority.as_str(), "127.0.0.1:3000");
        assert_eq!(u.prefix, "");
        assert!(Upstream::parse("127.0.0.1:3000").is_err());
        assert!(Upstream::parse("http://u:p@h/").is_err());
    }
}
