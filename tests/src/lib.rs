//! Cross-crate end-to-end tests of Portcullis: the real `portcullis-gateway`
//! and `portcullis-sidecar` binaries as separate processes, a real OpenID
//! provider (npm `oidc-provider` under Node), a real browser (headless
//! Chromium over the DevTools protocol), real PostgreSQL, and origins
//! written with the integrations. The scenarios live in `tests/e2e/`; this
//! library is their harness.
//!
//! ```no_run
//! # async fn demo() {
//! use portcullis_tests::{Scratch, gateway::{Gateway, GatewayConfig}};
//!
//! let scratch = Scratch::new("demo");
//! let config = GatewayConfig::sqlite(&scratch).app("echo", "echo.test", "http://127.0.0.1:3000", "");
//! let gw = Gateway::start(&scratch, "gateway", &config).await;
//! let apps = gw.admin_get("/admin/v1/apps").await;
//! # let _ = apps; }
//! ```
//!
//! Tools the scenarios need (Chromium, Node modules, PostgreSQL, PyJWT) are
//! probed with [`tools`]: outside CI a missing tool makes the test print
//! `skipped: ...` and return; under `CI=true` it fails.

pub mod agent;
pub mod apps;
pub mod browser;
pub mod front;
pub mod gateway;
pub mod interop;
pub mod net;
pub mod oidc;
pub mod pg;
pub mod process;
pub mod sidecar;
pub mod tools;

pub use process::{Proc, Scratch};
