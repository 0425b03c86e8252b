//! actix-web middleware (`AccessGuard`) and extractors (`Identity`, `AccessClaims`)
//! that validate Cloudflare Access-style JWTs with `portcullis-core`.
//!
//! This crate is being built; it will hold the middleware, per-scope
//! configuration, path exclusions and the redirect mode for page navigations.
