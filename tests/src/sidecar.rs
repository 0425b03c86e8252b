//! The `portcullis-sidecar` binary as a process.

use std::process::Command;
use std::time::Duration;

use crate::net::{self, wait_http_ok};
use crate::process::{Proc, Scratch};

/// A running `portcullis-sidecar` in proxy mode.
#[derive(Debug)]
pub struct Sidecar {
    /// The process.
    pub proc: Proc,
    /// Proxy listener port.
    pub port: u16,
    /// Admin listener port (`/healthz`, `/readyz`, `/metrics`).
    pub admin_port: u16,
}

/// What a sidecar is started with.
#[derive(Debug, Clone)]
pub struct SidecarArgs {
    /// `--team-domain` (the issuer).
    pub team_domain: String,
    /// `--certs-url` (defaults to the team domain's certs path).
    pub certs_url: Option<String>,
    /// `--audience`.
    pub audience: String,
    /// `--upstream`.
    pub upstream: String,
}

impl Sidecar {
    /// Starts on `port` (choose it ahead with [`net::free_port`] when the
    /// gateway must know it first) and waits for `/readyz` (keys loaded).
    pub async fn start(scratch: &Scratch, name: &str, port: u16, args: &SidecarArgs) -> Sidecar {
        let admin_port = net::free_port();
        let mut cmd = Command::new(crate::tools::binary("portcullis-sidecar"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--team-domain", &args.team_domain])
            .args(["--audience", &args.audience])
            .args(["--upstream", &args.upstream])
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info");
        if let Some(certs) = &args.certs_url {
            cmd.args(["--certs-url", certs]);
        }
        // The environment must not add settings behind the test's back.
        for (key, _) in std::env::vars() {
            if key.starts_with("PORTCULLIS_") {
                cmd.env_remove(key);
            }
        }
        let proc = Proc::spawn(scratch, name, cmd);
        let sidecar = Sidecar {
            proc,
            port,
            admin_port,
        };
        wait_http_ok(
            &format!("{name} /readyz"),
            &sidecar.admin_url("/readyz"),
            Duration::from_secs(30),
        )
        .await;
        sidecar
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `http://127.0.0.1:<port>`, as an `--origin` for the gateway.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
