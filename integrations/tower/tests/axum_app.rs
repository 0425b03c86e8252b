//! The contract over a real socket: an axum app behind `AccessLayer`.

mod common;

use axum::Router;
use axum::routing::get;
use common::{BOT, Fixture, PARTNER_AUD, TestApp};
use portcullis_tower::axum::{AccessClaims, AccessRejection, Identity};
use portcullis_tower::{AccessLayer, Rule};

fn describe(identity: &portcullis_core::Identity) -> String {
    match identity {
        portcullis_core::Identity::User { email, .. } => format!("user:{email}"),
        portcullis_core::Identity::Service { common_name } => format!("service:{common_name}"),
    }
}

async fn whoami(identity: Identity) -> String {
    describe(&identity)
}

async fn home(identity: Option<Identity>) -> String {
    identity.map_or_else(|| "anonymous".to_owned(), |i| describe(&i))
}

async fn admin(claims: AccessClaims) -> Result<String, AccessRejection> {
    Rule::group("admins").check(&claims)?;
    Ok(format!("admin:{}", claims.identity().name()))
}

async fn start() -> TestApp {
    let fx = Fixture::new().await;
    let validator = fx.validator();
    let partner = AccessLayer::new(validator.with_audiences([PARTNER_AUD]).unwrap());
    let guard = AccessLayer::new(validator)
        .require(Rule::email_domain("example.com").or(Rule::service_token(BOT)))
        .exclude("/healthz")
        .optional("/home")
        .exclude_prefix("/partner")
        .redirect_to(fx.login_url())
        .unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/home", get(home))
        .route("/admin", get(admin))
        .route("/healthz", get(|| async { "ok" }))
        .route("/healthz/x", get(|| async { "not excluded" }))
        .nest(
            "/partner",
            Router::new().route("/whoami", get(whoami)).layer(partner),
        )
        .layer(guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    TestApp {
        base,
        fx,
        server: Box::new(AbortOnDrop(server)),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

contract_tests!(start);
