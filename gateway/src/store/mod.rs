//! Storage of the state the gateway creates: AUD tags, signing keys,
//! service tokens and the audit log.
//!
//! One trait, [`Storage`], and one implementation over sqlx,
//! [`SqlStore`], which speaks to SQLite (the embedded default: a file
//! under the data directory, WAL mode, so CLI subcommands work while
//! `serve` runs) and PostgreSQL (several replicas share one database).
//! Migrations run when the store is opened. Times are seconds since the
//! Unix epoch, audit times milliseconds.
//!
//! Logins add team sessions (revoked ones stay until they expire, so every
//! replica can learn of a revocation), single-use login codes and
//! failed-password counters in a second migration.

mod sql;

pub use sql::SqlStore;

use async_trait::async_trait;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique name is already taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// The URL names no supported database.
    #[error("unsupported storage URL; use sqlite://PATH or postgres://…")]
    UnsupportedUrl,
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// An application's generated AUD tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppRecord {
    /// The app's configured name.
    pub name: String,
    /// Its AUD tag, 64 hex characters.
    pub aud: String,
    /// When the tag was generated.
    pub created_at: i64,
}

/// A stored signing key. The private key is sealed with the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// Monotonic number; exactly one row per generation.
    pub generation: i64,
    /// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
    pub kid: String,
    /// When it was generated (and published).
    pub created_at: i64,
    /// When it starts signing.
    pub activates_at: i64,
    /// The public JWK, JSON text.
    pub public_jwk: String,
    /// A self-signed X.509 certificate of the key, PEM.
    pub cert_pem: String,
    /// PKCS#8 DER of the private key, AES-256-GCM sealed, base64.
    pub private_key_enc: String,
}

/// A stored service token. Only hashes of secrets are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTokenRecord {
    /// `<32 hex>.access`.
    pub client_id: String,
    /// Unique among tokens that are not revoked.
    pub name: String,
    /// Hex SHA-256 of the current secret.
    pub secret_hash: String,
    /// Hex SHA-256 of the secret before the last rotation.
    pub previous_secret_hash: Option<String>,
    /// Until when the previous secret still works.
    pub previous_valid_until: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// Last rotation.
    pub rotated_at: Option<i64>,
    /// Revocation time; revoked tokens never authenticate again.
    pub revoked_at: Option<i64>,
    /// Last successful use (updated in batches).
    pub last_used_at: Option<i64>,
}

/// One row of the audit log: one decision, or `decisions` identical ones
/// (same app, identity, policy, decision, reason and source address) made
/// between `at_ms` and `last_at_ms` within one flush of the audit writer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Row id (0 before insertion).
    pub id: i64,
    /// Time of the (first) decision, milliseconds since the epoch.
    pub at_ms: i64,
    /// Time of the last decision of the row (= `at_ms` for one).
    pub last_at_ms: i64,
    /// How many identical decisions the row stands for (≥ 1).
    pub decisions: i64,
    /// App name.
    pub app: String,
    /// Email, client id or `""`.
    pub identity: String,
    /// `anonymous`, `user` or `service_token`.
    pub identity_kind: String,
    /// The deciding policy, if one matched.
    pub policy: Option<String>,
    /// `allow`, `block`, `bypass`, `service_auth` or `deny`.
    pub decision: String,
    /// `ok` or an error code of the contract.
    pub reason: String,
    /// The peer address.
    pub source_ip: String,
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this app.
    pub app: Option<String>,
    /// Only rows at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only this decision.
    pub decision: Option<String>,
    /// At most this many rows, newest first.
    pub limit: i64,
}

/// A team-domain session: who logged in, with which provider, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Random id (64 hex); carried as `sid` in the tokens of the session.
    pub id: String,
    /// Email (lowercase).
    pub email: String,
    /// Subject at the provider.
    pub sub: String,
    /// Display name.
    pub name: Option<String>,
    /// Groups, JSON array text.
    pub groups_json: String,
    /// The provider's id.
    pub idp_id: String,
    /// `oidc` or `local`.
    pub idp_type: String,
    /// Two-letter country of the login request, when known.
    pub country: Option<String>,
    /// Login time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
    /// Revocation (logout or admin) time.
    pub revoked_at: Option<i64>,
}

