-- Failed logins per (email, client), replacing the per-account counter on
-- users: a stranger who guesses wrong locks out their own address, not the
-- account's owner, and an email with no account locks exactly like one
-- with an account (so the lockout says nothing about who signed up).
-- `client` is the address bucket the gateway vouched for, or 'direct'.
CREATE TABLE login_attempts (
    email        text        NOT NULL,
    client       text        NOT NULL,
    failures     integer     NOT NULL DEFAULT 0,
    locked_until timestamptz,
    -- The lock that this attempt found expired (its first guess after a
    -- lock is checked once; a failure locks again for longer).
    was_locked   boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, client)
);
CREATE INDEX login_attempts_updated ON login_attempts (updated_at);

ALTER TABLE users DROP COLUMN failed_logins, DROP COLUMN locked_until;
