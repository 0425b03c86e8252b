//! Logins over real sockets: OIDC against the in-process mock provider,
//! local users, SSO, revocation, logout, open redirects, get-identity.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use common::mock_op::{CLIENT_SECRET, LEAKY_VALUE, Misbehave, MockOp};
use common::{ADMIN_TOKEN, Backend, Echo};
use portcullis_gateway::RunningGateway;
use portcullis_gateway::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;

const HOSTS: [&str; 6] = [
    "auth.test",
    "app1.test",
    "app2.test",
    "local.test",
    "mixed.test",
    "evil.test",
];
const ALICE_PASSWORD: &str = "correct horse battery";

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    url: String,
}

impl Resp {
    fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// A browser: keeps cookies per host (ignoring paths), sends navigation
/// headers, and follows redirects by hand.
struct Browser {
    client: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

fn host_of(url: &str) -> String {
    url::Url::parse(url).unwrap().host_str().unwrap().to_owned()
}

impl Browser {
    fn new(port: u16) -> Browser {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        for h in HOSTS {
            b = b.resolve(h, addr);
        }
        Browser {
            client: b.build().unwrap(),
            jar: HashMap::new(),
        }
    }

    fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host).and_then(|c| c.get(name)).cloned()
    }

    fn set(&mut self, host: &str, name: &str, value: &str) {
        self.jar
            .entry(host.to_owned())
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }

    async fn send(&mut self, rb: reqwest::RequestBuilder, url: &str) -> Resp {
        let host = host_of(url);
        let mut rb = rb;
        if let Some(c) = self.jar.get(&host).filter(|c| !c.is_empty()) {
            let header: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rb = rb.header("cookie", header.join("; "));
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        for sc in headers.get_all("set-cookie") {
            let sc = sc.to_str().unwrap();
            let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
            let (k, v) = pair.split_once('=').unwrap();
            assert!(attrs.contains("HttpOnly"), "cookie {k} must be HttpOnly");
            assert!(
                attrs.contains("SameSite=Lax"),
                "cookie {k} must be SameSite=Lax"
            );
            if attrs.contains("Max-Age=0") {
                self.jar.entry(host.clone()).or_default().remove(k);
            } else {
                self.set(&host, k, v);
            }
        }
        let body = r.text().await.unwrap();
        Resp {
            status,
            headers,
            body,
            url: url.to_owned(),
        }
    }

    async fn get(&mut self, url: &str) -> Resp {
        let rb = self
            .client
            .get(url)
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate");
        self.send(rb, url).await
    }

    async fn fetch(&mut self, url: &str) -> Resp {
        let rb = self.client.get(url).header("sec-fetch-mode", "cors");
        self.send(rb, url).await
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Resp {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let rb = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(rb, url).await
    }

    /// Follows redirects from `r`; returns every response, the last one last.
    async fn follow(&mut self, mut r: Resp) -> Vec<Resp> {
        let mut chain = Vec::new();
        for _ in 0..12 {
            let Some(loc) = r.location().filter(|_| (300..400).contains(&r.status)) else {
                break;
            };
            let next = url::Url::parse(&r.url)
                .unwrap()
                .join(&loc)
                .unwrap()
                .to_string();
            chain.push(r);
            r = self.get(&next).await;
        }
        chain.push(r);
        chain
    }

    async fn visit(&mut self, url: &str) -> Vec<Resp> {
        let r = self.get(url).await;
        self.follow(r).await
    }
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end]
        .replace("&amp;", "&")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

struct H {
    backend: Backend,
    echo: Echo,
    op: MockOp,
    gw: Option<RunningGateway>,
    config: Config,
    port: u16,
}

fn users_file(dir: &std::path::Path) {
    let alice = portcullis_gateway::users::hash_password(ALICE_PASSWORD).unwrap();
    let bob = portcullis_gateway::users::hash_password("bob-password").unwrap();
    std::fs::write(
        dir.join("users.toml"),
        format!(
            "[[users]]\nemail = \"alice@example.com\"\nname = \"Alice\"\ngroups = [\"eng\"]\npassword_hash = \"{alice}\"\n\n\
             [[users]]\nemail = \"bob@example.com\"\npassword_hash = \"{bob}\"\n"
        ),
    )
    .unwrap();
}

fn config_text(
    b: &Backend,
    port: u16,
    admin_port: u16,
    origin: SocketAddr,
    issuer: &str,
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

[login]
max_failures_per_account = 3
max_failures_per_address = 100
failure_window = "1m"

[[identity_providers]]
id = "corp"
type = "oidc"
name = "Corp SSO"
issuer = "{issuer}"
client_id = "portcullis-client"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "email", "profile"]
groups_claim = "groups"

[[identity_providers]]
id = "local"
type = "local"
users_file = "users.toml"

[[apps]]
name = "app1"
domain = "app1.test:{port}"
origin = "http://{origin}"
identity_providers = ["corp"]
token_groups = ["eng"]

[[apps.policies]]
name = "people"
decision = "allow"
include = [{{ everyone = true }}]

[[apps]]
name = "app2"
domain = "app2.test:{port}"
origin = "http://{origin}"
identity_providers = ["corp"]

[[apps.policies]]
name = "ops"
decision = "allow"
include = [{{ group = "ops" }}]

[[apps]]
name = "local"
domain = "local.test:{port}"
origin = "http://{origin}"
identity_providers = ["local"]

[[apps.policies]]
name = "local people"
decision = "allow"
include = [{{ login_method = "local" }}]

[[apps]]
name = "mixed"
domain = "mixed.test:{port}"
origin = "http://{origin}"

[[apps.policies]]
name = "people"
decision = "allow"
include = [{{ everyone = true }}]
"#,
        url = b.url,
        dir = b.dir.display(),
    )
}

