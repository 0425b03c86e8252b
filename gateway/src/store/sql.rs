//! [`Storage`] over sqlx's `Any` driver: one set of statements for SQLite
//! and PostgreSQL (numbered `$n` parameters work on both), with
//! backend-specific DDL only in the migrations.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row as _};

use super::{
    AppRecord, AuditQuery, AuditRecord, LoginCodeRecord, ServiceTokenRecord, SessionRecord,
    SigningKeyRecord, Storage, StoreError, StoreResult,
};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The sqlx-backed store (SQLite or PostgreSQL).
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

#[derive(Debug)]
struct Migrations(Backend);

impl MigrationSource<'static> for Migrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>>
                + Send,
        >,
    > {
        let (init, sessions, audit_decisions) = match self.0 {
            Backend::Sqlite => (
                include_str!("migrations/sqlite_0001_init.sql"),
                include_str!("migrations/sqlite_0002_sessions.sql"),
                include_str!("migrations/sqlite_0003_audit_decisions.sql"),
            ),
            Backend::Postgres => (
                include_str!("migrations/postgres_0001_init.sql"),
                include_str!("migrations/postgres_0002_sessions.sql"),
                include_str!("migrations/postgres_0003_audit_decisions.sql"),
            ),
        };
        let migration = |version, name, sql| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        };
        Box::pin(async move {
            Ok(vec![
                migration(1, "init", init),
                migration(2, "sessions", sessions),
                migration(3, "audit decisions", audit_decisions),
            ])
        })
    }
}

const TOKEN_COLUMNS: &str = "client_id, name, secret_hash, previous_secret_hash, previous_valid_until, created_at, expires_at, rotated_at, revoked_at, last_used_at";
const KEY_COLUMNS: &str =
    "generation, kid, created_at, activates_at, public_jwk, cert_pem, private_key_enc";
