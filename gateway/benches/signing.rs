//! Token signing: raw aws-lc-rs RSA-2048 (the floor), the gateway's
//! signer (key pair parsed once), and `jsonwebtoken::encode` (which parses
//! the private key on every call). Run with
//! `cargo bench -p portcullis-gateway --bench signing`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::test_support::{TestKey, now, random_hex, service_claims};
use portcullis_gateway::SigningKey;

fn signing(c: &mut Criterion) {
    let key = TestKey::rsa();
    let aud = random_hex(32);
    let claims = service_claims(
        "https://auth.example.com",
        &aud,
        &format!("{}.access", random_hex(16)),
    );
    let signer =
        SigningKey::from_pkcs8(1, now(), now(), key.pkcs8_der(), String::new()).expect("key");
    let raw = aws_lc_rs::rsa::KeyPair::from_pkcs8(key.pkcs8_der()).expect("key");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sample = signer.sign(&claims).expect("sign");
    let message = sample.rsplit_once('.').expect("JWS").0.as_bytes().to_vec();
    let encoding =
        jsonwebtoken::EncodingKey::from_rsa_pem(key.pkcs8_pem().as_bytes()).expect("pem");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(signer.kid().to_owned());
    header.typ = None;

    let mut group = c.benchmark_group("sign_rs256");
    group.bench_function("aws_lc_rs_raw", |b| {
        let mut sig = vec![0u8; raw.public_modulus_len()];
        b.iter(|| {
            raw.sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                black_box(&message),
                &mut sig,
            )
            .expect("sign");
            black_box(&sig);
        })
    });
    group.bench_function("gateway_signer", |b| {
        b.iter(|| black_box(signer.sign(black_box(&claims)).expect("sign")))
    });
    group.bench_function("jsonwebtoken_encode", |b| {
        b.iter(|| {
            black_box(jsonwebtoken::encode(&header, black_box(&claims), &encoding).expect("sign"))
        })
    });
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
