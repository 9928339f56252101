-- The ledger's balance, asserted once per posting instead of once per row
-- (V1 checked every ledger transaction at commit three times over: once
-- for itself, once per entry).
--
-- Entries are checked at the end of the statement that inserts them, for
-- every ledger transaction they touch, in one query: each must sum to zero
-- in each currency. As no entry is ever 0, a transaction that passes has
-- at least two. So an entry added later, by another statement, to a
-- transaction that balanced is refused there and then. Entries are never
-- changed or deleted (V1), so every transaction with entries balances
-- after every statement; what is left for the transaction's own deferred
-- trigger, at commit, is to refuse one with no entries at all.
DROP TRIGGER ledger_entries_balanced ON ledger_entries;
DROP FUNCTION ledger_entries_balanced();

CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    -- Driven by the new rows, one index probe per ledger transaction (as
    -- `IN (SELECT ... FROM new_entries)` it was planned as a merge join
    -- that walks the entries' index from its start, on every posting).
    SELECT n.transaction_id, b.currency, b.total INTO unbalanced
      FROM (SELECT DISTINCT transaction_id FROM new_entries) AS n
     CROSS JOIN LATERAL (
           SELECT e.currency, sum(e.amount_minor) AS total FROM ledger_entries e
            WHERE e.transaction_id = n.transaction_id
            GROUP BY e.currency HAVING sum(e.amount_minor) <> 0 LIMIT 1) AS b
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % % off',
            unbalanced.transaction_id, unbalanced.total, unbalanced.currency
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_balanced();

CREATE OR REPLACE FUNCTION ledger_transactions_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_entries WHERE transaction_id = NEW.id) THEN
        RAISE EXCEPTION 'ledger transaction % has 0 entries; at least 2 are needed', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Nothing calls the three-times-over check any more.
DROP FUNCTION ledger_assert_balanced(uuid);
