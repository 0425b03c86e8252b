//! End-to-end scenarios. Run one alone with
//! `cargo test -p portcullis-tests --test e2e <module>::<name>`.

mod browser;
mod chain;
mod drills;
mod interop;
mod login;
mod replicas;

/// Tests on the shared PostgreSQL server hold this for reading; the drill
/// that restarts the server holds it for writing.
pub static PG_RESTART: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
