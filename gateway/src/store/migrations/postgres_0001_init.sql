CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    aud TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    generation BIGINT PRIMARY KEY,
    kid TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    public_jwk TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    private_key_enc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS service_tokens (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    previous_secret_hash TEXT,
    previous_valid_until BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS service_tokens_active_name ON service_tokens (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    app TEXT NOT NULL,
    identity TEXT NOT NULL,
    identity_kind TEXT NOT NULL,
    policy TEXT,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    source_ip TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_ms);
CREATE INDEX IF NOT EXISTS audit_log_app_at ON audit_log (app, at_ms);
