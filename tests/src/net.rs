//! Ports, HTTP clients that resolve the test host names to 127.0.0.1, and
//! waiting for things to happen.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before (tests running in parallel do not collide).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .expect("local addr")
            .port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// An HTTP client without redirects or proxies that sends every name in
/// `hosts` to `127.0.0.1:port`, whatever port the URL names.
pub fn client(hosts: &[&str], port: u16) -> reqwest::Client {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30));
    for host in hosts {
        b = b.resolve(host, addr);
    }
    b.build().expect("reqwest client")
}

/// A plain client (no redirects, no proxy, 30 s timeout).
pub fn plain_client() -> reqwest::Client {
    client(&[], 0)
}

/// Polls `check` every 50 ms until it returns `true`; panics naming `what`
/// after `timeout`. Returns how long it took.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET url` answers 200.
pub async fn wait_http_ok(what: &str, url: &str, timeout: Duration) -> Duration {
    let client = plain_client();
    wait_until(what, timeout, || {
        let req = client.get(url).timeout(Duration::from_secs(2)).send();
        async move { req.await.is_ok_and(|r| r.status() == 200) }
    })
    .await
}
