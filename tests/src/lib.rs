//! Cross-crate end-to-end tests: real processes, a real identity provider and
//! a real browser. The scenarios live under `tests/`.
