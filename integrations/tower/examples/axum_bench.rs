//! Load-test target: a trivial axum handler, bare or behind `AccessLayer`
//! (see `benches/load/integrations.sh`).
//!
//! `cargo run --release -p portcullis-tower --example axum_bench -- <addr> <bare|guard|noop> <token-file>`
//!
//! Writes a valid user token to `<token-file>` (in every mode, so that the
//! load tool sends identical requests), then serves `GET /` with `ok`.
//! `noop` puts a pass-through tower layer where `guard` puts `AccessLayer`:
//! what any layer costs in axum (its `Router::layer` boxes the layered
//! service and its future), the floor under the guard's added cost.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use portcullis_core::Validator;
use portcullis_core::test_support::{TestKey, static_source, user_claims};
use portcullis_tower::AccessLayer;
use tower::util::MapRequestLayer;

const ISSUER: &str = "https://bench.portcullis.invalid";
const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, mode, token_file] = &args[..] else {
        eprintln!("usage: axum_bench <addr> <bare|guard> <token-file>");
        std::process::exit(2);
    };
    if !matches!(mode.as_str(), "bare" | "guard" | "noop") {
        eprintln!("mode must be bare, guard or noop, not {mode:?}");
        std::process::exit(2);
    }
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let key = TestKey::rsa();
    let validator = Validator::builder(ISSUER)
        .audience(AUD)
        .key_source(static_source(&[&key]))
        .build()?;
    std::fs::write(
        token_file,
        key.sign(&user_claims(ISSUER, AUD, "bench@example.com")),
    )?;
    let bare = Router::new().route("/", get(|| async { "ok" }));
    let app = match mode.as_str() {
        "guard" => bare.layer(AccessLayer::new(validator)),
        "noop" => bare.layer(MapRequestLayer::new(|req: Request<Body>| req)),
        _ => bare,
    };

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
            axum::serve(listener, app).await?;
            Ok(())
        })
}
