//! A cookie-keeping HTTP user agent: what a browser does for a login flow,
//! without the browser. It follows redirects hop by hop (recording them),
//! keeps cookies as browsers do (per host name, ignoring the port; path
//! matching; `Max-Age=0` deletes), sends page navigations with
//! `Sec-Fetch-Mode: navigate`, and submits HTML forms. Unlike
//! [`crate::browser::Browser`] it sees every status code and every hop.
//!
//! ```no_run
//! # async fn demo(app: &str, provider: &portcullis_tests::oidc::OidcProvider) {
//! use portcullis_tests::agent::Agent;
//!
//! let mut agent = Agent::new();
//! // app → gateway login → the provider's form → sign in → back on the app
//! let page = agent.oidc_login(app, provider).await;
//! assert_eq!(page.status, 200);
//! let cookie = agent.cookie("CF_Authorization", "app-a.test");
//! # let _ = cookie; }
//! ```

use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::Url;

use crate::oidc::{ACCOUNT_EMAIL, ACCOUNT_PASSWORD, OidcProvider};

/// Redirects followed before giving up (browsers allow about 20).
const MAX_HOPS: usize = 20;

#[derive(Debug, Clone)]
struct StoredCookie {
    host: String,
    path: String,
    name: String,
    value: String,
}

/// The end of a navigation or form submission.
#[derive(Debug, Clone)]
pub struct Page {
    /// Status of the last response; `0` when the last hop could not connect.
    pub status: u16,
    /// URL of the last hop.
    pub url: String,
    /// `Content-Type` of the last response.
    pub content_type: String,
    /// Body of the last response.
    pub body: String,
    /// Every hop: `(status, url)`, the last one included.
    pub hops: Vec<(u16, String)>,
    /// Why the last hop failed to connect, if it did (as a browser's
    /// "this site can't be reached").
    pub error: Option<String>,
}

impl Page {
    /// Whether any hop went to a URL starting with `prefix`.
    pub fn went_through(&self, prefix: &str) -> bool {
        self.hops.iter().any(|(_, u)| u.starts_with(prefix))
    }

    /// The `action` of the first `<form>` (absolute, resolved against the
    /// page's URL).
    pub fn form_action(&self) -> Option<String> {
        let form = &self.body[self.body.find("<form")?..];
        let tag = &form[..form.find('>')?];
        let action = attribute(tag, "action")?;
        Url::parse(&self.url)
            .ok()?
            .join(&action)
            .ok()
            .map(|u| u.to_string())
    }

    /// The `href` of the first `<a>` whose text contains `text`.
    pub fn link(&self, text: &str) -> Option<String> {
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("<a ") {
            rest = &rest[start..];
            let tag_end = rest.find('>')?;
            let close = rest.find("</a>")?;
            if rest[tag_end..close].contains(text)
                && let Some(href) = attribute(&rest[..tag_end], "href")
            {
                return Url::parse(&self.url)
                    .ok()?
                    .join(&href)
                    .ok()
                    .map(|u| u.to_string());
            }
            rest = &rest[close..];
        }
        None
    }
}

/// The HTML-unescaped value of `name="..."` in a tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// A user agent with its own cookie jar.
#[derive(Debug)]
pub struct Agent {
    client: reqwest::Client,
    jar: Vec<StoredCookie>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// A fresh agent (no cookies). The test host names (`*.test` of
    /// [`crate::apps::TEST_HOSTS`]) resolve to 127.0.0.1; the port is the
    /// URL's.
    pub fn new() -> Agent {
        Agent {
            client: crate::net::client(crate::apps::TEST_HOSTS, 0),
            jar: Vec::new(),
        }
    }

