//! Posting to the double-entry ledger: one transaction per business event,
//! signed entries (debit +, credit −) that sum to zero per currency. The
//! database refuses anything else at commit, and refuses changes ever after.

use std::time::SystemTime;
use tenx_common::db::Prepared;

use deadpool_postgres::GenericClient;
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
pub async fn post<C: GenericClient>(
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
    tx.execute_cached(
        "INSERT INTO ledger_transactions (id, kind, invoice_id, payment_attempt_id, subscription_id, refund_id, \
           description, posted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&id, &kind, &about.invoice, &about.payment_attempt, &about.subscription, &about.refund, &description, &now],
    )
    .await?;
    for entry in entries.iter().filter(|e| e.amount_minor != 0) {
        tx.execute_cached(
            "INSERT INTO ledger_entries (id, transaction_id, account, customer_id, subscription_id, currency, amount_minor, posted_at) \
             VALUES ($1, $2, $3, $4, $5, $6::text, $7, $8)",
            &[
                &Uuid::now_v7(),
                &id,
                &entry.account,
                &entry.customer_id,
                &entry.subscription_id,
                &currency,
                &entry.amount_minor,
                &now,
            ],
        )
        .await?;
    }
    Ok(id)
}
