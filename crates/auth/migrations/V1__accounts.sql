-- Accounts, sessions, refresh tokens, codes, API keys, signing keys, avatars.

CREATE TABLE users (
    id              uuid        PRIMARY KEY,
    email           text        NOT NULL UNIQUE,
    password_hash   text        NOT NULL,
    display_name    text        NOT NULL DEFAULT '',
    email_verified  boolean     NOT NULL DEFAULT false,
    avatar_64_id    uuid,
    avatar_256_id   uuid,
    failed_logins   integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A session is one login; its refresh tokens form one rotation family.
CREATE TABLE sessions (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name   text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoke_reason text
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- Only SHA-256 hashes of refresh tokens are stored.
CREATE TABLE refresh_tokens (
    token_hash    bytea       PRIMARY KEY,
    session_id    uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    -- Set when exchanged; a later use past the grace window is theft.
    rotated_at    timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Email verification and password reset codes, hashed, single use.
CREATE TABLE one_time_codes (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    code_hash   bytea       NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX one_time_codes_user ON one_time_codes (user_id, purpose) WHERE used_at IS NULL;

CREATE TABLE api_keys (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text        NOT NULL,
    prefix        text        NOT NULL,
    secret_hash   bytea       NOT NULL UNIQUE,
    scopes        text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id) WHERE revoked_at IS NULL;

-- Ed25519 signing keys; private halves encrypted (AES-256-GCM) with the
-- configured key-encryption key.
CREATE TABLE signing_keys (
    kid               text        PRIMARY KEY,
    public_key        bytea       NOT NULL,
    private_key_enc   bytea       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The newest non-retired key signs; retired keys stay in the JWKS
    -- until every token they signed has expired.
    retired_at        timestamptz
);

CREATE TABLE avatars (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_type  text        NOT NULL,
    original      bytea       NOT NULL,
    -- pending → ready, or failed (with error; the user keeps the old one)
    status        text        NOT NULL DEFAULT 'pending',
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- PNG thumbnails of an avatar; users.avatar_<size>_id point here.
CREATE TABLE avatar_thumbnails (
    id         uuid     PRIMARY KEY,
    avatar_id  uuid     NOT NULL REFERENCES avatars (id) ON DELETE CASCADE,
    size       integer  NOT NULL,
    png        bytea    NOT NULL,
    UNIQUE (avatar_id, size)
);
