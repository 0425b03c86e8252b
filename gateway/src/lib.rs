//! `portcullis-gateway`: the issuing edge. It logs people in, exchanges service
//! tokens, evaluates per-application policies, signs Access JWTs with rotating
//! keys and proxies to origins.
//!
//! This crate is being built.
