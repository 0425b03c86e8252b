//! The HTML pages people see: the login page, error pages and the
//! logged-out page. Server-rendered, no JavaScript, one inline stylesheet
//! allowed by its hash in a strict Content-Security-Policy, readable on a
//! phone.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use crate::response::{Body, full};

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#f3f4f6;color:#111827}\
main{max-width:26rem;margin:8vh auto;padding:2rem 1.5rem;background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{font-size:1.35rem;margin:0 0 .25rem}\
p.sub{margin:0 0 1.5rem;color:#4b5563}\
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;padding:.75rem 1rem;border-radius:8px;margin:0 0 1.25rem}\
.note{background:#eff6ff;border:1px solid #bfdbfe;color:#1e3a8a;padding:.75rem 1rem;border-radius:8px;margin:0 0 1.25rem}\
a.button,button{display:block;width:100%;padding:.75rem 1rem;margin:0 0 .75rem;border:1px solid #d1d5db;border-radius:8px;background:#fff;color:#111827;font:inherit;text-align:center;text-decoration:none;cursor:pointer}\
a.button:hover,button:hover{background:#f9fafb}\
button.primary{background:#1d4ed8;border-color:#1d4ed8;color:#fff}\
button.primary:hover{background:#1e40af}\
label{display:block;margin:0 0 .75rem;font-weight:500}\
input[type=email],input[type=password]{display:block;width:100%;margin-top:.25rem;padding:.65rem .75rem;border:1px solid #d1d5db;border-radius:8px;font:inherit}\
.sep{display:flex;align-items:center;color:#6b7280;margin:1rem 0}\
.sep:before,.sep:after{content:'';flex:1;border-top:1px solid #e5e7eb}\
.sep span{padding:0 .75rem;font-size:.875rem}\
footer{margin-top:1.5rem;font-size:.8rem;color:#6b7280;text-align:center}";

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The `Content-Security-Policy` of every page: nothing but the inline
/// stylesheet (by hash), forms posting here or to the given app origins.
pub fn content_security_policy(form_targets: &[String]) -> String {
    use base64::Engine as _;
    let hash =
        base64::engine::general_purpose::STANDARD.encode(crate::crypto::sha256(STYLE.as_bytes()));
    let mut targets = String::from("'self'");
    for t in form_targets {
        targets.push(' ');
        targets.push_str(t);
    }
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self'; form-action {targets}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// A complete page with the security headers.
pub fn html(status: StatusCode, csp: &HeaderValue, title: &str, content: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>{content}\
         <footer>Protected by Portcullis</footer></main></body></html>\n",
        escape(title)
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", csp.clone());
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// An error page: a title, a sentence saying what went wrong, and a link
/// to start over when there is one.
pub fn error(
    status: StatusCode,
    csp: &HeaderValue,
    title: &str,
    message: &str,
    retry: Option<&str>,
) -> Response<Body> {
    let mut content = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p>",
        escape(title),
        escape(message)
    );
    if let Some(url) = retry {
        content.push_str(&format!(
            "<a class=\"button\" href=\"{}\">Try again</a>",
            escape(url)
        ));
    }
    html(status, csp, title, &content)
}

/// One way to log in offered on the login page.
#[derive(Debug, Clone)]
pub struct ProviderButton {
    /// Shown on the button.
    pub name: String,
    /// Where the button leads (starts the provider's flow).
    pub href: String,
}

/// The local-password form.
#[derive(Debug, Clone)]
pub struct LocalForm {
    /// Where the form posts.
    pub action: String,
    /// The CSRF token (also in the sealed cookie).
    pub csrf_token: String,
    /// The checked redirect target.
    pub redirect_url: String,
    /// The email to prefill after a failed attempt.
    pub email: String,
}

/// The login page of an app.
pub fn login(
    status: StatusCode,
    csp: &HeaderValue,
    app_name: &str,
    error: Option<&str>,
    buttons: &[ProviderButton],
    form: Option<&LocalForm>,
) -> Response<Body> {
    let mut c = format!(
        "<h1>Sign in</h1><p class=\"sub\">to continue to <strong>{}</strong></p>",
        escape(app_name)
    );
    if let Some(e) = error {
        c.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(e)
        ));
    }
    for b in buttons {
        c.push_str(&format!(
            "<a class=\"button\" href=\"{}\">Continue with {}</a>",
            escape(&b.href),
            escape(&b.name)
        ));
    }
    if let Some(f) = form {
        if !buttons.is_empty() {
            c.push_str("<div class=\"sep\"><span>or</span></div>");
        }
        c.push_str(&format!(
            "<form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
             <input type=\"hidden\" name=\"redirect_url\" value=\"{}\">\
             <label>Email<input type=\"email\" name=\"email\" value=\"{}\" autocomplete=\"username\" required autofocus></label>\
             <label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
             <button class=\"primary\" type=\"submit\">Sign in</button></form>",
            escape(&f.action),
            escape(&f.csrf_token),
            escape(&f.redirect_url),
            escape(&f.email)
        ));
    }
    if buttons.is_empty() && form.is_none() {
        c.push_str("<p class=\"error\">No way to sign in is configured for this application.</p>");
    }
    html(status, csp, &format!("Sign in to {app_name}"), &c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            escape("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        let csp = content_security_policy(&["https://app.example".into()]);
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("form-action 'self' https://app.example"));
        assert!(!csp.contains("unsafe-inline"));
    }
}
