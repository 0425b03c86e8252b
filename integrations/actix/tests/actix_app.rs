//! The contract over a real socket: an actix-web app behind `AccessGuard`.
//! The scenarios are shared with the tower integration's tests.

#[path = "../../tower/tests/common/mod.rs"]
mod common;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, HttpServer, web};
use common::{BOT, Fixture, PARTNER_AUD, TestApp};
use portcullis_actix::{AccessClaims, AccessError, AccessGuard, Identity, Rule};

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

async fn admin(claims: AccessClaims) -> Result<HttpResponse, AccessError> {
    Rule::group("admins").check(&claims)?;
    Ok(HttpResponse::Ok().body(format!("admin:{}", claims.identity().name())))
}

struct StopOnDrop(ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // `stop` sends the command at once; the returned future only
        // waits for completion.
        drop(self.0.stop(false));
    }
}

async fn start() -> TestApp {
    let fx = Fixture::new().await;
    let validator = fx.validator();
    let partner = AccessGuard::new(validator.with_audiences([PARTNER_AUD]).unwrap());
    let guard = AccessGuard::new(validator)
        .require(Rule::email_domain("example.com").or(Rule::service_token(BOT)))
        .exclude("/healthz")
        .optional("/home")
        .exclude_prefix("/partner")
        .redirect_to(fx.login_url())
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(guard.clone())
                    .route("/whoami", web::get().to(whoami))
                    .route("/home", web::get().to(home))
                    .route("/admin", web::get().to(admin))
                    .route("/healthz", web::get().to(|| async { "ok" }))
                    .route("/healthz/x", web::get().to(|| async { "not excluded" }))
                    .service(
                        web::scope("/partner")
                            .wrap(partner.clone())
                            .route("/whoami", web::get().to(whoami)),
                    )
            })
            .workers(2)
            .disable_signals()
            .listen(listener)
            .expect("listen")
            .run();
            tx.send(server.handle()).expect("handle");
            server.await
        })
    });
    let handle = rx.recv().expect("server started");
    TestApp {
        base,
        fx,
        server: Box::new(StopOnDrop(handle)),
    }
}

contract_tests!(start);