    /// The value of cookie `name` kept for `host` (a name, no port).
    pub fn cookie(&self, name: &str, host: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|c| c.name == name && c.host == host)
            .map(|c| c.value.clone())
    }

    /// The `Cookie` header a browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> String {
        let Ok(url) = Url::parse(url) else {
            return String::new();
        };
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let mut matching: Vec<&StoredCookie> = self
            .jar
            .iter()
            .filter(|c| c.host == host && path_matches(&c.path, url.path()))
            .collect();
        // Longer paths first, as browsers order them.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store(&mut self, url: &Url, response: &reqwest::Response) {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        for raw in response.headers().get_all(SET_COOKIE) {
            let Ok(raw) = raw.to_str() else { continue };
            let Some(c) = parse_set_cookie(raw) else {
                continue;
            };
            let path = c.path.unwrap_or_else(|| default_path(url.path()));
            self.jar
                .retain(|k| !(k.host == host && k.path == path && k.name == c.name));
            if !c.expired {
                self.jar.push(StoredCookie {
                    host: host.clone(),
                    path,
                    name: c.name,
                    value: c.value,
                });
            }
        }
    }

    /// Forgets every cookie.
    pub fn clear_cookies(&mut self) {
        self.jar.clear();
    }

    /// A page navigation to `url` (`GET`, `Accept: text/html`,
    /// `Sec-Fetch-Mode: navigate`), following redirects.
    pub async fn navigate(&mut self, url: &str) -> Page {
        self.run(reqwest::Method::GET, url.to_owned(), None).await
    }

    /// Submits a form: `POST` `fields` urlencoded to `action`, then follows
    /// redirects as a navigation.
    pub async fn submit(&mut self, action: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_body(fields);
        self.run(reqwest::Method::POST, action.to_owned(), Some(body))
            .await
    }

    async fn run(
        &mut self,
        mut method: reqwest::Method,
        mut url: String,
        mut body: Option<String>,
    ) -> Page {
        let mut hops = Vec::new();
        loop {
            let parsed = Url::parse(&url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
            let mut req = self
                .client
                .request(method.clone(), parsed.clone())
                .header(ACCEPT, "text/html,application/xhtml+xml")
                .header("sec-fetch-mode", "navigate")
                .timeout(Duration::from_secs(20));
            let cookies = self.cookie_header(&url);
            if !cookies.is_empty() {
                req = req.header(COOKIE, cookies);
            }
            if let Some(b) = body.take() {
                req = req
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(b);
            }
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    hops.push((0, url.clone()));
                    return Page {
                        status: 0,
                        url,
                        content_type: String::new(),
                        body: String::new(),
                        hops,
                        error: Some(format!("{e:?}")),
                    };
                }
            };
            self.store(&parsed, &response);
            let status = response.status().as_u16();
            hops.push((status, url.clone()));
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| parsed.join(l).ok());
            if let (true, Some(next)) = (response.status().is_redirection(), location) {
                assert!(hops.len() < MAX_HOPS, "redirect loop: {hops:?}");
                if status != 307 && status != 308 {
                    method = reqwest::Method::GET;
                }
                url = next.to_string();
                continue;
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = response.text().await.unwrap_or_default();
            return Page {
                status,
                url,
                content_type,
                body,
                hops,
                error: None,
            };
        }
    }

    /// Navigates to `start` (an app URL or a login link) and expects the
    /// provider's own sign-in form; returns it.
    pub async fn to_provider_form(&mut self, start: &str, provider: &OidcProvider) -> Page {
        let form = self.navigate(start).await;
        assert!(
            form.status == 200
                && form.url.starts_with(&provider.issuer)
                && form.body.contains("id=\"email\""),
            "expected the provider's sign-in form after {start}, got {} at {}: {:?}\n{}",
            form.status,
            form.url,
            form.error,
            form.body
        );
        form
    }

    /// Signs the test account in on the provider's form `form` and follows
    /// the redirects back (callback, code exchange on the app host, the
    /// app).
    pub async fn sign_in_on(&mut self, form: &Page) -> Page {
        let action = form
            .form_action()
            .expect("the provider's form has an action");
        self.submit(
            &action,
            &[("email", ACCOUNT_EMAIL), ("password", ACCOUNT_PASSWORD)],
        )
        .await
    }

    /// The whole login: [`Agent::to_provider_form`] then
    /// [`Agent::sign_in_on`]. Returns the last page (the app, normally).
    pub async fn oidc_login(&mut self, start: &str, provider: &OidcProvider) -> Page {
        let form = self.to_provider_form(start, provider).await;
        self.sign_in_on(&form).await
    }

    /// Submits the test account on the provider's form `form` and follows
    /// redirects only while they stay on the provider: returns the first
    /// redirect target outside it (the gateway's callback URL with `code`
    /// and `state`), not yet visited. For drills that break things between
    /// the provider's answer and the gateway's code exchange.
    pub async fn sign_in_until_callback(&mut self, form: &Page, provider: &OidcProvider) -> String {
        let action = form
            .form_action()
            .expect("the provider's form has an action");
        let body = form_body(&[("email", ACCOUNT_EMAIL), ("password", ACCOUNT_PASSWORD)]);
        let mut method = reqwest::Method::POST;
        let mut body = Some(body);
        let mut url = action;
        for _ in 0..MAX_HOPS {
            let parsed = Url::parse(&url).expect("URL");
            let mut req = self
                .client
                .request(method.clone(), parsed.clone())
                .header(ACCEPT, "text/html")
                .header("sec-fetch-mode", "navigate");
            let cookies = self.cookie_header(&url);
            if !cookies.is_empty() {
                req = req.header(COOKIE, cookies);
            }
            if let Some(b) = body.take() {
                req = req
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(b);
            }
            let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
            self.store(&parsed, &r);
            let next = r
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| parsed.join(l).ok())
                .unwrap_or_else(|| panic!("{url} answered {} without a redirect", r.status()));
            let next = next.to_string();
            if !next.starts_with(&provider.issuer) {
                return next;
            }
            method = reqwest::Method::GET;
            url = next;
        }
        panic!("the provider never redirected back");
    }
}

