//! `portcullis-gateway quickstart`: a working gateway with zero set-up.
//!
//! On 127.0.0.1 it runs the gateway on SQLite in the data directory
//! (default `./portcullis-data`), a local-users provider with one generated
//! user, and a built-in demo origin, "whoami", which validates the token
//! the gateway forwards with portcullis-core and shows the identity in it.
//! Host names are under `.localhost` (`auth.localhost:8080`,
//! `whoami.localhost:8080`), which browsers and curl resolve to 127.0.0.1
//! with no set-up. A second run reuses the data directory: same user,
//! same password, same signing keys.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use tokio::net::TcpListener;

use crate::response::{Body, full};

/// The user the quickstart creates.
pub const QUICKSTART_EMAIL: &str = "demo@portcullis.localhost";
const PASSWORD_FILE: &str = "quickstart-password";
const USERS_FILE: &str = "quickstart-users.toml";

/// Options of `quickstart`.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Port of the public listener on 127.0.0.1.
    pub port: u16,
}

/// What a started quickstart tells its user.
#[derive(Debug, Clone)]
pub struct QuickstartInfo {
    /// The URL to open.
    pub url: String,
    /// The team domain.
    pub team_domain: String,
    /// The user's email.
    pub email: String,
    /// The user's password.
    pub password: String,
    /// The data directory (absolute).
    pub data_dir: PathBuf,
    /// Whether the data directory existed with a user already.
    pub reused: bool,
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Creates (or reuses) the user and its password in `dir`.
fn ensure_user(dir: &Path) -> Result<(String, bool), String> {
    let password_path = dir.join(PASSWORD_FILE);
    let users_path = dir.join(USERS_FILE);
    if let (Ok(password), true) = (std::fs::read_to_string(&password_path), users_path.exists()) {
        let password = password.trim().to_owned();
        if !password.is_empty() {
            return Ok((password, true));
        }
    }
    let password = crate::crypto::random_hex::<10>();
    let hash = crate::users::hash_password(&password)?;
    let users = format!(
        "# Users of the quickstart's local provider. Add more with\n\
         #   portcullis-gateway hash-password\n\
         [[users]]\nemail = \"{QUICKSTART_EMAIL}\"\nname = \"Demo User\"\ngroups = [\"demo\"]\npassword_hash = \"{hash}\"\n"
    );
    write_private(&users_path, &users).map_err(|e| format!("{}: {e}", users_path.display()))?;
    write_private(&password_path, &format!("{password}\n"))
        .map_err(|e| format!("{}: {e}", password_path.display()))?;
    Ok((password, false))
}

/// The configuration the quickstart runs with.
pub fn config_text(dir: &Path, port: u16, whoami: SocketAddr) -> String {
    let dir = dir.display().to_string().replace('\\', "/");
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
team_domain = "http://auth.localhost:{port}"
log_format = "text"

[storage]
data_dir = "{dir}"
url = "sqlite://{dir}/portcullis.db"

[[identity_providers]]
id = "local"
type = "local"
name = "Quickstart users"
users_file = "{dir}/{USERS_FILE}"

[[apps]]
name = "whoami"
domain = "whoami.localhost:{port}"
origin = "http://{whoami}"
session_duration = "24h"

[[apps.policies]]
name = "signed-in people"
decision = "allow"
include = [{{ everyone = true }}]
"#
    )
}