async fn start_gateway(config: &Config) -> RunningGateway {
    let listener = TcpListener::bind(config.server.listen).await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    portcullis_gateway::start_with_listeners(config.clone(), listener, admin)
        .await
        .unwrap()
}

impl H {
    async fn start(backend: Backend) -> H {
        let echo = Echo::start().await;
        let op = MockOp::start().await;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        users_file(&backend.dir);
        let text = config_text(&backend, port, 0, echo.addr, &op.issuer);
        let config = Config::from_toml_str(&text, &backend.dir).unwrap();
        let gw = start_gateway(&config).await;
        H {
            backend,
            echo,
            op,
            gw: Some(gw),
            config,
            port,
        }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    fn browser(&self) -> Browser {
        Browser::new(self.port)
    }

    async fn admin_post(&self, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!(
                "http://{}{path}",
                self.gw.as_ref().unwrap().admin_addr
            ))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
        self.backend.cleanup().await;
    }

    /// Logs in at the local app with the form; returns the final response.
    async fn local_login(&self, b: &mut Browser, email: &str, password: &str) -> Vec<Resp> {
        let chain = b.visit(&self.url("local.test", "/")).await;
        let page = chain.last().unwrap();
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = form_value(&page.body, "csrf_token");
        let target = form_value(&page.body, "redirect_url");
        let action = page.url.clone();
        let r = b
            .post_form(
                &action,
                &[
                    ("email", email),
                    ("password", password),
                    ("csrf_token", &csrf),
                    ("redirect_url", &target),
                ],
            )
            .await;
        b.follow(r).await
    }
}

async fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::sqlite()];
    if let Some(pg) = Backend::postgres().await {
        v.push(pg);
    }
    v
}

