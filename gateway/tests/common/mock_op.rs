//! An in-process OpenID provider: discovery, JWKS, authorize, token and
//! userinfo over a real socket, with its own RSA keys. It can be told to
//! misbehave and counts the requests each endpoint gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_core::test_support::{TestKey, now, random_hex};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "portcullis-client";
pub const CLIENT_SECRET: &str = "op-client-secret-0123456789";
/// A secret-looking value the provider puts in a malformed field
/// ([`Misbehave::MalformedTokenField`], [`Misbehave::MalformedIdTokenClaim`]);
/// it must never reach an error page or a log line.
pub const LEAKY_VALUE: &str = "sk_live_LEAKED_0f9e8d7c6b5a4f3e2d1c";

/// What the provider gets wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    None,
    WrongIss,
    MissingSub,
    WrongAud,
    MissingIat,
    BadSignature,
    AlgNone,
    NoKid,
    Expired,
    UserinfoSub,
    WrongNonce,
    DiscoveryIssuer,
    /// The token response's `expires_in` is a string holding [`LEAKY_VALUE`].
    MalformedTokenField,
    /// The ID token's `iat` is a string holding [`LEAKY_VALUE`].
    MalformedIdTokenClaim,
    /// Userinfo is not JSON and echoes [`LEAKY_VALUE`].
    MalformedUserinfo,
}

pub struct User {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

struct Grant {
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

pub struct OpState {
    pub keys: Vec<TestKey>,
    pub misbehave: Misbehave,
    pub user: User,
    grants: HashMap<String, Grant>,
    access_tokens: HashMap<String, String>,
    pub counts: HashMap<String, usize>,
}

pub struct MockOp {
    pub addr: SocketAddr,
    pub issuer: String,
    pub state: Arc<Mutex<OpState>>,
}

impl MockOp {
    pub async fn start() -> MockOp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://127.0.0.1:{}", addr.port());
        let state = Arc::new(Mutex::new(OpState {
            keys: vec![TestKey::rsa()],
            misbehave: Misbehave::None,
            user: User {
                sub: "user-0001".into(),
                email: "Carol@Example.com".into(),
                name: "Carol".into(),
                groups: vec!["eng".into(), "ops".into()],
            },
            grants: HashMap::new(),
            access_tokens: HashMap::new(),
            counts: HashMap::new(),
        }));
        let shared = state.clone();
        let iss = issuer.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                let iss = iss.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        let iss = iss.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, &iss, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MockOp {
            addr,
            issuer,
            state,
        }
    }

    pub fn misbehave(&self, m: Misbehave) {
        self.state.lock().unwrap().misbehave = m;
    }

    pub fn count(&self, endpoint: &str) -> usize {
        *self
            .state
            .lock()
            .unwrap()
            .counts
            .get(endpoint)
            .unwrap_or(&0)
    }

