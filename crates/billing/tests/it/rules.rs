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

/// The last migration before the rules moved into functions.
const BEFORE: i32 = 8;

/// An installation with rows in the tables V9 changes is upgraded: V9's
/// constraints are added and V10 validates them against every row there,
/// which all met V1's rules, so nothing is refused and nothing changes;
/// and from then on the same rules hold for new rows.
#[tokio::test]
async fn an_installation_with_rows_is_upgraded_and_its_rows_meet_the_new_constraints() -> anyhow::Result<()> {
    use tenx_billing::{App, BillingSettings};

    let db = tenx_test_support::TestDb::of_service_at::<App>("billing", BEFORE).await?;
    let (sql, conn) = tokio_postgres::connect(&db.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute("SET search_path TO billing").await?;
    // Rows written by the version before: a customer, an open invoice (of
    // nothing, so no lines are needed), a job, a completed key and a
    // balanced ledger transaction.
    sql.batch_execute(
        "INSERT INTO customers (id, user_id, email, currency, invoice_prefix, created_at, updated_at) \
           VALUES ('00000000-0000-4000-8000-00000000c001', gen_random_uuid(), 'ada@example.com', 'USD', \
                   '0123ABCD', now(), now()); \
         INSERT INTO invoices (id, customer_id, status, number, number_seq, billing_reason, currency, \
             period_start, period_end, created_at, finalized_at, updated_at) \
           VALUES ('00000000-0000-4000-8000-00000000f001', '00000000-0000-4000-8000-00000000c001', 'open', \
                   '0123ABCD-1', 1, 'subscription_create', 'USD', now(), now(), now(), now(), now()); \
         INSERT INTO billing_jobs (id, kind, dedupe_key, invoice_id, run_at, created_at) \
           VALUES (gen_random_uuid(), 'charge_invoice', 'charge:f001', '00000000-0000-4000-8000-00000000f001', \
                   now(), now()); \
         INSERT INTO idempotency_keys (caller, key, method, request_hash, status, response_code, response_body, \
             created_at, completed_at, expires_at) \
           VALUES ('user:ada', 'k1', 'PayInvoice', decode(repeat('ab', 32), 'hex'), 'completed', 0, '\\x00', \
                   now(), now(), now() + interval '1 day'); \
         BEGIN; \
         INSERT INTO ledger_transactions (id, kind, description, posted_at) \
           VALUES ('00000000-0000-4000-8000-00000000e001', 'revenue_recognized', 'before V9', now()); \
         INSERT INTO ledger_entries (id, transaction_id, account, currency, amount_minor, posted_at) \
           VALUES (gen_random_uuid(), '00000000-0000-4000-8000-00000000e001', 'revenue_usage', 'USD', -500, now()), \
                  (gen_random_uuid(), '00000000-0000-4000-8000-00000000e001', 'bad_debt', 'USD', 500, now()); \
         COMMIT;",
    )
    .await?;
    let invoice_checks = async || -> anyhow::Result<i64> {
        let checks =
            "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND conrelid = 'invoices'::regclass";
        Ok(sql.query_one(checks, &[]).await?.get(0))
    };
    let old_checks = invoice_checks().await?;
    assert!(old_checks > 1, "V8's invoices have their CHECKs one by one ({old_checks})");

    let settings = BillingSettings::isolated(&db.primary_url(), &db.primary_url(), "t:", "t.")?;
    tenx_common::host::migrate::<App>(&settings).await?;

    let rules = sql
        .query(
            "SELECT conrelid::regclass::text, conname, convalidated FROM pg_constraint \
             WHERE contype = 'c' AND conname LIKE '%\\_rules' ORDER BY 1",
            &[],
        )
        .await?;
    let rules: Vec<(String, String, bool)> = rules.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(rules.len(), 7, "{rules:?}");
    assert!(
        rules.iter().all(|(table, name, valid)| *valid && name == &format!("{table}_rules")),
        "{rules:?}"
    );
    assert_eq!(invoice_checks().await?, 1, "the one-by-one CHECKs are gone");
    let kept: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM invoices) + (SELECT count(*) FROM billing_jobs) \
                  + (SELECT count(*) FROM idempotency_keys) + (SELECT count(*) FROM ledger_entries)",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(kept, 5, "every row from before is still there");
    // The old rows can still change as the service changes them, and a
    // change that breaks a rule is refused by the new constraint.
    let void = "UPDATE invoices SET status = 'void', voided_at = $1 \
                WHERE id = '00000000-0000-4000-8000-00000000f001'";
    let no_time: Option<std::time::SystemTime> = None;
    let refused = sql.execute(void, &[&no_time]).await.expect_err("a void invoice has voided_at");
    assert_eq!(refused.as_db_error().and_then(|e| e.constraint()), Some("invoices_rules"), "{refused:?}");
    assert_eq!(sql.execute(void, &[&Some(std::time::SystemTime::now())]).await?, 1);
    Ok(())
}
