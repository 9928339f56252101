-- A plan change that costs money is applied only once its invoice is paid
-- (an upgrade, or an upgrade that ends a trial): until then the
-- subscription keeps its price, and if the charge fails the invoice is
-- voided and the change abandoned, so no upgrade is ever kept unpaid.
CREATE TABLE plan_changes (
    invoice_id       uuid        PRIMARY KEY REFERENCES invoices (id),
    subscription_id  uuid        NOT NULL REFERENCES subscriptions (id),
    from_price_id    uuid        NOT NULL REFERENCES prices (id),
    to_price_id      uuid        NOT NULL REFERENCES prices (id),
    -- Set when the billing cycle restarts with the change (another
    -- interval, or the end of a trial): the new period.
    restart_at       timestamptz,
    period_end       timestamptz,
    ends_trial       boolean     NOT NULL DEFAULT false,
    status           text        NOT NULL CHECK (status IN ('pending', 'applied', 'abandoned')),
    created_at       timestamptz NOT NULL,
    decided_at       timestamptz,
    CHECK ((restart_at IS NULL) = (period_end IS NULL)),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
-- One change waiting for its payment per subscription.
CREATE UNIQUE INDEX plan_changes_one_pending ON plan_changes (subscription_id) WHERE status = 'pending';

-- One trial per customer per plan: the plan a subscription's trial was of
-- (kept when the price changes during the trial).
ALTER TABLE subscriptions ADD COLUMN trial_plan_id uuid REFERENCES plans (id);
UPDATE subscriptions s SET trial_plan_id = p.plan_id FROM prices p
    WHERE p.id = s.price_id AND s.trial_start IS NOT NULL;
CREATE INDEX subscriptions_customer_trials ON subscriptions (customer_id, trial_plan_id)
    WHERE trial_plan_id IS NOT NULL;

-- Every pending attempt has its reconcile job (attempts left pending
-- before jobs were written with them get one now).
INSERT INTO billing_jobs (id, kind, dedupe_key, invoice_id, payment_attempt_id, run_at, created_at)
SELECT gen_random_uuid(), 'payment_reconcile', 'reconcile:' || a.id, a.invoice_id, a.id, now(), now()
FROM payment_attempts a WHERE a.status = 'pending'
ON CONFLICT (dedupe_key) DO NOTHING;