const SESSION_COLUMNS: &str = "id, email, sub, name, groups_json, idp_id, idp_type, country, created_at, expires_at, revoked_at";
const AUDIT_COLUMNS: &str = "at_ms, last_at_ms, decisions, app, identity, identity_kind, policy, decision, reason, source_ip";

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://…`),
    /// creates the SQLite file's directory, switches SQLite to WAL, and runs
    /// the migrations.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        if backend == Backend::Sqlite
            && let Some(path) = crate::config::sqlite_path(url)
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            create_dir(dir)?;
        }
        let mut options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets the CLI and `serve` (and readers) work at
                    // once; NORMAL sync in WAL mode loses nothing a
                    // process crash could reach, only an OS crash could.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 10000",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        let migrator = Migrator::new(Migrations(backend)).await?;
        migrator.run(&pool).await?;
        Ok(SqlStore { pool, backend })
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn create_dir(dir: &Path) -> StoreResult<()> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
        path: dir.display().to_string(),
        source,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn token_from_row(row: &AnyRow) -> Result<ServiceTokenRecord, sqlx::Error> {
    Ok(ServiceTokenRecord {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        previous_secret_hash: row.try_get("previous_secret_hash")?,
        previous_valid_until: row.try_get("previous_valid_until")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        rotated_at: row.try_get("rotated_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn key_from_row(row: &AnyRow) -> Result<SigningKeyRecord, sqlx::Error> {
    Ok(SigningKeyRecord {
        generation: row.try_get("generation")?,
        kid: row.try_get("kid")?,
        created_at: row.try_get("created_at")?,
        activates_at: row.try_get("activates_at")?,
        public_jwk: row.try_get("public_jwk")?,
        cert_pem: row.try_get("cert_pem")?,
        private_key_enc: row.try_get("private_key_enc")?,
    })
}

fn session_from_row(row: &AnyRow) -> Result<SessionRecord, sqlx::Error> {
    Ok(SessionRecord {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        sub: row.try_get("sub")?,
        name: row.try_get("name")?,
        groups_json: row.try_get("groups_json")?,
        idp_id: row.try_get("idp_id")?,
        idp_type: row.try_get("idp_type")?,
        country: row.try_get("country")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let at_ms = row.try_get("at_ms")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at_ms,
        last_at_ms: row
            .try_get::<Option<i64>, _>("last_at_ms")?
            .unwrap_or(at_ms),
        decisions: row.try_get("decisions")?,
        app: row.try_get("app")?,
        identity: row.try_get("identity")?,
        identity_kind: row.try_get("identity_kind")?,
        policy: row.try_get("policy")?,
        decision: row.try_get("decision")?,
        reason: row.try_get("reason")?,
        source_ip: row.try_get("source_ip")?,
    })
}

/// Rows per `INSERT` of the audit writer (10 parameters each).
const AUDIT_ROWS_PER_INSERT: usize = 32;

#[async_trait]
impl Storage for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn meta_insert_or_get(&self, key: &str, value: &str) -> StoreResult<String> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(self.meta(key).await?.unwrap_or_else(|| value.to_owned()))
    }

    async fn ensure_app(&self, name: &str, aud: &str, now: i64) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO apps (name, aud, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(aud)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT aud FROM apps WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("aud")?)
    }

    async fn apps(&self) -> StoreResult<Vec<AppRecord>> {
        let rows = sqlx::query("SELECT name, aud, created_at FROM apps ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AppRecord {
                    name: r.try_get("name")?,
                    aud: r.try_get("aud")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        let sql =
            format!("INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        let result = sqlx::query(&sql)
            .bind(key.generation)
            .bind(&key.kid)
            .bind(key.created_at)
            .bind(key.activates_at)
            .bind(&key.public_jwk)
            .bind(&key.cert_pem)
            .bind(&key.private_key_enc)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY generation");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
    }

    async fn delete_signing_keys_before(&self, generation: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM signing_keys WHERE generation < $1")
            .bind(generation)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert_service_token(&self, t: &ServiceTokenRecord) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO service_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        let result = sqlx::query(&sql)
            .bind(&t.client_id)
            .bind(&t.name)
            .bind(&t.secret_hash)
            .bind(t.previous_secret_hash.clone())
            .bind(t.previous_valid_until)
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.rotated_at)
            .bind(t.revoked_at)
            .bind(t.last_used_at)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "a service token named {:?}",
                t.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn service_token(&self, client_id: &str) -> StoreResult<Option<ServiceTokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE client_id = $1");
        let row = sqlx::query(&sql)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    async fn active_service_token(&self, name: &str) -> StoreResult<Option<ServiceTokenRecord>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM service_tokens WHERE name = $1 AND revoked_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    async fn service_tokens(&self) -> StoreResult<Vec<ServiceTokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM service_tokens ORDER BY name, created_at");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    async fn rotate_service_token(
        &self,
        client_id: &str,
        new_hash: &str,
        previous_valid_until: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE service_tokens SET previous_secret_hash = secret_hash, previous_valid_until = $1, \
             secret_hash = $2, rotated_at = $3 WHERE client_id = $4 AND revoked_at IS NULL",
        )
        .bind(previous_valid_until)
        .bind(new_hash)
        .bind(now)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_service_token(&self, name: &str, now: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "UPDATE service_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL RETURNING client_id",
        )
        .bind(now)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("client_id")).transpose()?)
    }

    async fn touch_service_tokens(&self, uses: &[(String, i64)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (client_id, at) in uses {
            sqlx::query(
                "UPDATE service_tokens SET last_used_at = $1 WHERE client_id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(*at)
            .bind(client_id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit(&self, rows: &[AuditRecord]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Small statements: binding a parameter costs SQLite a scan of the
        // statement's parameter list (sqlite3_bind_parameter_name), so the
        // cost of a multi-row insert grows with the square of its size —
        // 500 rows (4,000 parameters) per statement made the audit writer
        // the gateway's biggest CPU consumer under load. Full chunks share
        // one SQL text, so the prepared statement is reused.
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut sql = format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                let b = i * 10;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for p in 1..=10 {
                    if p > 1 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", b + p));
                }
                sql.push(')');
            }
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.at_ms)
                    .bind(r.last_at_ms)
                    .bind(r.decisions)
                    .bind(&r.app)
                    .bind(&r.identity)
                    .bind(&r.identity_kind)
                    .bind(r.policy.clone())
                    .bind(&r.decision)
                    .bind(&r.reason)
                    .bind(&r.source_ip);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditRecord>> {
        let mut sql = format!("SELECT id, {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if query.app.is_some() {
            sql.push_str(&format!(" AND app = ${}", next()));
        }
        if query.since_ms.is_some() {
            sql.push_str(&format!(" AND at_ms >= ${}", next()));
        }
        if query.decision.is_some() {
            sql.push_str(&format!(" AND decision = ${}", next()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", next()));
        let mut q = sqlx::query(&sql);
        if let Some(app) = &query.app {
            q = q.bind(app);
        }
        if let Some(since) = query.since_ms {
            q = q.bind(since);
        }
        if let Some(decision) = &query.decision {
            q = q.bind(decision);
        }
        q = q.bind(query.limit.clamp(1, 10_000));
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }

    async fn purge_audit(&self, before_ms: i64, limit: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at_ms < $1 ORDER BY id LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit.max(1))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_session(&self, x: &SessionRecord) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        sqlx::query(&sql)
            .bind(&x.id)
            .bind(&x.email)
            .bind(&x.sub)
            .bind(x.name.clone())
            .bind(&x.groups_json)
            .bind(&x.idp_id)
            .bind(&x.idp_type)
            .bind(x.country.clone())
            .bind(x.created_at)
            .bind(x.expires_at)
            .bind(x.revoked_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(session_from_row).transpose()?)
    }

    async fn revoke_session(&self, id: &str, now: i64) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user_sessions(&self, email: &str, now: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE email = $2 AND revoked_at IS NULL \
             AND expires_at > $3 RETURNING id",
        )
        .bind(now)
        .bind(email)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    async fn revoked_sessions(&self, now: i64) -> StoreResult<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND expires_at > $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    async fn insert_login_code(&self, c: &LoginCodeRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO login_codes (code_hash, session_id, app, redirect_url, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.code_hash)
        .bind(&c.session_id)
        .bind(&c.app)
        .bind(&c.redirect_url)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_login_code(
        &self,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<Option<LoginCodeRecord>> {
        // DELETE … RETURNING is atomic: of two racing requests only one
        // gets the row.
        let row = sqlx::query(
            "DELETE FROM login_codes WHERE code_hash = $1 \
             RETURNING code_hash, session_id, app, redirect_url, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let code = LoginCodeRecord {
            code_hash: row.try_get("code_hash")?,
            session_id: row.try_get("session_id")?,
            app: row.try_get("app")?,
            redirect_url: row.try_get("redirect_url")?,
            expires_at: row.try_get("expires_at")?,
        };
        Ok((code.expires_at > now).then_some(code))
    }

    async fn record_login_failure(&self, key: &str, now: i64, window: i64) -> StoreResult<i64> {
        // SET expressions see the row as it was before the update, on
        // both SQLite and PostgreSQL.
        let row = sqlx::query(
            "INSERT INTO login_failures (key, window_start, failures) VALUES ($1, $2, 1) \
             ON CONFLICT (key) DO UPDATE SET \
             failures = CASE WHEN login_failures.window_start > $3 THEN login_failures.failures + 1 ELSE 1 END, \
             window_start = CASE WHEN login_failures.window_start > $4 THEN login_failures.window_start ELSE $5 END \
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(now - window)
        .bind(now - window)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("failures")?)
    }

    async fn login_failures(&self, key: &str, now: i64, window: i64) -> StoreResult<i64> {
        let row =
            sqlx::query("SELECT failures FROM login_failures WHERE key = $1 AND window_start > $2")
                .bind(key)
                .bind(now - window)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("failures")).transpose()?.unwrap_or(0))
    }

    async fn clear_login_failures(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_expired(&self, now: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_codes WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM login_failures WHERE window_start < $1")
            .bind(now - 86_400)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now - 86_400)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
