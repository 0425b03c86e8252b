//! Forwarding facts shared by the proxies (sidecar and gateway): the
//! `X-Forwarded-*` names and hop-by-hop removal (RFC 9110 §7.6.1). Plain
//! `http` types, no client or server.

use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop fields that are never forwarded (besides those the
/// `Connection` header lists).
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes hop-by-hop headers: the fixed set and every field named in
/// `Connection`. Returns the `Upgrade` value when the message asks for a
/// protocol upgrade (`Connection: upgrade` plus `Upgrade`).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names first: most messages carry none of these
    // (no `Connection` means nothing listed either), and a scan is cheaper
    // than hashing nine names for removal.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return None;
    }
    let mut wants_upgrade = false;
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| {
            let token = token.trim();
            if token.eq_ignore_ascii_case("upgrade") {
                wants_upgrade = true;
            }
            HeaderName::from_bytes(token.as_bytes()).ok()
        })
        .collect();
    let upgrade = headers.get(UPGRADE).cloned().filter(|_| wants_upgrade);
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_fields_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let upgrade = remove_hop_by_hop(&mut h);
        assert_eq!(upgrade.unwrap(), "websocket");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            remove_hop_by_hop(&mut h).is_none(),
            "Upgrade without Connection: upgrade"
        );
    }
}
