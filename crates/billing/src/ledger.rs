//! Posting to the double-entry ledger: one transaction per business event,
//! signed entries (debit +, credit −) that sum to zero per currency. The
//! database refuses anything else at the end of the statement that writes
//! the entries (a transaction with none at commit), and refuses changes
//! ever after.

use std::time::SystemTime;
use tenx_common::db::Prepared;
use tokio_postgres::types::ToSql;

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

/// The statement text that posts a ledger transaction and its entries,
/// as two data-modifying CTEs (`posting_tx`, `posting_entries`), so a
/// posting can share a statement (and its round trip) with other work.
/// Its parameters are `$1`…`$14`, in the order of [`Posting::params`]: a
/// statement that embeds it numbers its own from `$15`. The entries'
/// foreign key and their balance are checked at the statement's end, when
/// all of them exist.
macro_rules! posting_ctes {
    () => {
        "posting_tx AS (INSERT INTO ledger_transactions (id, kind, invoice_id, payment_attempt_id, \
           subscription_id, refund_id, description, posted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)), \
         posting_entries AS (INSERT INTO ledger_entries (id, transaction_id, account, customer_id, \
           subscription_id, currency, amount_minor, posted_at) \
         SELECT e.id, $1, e.account, e.customer_id, e.subscription_id, $9::text, e.amount_minor, $8 \
         FROM unnest($10::uuid[], $11::text[], $12::uuid[], $13::uuid[], $14::bigint[]) \
           AS e (id, account, customer_id, subscription_id, amount_minor))"
    };
}
pub(crate) use posting_ctes;

/// One balanced ledger transaction, ready to post: the parameters of
/// [`posting_ctes`].
#[derive(Debug)]
pub struct Posting<'a> {
    pub id: Uuid,
    kind: &'a str,
    about: About,
    currency: &'a str,
    description: &'a str,
    now: SystemTime,
    ids: Vec<Uuid>,
    accounts: Vec<&'static str>,
    customers: Vec<Option<Uuid>>,
    subscriptions: Vec<Option<Uuid>>,
    amounts: Vec<i64>,
}

impl<'a> Posting<'a> {
    /// The transaction of `entries` (zero amounts left out); refused
    /// unless they sum to zero.
    pub fn new(
        kind: &'a str,
        about: About,
        currency: &'a str,
        description: &'a str,
        entries: &[Entry],
        now: SystemTime,
    ) -> Result<Self, BillingError> {
        let sum: i64 = entries.iter().map(|e| e.amount_minor).sum();
        if sum != 0 {
            return Err(BillingError::Internal(format!("{kind}: entries sum to {sum}, not 0")));
        }
        let entries: Vec<&Entry> = entries.iter().filter(|e| e.amount_minor != 0).collect();
        Ok(Self {
            id: Uuid::now_v7(),
            kind,
            about,
            currency,
            description,
            now,
            ids: entries.iter().map(|_| Uuid::now_v7()).collect(),
            accounts: entries.iter().map(|e| e.account).collect(),
            customers: entries.iter().map(|e| e.customer_id).collect(),
            subscriptions: entries.iter().map(|e| e.subscription_id).collect(),
            amounts: entries.iter().map(|e| e.amount_minor).collect(),
        })
    }

    /// `$1`…`$14` of [`posting_ctes`].
    pub fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.id,
            &self.kind,
            &self.about.invoice,
            &self.about.payment_attempt,
            &self.about.subscription,
            &self.about.refund,
            &self.description,
            &self.now,
            &self.currency,
            &self.ids,
            &self.accounts,
            &self.customers,
            &self.subscriptions,
            &self.amounts,
        ]
    }
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
    let posting = Posting::new(kind, about, currency, description, entries, now)?;
    tx.execute_cached(concat!("WITH ", posting_ctes!(), " SELECT"), &posting.params()).await?;
    Ok(posting.id)
}