/// Starts everything; returns the running gateway and what to print.
pub async fn start(
    options: &QuickstartOptions,
) -> Result<(crate::RunningGateway, QuickstartInfo), String> {
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.data_dir.display()))?;
    let dir = std::fs::canonicalize(&options.data_dir)
        .map_err(|e| format!("{}: {e}", options.data_dir.display()))?;
    let (password, reused) = ensure_user(&dir)?;
    let whoami_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the whoami origin: {e}"))?;
    let whoami_addr = whoami_listener
        .local_addr()
        .map_err(|e| format!("whoami origin: {e}"))?;
    let text = config_text(&dir, options.port, whoami_addr);
    let config = crate::Config::parse(&text, &dir, &|_| None).map_err(|e| e.to_string())?;
    let team_domain = config.server.team_domain.clone();
    let running = crate::server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let port = running.addr.port();
    let aud = running
        .gateway
        .apps
        .first()
        .map(|a| a.aud.clone())
        .unwrap_or_default();
    // The demo origin fetches the certs like any origin would; the
    // `.localhost` name is pinned to the gateway's address.
    let http = reqwest::Client::builder()
        .resolve("auth.localhost", running.addr)
        .build()
        .map_err(|e| e.to_string())?;
    let source = portcullis_core::KeySource::remote(format!(
        "{team_domain}{}",
        portcullis_core::wire::CERTS_PATH
    ))
    .http_client(http)
    .build()
    .map_err(|e| e.to_string())?;
    let validator = portcullis_core::Validator::builder(team_domain.clone())
        .audience(aud)
        .key_source(source)
        .build()
        .map_err(|e| e.to_string())?;
    tokio::spawn(serve_whoami(
        whoami_listener,
        Arc::new(validator),
        team_domain.clone(),
    ));
    let info = QuickstartInfo {
        url: format!("http://whoami.localhost:{port}/"),
        team_domain,
        email: QUICKSTART_EMAIL.to_owned(),
        password,
        data_dir: dir,
        reused,
    };
    Ok((running, info))
}

/// Runs the quickstart until Ctrl-C, printing where to go.
pub async fn run(options: QuickstartOptions) -> Result<(), String> {
    let (running, info) = start(&options).await?;
    println!();
    println!("Portcullis quickstart is running.");
    println!();
    println!("  Open:        {}", info.url);
    println!("  User:        {}", info.email);
    println!("  Password:    {}", info.password);
    println!();
    println!("  Team domain: {}", info.team_domain);
    println!(
        "  Data:        {} ({})",
        info.data_dir.display(),
        if info.reused {
            "reused: same user, same keys"
        } else {
            "created; a second run reuses it"
        }
    );
    println!("  Sign out:    {}cdn-cgi/access/logout", info.url);
    println!();
    println!("Press Ctrl-C to stop.");
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    running.run_until(crate::server::shutdown_signal()).await;
    Ok(())
}

async fn serve_whoami(
    listener: TcpListener,
    validator: Arc<portcullis_core::Validator>,
    team_domain: String,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let validator = validator.clone();
        let team_domain = team_domain.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let validator = validator.clone();
                let team_domain = team_domain.clone();
                async move { Ok::<_, Infallible>(whoami(&validator, &team_domain, &req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The demo origin: validates `Cf-Access-Jwt-Assertion` with
/// portcullis-core and shows the identity (HTML for browsers, else JSON).
async fn whoami(
    validator: &portcullis_core::Validator,
    team_domain: &str,
    req: &Request<Incoming>,
) -> Response<Body> {
    let token = req
        .headers()
        .get(JWT_ASSERTION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (status, doc) = match validator.validate(token).await {
        Ok(claims) => (
            StatusCode::OK,
            serde_json::json!({
                "validated_by": "portcullis-core",
                "email": claims.email,
                "name": claims.extra.get("name"),
                "sub": claims.sub,
                "groups": claims.groups(),
                "login_method": claims.extra.get("login_method"),
                "country": claims.country,
                "issuer": claims.iss,
                "expires": crate::service_tokens::rfc3339(claims.exp),
                "claims": &*claims,
            }),
        ),
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": e.code().as_str(), "message": e.to_string()}),
        ),
    };
    let pretty = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let wants_html = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let mut response = if wants_html {
        let title = if status == StatusCode::OK {
            "You are signed in"
        } else {
            "No valid identity"
        };
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>whoami</title></head><body style=\"font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem\">\
             <h1>{title}</h1><p>This is the quickstart's demo origin. It validated the \
             <code>Cf-Access-Jwt-Assertion</code> header with portcullis-core against \
             <code>{}/cdn-cgi/access/certs</code>:</p><pre style=\"background:#f3f4f6;padding:1rem;overflow:auto\">{}</pre>\
             <p><a href=\"/cdn-cgi/access/logout\">Sign out</a></p></body></html>",
            crate::page::escape(team_domain),
            crate::page::escape(&pretty)
        );
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    } else {
        let mut r = Response::new(full(pretty + "\n"));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    *response.status_mut() = status;
    response
}
