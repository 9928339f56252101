//! Payment methods: cards attached at the provider. Only the provider's
//! reference and display details are kept.

use std::time::SystemTime;
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::provider::AttachedMethod;

const COLUMNS: &str = "p.id, p.customer_id, p.brand, p.last4, p.exp_month, p.exp_year, p.created_at, \
                       c.default_payment_method_id = p.id AS is_default";

/// A stored brand (`visa`, …) as the API names it.
pub(crate) fn brand(raw: &str) -> pb::CardBrand {
    match raw {
        "visa" => pb::CardBrand::Visa,
        "mastercard" => pb::CardBrand::Mastercard,
        "amex" => pb::CardBrand::Amex,
        _ => pb::CardBrand::Other,
    }
}

fn to_proto(row: &tokio_postgres::Row) -> pb::PaymentMethod {
    pb::PaymentMethod {
        id: row.get::<_, Uuid>("id").to_string(),
        customer_id: row.get::<_, Uuid>("customer_id").to_string(),
        brand: brand(row.get("brand")) as i32,
        last4: row.get("last4"),
        exp_month: u32::try_from(row.get::<_, i16>("exp_month")).unwrap_or(0),
        exp_year: u32::try_from(row.get::<_, i16>("exp_year")).unwrap_or(0),
        is_default: row.get::<_, Option<bool>>("is_default").unwrap_or(false),
        created_at: Some(row.get::<_, SystemTime>("created_at").into()),
    }
}

/// A customer's payment methods, newest first.
pub async fn of_customer<C: Prepared>(
    db: &C,
    customer: Uuid,
) -> Result<Vec<pb::PaymentMethod>, BillingError> {
    let rows = db
        .query_cached(
            &format!(
                "SELECT {COLUMNS} FROM payment_methods p JOIN customers c ON c.id = p.customer_id \
                 WHERE p.customer_id = $1 AND p.detached_at IS NULL ORDER BY p.created_at DESC, p.id DESC"
            ),
            &[&customer],
        )
        .await?;
    Ok(rows.iter().map(to_proto).collect())
}

/// Stores an attached card; it becomes the default when asked, or when it
/// is the customer's first.
pub async fn insert<C: Prepared>(
    tx: &C,
    now: SystemTime,
    customer: Uuid,
    provider: &str,
    method: &AttachedMethod,
    set_default: bool,
) -> Result<pb::PaymentMethod, BillingError> {
    let id = Uuid::now_v7();
    tx.execute_cached(
        "INSERT INTO payment_methods (id, customer_id, provider, provider_ref, brand, last4, exp_month, exp_year, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id,
            &customer,
            &provider,
            &method.provider_ref,
            &method.brand,
            &method.last4,
            &method.exp_month,
            &method.exp_year,
            &now,
        ],
    )
    .await?;
    tx.execute_cached(
        "UPDATE customers SET default_payment_method_id = $2, updated_at = $3 \
         WHERE id = $1 AND ($4 OR default_payment_method_id IS NULL)",
        &[&customer, &id, &now, &set_default],
    )
    .await?;
    let row = tx
        .query_one_cached(
            &format!("SELECT {COLUMNS} FROM payment_methods p JOIN customers c ON c.id = p.customer_id WHERE p.id = $1"),
            &[&id],
        )
        .await?;
    Ok(to_proto(&row))
}
