-- Index entries no query reads, written with every payment.
--
-- The reconciler's work list is its `payment_reconcile` jobs (V2 gave
-- every pending attempt one), not a scan of pending attempts.
DROP INDEX payment_attempts_pending;
-- Only a reversal names the transaction it reverses: the others need no
-- entry (NULLs never conflict anyway).
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_reverses_transaction_id_key;
CREATE UNIQUE INDEX ledger_transactions_reverses_once ON ledger_transactions (reverses_transaction_id)
    WHERE reverses_transaction_id IS NOT NULL;
