//! Customers: one per auth user, created from `auth.user.signed_up` (or by
//! the user's first mutating call if that event is late); both paths insert
//! with `ON CONFLICT (user_id) DO NOTHING`, and only the inserter publishes
//! `billing.customer.created`.

use std::time::SystemTime;
use tenx_common::db::Prepared;

use prost::Message as _;
use rand::Rng;
use tenx_common::outbox::{self, NewEvent};
use tenx_common::queue::{Handler, HandlerError, Message, inbox};
use tenx_proto::auth::v1 as auth;
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::{ChangeTiming, ProrationBehavior};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::BillingError;

/// Consumer group of auth's user events.
pub const GROUP: &str = "billing.customers";
pub const BINDINGS: [&str; 4] = [
    auth::UserSignedUp::EVENT_TYPE,
    auth::UserUpdated::EVENT_TYPE,
    auth::OrgCreated::EVENT_TYPE,
    auth::OrgDeleted::EVENT_TYPE,
];

const COLUMNS: &str =
    "c.id, c.user_id, c.email, c.currency, c.invoice_prefix, c.default_payment_method_id, c.created_at";

/// Crockford base32: no I, L, O, U.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn invoice_prefix() -> String {
    let mut rng = rand::thread_rng();
    (0..8).map(|_| char::from(CROCKFORD[rng.gen_range(0..32)])).collect()
}

