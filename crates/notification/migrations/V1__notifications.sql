-- In-app inbox, email deliveries, preferences, Send idempotency.

CREATE TABLE notifications (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    category    text        NOT NULL,
    title       text        NOT NULL,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    -- The event or send this came from: a redelivery inserts nothing.
    dedupe_key  text        NOT NULL UNIQUE
);
CREATE INDEX notifications_user ON notifications (user_id, created_at DESC, id DESC);

-- One row per email to send; the row lock is held while the relay
-- accepts it, so concurrent duplicates send once.
CREATE TABLE email_deliveries (
    id           uuid        PRIMARY KEY,
    dedupe_key   text        NOT NULL UNIQUE,
    user_id      uuid        NOT NULL,
    to_address   text        NOT NULL,
    template     text        NOT NULL,
    -- pending → sent | skipped (muted)
    status       text        NOT NULL DEFAULT 'pending',
    attempts     integer     NOT NULL DEFAULT 0,
    relay        text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);

-- Only deviations from the defaults (everything on) are stored.
CREATE TABLE preferences (
    user_id     uuid        NOT NULL,
    category    text        NOT NULL,
    channel     text        NOT NULL,
    enabled     boolean     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, category, channel)
);

-- Send requests by idempotency key, with a hash of the request.
CREATE TABLE sends (
    idempotency_key  text        PRIMARY KEY,
    request_hash     bytea       NOT NULL,
    notification_id  uuid        NOT NULL,
    channels         text[]      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
