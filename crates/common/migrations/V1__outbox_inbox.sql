-- Tables `tenx-common` owns inside every service schema.

-- Transactional outbox: a service inserts its events here in the same
-- transaction as the business change; the relay publishes them to
-- RabbitMQ with publisher confirms and only then sets published_at.
CREATE TABLE tenx_outbox (
    seq           bigserial   PRIMARY KEY,
    id            uuid        NOT NULL UNIQUE,
    event_type    text        NOT NULL,
    aggregate_id  text        NOT NULL,
    -- Relays lock partitions, not rows, so one aggregate's events are
    -- published by one relay at a time, in order.
    partition     smallint    NOT NULL,
    payload       bytea       NOT NULL,
    payload_type  text        NOT NULL DEFAULT '',
    traceparent   text        NOT NULL DEFAULT '',
    tracestate    text        NOT NULL DEFAULT '',
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);

CREATE INDEX tenx_outbox_pending ON tenx_outbox (partition, seq) WHERE published_at IS NULL;

-- Inbox: message ids a consumer has applied, so a redelivered message
-- takes effect once. Written in the same transaction as the effect.
CREATE TABLE tenx_inbox (
    consumer      text        NOT NULL,
    message_id    text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
