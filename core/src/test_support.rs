//! Keys, tokens and a certs endpoint for tests (feature `test-support`).
//!
//! Every crate of the workspace mints its test tokens here, so that there is
//! one implementation of "sign like Cloudflare Access does":
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use portcullis_core::test_support::{CertsServer, TestKey, user_claims};
//! use portcullis_core::{KeySource, Validator};
//!
//! let key = TestKey::rsa();
//! let server = CertsServer::start(&[&key]).await.unwrap();
//! let validator = Validator::builder(server.team_domain())
//!     .audience("aud-1")
//!     .key_source(KeySource::remote(server.certs_url()).build().unwrap())
//!     .build()
//!     .unwrap();
//! let token = key.sign(&user_claims(&server.team_domain(), "aud-1", "ada@example.com"));
//! assert_eq!(validator.validate(&token).await.unwrap().email.as_deref(), Some("ada@example.com"));
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::source::KeySource;
use crate::wire::CERTS_PATH;

enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key with its public JWK; `kid` is the lowercase hex SHA-256 of
/// the DER SubjectPublicKeyInfo, as Cloudflare computes it.
pub struct TestKey {
    signer: Signer,
    alg: &'static str,
    kid: String,
    jwk: Value,
    spki_der: Vec<u8>,
    pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn kid_of(spki_der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        spki_der,
    ))
}

