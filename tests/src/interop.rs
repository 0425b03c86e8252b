//! Independent JWT implementations: PyJWT (Python) and jose (Node).

use std::process::Command;

use serde_json::Value;

const PYJWT_VERIFY: &str = r#"
import json, sys
import jwt
certs_url, token, aud, iss = sys.argv[1:5]
key = jwt.PyJWKClient(certs_url, cache_keys=False).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=aud, issuer=iss)
print(json.dumps({"payload": claims, "kid": key.key_id}))
"#;

/// Validates `token` with PyJWT's `PyJWKClient` against `certs_url`.
/// `Ok` holds `{"payload":..,"kid":..}`; `Err` PyJWT's complaint. Check
/// [`crate::tools::pyjwt_available`] first.
pub fn pyjwt_verify(certs_url: &str, token: &str, aud: &str, iss: &str) -> Result<Value, String> {
    run(Command::new("python3").args(["-c", PYJWT_VERIFY, certs_url, token, aud, iss]))
}

/// Validates `token` with jose's `createRemoteJWKSet` + `jwtVerify`. Check
/// [`crate::tools::node_modules_available`] first.
pub fn jose_verify(certs_url: &str, token: &str, aud: &str, iss: &str) -> Result<Value, String> {
    run(jose().args(["verify", certs_url, token, aud, iss]))
}

/// Tokens minted by jose with a key of its own.
#[derive(Debug, Clone)]
pub struct JoseMinted {
    /// Cloudflare-shaped certs document (`keys`, `public_cert`, `public_certs`).
    pub certs: Value,
    /// A valid RS256 app token for the audience and email asked for.
    pub token: String,
    /// The same, expired an hour ago.
    pub expired: String,
}

/// Mints with jose (and an openssl self-signed certificate for the
/// `public_cert` members).
pub fn jose_mint(issuer: &str, aud: &str, email: &str) -> JoseMinted {
    let out = run(jose().args(["mint", issuer, aud, email])).expect("jose mint");
    JoseMinted {
        certs: out["certs"].clone(),
        token: out["token"].as_str().expect("token").to_owned(),
        expired: out["expired"].as_str().expect("expired").to_owned(),
    }
}

fn jose() -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(crate::tools::node_dir().join("jose-tool.mjs"));
    cmd
}

fn run(cmd: &mut Command) -> Result<Value, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}
