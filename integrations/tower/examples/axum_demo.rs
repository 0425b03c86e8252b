//! An axum app behind `AccessLayer`.
//!
//! Against a real team:
//!
//! ```sh
//! PORTCULLIS_TEAM_DOMAIN=https://acme.cloudflareaccess.com \
//! PORTCULLIS_AUD=<application AUD tag> \
//! cargo run -p portcullis-tower --features axum --example axum_demo
//! ```
//!
//! Without those variables it runs a self-contained demo: a throw-away
//! signing key, and `curl` commands with tokens it signed, printed at start.
//! `PORTCULLIS_LOGIN_URL` turns on login redirects for browsers;
//! `RUST_LOG=portcullis=debug` shows every rejection.

use axum::Router;
use axum::routing::get;
use portcullis_core::Validator;
use portcullis_core::test_support::{TestKey, service_claims, static_source, user_claims};
use portcullis_tower::axum::{AccessClaims, AccessRejection, Identity};
use portcullis_tower::{AccessLayer, Rule};

const ADDR: &str = "127.0.0.1:8081";

async fn home(identity: Option<Identity>) -> String {
    match identity {
        Some(who) => format!("hello {}\n", who.name()),
        None => "hello stranger (login is optional here)\n".to_owned(),
    }
}

async fn whoami(identity: Identity) -> String {
    match &*identity {
        portcullis_core::Identity::User { email, sub } => format!("user {email} ({sub})\n"),
        portcullis_core::Identity::Service { common_name } => {
            format!("service token {common_name}\n")
        }
    }
}

async fn admin(claims: AccessClaims) -> Result<String, AccessRejection> {
    Rule::group("admins").check(&claims)?;
    Ok(format!("welcome, admin {}\n", claims.identity().name()))
}

fn validator() -> Result<Validator, Box<dyn std::error::Error>> {
    if let (Ok(team), Ok(aud)) = (
        std::env::var("PORTCULLIS_TEAM_DOMAIN"),
        std::env::var("PORTCULLIS_AUD"),
    ) {
        return Ok(Validator::builder(team).audience(aud).build()?);
    }
    let (issuer, aud) = ("https://demo.portcullis.invalid", "demo-aud");
    let key = TestKey::rsa();
    let user = key.sign(&user_claims(issuer, aud, "ada@example.com"));
    let bot = key.sign(&service_claims(issuer, aud, "deploy-bot.access"));
    println!("demo mode: try");
    println!("  curl -i http://{ADDR}/");
    println!("  curl -i http://{ADDR}/whoami");
    println!("  curl -i http://{ADDR}/whoami -H 'Cf-Access-Jwt-Assertion: {user}'");
    println!("  curl -i http://{ADDR}/whoami --cookie 'CF_Authorization={bot}'");
    println!("  curl -i http://{ADDR}/admin -H 'Cf-Access-Jwt-Assertion: {user}'");
    Ok(Validator::builder(issuer)
        .audience(aud)
        .key_source(static_source(&[&key]))
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut layer = AccessLayer::new(validator()?)
        .require(Rule::email_domain("example.com").or(Rule::service_token("deploy-bot.access")))
        .exclude("/healthz")
        .optional("/");
    if let Ok(login) = std::env::var("PORTCULLIS_LOGIN_URL") {
        layer = layer.redirect_to(login)?;
    }
    let app = Router::new()
        .route("/", get(home))
        .route("/whoami", get(whoami))
        .route("/admin", get(admin))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(layer);
    println!("listening on http://{ADDR}");
    let listener = tokio::net::TcpListener::bind(ADDR).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