impl TestKey {
    /// A fresh RSA-2048 key for RS256.
    pub fn rsa() -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA key generation");
        Self::from_rsa(pair)
    }

    /// An RSA key from PKCS#8 DER (e.g. one stored by the gateway).
    pub fn rsa_from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
        Ok(Self::from_rsa(pair))
    }

    fn from_rsa(pair: aws_lc_rs::rsa::KeyPair) -> Self {
        let public = pair.public_key();
        let spki_der = public.as_der().expect("SPKI").as_ref().to_vec();
        let pkcs8_der = pair.as_der().expect("PKCS#8").as_ref().to_vec();
        let kid = kid_of(&spki_der);
        let jwk = json!({
            "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "e": b64(public.exponent().big_endian_without_leading_zero()),
            "n": b64(public.modulus().big_endian_without_leading_zero()),
        });
        TestKey {
            signer: Signer::Rsa(pair),
            alg: "RS256",
            kid,
            jwk,
            spki_der,
            pkcs8_der,
        }
    }

    /// A fresh P-256 key for ES256.
    pub fn ec_p256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC key generation");
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .expect("EC key");
        let point = pair.public_key().as_ref().to_vec();
        let spki_der = pair.public_key().as_der().expect("SPKI").as_ref().to_vec();
        let kid = kid_of(&spki_der);
        let jwk = json!({
            "kid": kid, "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        TestKey {
            signer: Signer::Ec(pair),
            alg: "ES256",
            kid,
            jwk,
            spki_der,
            pkcs8_der: pkcs8.as_ref().to_vec(),
        }
    }

    /// A fresh Ed25519 key for EdDSA.
    pub fn ed25519() -> Self {
        let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
        let spki_der = pair.public_key().as_der().expect("SPKI").as_ref().to_vec();
        let pkcs8_der = pair.to_pkcs8v1().expect("PKCS#8").as_ref().to_vec();
        let kid = kid_of(&spki_der);
        let jwk = json!({
            "kid": kid, "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "x": b64(pair.public_key().as_ref()),
        });
        TestKey {
            signer: Signer::Ed(pair),
            alg: "EdDSA",
            kid,
            jwk,
            spki_der,
            pkcs8_der,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The JOSE algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        self.alg
    }
    /// The public JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }
    /// DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    /// The private key as PKCS#8 DER (for handing to other implementations).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }
    /// The private key as a PKCS#8 PEM string.
    pub fn pkcs8_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8_der)
    }
    /// The public key as an SPKI PEM string.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der)
    }

    /// Signs claims with the header `{"alg":..,"kid":..}`, as Cloudflare does.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": self.alg, "kid": self.kid}), claims)
    }

    /// Signs claims under an arbitrary header (for attack tests).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// Signs raw header and payload text, so tests can craft JSON that
    /// serde would never produce (duplicate members, trailing garbage).
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let signing_input = format!("{}.{}", b64(header_json), b64(payload_json));
        let signature = self.sign_bytes(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(signature))
    }

    /// Signs bytes with this key's algorithm; the raw JWS signature.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("RSA signing");
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&rng, message)
                .expect("EC signing")
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certs document in the Cloudflare shape (`keys` only; the certificate
/// members are optional for validators and not produced here).
pub fn certs_document(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// A static key source holding these keys.
pub fn static_source(keys: &[&TestKey]) -> KeySource {
    KeySource::from_json(&certs_document(keys)).expect("test keys form a valid document")
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    use crate::clock::Clock as _;
    crate::clock::SystemClock.now()
}

/// The claims of a user app token valid for an hour from now.
pub fn user_claims(issuer: &str, aud: &str, email: &str) -> Value {
    let now = now();
    json!({
        "aud": [aud],
        "email": email,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": issuer,
        "type": "app",
        "identity_nonce": random_hex(8),
        "sub": format!("{}-{}", random_hex(4), random_hex(6)),
        "country": "NZ",
    })
}

/// The claims of a service-token app token valid for an hour from now.
pub fn service_claims(issuer: &str, aud: &str, common_name: &str) -> Value {
    let now = now();
    json!({
        "aud": [aud],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": issuer,
        "type": "app",
        "identity_nonce": random_hex(8),
        "sub": "",
        "common_name": common_name,
    })
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore as _;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

struct ServerState {
    document: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    status: AtomicU16,
    requests: AtomicUsize,
    delay: Mutex<Duration>,
}

/// A certs endpoint on 127.0.0.1 that counts its requests and can be told
/// to change keys, fail, or slow down. Dropping it closes the listener and
/// every open connection.
pub struct CertsServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CertsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl CertsServer {
    /// Serves a document holding `keys`.
    pub async fn start(keys: &[&TestKey]) -> std::io::Result<Self> {
        Self::start_with_document(certs_document(keys)).await
    }

    /// Serves an arbitrary document.
    pub async fn start_with_document(document: String) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            document: Mutex::new(document),
            cache_control: Mutex::new(Some("public, max-age=300".into())),
            status: AtomicU16::new(200),
            requests: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| respond(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(CertsServer { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`: usable as the team domain (issuer).
    pub fn team_domain(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The certs URL.
    pub fn certs_url(&self) -> String {
        format!("{}{CERTS_PATH}", self.team_domain())
    }
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Requests served so far (any path).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Publishes these keys from now on.
    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.set_document(certs_document(keys));
    }
    /// Publishes this document from now on.
    pub fn set_document(&self, document: String) {
        *self.state.document.lock().unwrap() = document;
    }
    /// Answers with this status (e.g. 503 to play an outage; 200 restores).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
    /// The `Cache-Control` header sent (default `public, max-age=300`).
    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }
    /// Delays every answer (to play a slow endpoint).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }
}

impl Drop for CertsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(
    state: Arc<ServerState>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = state.status.load(Ordering::SeqCst);
    let mut builder = http::Response::builder().status(status);
    if req.uri().path() != CERTS_PATH {
        return Ok(builder
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found")))
            .unwrap());
    }
    if status != 200 {
        return Ok(builder
            .body(Full::new(Bytes::from_static(b"{\"error\":\"down\"}")))
            .unwrap());
    }
    if let Some(cc) = state.cache_control.lock().unwrap().clone() {
        builder = builder.header(http::header::CACHE_CONTROL, cc);
    }
    let body = state.document.lock().unwrap().clone();
    Ok(builder
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// Path of a file under `../shared/fixtures/` beside the checkout (or
/// under `$PORTCULLIS_FIXTURES` when set).
///
/// Returns `None` after printing that the test is skipped when the file is
/// missing — except under `CI=true`, where a missing fixture is a failure.
pub fn shared_fixture(relative: &str) -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("PORTCULLIS_FIXTURES") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    };
    let path = base.join(relative);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "fixture {} is missing (required under CI=true)",
            path.display()
        );
    }
    eprintln!("skipped: fixture {} is missing", path.display());
    None
}