/// What a `Set-Cookie` header says, as far as this agent cares (`Domain`
/// is ignored: the servers under test set host-only cookies).
struct SetCookie {
    name: String,
    value: String,
    path: Option<String>,
    expired: bool,
}

fn parse_set_cookie(raw: &str) -> Option<SetCookie> {
    let mut parts = raw.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let mut c = SetCookie {
        name: name.trim().to_owned(),
        value: value.trim().trim_matches('"').to_owned(),
        path: None,
        expired: false,
    };
    if c.name.is_empty() {
        return None;
    }
    for attr in parts {
        let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
        let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
        match key.as_str() {
            "path" if val.starts_with('/') => c.path = Some(val.to_owned()),
            "max-age" => c.expired = val.parse::<i64>().is_ok_and(|s| s <= 0),
            // Servers delete cookies with a date in the past; the epoch
            // (1970) is what the ones under test send.
            "expires" => c.expired |= val.contains("1970"),
            _ => {}
        }
    }
    Some(c)
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form_body(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => request_path[..i].to_owned(),
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_as_in_rfc_6265() {
        assert!(path_matches("/", "/anything"));
        assert!(path_matches("/cdn-cgi/access/", "/cdn-cgi/access/callback"));
        assert!(path_matches("/interaction/abc", "/interaction/abc/login"));
        assert!(!path_matches("/interaction/abc", "/interaction/abcd"));
        assert_eq!(default_path("/a/b"), "/a");
        assert_eq!(default_path("/a"), "/");
    }

    #[test]
    fn set_cookie_and_forms() {
        let c = parse_set_cookie("CF_Authorization=a.b.c; Path=/; Max-Age=3600; HttpOnly").unwrap();
        assert_eq!(
            (
                c.name.as_str(),
                c.value.as_str(),
                c.path.as_deref(),
                c.expired
            ),
            ("CF_Authorization", "a.b.c", Some("/"), false)
        );
        assert!(
            parse_set_cookie("x=; Path=/cdn-cgi/access/; Max-Age=0")
                .unwrap()
                .expired
        );
        assert!(
            parse_set_cookie("_s=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT")
                .unwrap()
                .expired
        );
        assert_eq!(
            form_body(&[("email", "a@b.c"), ("password", "x y&z")]),
            "email=a%40b.c&password=x+y%26z"
        );
    }

    #[test]
    fn forms_and_links_resolve_against_the_page() {
        let page = Page {
            status: 200,
            url: "http://127.0.0.1:9/login/x?y=1".into(),
            content_type: "text/html".into(),
            body: "<p><a class=\"button\" href=\"/l?idp=e2e&amp;r=1\">Continue with E2E</a></p><form method=\"post\" action=\"/interaction/u1/login\">".into(),
            hops: vec![],
            error: None,
        };
        assert_eq!(
            page.form_action().as_deref(),
            Some("http://127.0.0.1:9/interaction/u1/login")
        );
        assert_eq!(
            page.link("E2E").as_deref(),
            Some("http://127.0.0.1:9/l?idp=e2e&r=1")
        );
        assert_eq!(page.link("nothing"), None);
    }
}
