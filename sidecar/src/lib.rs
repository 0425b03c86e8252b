//! `portcullis-sidecar`: a reverse proxy and forward-auth server that validates
//! Access JWTs in front of legacy apps, strips spoofed identity headers and
//! injects trusted ones.
//!
//! This crate is being built.