#[tokio::test]
async fn oidc_login_userinfo_sso_and_get_identity() {
    for backend in backends().await {
        let h = H::start(backend).await;
        let mut b = h.browser();
        // A fetch without a session gets JSON, not a redirect.
        let xhr = b.fetch(&h.url("app1.test", "/x")).await;
        assert_eq!(xhr.status, 401);
        assert!(xhr.body.contains("missing_token"));
        let chain = b.visit(&h.url("app1.test", "/hello?a=1")).await;
        let first = &chain[0];
        assert_eq!(first.status, 302);
        assert!(
            first.location().unwrap().starts_with(&format!(
                "http://auth.test:{}/cdn-cgi/access/login/app1.test:{}?redirect_url=",
                h.port, h.port
            )),
            "{:?}",
            first.location()
        );
        let last = chain.last().unwrap();
        assert_eq!(last.status, 200, "{}", last.body);
        assert!(last.url.ends_with("/hello?a=1"));
        let seen = h.echo.last();
        let claims = claims_of(&seen["cf-access-jwt-assertion"]);
        assert_eq!(claims["email"], "carol@example.com");
        assert_eq!(claims["type"], "app");
        assert_eq!(claims["sub"], "user-0001");
        assert_eq!(claims["login_method"], "corp");
        assert_eq!(
            claims["groups"],
            serde_json::json!(["eng"]),
            "token_groups limits groups"
        );
        assert_eq!(claims["iss"], format!("http://auth.test:{}", h.port));
        let aud1 = &h.gw.as_ref().unwrap().gateway.apps[0].aud;
        assert_eq!(claims["aud"], serde_json::json!([aud1]));
        assert!(claims["identity_nonce"].is_string());
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            86_400
        );
        assert_eq!(
            seen["cf-access-authenticated-user-email"],
            "carol@example.com"
        );
        assert_eq!(h.op.count("authorize"), 1);
        assert_eq!(h.op.count("token"), 1);
        assert_eq!(h.op.count("userinfo"), 1);
        // SSO: app2 (a group policy on ops) without asking the provider.
        let chain = b.visit(&h.url("app2.test", "/")).await;
        assert_eq!(
            chain.last().unwrap().status,
            200,
            "{}",
            chain.last().unwrap().body
        );
        assert_eq!(
            h.op.count("authorize"),
            1,
            "one provider round trip for two apps"
        );
        assert_eq!(h.op.count("token"), 1);
        let claims2 = claims_of(&h.echo.last()["cf-access-jwt-assertion"]);
        assert_eq!(claims2["groups"], serde_json::json!(["eng", "ops"]));
        // get-identity on the team domain and on an app host.
        for url in [
            h.url("auth.test", "/cdn-cgi/access/get-identity"),
            h.url("app1.test", "/cdn-cgi/access/get-identity"),
        ] {
            let r = b.fetch(&url).await;
            assert_eq!(r.status, 200, "{url}");
            let id: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(id["email"], "carol@example.com");
            assert_eq!(id["name"], "Carol");
            assert_eq!(id["sub"], "user-0001");
            assert_eq!(id["groups"], serde_json::json!(["eng", "ops"]));
            assert_eq!(id["idp"], serde_json::json!({"id": "corp", "type": "oidc"}));
            assert!(id["login_time"].is_string());
        }
        let anon = h
            .browser()
            .fetch(&h.url("auth.test", "/cdn-cgi/access/get-identity"))
            .await;
        assert_eq!(anon.status, 401);
        // The team cookie is an org token.
        let org = claims_of(&b.cookie("auth.test", "CF_Authorization").unwrap());
        assert_eq!(org["type"], "org");
        h.stop().await;
    }
}

async fn oidc_attempt(h: &H) -> Vec<Resp> {
    let mut b = h.browser();
    b.visit(&h.url("app1.test", "/")).await
}

#[tokio::test]
async fn oidc_refusals_and_key_rotation() {
    let h = H::start(Backend::sqlite()).await;
    for (m, expect) in [
        (Misbehave::WrongIss, "issuer"),
        (Misbehave::MissingSub, "sub"),
        (Misbehave::WrongAud, "audience"),
        (Misbehave::MissingIat, "iat"),
        (Misbehave::BadSignature, "signature"),
        (Misbehave::AlgNone, "signature"),
        (Misbehave::Expired, "expire"),
        (Misbehave::UserinfoSub, "sub differs"),
        (Misbehave::WrongNonce, "nonce"),
    ] {
        h.op.misbehave(m);
        let userinfo_before = h.op.count("userinfo");
        let chain = oidc_attempt(&h).await;
        let last = chain.last().unwrap();
        assert_eq!(last.status, 401, "{m:?}: {}", last.body);
        assert!(last.body.contains("Sign-in failed"), "{m:?}: {}", last.body);
        assert!(
            last.body.to_ascii_lowercase().contains(expect),
            "{m:?} should name {expect}: {}",
            last.body
        );
        assert!(
            last.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        if m == Misbehave::WrongNonce {
            assert_eq!(
                h.op.count("userinfo"),
                userinfo_before,
                "no userinfo call after a bad nonce"
            );
        }
    }
    // No kid, a single key: accepted.
    h.op.misbehave(Misbehave::NoKid);
    let chain = oidc_attempt(&h).await;
    assert_eq!(
        chain.last().unwrap().status,
        200,
        "{}",
        chain.last().unwrap().body
    );
    // The provider rotates its key: the JWKS is fetched again.
    h.op.misbehave(Misbehave::None);
    let jwks_before = h.op.count("jwks");
    h.op.rotate_key();
    let chain = oidc_attempt(&h).await;
    assert_eq!(
        chain.last().unwrap().status,
        200,
        "{}",
        chain.last().unwrap().body
    );
    assert!(h.op.count("jwks") > jwks_before);
    h.stop().await;
}

/// Everything logged in this test process from the moment
/// [`capture_logs`] is first called (all tests' lines, which is fine: they
/// are only searched for a value no other test produces).
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

#[derive(Clone)]
struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = LogSink(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,portcullis_gateway=trace,portcullis_core=trace",
            ))
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        buf
    })
    .clone()
}

