//! Team sessions, the single-use codes that carry them to app hosts, and
//! revocation.
//!
//! A login creates a session row; the team domain's `CF_Authorization`
//! cookie holds a `type: "org"` token naming it (`sid`), and every app
//! token minted from it carries the same `sid`. Revoking a session (logout,
//! or the admin API by session or by user) marks the row; each replica
//! keeps the set of revoked, unexpired session ids in memory — updated at
//! once on the replica that revoked, and re-read from the database every
//! few seconds by the others — so checking a token costs one hash lookup.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::crypto::{random_hex, sha256_hex};
use crate::identity::UserIdentity;
use crate::store::{LoginCodeRecord, SessionRecord, Storage, StoreResult};

/// How long a login code may wait before it is exchanged.
pub const CODE_LIFETIME_SECS: i64 = 60;

/// A live session as the login code and identity endpoints use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id.
    pub id: String,
    /// Who logged in (with `login_method` = the provider's id).
    pub user: UserIdentity,
    /// `oidc` or `local`.
    pub idp_type: String,
    /// Country of the login request.
    pub country: Option<String>,
    /// Login time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
}

impl Session {
    fn from_record(r: SessionRecord) -> Session {
        Session {
            user: UserIdentity {
                email: r.email,
                sub: r.sub,
                name: r.name,
                groups: serde_json::from_str(&r.groups_json).unwrap_or_default(),
                login_method: Some(r.idp_id),
            },
            id: r.id,
            idp_type: r.idp_type,
            country: r.country,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }

    /// The provider's id.
    pub fn idp_id(&self) -> &str {
        self.user.login_method.as_deref().unwrap_or("")
    }

    /// The get-identity document.
    pub fn identity_json(&self) -> serde_json::Value {
        serde_json::json!({
            "email": self.user.email,
            "name": self.user.name,
            "sub": self.user.sub,
            "user_uuid": self.user.sub,
            "groups": self.user.groups,
            "idp": {"id": self.idp_id(), "type": self.idp_type},
            "country": self.country,
            "login_time": crate::service_tokens::rfc3339(self.created_at),
            "iat": self.created_at,
            "session_expires_at": crate::service_tokens::rfc3339(self.expires_at),
        })
    }
}

/// Sessions over the store, with the in-memory revocation set.
pub struct Sessions {
    store: Arc<dyn Storage>,
    revoked: ArcSwap<HashSet<String>>,
    recent: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("revoked", &self.revoked.load().len())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions in `store`.
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Sessions {
            store,
            revoked: ArcSwap::from_pointee(HashSet::new()),
            recent: std::sync::Mutex::default(),
        }
    }

    /// Creates a session for `user` (its `login_method` is the provider id).
    pub async fn create(
        &self,
        user: &UserIdentity,
        idp_type: &str,
        country: Option<String>,
        lifetime: i64,
        now: i64,
    ) -> StoreResult<Session> {
        let record = SessionRecord {
            id: random_hex::<32>(),
            email: user.email.clone(),
            sub: user.sub.clone(),
            name: user.name.clone(),
            groups_json: serde_json::to_string(&user.groups).unwrap_or_else(|_| "[]".into()),
            idp_id: user.login_method.clone().unwrap_or_default(),
            idp_type: idp_type.to_owned(),
            country,
            created_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
        };
        self.store.insert_session(&record).await?;
        Ok(Session::from_record(record))
    }

    /// The session `id` when it exists, is not revoked and has not expired.
    pub async fn live(&self, id: &str, now: i64) -> StoreResult<Option<Session>> {
        if self.is_revoked(id) {
            return Ok(None);
        }
        Ok(self
            .store
            .session(id)
            .await?
            .filter(|r| r.revoked_at.is_none() && r.expires_at > now)
            .map(Session::from_record))
    }

    /// Whether this replica knows `id` to be revoked (lock-free).
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.load().contains(id)
    }

    fn mark_revoked(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        {
            let now = crate::clock::now();
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                recent.insert(id.clone(), now);
            }
        }
        self.revoked.rcu(|current| {
            let mut next = HashSet::clone(current);
            next.extend(ids.iter().cloned());
            next
        });
    }

    /// Revokes one session; `false` when there was no live one.
    pub async fn revoke(&self, id: &str) -> StoreResult<bool> {
        let done = self.store.revoke_session(id, crate::clock::now()).await?;
        self.mark_revoked(&[id.to_owned()]);
        Ok(done)
    }

    /// Revokes every session of `email`; returns how many.
    pub async fn revoke_user(&self, email: &str) -> StoreResult<usize> {
        let ids = self
            .store
            .revoke_user_sessions(&email.to_ascii_lowercase(), crate::clock::now())
            .await?;
        self.mark_revoked(&ids);
        Ok(ids.len())
    }

    /// Re-reads the revoked sessions (revocations made by other replicas
    /// and the CLI); run every few seconds.
    pub async fn refresh_revoked(&self) -> StoreResult<()> {
        let now = crate::clock::now();
        let ids = self.store.revoked_sessions(now).await?;
        let mut set: HashSet<String> = ids.into_iter().collect();
        // A revocation made here while the query ran may be missing from
        // its result; keep recent local ones.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, at| *at > now - 60);
        set.extend(recent.keys().cloned());
        self.revoked.store(Arc::new(set));
        Ok(())
    }

    /// Issues a single-use code handing `session` to `app`; returns the
    /// code (only its hash is stored).
    pub async fn issue_code(
        &self,
        session_id: &str,
        app: &str,
        redirect_url: &str,
        now: i64,
    ) -> StoreResult<String> {
        let code = random_hex::<32>();
        self.store
            .insert_login_code(&LoginCodeRecord {
                code_hash: sha256_hex(code.as_bytes()),
                session_id: session_id.to_owned(),
                app: app.to_owned(),
                redirect_url: redirect_url.to_owned(),
                expires_at: now + CODE_LIFETIME_SECS,
            })
            .await?;
        Ok(code)
    }

    /// Redeems a code once; `None` when unknown, used or expired.
    pub async fn redeem_code(&self, code: &str, now: i64) -> StoreResult<Option<LoginCodeRecord>> {
        if code.len() != 64 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        self.store
            .take_login_code(&sha256_hex(code.as_bytes()), now)
            .await
    }
}
