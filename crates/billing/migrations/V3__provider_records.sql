-- The provider's own record of an attempt (Stripe: its PaymentIntent),
-- stored before any money can move: an attempt without one was never
-- charged, one with one is looked up there after a timeout or a crash.
ALTER TABLE payment_attempts ADD COLUMN provider_intent_id text;
CREATE UNIQUE INDEX payment_attempts_provider_intent ON payment_attempts (provider, provider_intent_id)
    WHERE provider_intent_id IS NOT NULL;

-- Provider webhook events already handled: each is handled once, however
-- often the provider delivers it. Kept for scheduler.retention_days.
CREATE TABLE provider_events (
    provider     text        NOT NULL,
    event_id     text        NOT NULL,
    kind         text        NOT NULL,
    attempt_id   uuid        REFERENCES payment_attempts (id),
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX provider_events_received ON provider_events (received_at);

-- Attempts stay append-only, with one more permitted change: a pending
-- attempt's provider record is written once, before it is charged.
CREATE OR REPLACE FUNCTION payment_attempts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'payment attempts are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'pending'
       OR (NEW.status = 'pending' AND (OLD.provider_intent_id IS NOT NULL OR NEW.provider_intent_id IS NULL))
       OR (OLD.provider_intent_id IS NOT NULL AND NEW.provider_intent_id IS DISTINCT FROM OLD.provider_intent_id)
       OR (NEW.id, NEW.invoice_id, NEW.customer_id, NEW.payment_method_id, NEW.amount_minor,
           NEW.currency, NEW.initiated_by, NEW.provider, NEW.created_at)
          IS DISTINCT FROM
          (OLD.id, OLD.invoice_id, OLD.customer_id, OLD.payment_method_id, OLD.amount_minor,
           OLD.currency, OLD.initiated_by, OLD.provider, OLD.created_at) THEN
        RAISE EXCEPTION 'payment attempt %: only pending → succeeded | failed, or recording its provider record once, may be written', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
