// criterion_group! generates undocumented items.
#![allow(missing_docs)]

//! Core validation cost against its floor and baseline, in one run:
//!
//! - `floor/aws_lc_rsa2048_verify`: raw aws-lc-rs RSA-2048 PKCS#1 v1.5 verify
//!   (key parsed per call, as `UnparsedPublicKey` does), and `_preparsed`
//!   with the key parsed once (what core does per `kid`);
//! - `baseline/jsonwebtoken_decode`: `jsonwebtoken::decode` of the same RS256
//!   token with issuer and audience checks (aws_lc_rs backend);
//! - `validator/miss`: `Validator` on tokens it has not seen;
//! - `validator/hit`: `Validator` on a repeated token;
//! - `validator/miss_2_threads` and `validator/hit_2_threads`: two threads
//!   sharing one validator (time per validation of the pair, i.e. 1/throughput).
//!
//! `cargo bench -p portcullis-benches`; numbers in `benches/README.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::test_support::{TestKey, static_source, user_claims};
use portcullis_core::{KeySource, Validator};

const ISS: &str = "https://bench.cloudflareaccess.com";
const AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
const POOL: usize = 1024;

fn validator(source: &KeySource) -> Validator {
    Validator::builder(ISS)
        .audience(AUD)
        .key_source(source.clone())
        .build()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let key = TestKey::rsa();
    let source = static_source(&[&key]);
    let pool: Vec<String> = (0..POOL)
        .map(|_| key.sign(&user_claims(ISS, AUD, "bench@example.com")))
        .collect();
    let token = &pool[0];
    let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig_b64)
        .unwrap();

    let mut g = c.benchmark_group("core");
    g.measurement_time(Duration::from_secs(8));

    g.bench_function("floor/aws_lc_rsa2048_verify", |b| {
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            key.spki_der(),
        );
        b.iter(|| {
            public
                .verify(black_box(signing_input.as_bytes()), black_box(&signature))
                .unwrap()
        })
    });

    g.bench_function("floor/aws_lc_rsa2048_verify_preparsed", |b| {
        let public = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            key.spki_der(),
        )
        .unwrap();
        b.iter(|| {
            public
                .verify_sig(black_box(signing_input.as_bytes()), black_box(&signature))
                .unwrap()
        })
    });

    g.bench_function("baseline/jsonwebtoken_decode", |b| {
        let jwk = key.jwk();
        let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[AUD]);
        validation.set_issuer(&[ISS]);
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(token), &decoding, &validation)
                .unwrap()
        })
    });

    g.bench_function("validator/miss", |b| {
        b.iter_custom(|iters| {
            let mut v = validator(&source);
            let start = Instant::now();
            for i in 0..iters as usize {
                if i % POOL == 0 && i > 0 {
                    v = validator(&source); // a fresh cache: every token is a miss
                }
                black_box(v.validate_with_current_keys(&pool[i % POOL]).unwrap());
            }
            start.elapsed()
        })
    });

    g.bench_function("validator/hit", |b| {
        let v = validator(&source);
        v.validate_with_current_keys(token).unwrap();
        b.iter(|| v.validate_with_current_keys(black_box(token)).unwrap())
    });

    g.bench_function("validator/miss_2_threads", |b| {
        b.iter_custom(|iters| {
            let v = validator(&source);
            let start = Instant::now();
            std::thread::scope(|s| {
                for half in 0..2usize {
                    let pool = &pool;
                    let source = &source;
                    let mut v = v.clone();
                    s.spawn(move || {
                        for i in 0..(iters as usize).div_ceil(2) {
                            if i % (POOL / 2) == 0 && i > 0 {
                                v = validator(source);
                            }
                            black_box(
                                v.validate_with_current_keys(
                                    &pool[half * POOL / 2 + i % (POOL / 2)],
                                )
                                .unwrap(),
                            );
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    g.bench_function("validator/hit_2_threads", |b| {
        b.iter_custom(|iters| {
            let v = validator(&source);
            v.validate_with_current_keys(token).unwrap();
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let v = v.clone();
                    s.spawn(move || {
                        for _ in 0..(iters as usize).div_ceil(2) {
                            black_box(v.validate_with_current_keys(token).unwrap());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
