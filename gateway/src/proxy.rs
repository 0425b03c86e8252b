//! Forwarding to the origin. The forwarder is shared with the sidecar and
//! lives in [`portcullis_core::proxy`]: a pooled HTTP/1.1 client over
//! hyper's connection API, hop-by-hop headers (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, streamed bodies, timeouts and HTTP upgrades.

pub use portcullis_core::proxy::{
    Forwarder, Outgoing, Upstream, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    append_forwarded, forwarded_for, remove_hop_by_hop, upstream_uri,
};
