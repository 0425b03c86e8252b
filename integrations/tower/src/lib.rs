//! A tower `Layer` (`AccessLayer`) that validates Cloudflare Access-style JWTs
//! with `portcullis-core` for axum, hyper and tonic services.
//!
//! This crate is being built; it will hold the layer, its service and an axum
//! extractor behind the `axum` feature.
