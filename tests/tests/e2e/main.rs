//! End-to-end scenarios. Run one alone with
//! `cargo test -p portcullis-tests --test e2e <module>::<name>`.

mod chain;
