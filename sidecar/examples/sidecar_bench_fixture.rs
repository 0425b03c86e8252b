//! Load-test fixture for `benches/load/run.sh`: a small hyper hello
//! upstream, a certs endpoint with a fresh RSA key, and tokens signed by it.
//!
//! ```sh
//! cargo run --release -p portcullis-sidecar --example sidecar_bench_fixture -- OUT_DIR 20000
//! ```
//!
//! Writes `OUT_DIR/env` (UPSTREAM, TEAM_DOMAIN, CERTS_URL, AUD),
//! `OUT_DIR/token` (one token), `OUT_DIR/tokens` (N distinct tokens, one per
//! line) and finally `OUT_DIR/ready`, then serves until killed.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_core::test_support::{CertsServer, TestKey, user_claims};

const AUD: &str = "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: sidecar_bench_fixture OUT_DIR [N]")?,
    );
    let distinct: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    std::fs::create_dir_all(&out)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let key = Arc::new(TestKey::rsa());
    let certs = CertsServer::start(&[&key]).await?;
    let team = certs.team_domain();
    // Tokens for a long run: valid for the next hour (user_claims' default).
    std::fs::write(
        out.join("env"),
        format!(
            "UPSTREAM=http://{upstream}\nUPSTREAM_ADDR={upstream}\nTEAM_DOMAIN={team}\nCERTS_URL={}\nAUD={AUD}\n",
            certs.certs_url()
        ),
    )?;
    std::fs::write(
        out.join("token"),
        key.sign(&user_claims(&team, AUD, "bench@example.com")),
    )?;

    // RSA signing is the slow part: spread it over the cores.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = distinct.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let key = key.clone();
            let team = team.clone();
            std::thread::spawn(move || {
                (0..per)
                    .filter(|i| t * per + i < distinct)
                    .map(|i| {
                        key.sign(&user_claims(
                            &team,
                            AUD,
                            &format!("user{}@example.com", t * per + i),
                        ))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut tokens = String::new();
    for h in handles {
        for t in h.join().map_err(|_| "signing thread panicked")? {
            tokens.push_str(&t);
            tokens.push('\n');
        }
    }
    std::fs::write(out.join("tokens"), tokens)?;
    std::fs::write(out.join("ready"), "")?;
    std::future::pending::<()>().await;
    Ok(())
}
