//! The tables' rules, in the database (V9 moved each table's CHECKs into
//! one function, compiled once per connection): whoever writes (the
//! service, a migration, an operator with psql), a row that breaks a rule
//! is refused as before, with `check_violation` on the constraint
//! `<table>_rules`. Each row below breaks one rule and nothing checked
//! before the rules (NOT NULL); their foreign keys, checked after, would
//! fail later.

use tokio_postgres::error::SqlState;

use crate::support::TestBilling;

/// `(statement, constraint, the rule it breaks)`.
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "INSERT INTO invoices (id, customer_id, status, billing_reason, currency, total_minor, amount_due_minor, \
           period_start, period_end, created_at, updated_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 'draft', 'subscription_create', 'USD', 1000, 900, \
           now(), now(), now(), now())",
        "invoices_rules",
        "amount_due_minor = total_minor - credit_applied_minor + credit_added_minor",
    ),
    (
        "INSERT INTO invoices (id, customer_id, status, billing_reason, currency, period_start, period_end, \
           created_at, updated_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 'sent', 'subscription_create', 'USD', now(), now(), \
           now(), now())",
        "invoices_rules",
        "an invoice's status is one of draft, open, paid, void, uncollectible",
    ),
    (
        "INSERT INTO payment_attempts (id, invoice_id, customer_id, payment_method_id, amount_minor, currency, \
           status, initiated_by, provider, created_at, completed_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 500, 'USD', \
           'failed', 'customer', 'simulated', now(), now())",
        "payment_attempts_rules",
        "(status = 'failed') = (failure_code IS NOT NULL)",
    ),
    (
        "INSERT INTO payment_attempts (id, invoice_id, customer_id, payment_method_id, amount_minor, currency, \
           status, initiated_by, provider, created_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 0, 'USD', \
           'pending', 'customer', 'simulated', now())",
        "payment_attempts_rules",
        "amount_minor > 0",
    ),
    (
        "INSERT INTO billing_jobs (id, kind, dedupe_key, run_at, created_at) \
         VALUES (gen_random_uuid(), 'payment_reconcile', 'reconcile:x', now(), now())",
        "billing_jobs_rules",
        "kind <> 'payment_reconcile' OR payment_attempt_id IS NOT NULL",
    ),
    (
        "INSERT INTO idempotency_keys (caller, key, method, request_hash, status, locked_until, created_at, \
           expires_at) \
         VALUES ('user:x', 'k', 'PayInvoice', '\\x0102'::bytea, 'in_progress', now(), now(), now())",
        "idempotency_keys_rules",
        "length(request_hash) = 32",
    ),
    (
        "INSERT INTO ledger_transactions (id, kind, description, posted_at) \
         VALUES (gen_random_uuid(), 'invoice_voided', 'by hand', now())",
        "ledger_transactions_rules",
        "(kind = 'invoice_voided') = (reverses_transaction_id IS NOT NULL)",
    ),
    (
        "INSERT INTO ledger_entries (id, transaction_id, account, currency, amount_minor, posted_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 'bad_debt', 'USD', 0, now())",
        "ledger_entries_rules",
        "a ledger entry's amount_minor <> 0",
    ),
    (
        "INSERT INTO subscriptions (id, customer_id, price_id, currency, status, billing_cycle_anchor, \
           cycle_index, current_period_start, current_period_end, created_at, updated_at) \
         VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'USD', 'trialing', now(), 0, \
           now(), now() + interval '1 month', now(), now())",
        "subscriptions_rules",
        "status <> 'trialing' OR cycle_index = -1",
    ),
];

#[tokio::test]
async fn a_row_that_breaks_a_tables_rule_is_refused_on_that_tables_constraint() -> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let sql = billing.sql().await?;
    for (statement, constraint, rule) in BROKEN {
        let error = sql.execute(*statement, &[]).await.expect_err(rule);
        let db = error.as_db_error().unwrap_or_else(|| panic!("{rule}: {error:?}"));
        assert_eq!(db.code(), &SqlState::CHECK_VIOLATION, "{rule}: {db:?}");
        assert_eq!(db.constraint(), Some(*constraint), "{rule}: {db:?}");
        let message = format!("violates check constraint \"{constraint}\"");
        assert!(db.message().contains(&message), "{rule}: {}", db.message());
    }
    // Mended, the same rows get past their rules and stop at what comes
    // after them (here a foreign key): the rules refuse only what breaks
    // them.
    let mended = BROKEN[0].0.replace("1000, 900,", "900, 900,");
    let error = sql.execute(mended.as_str(), &[]).await.expect_err("no such customer");
    assert_eq!(error.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION), "{error:?}");
    Ok(())
}
