//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the JSON admin
//! API under `/admin/v1/`, which requires `Authorization: Bearer <token>`
//! (`PORTCULLIS_ADMIN_TOKEN`; compared in constant time). Without a
//! configured token the admin API refuses every call.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/admin/v1/apps` | `[{"name","domain","aud"}]` |
//! | GET | `/admin/v1/service-tokens` | tokens (never secrets) |
//! | POST | `/admin/v1/service-tokens` | `{"name","duration"?}` → credentials, shown once |
//! | POST | `/admin/v1/service-tokens/{name}/rotate` | `{"grace"?}` → new secret |
//! | POST | `/admin/v1/service-tokens/{name}/revoke` | revoke at once |
//! | GET | `/admin/v1/keys` | signing keys |
//! | POST | `/admin/v1/keys/rotate` | `{"immediate"?}` |
//! | GET | `/admin/v1/audit?app=&since=&decision=&limit=` | newest first; `since` is RFC 3339 or Unix seconds; a row counts `decisions` identical decisions from `at_ms` to `last_at_ms` |
//! | POST | `/admin/v1/sessions/revoke` | `{"email"}` (every session of a user) or `{"session_id"}` → `{"revoked": n}`; at once here, within 5 s on other replicas |

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::response::{Body, admin_error, json as json_response, text};
use crate::service_tokens::TokenError;
use crate::store::AuditQuery;

/// Handles one request of the admin listener.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") => readyz(&gw).await,
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            gw.metrics.render(),
            "text/plain; version=0.0.4",
        ),
        (_, p) if p.starts_with("/admin/v1/") => {
            if !authorized(&gw, req.headers()) {
                return admin_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "A valid admin bearer token is required.",
                );
            }
            api(&gw, req).await
        }
        _ => admin_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such admin endpoint.",
        ),
    }
}

async fn readyz(gw: &Gateway) -> Response<Body> {
    let store_ok = gw.store.ping().await.is_ok();
    let ring = gw.keys.ring();
    let keys_ok = ring.signer(crate::clock::now()).is_some();
    let status = if store_ok && keys_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({"storage": store_ok, "signing_key": keys_ok, "published_keys": ring.keys().len()}),
    )
}

fn authorized(gw: &Gateway, headers: &http::HeaderMap) -> bool {
    let Some(expected) = gw.config.server.admin_token.as_deref() else {
        return false;
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    // Hash both so the comparison's length never depends on the secret.
    crate::crypto::constant_time_eq(
        &crate::crypto::sha256(presented.as_bytes()),
        &crate::crypto::sha256(expected.as_bytes()),
    )
}

async fn body_json(req: Request<Incoming>) -> Result<Value, Box<Response<Body>>> {
    let bad =
        |message: &str| Box::new(admin_error(StatusCode::BAD_REQUEST, "bad_request", message));
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| bad("The body could not be read."))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|_| bad("The body is not JSON."))
}

fn duration_member(
    body: &Value,
    name: &str,
) -> Result<Option<std::time::Duration>, Box<Response<Body>>> {
    let bad = |message: String| {
        Box::new(admin_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &message,
        ))
    };
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => humantime::parse_duration(s)
            .map(Some)
            .map_err(|_| bad(format!("{name} must be a duration such as \"8760h\"."))),
        Some(_) => Err(bad(format!("{name} must be a string."))),
    }
}

fn token_error(e: TokenError) -> Response<Body> {
    match e {
        TokenError::NotFound(_) => admin_error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        TokenError::BadName => admin_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        TokenError::Store(crate::store::StoreError::Conflict(_)) => {
            admin_error(StatusCode::CONFLICT, "conflict", &e.to_string())
        }
        TokenError::Store(e) => {
            tracing::error!(error = %e, "admin storage error");
            admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "Storage failed.",
            )
        }
    }
}

fn ok(value: impl serde::Serialize) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(value).unwrap_or(Value::Null),
    )
}

