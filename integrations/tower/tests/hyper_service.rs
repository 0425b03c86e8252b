//! A plain hyper service behind `AccessLayer`, over HTTP/1.1 and over
//! HTTP/2 as a gRPC server would see it.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::{Fixture, assert_error, client};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_core::AccessClaims;
use portcullis_core::wire::JWT_ASSERTION_HEADER;
use portcullis_tower::{AccessLayer, Rule};
use tower::{ServiceBuilder, ServiceExt};

async fn handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let who = req.extensions().get::<Arc<AccessClaims>>().map_or_else(
        || "anonymous".to_owned(),
        |c| c.identity().name().to_owned(),
    );
    let mut resp = Response::new(Full::new(Bytes::from(who.clone())));
    if req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/grpc")
    {
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp.headers_mut()
            .insert("grpc-status", "0".parse().unwrap());
        resp.headers_mut().insert("x-caller", who.parse().unwrap());
    }
    Ok(resp)
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on 127.0.0.1.
async fn start(fx: &Fixture) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let service = ServiceBuilder::new()
        .layer(AccessLayer::new(fx.validator()).require(Rule::email_domain("example.com")))
        .service_fn(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    service.clone().oneshot(req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn http1_identity_and_json_errors() {
    let fx = Fixture::new().await;
    let (addr, task) = start(&fx).await;
    let url = format!("http://{addr}/anything");
    let token = fx.user("ada@example.com");
    let resp = client()
        .get(&url)
        .header(JWT_ASSERTION_HEADER, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ada@example.com");
    assert_error(
        client().get(&url).send().await.unwrap(),
        401,
        "missing_token",
    )
    .await;
    let eve = fx.user("eve@evil.example");
    let resp = client()
        .get(&url)
        .header(JWT_ASSERTION_HEADER, &eve)
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "forbidden").await;
    task.abort();
}

async fn grpc_call(addr: std::net::SocketAddr, token: Option<&str>) -> http::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::post(format!("http://{addr}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        req = req.header(JWT_ASSERTION_HEADER, token);
    }
    // An empty gRPC message: no compression flag, zero length.
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
    sender.send_request(req.body(body).unwrap()).await.unwrap()
}

#[tokio::test]
async fn grpc_statuses_over_http2() {
    let fx = Fixture::new().await;
    let (addr, task) = start(&fx).await;

    let resp = grpc_call(addr, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert!(
        resp.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .starts_with("missing_token")
    );
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    let eve = fx.user("eve@evil.example");
    let resp = grpc_call(addr, Some(&eve)).await;
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert!(
        !resp.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains(&eve)
    );

    let ada = fx.user("ada@example.com");
    let resp = grpc_call(addr, Some(&ada)).await;
    assert_eq!(resp.headers()["grpc-status"], "0");
    assert_eq!(resp.headers()["x-caller"], "ada@example.com");
    assert_eq!(fx.count("forbidden"), 1);
    task.abort();
}
