-- Webhook endpoints, messages (one per event and endpoint) and attempts.

CREATE TABLE webhook_endpoints (
    id               uuid        PRIMARY KEY,
    url              text        NOT NULL,
    description      text        NOT NULL DEFAULT '',
    event_types      text[]      NOT NULL,
    secret           text        NOT NULL,
    -- Still signs (next to `secret`) until previous_expires_at.
    previous_secret  text,
    previous_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- First failure of the current failing streak; cleared on success.
    failing_since    timestamptz,
    disabled_at      timestamptz,
    disabled_reason  text,
    deleted_at       timestamptz
);

CREATE TABLE webhook_messages (
    id            uuid        PRIMARY KEY,
    endpoint_id   uuid        NOT NULL REFERENCES webhook_endpoints (id),
    event_id      text        NOT NULL,
    event_type    text        NOT NULL,
    body          text        NOT NULL,
    -- pending → delivered | dead
    status        text        NOT NULL DEFAULT 'pending',
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_messages_dead ON webhook_messages (created_at DESC) WHERE status = 'dead';

CREATE TABLE webhook_attempts (
    id            bigserial   PRIMARY KEY,
    message_id    uuid        NOT NULL REFERENCES webhook_messages (id),
    endpoint_id   uuid        NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    status_code   integer     NOT NULL DEFAULT 0,
    latency_ms    integer     NOT NULL,
    succeeded     boolean     NOT NULL,
    error         text        NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, attempted_at DESC);
