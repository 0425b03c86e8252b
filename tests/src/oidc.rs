//! A real OpenID provider: npm `oidc-provider` run by Node on 127.0.0.1
//! (`tests/oidc/provider.mjs`), with one static confidential client and one
//! test account that signs in on the provider's own form.

use std::process::Command;
use std::time::Duration;

use crate::net::{self, wait_http_ok};
use crate::process::{Proc, Scratch};

/// Client id of the static client.
pub const CLIENT_ID: &str = "portcullis-e2e";
/// Its secret (a test value, fine to commit and to show).
pub const CLIENT_SECRET: &str = "e2e-client-secret-0123456789abcdef";
/// The test account's email, also its login.
pub const ACCOUNT_EMAIL: &str = "ada@example.com";
/// The test account's password.
pub const ACCOUNT_PASSWORD: &str = "correct horse battery staple";

/// A running provider.
#[derive(Debug)]
pub struct OidcProvider {
    /// The Node process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The issuer URL, `http://127.0.0.1:<port>`.
    pub issuer: String,
    redirect_uris: Vec<String>,
}

impl OidcProvider {
    /// A port for the provider, chosen before the gateway configuration
    /// that names its issuer is written.
    pub fn reserve_port() -> u16 {
        net::free_port()
    }

    /// Starts the provider on `port`, accepting `redirect_uris`, and waits
    /// for its discovery document. `None` after [`crate::tools::skip`] when
    /// Node or the modules are missing (a failure under `CI=true`).
    pub async fn start(
        scratch: &Scratch,
        port: u16,
        redirect_uris: &[String],
    ) -> Option<OidcProvider> {
        if !crate::tools::node_modules_available() {
            return None;
        }
        let mut provider = OidcProvider {
            proc: spawn(scratch, port, redirect_uris),
            port,
            issuer: format!("http://127.0.0.1:{port}"),
            redirect_uris: redirect_uris.to_vec(),
        };
        provider.wait_ready().await;
        Some(provider)
    }

    /// The `[[identity_providers]]` TOML for a gateway using this
    /// provider's static client, under `id` and display `name` (pass it
    /// to [`crate::gateway::GatewayConfig::section`]).
    pub fn gateway_section(&self, id: &str, name: &str) -> String {
        format!(
            "[[identity_providers]]\nid = \"{id}\"\nname = \"{name}\"\ntype = \"oidc\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n",
            self.issuer
        )
    }

    /// The discovery URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    async fn wait_ready(&mut self) {
        wait_http_ok(
            "the OpenID provider's discovery document",
            &self.discovery_url(),
            Duration::from_secs(30),
        )
        .await;
    }

    /// `kill -9`: the provider is down (sessions at the provider are lost,
    /// as its store is in memory).
    pub fn stop(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self, scratch: &Scratch) {
        self.proc.kill9();
        self.proc = spawn(scratch, self.port, &self.redirect_uris);
        self.wait_ready().await;
    }
}

fn spawn(scratch: &Scratch, port: u16, redirect_uris: &[String]) -> Proc {
    let dir = crate::tools::node_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("provider.mjs"))
        .current_dir(&dir)
        .env("OIDC_PORT", port.to_string())
        .env("OIDC_ISSUER", format!("http://127.0.0.1:{port}"))
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_REDIRECT_URIS", redirect_uris.join(","))
        .env("OIDC_ACCOUNT_EMAIL", ACCOUNT_EMAIL)
        .env("OIDC_ACCOUNT_PASSWORD", ACCOUNT_PASSWORD);
    Proc::spawn(scratch, "oidc-provider", cmd)
}
