//! Criterion benchmarks and the load-test driver for Portcullis; results are
//! recorded in `benches/README.md`.
