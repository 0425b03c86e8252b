//! Interop with an independent implementation (Python's PyJWT, installed by
//! `.ci/run`): its tokens validate in core, and core's test tokens validate
//! in it. Outside CI the tests print that they were skipped when PyJWT is
//! not importable; under `CI=true` that is a failure.

use std::io::Write as _;
use std::process::{Command, Stdio};

use portcullis_core::test_support::{TestKey, user_claims};
use portcullis_core::{Algorithm, KeySource, Validator};
use serde_json::{Value, json};

const ISS: &str = "https://interop.cloudflareaccess.com";
const AUD: &str = "aud-interop";

fn script() -> String {
    format!("{}/tests/interop/pyjwt.py", env!("CARGO_MANIFEST_DIR"))
}

fn pyjwt_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "PyJWT is required under CI=true"
        );
        eprintln!("skipped: python3 with PyJWT[crypto] is not available");
    }
    ok
}

fn run(args: &[&str], stdin: Option<&str>) -> Value {
    let mut child = Command::new("python3")
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pyjwt.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn pyjwt_tokens_validate_in_core() {
    if !pyjwt_available() {
        return;
    }
    let minted = run(&["mint", ISS, AUD], None);
    let source = KeySource::from_json(&minted["jwks"].to_string()).unwrap();
    assert_eq!(source.snapshot().keys().len(), 3);
    let v = Validator::builder(ISS)
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA])
        .key_source(source)
        .build()
        .unwrap();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = minted["tokens"][alg].as_str().unwrap();
        let claims = v
            .validate(token)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.email.as_deref(), Some("py@example.com"));
        assert_eq!(claims.country.as_deref(), Some("DE"));
    }
    // And the default allow-list (RS256 only) still refuses the others.
    let rs_only = Validator::builder(ISS)
        .audience(AUD)
        .key_source(v.key_source().clone())
        .build()
        .unwrap();
    assert!(
        rs_only
            .validate(minted["tokens"]["RS256"].as_str().unwrap())
            .await
            .is_ok()
    );
    assert!(
        rs_only
            .validate(minted["tokens"]["ES256"].as_str().unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn core_test_tokens_validate_in_pyjwt() {
    if !pyjwt_available() {
        return;
    }
    for key in [TestKey::rsa(), TestKey::ec_p256(), TestKey::ed25519()] {
        let token = key.sign(&user_claims(ISS, AUD, "core@example.com"));
        let request =
            json!({"pem": key.public_pem(), "alg": key.alg(), "token": token}).to_string();
        let claims = run(&["verify", ISS, AUD], Some(&request));
        assert_eq!(claims["email"], "core@example.com", "{}", key.alg());
        assert_eq!(claims["type"], "app");
    }
}