#[tokio::test]
async fn provider_values_never_reach_pages_or_logs() {
    let logs = capture_logs();
    let h = H::start(Backend::sqlite()).await;
    for (m, expect) in [
        (
            Misbehave::MalformedTokenField,
            "the token response could not be parsed",
        ),
        (Misbehave::MalformedIdTokenClaim, "could not be parsed"),
        (Misbehave::MalformedUserinfo, "userinfo"),
    ] {
        h.op.misbehave(m);
        let chain = oidc_attempt(&h).await;
        let last = chain.last().unwrap();
        assert_eq!(last.status, 401, "{m:?}: {}", last.body);
        assert!(last.body.contains("Sign-in failed"), "{m:?}: {}", last.body);
        assert!(last.body.contains(expect), "{m:?}: {}", last.body);
        for r in &chain {
            assert!(
                !r.body.contains(LEAKY_VALUE),
                "{m:?} page leaks: {}",
                r.body
            );
            assert!(!r.body.contains("sk_live"), "{m:?} page leaks: {}", r.body);
        }
    }
    // A refused callback that carries provider text shows only the code.
    h.op.misbehave(Misbehave::None);
    let mut b = h.browser();
    let mut r = b.get(&h.url("app1.test", "/")).await;
    while !r.location().unwrap().contains("/cdn-cgi/access/callback") {
        r = b.get(&r.location().unwrap()).await;
    }
    let callback = url::Url::parse(&r.location().unwrap()).unwrap();
    let state: String = callback
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let denied = b
        .get(&format!(
            "{}?state={state}&error=access_denied&error_description={LEAKY_VALUE}",
            h.url("auth.test", "/cdn-cgi/access/callback")
        ))
        .await;
    assert_eq!(denied.status, 401, "{}", denied.body);
    assert!(denied.body.contains("access_denied"), "{}", denied.body);
    assert!(!denied.body.contains(LEAKY_VALUE), "{}", denied.body);
    h.stop().await;

    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("OIDC sign-in refused") && logged.contains("token_exchange"),
        "the refusals were logged (else this test checks nothing): {logged}"
    );
    assert!(!logged.contains(LEAKY_VALUE), "a log line leaks: {logged}");
    assert!(!logged.contains("sk_live"), "a log line leaks: {logged}");
}

#[tokio::test]
async fn discovery_issuer_mismatch_state_and_replayed_code() {
    let h = H::start(Backend::sqlite()).await;
    h.op.misbehave(Misbehave::DiscoveryIssuer);
    let chain = oidc_attempt(&h).await;
    let last = chain.last().unwrap();
    assert_eq!(last.status, 502, "{}", last.body);
    assert!(last.body.contains("Corp SSO is unavailable"));
    // On an app that also allows local users, the other way keeps working.
    let mut m = h.browser();
    let page = m.visit(&h.url("mixed.test", "/")).await.pop().unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Continue with Corp SSO") && page.body.contains("<form"));
    let corp = m
        .get(&format!(
            "http://auth.test:{}/cdn-cgi/access/login/mixed.test:{}?idp=corp&redirect_url=%2F",
            h.port, h.port
        ))
        .await;
    assert_eq!(corp.status, 502);
    assert!(corp.body.contains("Corp SSO is unavailable") && corp.body.contains("<form"));
    let r = m
        .post_form(
            &page.url,
            &[
                ("email", "alice@example.com"),
                ("password", ALICE_PASSWORD),
                ("csrf_token", &form_value(&corp.body, "csrf_token")),
                ("redirect_url", &form_value(&corp.body, "redirect_url")),
            ],
        )
        .await;
    assert_eq!(m.follow(r).await.pop().unwrap().status, 200);
    h.op.misbehave(Misbehave::None);
    // Stop at the callback.
    let mut b = h.browser();
    let mut r = b.get(&h.url("app1.test", "/")).await;
    while !r.location().unwrap().contains("/cdn-cgi/access/callback") {
        let loc = r.location().unwrap();
        r = b.get(&loc).await;
    }
    let callback = r.location().unwrap();
    let saved = b.cookie("auth.test", "portcullis_oidc").unwrap();
    let tampered = callback.replace("state=", "state=x");
    let bad = b.get(&tampered).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("state mismatch"), "{}", bad.body);
    // The real callback works once...
    b.set("auth.test", "portcullis_oidc", &saved);
    let first = b.get(&callback).await;
    let ok = b.follow(first).await;
    assert_eq!(ok.last().unwrap().status, 200);
    // ...and a replay is refused by the provider.
    let mut replayer = h.browser();
    replayer.set("auth.test", "portcullis_oidc", &saved);
    let replay = replayer.get(&callback).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(replay.body.contains("Sign-in failed"));
    assert!(replayer.cookie("auth.test", "CF_Authorization").is_none());
    // Without the pre-login cookie the callback is refused outright.
    let bare = h.browser().get(&callback).await;
    assert_eq!(bare.status, 400);
    h.stop().await;
}