/// `since` as RFC 3339 or Unix seconds → milliseconds.
pub fn parse_since(value: &str) -> Option<i64> {
    if let Ok(secs) = value.parse::<i64>() {
        return Some(secs.saturating_mul(1000));
    }
    let t = humantime::parse_rfc3339_weak(value).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

async fn api(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path.trim_start_matches("/admin/v1/");
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["apps"]) => ok(gw
            .apps
            .iter()
            .map(|a| json!({"name": a.config.name, "domain": a.config.host.clone() + &a.config.path_prefix, "aud": a.aud}))
            .collect::<Vec<_>>()),
        (&Method::GET, ["service-tokens"]) => match gw.tokens.list().await {
            Ok(list) => ok(list),
            Err(e) => token_error(e),
        },
        (&Method::POST, ["service-tokens"]) => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let Some(name) = body.get("name").and_then(Value::as_str) else {
                return admin_error(StatusCode::BAD_REQUEST, "bad_request", "name is required.");
            };
            let duration = match duration_member(&body, "duration") {
                Ok(d) => d,
                Err(r) => return *r,
            };
            match gw.tokens.create(name, duration).await {
                Ok(created) => json_response(
                    StatusCode::CREATED,
                    &serde_json::to_value(created).unwrap_or(Value::Null),
                ),
                Err(e) => token_error(e),
            }
        }
        (&Method::POST, ["service-tokens", name, "rotate"]) => {
            let name = percent_decode(name);
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let grace = match duration_member(&body, "grace") {
                Ok(d) => d,
                Err(r) => return *r,
            };
            match gw.tokens.rotate(&name, grace).await {
                Ok(rotated) => ok(rotated),
                Err(e) => token_error(e),
            }
        }
        (&Method::POST, ["service-tokens", name, "revoke"]) => {
            let name = percent_decode(name);
            match gw.tokens.revoke(&name).await {
                Ok(client_id) => {
                    gw.issuer.forget_client(&client_id);
                    ok(json!({"name": name, "client_id": client_id, "revoked": true}))
                }
                Err(e) => token_error(e),
            }
        }
        (&Method::POST, ["sessions", "revoke"]) => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let email = body.get("email").and_then(Value::as_str).map(str::trim);
            let session = body.get("session_id").and_then(Value::as_str).map(str::trim);
            let result = match (email, session) {
                (Some(e), None) if e.contains('@') => gw.login.sessions.revoke_user(e).await,
                (None, Some(id)) if !id.is_empty() => {
                    gw.login.sessions.revoke(id).await.map(usize::from)
                }
                _ => {
                    return admin_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "Give either email (every session of that user) or session_id.",
                    );
                }
            };
            match result {
                Ok(n) => ok(json!({"revoked": n})),
                Err(e) => {
                    tracing::error!(error = %e, "session revocation failed");
                    admin_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "Storage failed.")
                }
            }
        }
        (&Method::GET, ["keys"]) => match gw.keys.list().await {
            Ok(keys) => ok(keys),
            Err(e) => admin_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", &e.to_string()),
        },
        (&Method::POST, ["keys", "rotate"]) => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let immediate = body.get("immediate").and_then(Value::as_bool).unwrap_or(false);
            match gw.keys.rotate(immediate).await {
                Ok(info) => ok(info),
                Err(e) => admin_error(StatusCode::SERVICE_UNAVAILABLE, "key_error", &e.to_string()),
            }
        }
        (&Method::GET, ["audit"]) => {
            let mut query = AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            };
            for (k, v) in query_pairs(&req) {
                match k.as_str() {
                    "app" if !v.is_empty() => query.app = Some(v),
                    "decision" if !v.is_empty() => query.decision = Some(v),
                    "since" if !v.is_empty() => match parse_since(&v) {
                        Some(ms) => query.since_ms = Some(ms),
                        None => {
                            return admin_error(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "since must be RFC 3339 or Unix seconds.",
                            );
                        }
                    },
                    "limit" => match v.parse::<i64>() {
                        Ok(n) if (1..=10_000).contains(&n) => query.limit = n,
                        _ => {
                            return admin_error(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "limit must be between 1 and 10000.",
                            );
                        }
                    },
                    _ => {}
                }
            }
            match gw.store.audit(&query).await {
                Ok(rows) => ok(rows),
                Err(e) => {
                    tracing::error!(error = %e, "audit query failed");
                    admin_error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "Storage failed.")
                }
            }
        }
        _ => admin_error(StatusCode::NOT_FOUND, "not_found", "No such admin endpoint."),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parsing() {
        assert_eq!(parse_since("10"), Some(10_000));
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_since("yesterday"), None);
        assert_eq!(percent_decode("report%20bot"), "report bot");
    }
}
