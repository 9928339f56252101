-- Second factors: TOTP and recovery codes, the second step of a login,
-- and when each session last authenticated (step-up).

-- A session's last authentication: its login, or its last
-- Reauthenticate; `mfa` when that included a second factor. Access
-- tokens carry both (`auth_time`, `amr`).
ALTER TABLE sessions
    ADD COLUMN authenticated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN mfa              boolean     NOT NULL DEFAULT false;
-- Sessions from before this migration count as authenticated at login.
UPDATE sessions SET authenticated_at = created_at;

-- One TOTP secret per user, AES-256-GCM under tokens.key_encryption_key
-- (bound to the user id). Enrolled but not yet confirmed: confirmed_at
-- NULL, and login does not ask for it.
CREATE TABLE mfa_totp (
    user_id       uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_enc    bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    confirmed_at  timestamptz,
    -- The time step of the last code accepted: a code is good once.
    last_step     bigint      NOT NULL DEFAULT 0
);

-- Only SHA-256 hashes of recovery codes are stored; each works once.
CREATE TABLE mfa_recovery_codes (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea       NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A login waiting for its second factor; the challenge stored hashed.
CREATE TABLE mfa_challenges (
    token_hash   bytea       PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name  text        NOT NULL DEFAULT '',
    expires_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    used_at      timestamptz
);
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);