#[tokio::test]
async fn local_login_csrf_and_lockout() {
    for backend in backends().await {
        let h = H::start(backend).await;
        let mut b = h.browser();
        let chain = b.visit(&h.url("local.test", "/")).await;
        let page = chain.last().unwrap();
        assert_eq!(page.status, 200);
        assert!(page.body.contains("<form method=\"post\""));
        assert!(page.body.contains("name=\"email\"") && page.body.contains("name=\"password\""));
        assert!(!page.body.contains("<script"));
        let target = form_value(&page.body, "redirect_url");
        // Missing CSRF token: refused.
        let r = b
            .post_form(
                &page.url,
                &[
                    ("email", "alice@example.com"),
                    ("password", ALICE_PASSWORD),
                    ("redirect_url", &target),
                ],
            )
            .await;
        assert_eq!(r.status, 403);
        // Each rendering of the form comes with a fresh token.
        let mut csrf = form_value(&r.body, "csrf_token");
        assert_ne!(csrf, form_value(&page.body, "csrf_token"));
        // Wrong password and unknown user: the same answer.
        for (email, pw) in [
            ("alice@example.com", "nope"),
            ("nobody@example.com", "nope"),
        ] {
            let r = b
                .post_form(
                    &page.url,
                    &[
                        ("email", email),
                        ("password", pw),
                        ("csrf_token", &csrf),
                        ("redirect_url", &target),
                    ],
                )
                .await;
            assert_eq!(r.status, 401);
            assert!(r.body.contains("Wrong email or password."));
            assert_eq!(
                form_value(&r.body, "email"),
                email,
                "email kept, password not"
            );
            csrf = form_value(&r.body, "csrf_token");
        }
        let chain = h
            .local_login(&mut b, "alice@example.com", ALICE_PASSWORD)
            .await;
        let last = chain.last().unwrap();
        assert_eq!(last.status, 200, "{}", last.body);
        let claims = claims_of(&h.echo.last()["cf-access-jwt-assertion"]);
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["login_method"], "local");
        // Lock-out after 3 failures, even with the right password.
        let mut m = h.browser();
        for _ in 0..3 {
            let c = h.local_login(&mut m, "bob@example.com", "wrong").await;
            let status = c.last().unwrap().status;
            assert!(status == 401 || status == 429, "{status}");
        }
        let c = h
            .local_login(&mut m, "bob@example.com", "bob-password")
            .await;
        assert_eq!(c.last().unwrap().status, 429);
        assert!(
            c.last()
                .unwrap()
                .body
                .contains("Too many failed sign-in attempts")
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn revocation_and_logout() {
    for backend in backends().await {
        let is_pg = backend.pg_db.is_some();
        let h = H::start(backend).await;
        let mut b = h.browser();
        assert_eq!(
            h.local_login(&mut b, "alice@example.com", ALICE_PASSWORD)
                .await
                .last()
                .unwrap()
                .status,
            200
        );
        let app_cookie = b.cookie("local.test", "CF_Authorization").unwrap();
        // A second replica on the same database (PostgreSQL only).
        let replica = if is_pg {
            let mut config = h.config.clone();
            config.server.listen = "127.0.0.1:0".parse().unwrap();
            Some(start_gateway(&config).await)
        } else {
            None
        };
        let on_replica = |cookie: String| {
            let addr = replica.as_ref().map(|r| r.addr);
            let host = format!("local.test:{}", h.port);
            async move {
                reqwest::Client::new()
                    .get(format!("http://{}/", addr.unwrap()))
                    .header("host", host)
                    .header("cookie", format!("CF_Authorization={cookie}"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        if replica.is_some() {
            assert_eq!(on_replica(app_cookie.clone()).await, 200);
        }
        let revoked = h
            .admin_post(
                "/admin/v1/sessions/revoke",
                serde_json::json!({"email": "alice@example.com"}),
            )
            .await;
        assert_eq!(revoked["revoked"], 1);
        let r = b.fetch(&h.url("local.test", "/")).await;
        assert_eq!(r.status, 401, "revoked at once on this replica");
        assert!(r.body.contains("expired"));
        if replica.is_some() {
            let started = std::time::Instant::now();
            while on_replica(app_cookie.clone()).await != 401 {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "revocation reaches other replicas within 5 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        // The team session is gone too: the login page asks again.
        let chain = b.visit(&h.url("local.test", "/")).await;
        assert!(chain.last().unwrap().body.contains("<form"));
        // Log in again, then log out on the app host.
        assert_eq!(
            h.local_login(&mut b, "alice@example.com", ALICE_PASSWORD)
                .await
                .last()
                .unwrap()
                .status,
            200
        );
        let cookie = b.cookie("local.test", "CF_Authorization").unwrap();
        let out = b.get(&h.url("local.test", "/cdn-cgi/access/logout")).await;
        assert_eq!(out.status, 200);
        assert!(out.body.contains("signed out"));
        assert!(b.cookie("local.test", "CF_Authorization").is_none());
        b.set("local.test", "CF_Authorization", &cookie);
        assert_eq!(
            b.fetch(&h.url("local.test", "/")).await.status,
            401,
            "old cookie is useless"
        );
        // Team-domain logout.
        let mut t = h.browser();
        assert_eq!(
            h.local_login(&mut t, "alice@example.com", ALICE_PASSWORD)
                .await
                .last()
                .unwrap()
                .status,
            200
        );
        let out = t.get(&h.url("auth.test", "/cdn-cgi/access/logout")).await;
        assert_eq!(out.status, 200);
        assert!(t.cookie("auth.test", "CF_Authorization").is_none());
        assert_eq!(t.fetch(&h.url("local.test", "/")).await.status, 401);
        if let Some(r) = replica {
            r.shutdown().await;
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn open_redirects_and_bad_codes_are_refused() {
    let h = H::start(Backend::sqlite()).await;
    let mut b = h.browser();
    let port = h.port;
    let login = |target: &str| {
        format!(
            "http://auth.test:{port}/cdn-cgi/access/login/local.test:{port}?redirect_url={}",
            url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        )
    };
    for evil in [
        "http://evil.test/".to_owned(),
        "//evil.test/x".to_owned(),
        "/\\evil.test".to_owned(),
        format!("http://app2.test:{port}/"),
        format!("https://local.test:{port}/"),
        format!("http://user@local.test:{port}/"),
        format!("http://local.test:{port}.evil.test/"),
        "javascript:alert(1)".to_owned(),
    ] {
        let r = b.get(&login(&evil)).await;
        assert_eq!(r.status, 400, "{evil}: {}", r.body);
        assert!(r.body.contains("Invalid redirect"), "{evil}");
    }
    let ok = b.get(&login("/dashboard?x=1")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        form_value(&ok.body, "redirect_url"),
        format!("http://local.test:{port}/dashboard?x=1")
    );
    // The form's redirect_url is checked too.
    let csrf = form_value(&ok.body, "csrf_token");
    let r = b
        .post_form(
            &ok.url,
            &[
                ("email", "alice@example.com"),
                ("password", ALICE_PASSWORD),
                ("csrf_token", &csrf),
                ("redirect_url", "http://evil.test/"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        b.get(&format!(
            "http://auth.test:{port}/cdn-cgi/access/login/nowhere.test"
        ))
        .await
        .status,
        404
    );
    let bogus = b
        .get(&h.url("local.test", "/cdn-cgi/access/authorized?code=00"))
        .await;
    assert_eq!(bogus.status, 400);
    // A code works once, and only on its own app.
    let r = b
        .post_form(
            &ok.url,
            &[
                ("email", "alice@example.com"),
                ("password", ALICE_PASSWORD),
                ("csrf_token", &csrf),
                ("redirect_url", "/"),
            ],
        )
        .await;
    let authorized = r.location().unwrap();
    assert!(authorized.starts_with(&format!(
        "http://local.test:{port}/cdn-cgi/access/authorized?code="
    )));
    let elsewhere = authorized.replace("local.test", "mixed.test");
    assert_eq!(b.get(&elsewhere).await.status, 400, "code bound to its app");
    assert_eq!(
        b.get(&authorized).await.status,
        400,
        "the failed attempt consumed the code"
    );
    h.stop().await;
}
