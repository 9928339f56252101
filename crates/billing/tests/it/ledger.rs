//! The ledger's own guard, in the database: whoever writes to it (the
//! service, a migration, an operator with psql), a ledger transaction that
//! does not balance never commits, and nothing posted can be unbalanced
//! later.

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::support::TestBilling;

const TRANSACTION: &str = "INSERT INTO ledger_transactions (id, kind, description, posted_at) \
                           VALUES ($1, 'revenue_recognized', 'by hand', now())";

/// Inserts entries `(account, amount)` of `txn` in USD, in one statement.
async fn entries(
    sql: &impl tokio_postgres::GenericClient,
    txn: Uuid,
    amounts: &[(&str, i64)],
) -> Result<u64, tokio_postgres::Error> {
    let accounts: Vec<&str> = amounts.iter().map(|(a, _)| *a).collect();
    let minors: Vec<i64> = amounts.iter().map(|(_, m)| *m).collect();
    sql.execute(
        "INSERT INTO ledger_entries (id, transaction_id, account, currency, amount_minor, posted_at) \
         SELECT gen_random_uuid(), $1, a, 'USD', m, now() FROM unnest($2::text[], $3::bigint[]) AS e (a, m)",
        &[&txn, &accounts, &minors],
    )
    .await
}

fn refused(result: Result<impl std::fmt::Debug, tokio_postgres::Error>) -> String {
    let error = result.expect_err("the database refuses it");
    assert_eq!(error.code(), Some(&SqlState::CHECK_VIOLATION), "{error:?}");
    error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn a_ledger_transaction_that_does_not_balance_never_commits_and_a_balanced_one_stays_balanced()
-> anyhow::Result<()> {
    let billing = TestBilling::start().await?;
    let mut sql = billing.sql().await?;
    let posted = || async {
        let sql = billing.sql().await?;
        anyhow::Ok(
            sql.query_one("SELECT count(*) FROM ledger_transactions WHERE description = 'by hand'", &[])
                .await?
                .get::<_, i64>(0),
        )
    };

    // One entry, and two that are 1 cent off: refused by the statement.
    for amounts in [&[("provider_clearing", 500)][..], &[("provider_clearing", 500), ("bad_debt", -499)]] {
        let tx = sql.transaction().await?;
        let txn = Uuid::now_v7();
        tx.execute(TRANSACTION, &[&txn]).await?;
        let message = refused(entries(&tx, txn, amounts).await);
        assert!(message.contains("does not balance"), "{message}");
    }
    // No entries at all: refused at commit.
    let tx = sql.transaction().await?;
    tx.execute(TRANSACTION, &[&Uuid::now_v7()]).await?;
    let message = refused(tx.commit().await);
    assert!(message.contains("0 entries"), "{message}");
    assert_eq!(posted().await?, 0, "nothing unbalanced was committed");

    // Entries one statement at a time: refused at the first that leaves it
    // unbalanced, even though the next would have balanced it.
    let tx = sql.transaction().await?;
    let txn = Uuid::now_v7();
    tx.execute(TRANSACTION, &[&txn]).await?;
    refused(entries(&tx, txn, &[("provider_clearing", 500)]).await);
    drop(tx);

    // Balanced: committed. Then an entry added to it later is refused, and
    // so is one that comes with its counterpart in the same statement but
    // lands in another currency.
    let tx = sql.transaction().await?;
    let txn = Uuid::now_v7();
    tx.execute(TRANSACTION, &[&txn]).await?;
    assert_eq!(entries(&tx, txn, &[("provider_clearing", 500), ("bad_debt", -500)]).await?, 2);
    tx.commit().await?;
    refused(entries(&sql, txn, &[("bad_debt", 1)]).await);
    refused(
        sql.execute(
            "INSERT INTO ledger_entries (id, transaction_id, account, currency, amount_minor, posted_at) \
             VALUES (gen_random_uuid(), $1, 'bad_debt', 'EUR', 7, now()), \
                    (gen_random_uuid(), $1, 'provider_clearing', 'USD', -7, now())",
            &[&txn],
        )
        .await,
    );
    assert_eq!(posted().await?, 1);
    let sum: i64 = sql
        .query_one("SELECT sum(amount_minor)::bigint FROM ledger_entries WHERE transaction_id = $1", &[&txn])
        .await?
        .get(0);
    assert_eq!(sum, 0);
    Ok(())
}
