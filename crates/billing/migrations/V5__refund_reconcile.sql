-- A pending refund has a reconcile job, as a pending payment attempt does:
-- whatever becomes of its request (a lost answer, a caller that never
-- retries, a crash), the scheduler asks the provider what became of the
-- refund and settles it. Its key names the refund: `refund_reconcile:<id>`.
ALTER TABLE billing_jobs DROP CONSTRAINT billing_jobs_kind_check;
ALTER TABLE billing_jobs ADD CONSTRAINT billing_jobs_kind_check CHECK (kind IN ('period_end', 'charge_invoice',
    'dunning_retry', 'incomplete_expiry', 'payment_reconcile', 'refund_reconcile'));
ALTER TABLE billing_jobs ADD CONSTRAINT billing_jobs_refund_key
    CHECK (kind <> 'refund_reconcile' OR dedupe_key ~ '^refund_reconcile:[0-9a-f-]{36}$');

-- Refunds left pending before this version get theirs, due at once.
INSERT INTO billing_jobs (id, kind, dedupe_key, run_at, created_at)
SELECT gen_random_uuid(), 'refund_reconcile', 'refund_reconcile:' || id, now(), now()
  FROM refunds WHERE status = 'pending'
    ON CONFLICT (dedupe_key) DO NOTHING;