/// The customer of `user`, created (with its event) if there is none yet.
/// Returns its id and whether this call created it.
pub async fn ensure<C: Prepared>(
    tx: &C,
    clock: &dyn Clock,
    user: Uuid,
    email: &str,
) -> Result<(Uuid, bool), BillingError> {
    let now = clock.now();
    for _ in 0..5 {
        let id = Uuid::now_v7();
        let prefix = invoice_prefix();
        let inserted = tx
            .query_opt_cached(
                "INSERT INTO customers (id, user_id, email, invoice_prefix, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (user_id) DO NOTHING RETURNING id",
                &[&id, &user, &email, &prefix, &now],
            )
            .await;
        match inserted {
            Ok(Some(_)) => {
                let event = tenx_proto::billing::v1::CustomerCreated {
                    customer_id: id.to_string(),
                    user_id: user.to_string(),
                    email: email.to_owned(),
                    invoice_prefix: prefix,
                    created_at: Some(now.into()),
                };
                outbox::enqueue(tx, &NewEvent::of(&id.to_string(), &event))
                    .await
                    .map_err(|e| BillingError::Internal(format!("outbox: {e}")))?;
                return Ok((id, true));
            }
            Ok(None) => {
                // Locked until the caller's transaction ends (as its
                // purchase would lock it anyway; keys stay shared for the
                // rows that reference it): closing it (a deleted
                // organization) waits for what is bought here, then ends it
                // too.
                let row = tx
                    .query_one_cached(
                        "SELECT id, closed_at IS NOT NULL FROM customers WHERE user_id = $1 FOR NO KEY UPDATE",
                        &[&user],
                    )
                    .await?;
                if row.get::<_, bool>(1) {
                    return Err(BillingError::refused(
                        "CUSTOMER_CLOSED",
                        "this account is closed (its organization was deleted)",
                    ));
                }
                return Ok((row.get(0), false));
            }
            // Another customer has this prefix (1 in 10^12): draw again.
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(BillingError::Internal("no free invoice prefix after 5 draws".into()))
}

/// The customer row of `user`, if any.
pub async fn of_user<C: Prepared>(db: &C, user: Uuid) -> Result<Option<tokio_postgres::Row>, BillingError> {
    Ok(db
        .query_opt_cached(&format!("SELECT {COLUMNS} FROM customers c WHERE c.user_id = $1"), &[&user])
        .await?)
}

pub async fn by_id<C: Prepared>(db: &C, id: Uuid) -> Result<Option<tokio_postgres::Row>, BillingError> {
    Ok(db.query_opt_cached(&format!("SELECT {COLUMNS} FROM customers c WHERE c.id = $1"), &[&id]).await?)
}

/// A customer row as the API shows it, with its credit balance (credit is
/// the liability side of `customer_credit`, so its balance is negated).
pub async fn to_proto<C: Prepared>(db: &C, row: &tokio_postgres::Row) -> Result<pb::Customer, BillingError> {
    let id: Uuid = row.get("id");
    let credit: i64 = db
        .query_one_cached(
            "SELECT COALESCE(-sum(amount_minor), 0)::bigint FROM ledger_entries \
             WHERE customer_id = $1 AND account = 'customer_credit'",
            &[&id],
        )
        .await?
        .get(0);
    Ok(pb::Customer {
        id: id.to_string(),
        user_id: row.get::<_, Uuid>("user_id").to_string(),
        email: row.get("email"),
        currency: row.get::<_, Option<String>>("currency").unwrap_or_default(),
        invoice_prefix: row.get("invoice_prefix"),
        default_payment_method_id: row
            .get::<_, Option<Uuid>>("default_payment_method_id")
            .map(|u| u.to_string())
            .unwrap_or_default(),
        credit_balance_minor: credit,
        created_at: Some(row.get::<_, SystemTime>("created_at").into()),
    })
}

/// Consumes `auth.user.signed_up` and `auth.org.created` (creates the
/// customer of the user or organization, or fills in the email of one a
/// billing call created first) and `auth.user.updated` (keeps the email
/// current, since receipts go to it).
#[derive(Debug)]
pub struct CustomerWorker {
    pub db: std::sync::Arc<tenx_common::db::Db>,
    pub clock: std::sync::Arc<dyn Clock>,
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(e.to_string())
}

impl CustomerWorker {
    /// A deleted organization's subscriptions end now, without proration
    /// (nobody is left to credit); one that has ended already is left as
    /// it is. All in one transaction with the inbox claim: a redelivery
    /// does nothing, a failure (a plan change waiting on a payment) is
    /// retried whole.
    async fn end_organization(&self, message: &Message, org: Uuid) -> Result<(), HandlerError> {
        let mut conn = self.db.write().await.map_err(retry)?;
        let tx = conn.transaction().await.map_err(retry)?;
        if !inbox::claim(&tx, GROUP, message.id()).await.map_err(retry)? {
            return Ok(());
        }
        // Closed first, under its lock: a purchase in flight commits
        // before this reads the subscriptions, and none comes after. A
        // customer the organization never got is made closed.
        let known = tx
            .query_opt_cached("SELECT 1 FROM customers WHERE user_id = $1 FOR NO KEY UPDATE", &[&org])
            .await
            .map_err(retry)?;
        if known.is_none() {
            ensure(&tx, self.clock.as_ref(), org, "").await.map_err(retry)?;
        }
        tx.execute_cached(
            "UPDATE customers SET closed_at = coalesce(closed_at, $2), updated_at = $2 WHERE user_id = $1",
            &[&org, &self.clock.now()],
        )
        .await
        .map_err(retry)?;
        let live: Vec<Uuid> = tx
            .query_cached(
                "SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id \
                 WHERE c.user_id = $1 AND s.status <> 'canceled' ORDER BY s.id",
                &[&org],
            )
            .await
            .map_err(retry)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for sub in live {
            let locked = crate::changes::lock(&tx, sub, org).await.map_err(retry)?;
            let now = self.clock.now();
            match crate::changes::cancel(
                &tx,
                now,
                &locked,
                ChangeTiming::Immediately,
                ProrationBehavior::None,
            )
            .await
            {
                Ok(_) | Err(BillingError::Refused { .. }) => {}
                Err(error) => return Err(retry(error)),
            }
        }
        tx.commit().await.map_err(retry)?;
        tracing::info!(organization_id = %org, "a deleted organization's subscriptions ended");
        Ok(())
    }
}

impl Handler for CustomerWorker {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let payload = message.envelope.payload.as_slice();
        if message.event_type() == auth::OrgDeleted::EVENT_TYPE {
            let e = auth::OrgDeleted::decode(payload).map_err(|e| HandlerError::Reject(e.to_string()))?;
            let org = Uuid::parse_str(&e.organization_id)
                .map_err(|_| HandlerError::Reject(format!("bad organization id {:?}", e.organization_id)))?;
            return self.end_organization(message, org).await;
        }
        let (user, email) = match message.event_type() {
            auth::UserSignedUp::EVENT_TYPE => {
                let e =
                    auth::UserSignedUp::decode(payload).map_err(|e| HandlerError::Reject(e.to_string()))?;
                (e.user_id, e.email)
            }
            auth::UserUpdated::EVENT_TYPE => {
                let e =
                    auth::UserUpdated::decode(payload).map_err(|e| HandlerError::Reject(e.to_string()))?;
                (e.user_id, e.email)
            }
            // An organization pays as a customer of its own, keyed by its
            // id; receipts go to its first owner until someone changes it.
            auth::OrgCreated::EVENT_TYPE => {
                let e = auth::OrgCreated::decode(payload).map_err(|e| HandlerError::Reject(e.to_string()))?;
                (e.organization_id, e.owner_email)
            }
            _ => return Ok(()),
        };
        let user =
            Uuid::parse_str(&user).map_err(|_| HandlerError::Reject(format!("bad user id {user:?}")))?;
        let mut conn = self.db.write().await.map_err(retry)?;
        let tx = conn.transaction().await.map_err(retry)?;
        if !inbox::claim(&tx, GROUP, message.id()).await.map_err(retry)? {
            return Ok(());
        }
        if matches!(message.event_type(), auth::UserSignedUp::EVENT_TYPE | auth::OrgCreated::EVENT_TYPE) {
            let (_, created) = ensure(&tx, self.clock.as_ref(), user, &email).await.map_err(retry)?;
            if created {
                tx.commit().await.map_err(retry)?;
                return Ok(());
            }
        }
        // An existing customer (created by an early billing call, or a
        // changed address): the email follows auth's.
        tx.execute_cached(
            "UPDATE customers SET email = $2, updated_at = $3 WHERE user_id = $1 AND email <> $2",
            &[&user, &email, &self.clock.now()],
        )
        .await
        .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        Ok(())
    }
}
