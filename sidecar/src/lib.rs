//! `portcullis-sidecar`: a reverse proxy and forward-auth server that
//! validates Access JWTs in front of legacy apps, strips spoofed identity
//! headers and injects trusted ones.
//!
//! Nothing reaches the upstream without a valid token (the
//! `Cf-Access-Jwt-Assertion` header or the `CF_Authorization` cookie). An
//! accepted request carries the identity in `X-Forwarded-Email`,
//! `X-Forwarded-User` and `X-Forwarded-Groups` (plus any configured
//! mapping) and the token itself in `Cf-Access-Jwt-Assertion`; every header
//! the sidecar can inject is removed from incoming requests first.
//! Rejections use the contract's statuses and JSON body.
//!
//! The binary is the usual way in; the library runs the same server
//! in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use clap::Parser as _;
//! use portcullis_sidecar::{Cli, Settings};
//!
//! let cli = Cli::try_parse_from([
//!     "portcullis-sidecar",
//!     "--upstream", "http://127.0.0.1:3000",
//!     "--team-domain", "https://acme.cloudflareaccess.com",
//!     "--audience", "41f1d879c797d912d9bd80710db3dce92d30602a2dcbdf7bab33913071c44bd4",
//! ])?;
//! let settings = Settings::load(&cli)?;
//! let running = portcullis_sidecar::start(cli, settings).await?;
//! println!("proxy on {}, admin on {}", running.addr(), running.admin_addr());
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Modules, in request order: [`config`] (flags, file, validation),
//! [`routes`] (host → validator, upstream, headers), [`pipeline`] (the
//! stages), [`inject`] (identity headers), [`proxy`] (forwarding),
//! [`response`] (what the sidecar answers itself), [`metrics`], and
//! [`server`] (listeners, reload, shutdown).

pub mod config;
pub mod inject;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod response;
pub mod routes;
pub mod server;

pub use config::{Cli, LogFormat, Mode, Settings, SettingsError};
pub use inject::{HeaderMapping, HeaderSource};
pub use metrics::Metrics;
pub use server::{Generation, Running, StartError, run, start};