    /// Replaces the signing key (the JWKS then holds only the new one).
    pub fn rotate_key(&self) {
        self.state.lock().unwrap().keys = vec![TestKey::rsa()];
    }
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Full<bytes::Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

fn json_response(status: u16, v: Value) -> Response<Full<bytes::Bytes>> {
    respond(status, "application/json", v.to_string())
}

fn pairs(s: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(s.as_bytes())
        .into_owned()
        .collect()
}

async fn handle(
    shared: &Mutex<OpState>,
    issuer: &str,
    req: Request<Incoming>,
) -> Response<Full<bytes::Bytes>> {
    let path = req.uri().path().to_owned();
    let query = pairs(req.uri().query().unwrap_or(""));
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form = pairs(std::str::from_utf8(&body).unwrap_or(""));
    let mut st = shared.lock().unwrap();
    let name = match path.as_str() {
        "/.well-known/openid-configuration" => "discovery",
        "/jwks" => "jwks",
        "/authorize" => "authorize",
        "/token" => "token",
        "/userinfo" => "userinfo",
        _ => "other",
    };
    *st.counts.entry(name.to_owned()).or_default() += 1;
    match name {
        "discovery" => {
            let iss = if st.misbehave == Misbehave::DiscoveryIssuer {
                "http://evil.example".to_owned()
            } else {
                issuer.to_owned()
            };
            json_response(
                200,
                json!({
                    "issuer": iss,
                    "authorization_endpoint": format!("{issuer}/authorize"),
                    "token_endpoint": format!("{issuer}/token"),
                    "userinfo_endpoint": format!("{issuer}/userinfo"),
                    "jwks_uri": format!("{issuer}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "code_challenge_methods_supported": ["S256"],
                }),
            )
        }
        "jwks" => json_response(
            200,
            json!({"keys": st.keys.iter().map(TestKey::jwk).collect::<Vec<_>>()}),
        ),
        "authorize" => {
            let ok = query.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && query.get("response_type").map(String::as_str) == Some("code")
                && query.get("code_challenge_method").map(String::as_str) == Some("S256")
                && query.contains_key("state")
                && query.contains_key("nonce")
                && query
                    .get("scope")
                    .is_some_and(|s| s.split(' ').any(|x| x == "openid"));
            if !ok {
                return respond(400, "text/plain", "bad authorize request".into());
            }
            let code = random_hex(16);
            let redirect_uri = query["redirect_uri"].clone();
            st.grants.insert(
                code.clone(),
                Grant {
                    nonce: query["nonce"].clone(),
                    challenge: query["code_challenge"].clone(),
                    redirect_uri: redirect_uri.clone(),
                },
            );
            let location = format!(
                "{redirect_uri}?code={code}&state={}",
                url::form_urlencoded::byte_serialize(query["state"].as_bytes()).collect::<String>()
            );
            Response::builder()
                .status(302)
                .header("location", location)
                .body(Full::new(bytes::Bytes::new()))
                .unwrap()
        }
        "token" => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
            );
            if auth != expected {
                return json_response(401, json!({"error": "invalid_client"}));
            }
            let Some(grant) = form.get("code").and_then(|c| st.grants.remove(c)) else {
                return json_response(400, json!({"error": "invalid_grant"}));
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
            let challenge =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
            if challenge != grant.challenge
                || form.get("redirect_uri") != Some(&grant.redirect_uri)
                || form.get("grant_type").map(String::as_str) != Some("authorization_code")
            {
                return json_response(400, json!({"error": "invalid_grant"}));
            }
            let m = st.misbehave;
            let t = now();
            let mut claims = json!({
                "iss": if m == Misbehave::WrongIss { "http://evil.example".to_owned() } else { issuer.to_owned() },
                "sub": st.user.sub,
                "aud": if m == Misbehave::WrongAud { "someone-else" } else { CLIENT_ID },
                "exp": if m == Misbehave::Expired { t - 600 } else { t + 300 },
                "iat": if m == Misbehave::Expired { t - 900 } else { t },
                "nonce": if m == Misbehave::WrongNonce { "not-the-nonce".to_owned() } else { grant.nonce.clone() },
                "email": st.user.email,
                "email_verified": true,
                "name": st.user.name,
                "groups": st.user.groups,
            });
            if m == Misbehave::MissingSub {
                claims.as_object_mut().unwrap().remove("sub");
            }
            if m == Misbehave::MissingIat {
                claims.as_object_mut().unwrap().remove("iat");
            }
            if m == Misbehave::MalformedIdTokenClaim {
                claims["iat"] = json!(LEAKY_VALUE);
            }
            let key = &st.keys[0];
            let id_token = match m {
                Misbehave::NoKid => key.sign_with_header(&json!({"alg": "RS256"}), &claims),
                Misbehave::AlgNone => {
                    let b64 = |v: &Value| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                    };
                    format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims))
                }
                Misbehave::BadSignature => {
                    let token = key.sign(&claims);
                    let (head, sig) = token.rsplit_once('.').unwrap();
                    let mut sig: Vec<u8> = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(sig)
                        .unwrap();
                    sig[10] ^= 0x55;
                    format!(
                        "{head}.{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
                    )
                }
                _ => key.sign(&claims),
            };
            let access = random_hex(16);
            let sub = st.user.sub.clone();
            st.access_tokens.insert(access.clone(), sub);
            let expires_in = if m == Misbehave::MalformedTokenField {
                json!(LEAKY_VALUE)
            } else {
                json!(300)
            };
            json_response(
                200,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "id_token": id_token}),
            )
        }
        "userinfo" => {
            let token = auth.strip_prefix("Bearer ").unwrap_or("");
            let Some(sub) = st.access_tokens.get(token).cloned() else {
                return json_response(401, json!({"error": "invalid_token"}));
            };
            if st.misbehave == Misbehave::MalformedUserinfo {
                return respond(200, "application/json", format!("{{\"sub\": {LEAKY_VALUE}"));
            }
            let sub = if st.misbehave == Misbehave::UserinfoSub {
                "someone-else".to_owned()
            } else {
                sub
            };
            json_response(
                200,
                json!({"sub": sub, "email": st.user.email, "name": st.user.name, "groups": st.user.groups}),
            )
        }
        _ => respond(404, "text/plain", "not found".into()),
    }
}
