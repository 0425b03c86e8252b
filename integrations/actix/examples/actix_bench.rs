//! Load-test target: a trivial actix-web handler, bare or behind
//! `AccessGuard` (see `benches/load/integrations.sh`).
//!
//! `cargo run --release -p portcullis-actix --example actix_bench -- <addr> <bare|guard> <token-file>`
//!
//! Writes a valid user token to `<token-file>` (in both modes, so that the
//! load tool sends identical requests), then serves `GET /` with `ok`.

use actix_web::{App, HttpServer, web};
use portcullis_actix::AccessGuard;
use portcullis_core::Validator;
use portcullis_core::test_support::{TestKey, static_source, user_claims};

const ISSUER: &str = "https://bench.portcullis.invalid";
const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, mode, token_file] = &args[..] else {
        eprintln!("usage: actix_bench <addr> <bare|guard> <token-file>");
        std::process::exit(2);
    };
    let guarded = match mode.as_str() {
        "guard" => true,
        "bare" => false,
        other => {
            eprintln!("mode must be bare or guard, not {other:?}");
            std::process::exit(2);
        }
    };
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let key = TestKey::rsa();
    let validator = Validator::builder(ISSUER)
        .audience(AUD)
        .key_source(static_source(&[&key]))
        .build()
        .map_err(std::io::Error::other)?;
    std::fs::write(
        token_file,
        key.sign(&user_claims(ISSUER, AUD, "bench@example.com")),
    )?;
    let guard = AccessGuard::new(validator);

    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::Condition::new(
                    guarded,
                    guard.clone(),
                ))
                .route("/", web::get().to(|| async { "ok" }))
        })
        .workers(workers)
        .bind(addr.as_str())?
        .run()
        .await
    })
}