/// A single-use code that carries a session to an app host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCodeRecord {
    /// Hex SHA-256 of the code (the code itself is never stored).
    pub code_hash: String,
    /// The session it hands over.
    pub session_id: String,
    /// The app it is for.
    pub app: String,
    /// Where to send the browser afterwards (already checked).
    pub redirect_url: String,
    /// Expiry.
    pub expires_at: i64,
}

/// The gateway's persistent state.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// Reads a metadata value.
    async fn meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// Stores a metadata value unless one exists; returns the stored value.
    async fn meta_insert_or_get(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Binds `aud` to `name` unless the app already has a tag; returns the
    /// app's tag (generated once, stable afterwards).
    async fn ensure_app(&self, name: &str, aud: &str, now: i64) -> StoreResult<String>;
    /// Every app with a tag.
    async fn apps(&self) -> StoreResult<Vec<AppRecord>>;

    /// Inserts the key of a new generation. `Ok(false)` when another
    /// writer took that generation first (the caller reloads).
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool>;
    /// Every stored signing key, by generation.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Deletes keys of generations below `generation`.
    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64>;

    /// Inserts a token; [`StoreError::Conflict`] when the name is taken.
    async fn insert_service_token(&self, token: &ServiceTokenRecord) -> StoreResult<()>;
    /// Looks a token up by client id (revoked ones included).
    async fn service_token(&self, client_id: &str) -> StoreResult<Option<ServiceTokenRecord>>;
    /// The token with this name that is not revoked.
    async fn active_service_token(&self, name: &str) -> StoreResult<Option<ServiceTokenRecord>>;
    /// Every token, revoked ones included.
    async fn service_tokens(&self) -> StoreResult<Vec<ServiceTokenRecord>>;
    /// Replaces the secret of a token that is not revoked; the old hash
    /// stays valid until `previous_valid_until`. `false` when not found.
    async fn rotate_service_token(
        &self,
        client_id: &str,
        new_hash: &str,
        previous_valid_until: i64,
        now: i64,
    ) -> StoreResult<bool>;
    /// Revokes the active token with this name; `false` when none.
    async fn revoke_service_token(&self, name: &str, now: i64) -> StoreResult<Option<String>>;
    /// Records uses: `(client_id, time)`.
    async fn touch_service_tokens(&self, uses: &[(String, i64)]) -> StoreResult<()>;

    /// Appends audit rows in one transaction.
    async fn append_audit(&self, rows: &[AuditRecord]) -> StoreResult<()>;
    /// Reads audit rows, newest first.
    async fn audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes at most `limit` audit rows older than `before_ms`, oldest
    /// first, in one short statement; returns how many went.
    async fn purge_audit(&self, before_ms: i64, limit: i64) -> StoreResult<u64>;

    /// Stores a new session.
    async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()>;
    /// A session by id (revoked and expired ones included).
    async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>>;
    /// Revokes one session; `false` when it does not exist or already was.
    async fn revoke_session(&self, id: &str, now: i64) -> StoreResult<bool>;
    /// Revokes every live session of an email; returns their ids.
    async fn revoke_user_sessions(&self, email: &str, now: i64) -> StoreResult<Vec<String>>;
    /// Ids of revoked sessions that have not yet expired.
    async fn revoked_sessions(&self, now: i64) -> StoreResult<Vec<String>>;
    /// Stores a login code.
    async fn insert_login_code(&self, code: &LoginCodeRecord) -> StoreResult<()>;
    /// Takes (deletes and returns) a login code, so it works once; `None`
    /// when unknown, already used or expired.
    async fn take_login_code(
        &self,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<Option<LoginCodeRecord>>;
    /// Counts a failed login for `key` in a window of `window` seconds
    /// starting at the first failure; returns the count in the window.
    async fn record_login_failure(&self, key: &str, now: i64, window: i64) -> StoreResult<i64>;
    /// Failed logins for `key` in its current window.
    async fn login_failures(&self, key: &str, now: i64, window: i64) -> StoreResult<i64>;
    /// Forgets the failures of `key` (after a successful login).
    async fn clear_login_failures(&self, key: &str) -> StoreResult<()>;
    /// Deletes expired codes, failure counters and sessions that expired
    /// more than a day ago.
    async fn purge_expired(&self, now: i64) -> StoreResult<()>;
}
