//! A plain hyper service (no framework) behind `AccessLayer`: the handler
//! reads `Arc<AccessClaims>` from the request extensions. gRPC requests
//! (`Content-Type: application/grpc`) are refused with gRPC statuses, as a
//! tonic server behind the same layer would be.
//!
//! ```sh
//! cargo run -p portcullis-tower --example hyper_demo
//! ```
//!
//! Set `PORTCULLIS_TEAM_DOMAIN` and `PORTCULLIS_AUD` to validate real
//! tokens; otherwise it signs demo tokens and prints `curl` commands.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_core::test_support::{TestKey, static_source, user_claims};
use portcullis_core::{AccessClaims, Validator};
use portcullis_tower::AccessLayer;
use tower::{ServiceBuilder, ServiceExt};

const ADDR: &str = "127.0.0.1:8082";

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Present on every request that reached us: the layer refused the rest.
    let name = req
        .extensions()
        .get::<Arc<AccessClaims>>()
        .map_or_else(String::new, |c| c.identity().name().to_owned());
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello {name}\n"
    )))))
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
    let token = key.sign(&user_claims(issuer, aud, "ada@example.com"));
    println!("demo mode: try");
    println!("  curl -i http://{ADDR}/");
    println!("  curl -i http://{ADDR}/ -H 'Cf-Access-Jwt-Assertion: {token}'");
    println!(
        "  curl -i --http2-prior-knowledge http://{ADDR}/svc/Method -H 'content-type: application/grpc'"
    );
    Ok(Validator::builder(issuer)
        .audience(aud)
        .key_source(static_source(&[&key]))
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = ServiceBuilder::new()
        .layer(AccessLayer::new(validator()?))
        .service_fn(hello);
    let listener = tokio::net::TcpListener::bind(ADDR).await?;
    println!("listening on http://{ADDR}");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| service.clone().oneshot(req));
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
