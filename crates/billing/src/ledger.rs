//! Posting to the double-entry ledger: one transaction per business event,
//! signed entries (debit +, credit −) that sum to zero per currency. The
//! database refuses anything else at the end of the statement that writes
//! the entries (a transaction with none at commit), and refuses changes
//! ever after.

use std::time::SystemTime;
use tenx_common::db::Prepared;

use uuid::Uuid;

use crate::error::BillingError;

/// One entry; zero amounts are left out.
#[derive(Debug, Clone)]
pub struct Entry {
    pub account: &'static str,
    pub customer_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub amount_minor: i64,
}

impl Entry {
    pub fn customer(account: &'static str, customer: Uuid, amount_minor: i64) -> Self {
        Self { account, customer_id: Some(customer), subscription_id: None, amount_minor }
    }

    pub fn deferred(subscription: Uuid, amount_minor: i64) -> Self {
        Self {
            account: "deferred_revenue",
            customer_id: None,
            subscription_id: Some(subscription),
            amount_minor,
        }
    }

    pub fn plain(account: &'static str, amount_minor: i64) -> Self {
        Self { account, customer_id: None, subscription_id: None, amount_minor }
    }
}

/// What a ledger transaction is about.
#[derive(Debug, Clone, Copy, Default)]
pub struct About {
    pub invoice: Option<Uuid>,
    pub payment_attempt: Option<Uuid>,
    pub subscription: Option<Uuid>,
    pub refund: Option<Uuid>,
}

/// Posts one balanced transaction; returns its id.
pub async fn post<C: Prepared>(
    tx: &C,
    kind: &str,
    about: About,
    currency: &str,
    description: &str,
    entries: &[Entry],
    now: SystemTime,
) -> Result<Uuid, BillingError> {
    let sum: i64 = entries.iter().map(|e| e.amount_minor).sum();
    if sum != 0 {
        return Err(BillingError::Internal(format!("{kind}: entries sum to {sum}, not 0")));
    }
    let id = Uuid::now_v7();
    let entries: Vec<&Entry> = entries.iter().filter(|e| e.amount_minor != 0).collect();
    let ids: Vec<Uuid> = entries.iter().map(|_| Uuid::now_v7()).collect();
    let accounts: Vec<&str> = entries.iter().map(|e| e.account).collect();
    let customers: Vec<Option<Uuid>> = entries.iter().map(|e| e.customer_id).collect();
    let subscriptions: Vec<Option<Uuid>> = entries.iter().map(|e| e.subscription_id).collect();
    let amounts: Vec<i64> = entries.iter().map(|e| e.amount_minor).collect();
    // The transaction and its entries in one statement (one round trip);
    // the entries' foreign key and their balance are checked at its end,
    // when all of them exist.
    tx.execute_cached(
        "WITH t AS (INSERT INTO ledger_transactions (id, kind, invoice_id, payment_attempt_id, subscription_id, \
           refund_id, description, posted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)) \
         INSERT INTO ledger_entries (id, transaction_id, account, customer_id, subscription_id, currency, \
           amount_minor, posted_at) \
         SELECT e.id, $1, e.account, e.customer_id, e.subscription_id, $9::text, e.amount_minor, $8 \
         FROM unnest($10::uuid[], $11::text[], $12::uuid[], $13::uuid[], $14::bigint[]) \
           AS e (id, account, customer_id, subscription_id, amount_minor)",
        &[
            &id,
            &kind,
            &about.invoice,
            &about.payment_attempt,
            &about.subscription,
            &about.refund,
            &description,
            &now,
            &currency,
            &ids,
            &accounts,
            &customers,
            &subscriptions,
            &amounts,
        ],
    )
    .await?;
    Ok(id)
}
