-- Money given back from a succeeded payment, in full or in parts. A row is
-- written `pending` before the provider is asked (its id is the provider's
-- idempotency key), then settled; a pending one is resumed by the retry of
-- its request. The sum of a payment's pending and succeeded refunds never
-- exceeds the payment (checked under the payment's row lock).
CREATE TABLE refunds (
    id                  uuid          PRIMARY KEY,
    payment_attempt_id  uuid          NOT NULL REFERENCES payment_attempts (id),
    invoice_id          uuid          NOT NULL REFERENCES invoices (id),
    customer_id         uuid          NOT NULL REFERENCES customers (id),
    amount_minor        bigint        NOT NULL CHECK (amount_minor > 0),
    currency            currency_code NOT NULL REFERENCES currencies (code),
    status              text          NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason              text          NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    provider            text          NOT NULL,
    provider_refund_id  text,
    failure_message     text          NOT NULL DEFAULT '',
    requested_by        uuid          NOT NULL,
    created_at          timestamptz   NOT NULL,
    completed_at        timestamptz,
    CHECK ((status = 'pending') = (completed_at IS NULL)),
    CHECK ((status = 'succeeded') = (provider_refund_id IS NOT NULL))
);
CREATE INDEX refunds_payment ON refunds (payment_attempt_id);

-- One credit note and one refund posting per refund.
ALTER TABLE ledger_transactions ADD COLUMN refund_id uuid REFERENCES refunds (id);
CREATE UNIQUE INDEX ledger_transactions_refund_once ON ledger_transactions (kind, refund_id)
    WHERE refund_id IS NOT NULL;

-- Refunds are money history: never deleted, and once settled never
-- changed; a pending one only becomes succeeded or failed.
CREATE FUNCTION refunds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'refunds are never deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'pending' OR NEW.status = 'pending'
       OR (NEW.id, NEW.payment_attempt_id, NEW.invoice_id, NEW.customer_id, NEW.amount_minor, NEW.currency,
           NEW.reason, NEW.provider, NEW.requested_by, NEW.created_at)
          IS DISTINCT FROM
          (OLD.id, OLD.payment_attempt_id, OLD.invoice_id, OLD.customer_id, OLD.amount_minor, OLD.currency,
           OLD.reason, OLD.provider, OLD.requested_by, OLD.created_at) THEN
        RAISE EXCEPTION 'refund %: only pending → succeeded | failed may be recorded', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refunds_guard BEFORE UPDATE OR DELETE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_guard();
