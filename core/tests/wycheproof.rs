//! Wycheproof's JWS vectors against core's key-selection and signature layer.
//!
//! Every verdict of `json_web_signature_test.json` must match, except the
//! file's known quirks listed in [`OVERRIDES`]. Groups whose only key is an
//! HMAC (`oct`) secret exercise the parser: core never verifies HMAC, so
//! their "valid" tokens must parse and then be refused as
//! `disallowed_algorithm`, and their "invalid" ones must be refused.

use portcullis_core::test_support::shared_fixture;
use portcullis_core::{Algorithm, ErrorCode, KeySet, verify_jws};
use serde_json::Value;

const ALL_ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Known quirks of the vector file (see its README), with core's verdict.
const OVERRIDES: &[(u64, bool, &str)] = &[
    (
        367,
        true,
        "byte-identical to valid tcId 357 but marked invalid",
    ),
    (
        370,
        true,
        "byte-identical to valid tcId 357 but marked invalid",
    ),
    (
        372,
        false,
        "contains a literal '?' (not base64url) yet is marked valid",
    ),
    (
        373,
        false,
        "contains a literal '?' (not base64url) yet is marked valid",
    ),
];

/// Valid vectors outside core's algorithm set or JWK rules, by group comment
/// and algorithm: RFC 7520 Figure 20 signs with PS384 under a JWK pinned to
/// PS256 (core refuses algorithms a JWK does not allow), and ES512 / P-521 is
/// not an algorithm core verifies.
fn out_of_scope(token_alg: &str, group_alg: Option<&str>) -> Option<&'static str> {
    match (token_alg, group_alg) {
        ("ES512", _) => Some("ES512 / P-521 is outside core's algorithm set"),
        ("PS384", Some("PS256")) => Some("RFC 7520 Fig. 20: PS384 under a JWK pinned to PS256"),
        _ => None,
    }
}

fn header_alg(jws: &str) -> String {
    use base64::Engine as _;
    let head = jws.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|h| h["alg"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn every_verdict_matches_but_the_documented_quirks() {
    let Some(path) = shared_fixture("wycheproof/json_web_signature_test.json") else {
        return;
    };
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut checked, mut overridden, mut hmac_only) = (0, 0, 0);
    let mut mismatches = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let keys = group
            .get("public")
            .map(|jwk| KeySet::from_jwks(std::slice::from_ref(jwk)));
        let group_alg = group.pointer("/public/alg").and_then(Value::as_str);
        for test in group["tests"].as_array().unwrap() {
            let id = test["tcId"].as_u64().unwrap();
            let jws = test["jws"].as_str().unwrap();
            let expected_valid = test["result"] == "valid";
            let verdict = match &keys {
                Some(Ok(keys)) => verify_jws(jws, keys, &ALL_ASYMMETRIC)
                    .map(|_| ())
                    .map_err(|_| ()),
                // The only key is unusable for verification (use:"enc",
                // key_ops without "verify"): nothing may verify.
                Some(Err(_)) => Err(()),
                // HMAC-only groups: core never verifies HMAC and refuses
                // every such token. A valid one must be well-formed and
                // refused for its algorithm alone. In the "base64" group the
                // verdicts are about encoding (every MAC is right), so there
                // "passing the parser" is the verdict compared.
                None => {
                    hmac_only += 1;
                    let err = verify_jws(jws, &KeySet::default(), &ALL_ASYMMETRIC).unwrap_err();
                    let well_formed = err.code() == ErrorCode::DisallowedAlgorithm;
                    if group["comment"] == "base64" {
                        if well_formed { Ok(()) } else { Err(()) }
                    } else {
                        assert!(
                            !expected_valid || well_formed,
                            "tcId {id}: valid HMAC token refused as {err}"
                        );
                        checked += 1;
                        continue;
                    }
                }
            };
            let accepted = verdict.is_ok();
            if let Some((_, ours, why)) = OVERRIDES.iter().find(|(t, _, _)| *t == id) {
                assert_eq!(
                    accepted, *ours,
                    "override for tcId {id} ({why}) no longer holds"
                );
                overridden += 1;
                continue;
            }
            if expected_valid
                && !accepted
                && let Some(why) = out_of_scope(&header_alg(jws), group_alg)
            {
                eprintln!("tcId {id}: out of scope: {why}");
                overridden += 1;
                continue;
            }
            if accepted != expected_valid {
                mismatches.push(format!(
                    "tcId {id} ({}): expected {}, core {}",
                    test["comment"],
                    test["result"],
                    if accepted { "accepted" } else { "refused" },
                ));
            }
            checked += 1;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(checked + overridden, 401, "every vector is looked at");
    assert!(
        overridden <= 8,
        "the override list must stay short ({overridden})"
    );
    assert!(hmac_only > 0);
    eprintln!("{checked} verdicts matched, {overridden} documented quirks");
}
