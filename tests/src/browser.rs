//! A real browser: headless Chromium (`/usr/bin/chromium`, or
//! `PORTCULLIS_CHROMIUM`) driven over the Chrome DevTools Protocol with
//! `tokio-tungstenite`. Test host names (`*.test`) resolve to 127.0.0.1
//! through `--host-resolver-rules`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::net;
use crate::process::{Proc, Scratch};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One Chromium process with one page, attached over CDP.
#[derive(Debug)]
pub struct Browser {
    /// The Chromium process.
    pub proc: Proc,
    ws: Ws,
    session: String,
    next_id: u64,
}

/// The Chromium binary to use, if installed.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PORTCULLIS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Browser {
    /// Launches headless Chromium with a fresh profile in the scratch
    /// directory and opens a blank page. `None` after
    /// [`crate::tools::skip`] when Chromium is not installed (a failure
    /// under `CI=true`).
    pub async fn launch(scratch: &Scratch) -> Option<Browser> {
        let Some(binary) = chromium_path() else {
            crate::tools::skip("chromium is not installed (apt-get install chromium)");
            return None;
        };
        let port = net::free_port();
        let profile = scratch.join("chromium-profile");
        let mut cmd = Command::new(binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1024,768",
            "--host-resolver-rules=MAP *.test 127.0.0.1",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--remote-debugging-port={port}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank");
        let proc = Proc::spawn(scratch, "chromium", cmd);
        let version_url = format!("http://127.0.0.1:{port}/json/version");
        let client = net::plain_client();
        let mut ws_url = String::new();
        let started = Instant::now();
        while ws_url.is_empty() {
            if let Ok(r) = client.get(&version_url).send().await
                && let Ok(text) = r.text().await
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(u) = v["webSocketDebuggerUrl"].as_str()
            {
                ws_url = u.to_owned();
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to the DevTools WebSocket");
        let mut browser = Browser {
            proc,
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call_browser("Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .expect("Target.createTarget");
        let attached = browser
            .call_browser(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await
            .expect("Target.attachToTarget");
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser
            .call("Page.enable", json!({}))
            .await
            .expect("Page.enable");
        Some(browser)
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if session {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(remaining, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within 30 s"))?;
            let Some(Ok(Message::Text(text))) = next else {
                if next.is_none() {
                    return Err(format!("{method}: DevTools connection closed"));
                }
                continue;
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if v["id"] != json!(id) {
                continue; // an event, or an answer nobody waits for
            }
            if let Some(err) = v.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return Ok(v["result"].clone());
        }
    }

    /// A CDP command on the page's session.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, true).await
    }

    /// A CDP command on the browser itself (`Target.*`, `Storage.*`).
    pub async fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, false).await
    }

    /// Evaluates `expression` in the page (promises awaited) and returns
    /// its value; `Err` while a navigation replaces the document.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Navigates to `url` and waits until the final document (after
    /// redirects) has loaded.
    pub async fn goto(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        if let Some(err) = r.get("errorText") {
            panic!("navigate to {url}: {err}");
        }
        self.wait_loaded().await;
    }

    /// Waits until `document.readyState` is `complete`.
    pub async fn wait_loaded(&mut self) {
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await;
    }

    /// Polls the JavaScript `predicate` until it is `true`; panics after
    /// `timeout` with the page's URL and text.
    pub async fn wait_for(&mut self, predicate: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            if self.eval(predicate).await.is_ok_and(|v| v == json!(true)) {
                return;
            }
            if started.elapsed() > timeout {
                let url = self.url().await;
                let text = self.text().await;
                panic!("timed out waiting for `{predicate}` on {url}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's visible text contains `needle`.
    pub async fn wait_for_text(&mut self, needle: &str, timeout: Duration) {
        let predicate = format!(
            "!!document.body && document.readyState === 'complete' && document.body.innerText.includes({})",
            json!(needle)
        );
        self.wait_for(&predicate, timeout).await;
    }

    /// The page's URL.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Sets the value of the input matched by the CSS `selector`.
    pub async fn fill(&mut self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.focus(); e.value = {v}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            s = json!(selector),
            v = json!(value)
        );
        let ok = self.eval(&js).await;
        assert_eq!(ok, Ok(json!(true)), "no element {selector} to fill");
    }

    /// Clicks the element matched by the CSS `selector`.
    pub async fn click(&mut self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.click(); return true; }})()",
            s = json!(selector)
        );
        let ok = self.eval(&js).await;
        assert_eq!(ok, Ok(json!(true)), "no element {selector} to click");
    }

    /// Saves a PNG screenshot of the page at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await
            .expect("Page.captureScreenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Every cookie of the browser, as CDP reports them (`name`, `value`,
    /// `domain`, `path`, `httpOnly`, ...).
    pub async fn cookies(&mut self) -> Vec<Value> {
        let r = self
            .call_browser("Storage.getCookies", json!({}))
            .await
            .expect("Storage.getCookies");
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    /// The value of cookie `name` set for `domain`, if any.
    pub async fn cookie(&mut self, name: &str, domain: &str) -> Option<String> {
        self.cookies()
            .await
            .into_iter()
            .find(|c| c["name"] == name && c["domain"].as_str() == Some(domain))
            .and_then(|c| c["value"].as_str().map(str::to_owned))
    }

    /// Waits until the page is a document whose URL starts with `prefix`.
    pub async fn wait_for_url(&mut self, prefix: &str, timeout: Duration) {
        let predicate = format!(
            "document.readyState === 'complete' && location.href.startsWith({})",
            json!(prefix)
        );
        self.wait_for(&predicate, timeout).await;
    }
}
