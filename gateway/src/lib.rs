//! # portcullis-gateway
//!
//! The issuing edge of Portcullis, wire-compatible with Cloudflare Access:
//! it exchanges service tokens (`CF-Access-Client-Id` /
//! `CF-Access-Client-Secret`) for Access JWTs, evaluates per-application
//! policies, signs with rotating RSA keys published at
//! `/cdn-cgi/access/certs`, audits every decision, and proxies to origins
//! with `Cf-Access-Jwt-Assertion` set. Origins validate what it forwards
//! with `portcullis-core`, as they would behind Cloudflare.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_gateway::config::Config;
//!
//! let config = Config::load(std::path::Path::new("gateway.toml"))?;
//! let running = portcullis_gateway::server::start(config).await?;
//! println!("serving on {}", running.addr);
//! running.run_until(portcullis_gateway::server::shutdown_signal()).await;
//! # Ok(()) }
//! ```
//!
//! The binary `portcullis-gateway` (see [`cli`]) has `serve`, `check`,
//! `apps list`, `service-token create|list|rotate|revoke` and
//! `keys list|rotate`.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod gateway;
pub mod identity;
pub mod issue;
pub mod keys;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod page;
pub mod policy;
pub mod proxy;
pub mod quickstart;
pub mod ratelimit;
pub mod response;
pub mod server;
pub mod service_tokens;
pub mod session;
pub mod store;
pub mod tls;
pub mod users;

pub use config::Config;
pub use gateway::Gateway;
pub use identity::{Principal, RequestContext, ServiceIdentity, UserIdentity};
pub use keys::{KeyManager, SigningKey};
pub use policy::{Decision, Outcome, Policy, Selector};
pub use server::{RunningGateway, Services, start, start_with_listeners};
pub use store::{SqlStore, Storage};
