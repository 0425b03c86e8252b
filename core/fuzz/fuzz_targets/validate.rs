//! Fuzzes token parsing and full validation (the key set is fixed; the
//! input is the token). Any panic, hang or acceptance of a token that was
//! not signed by the test key is a finding.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis_core::test_support::{TestKey, static_source};
use portcullis_core::{FixedClock, Validator};

struct Setup {
    validator: Validator,
    signed: String,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let key = TestKey::rsa();
        let claims = serde_json::json!({"aud": ["aud"], "iss": "https://t.example", "exp": 2_000_000_000i64, "email": "a@b.c"});
        let validator = Validator::builder("https://t.example")
            .audience("aud")
            .clock(Arc::new(FixedClock::new(1_700_000_000)))
            .cache_capacity(0)
            .key_source(static_source(&[&key]))
            .build()
            .unwrap();
        Setup { validator, signed: key.sign(&claims) }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portcullis_core::__fuzz::parse_compact(text);
    let _ = portcullis_core::parse_strict_json(data);
    if let Ok(claims) = s.validator.validate_with_current_keys(text) {
        // Only the one genuinely signed token may be accepted.
        assert_eq!(text, s.signed, "accepted a token the key never signed: {claims:?}");
    }
    // Mutations of the real token: splice the input into it.
    let spliced = format!("{}{}", &s.signed[..s.signed.len() / 2], text);
    if spliced != s.signed {
        assert!(s.validator.validate_with_current_keys(&spliced).is_err(), "accepted a spliced token");
    }
});
