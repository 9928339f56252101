//! What notification's retention prunes of its own tables, and what it
//! keeps: pending deliveries and dead webhook messages stay whatever their
//! age.

use tenx_common::db::Db;
use tenx_common::metrics::Metrics;
use tenx_common::retention::Retention;

use crate::support::TestNotify;

#[tokio::test]
async fn old_notifications_and_finished_deliveries_go_pending_ones_and_dead_letters_stay()
-> anyhow::Result<()> {
    let notify = TestNotify::new().await?;
    let sql = notify.sql().await?;
    sql.batch_execute(
        "INSERT INTO notifications (id, user_id, category, title, body, created_at, dedupe_key) \
           SELECT gen_random_uuid(), gen_random_uuid(), 'account', 't', 'b', now() - make_interval(days => d), 'n-' || d \
           FROM unnest(ARRAY[181, 200, 179]) AS d; \
         INSERT INTO email_deliveries (id, dedupe_key, user_id, to_address, template, status, created_at) VALUES \
           (gen_random_uuid(), 'sent-old', gen_random_uuid(), 'a@x.test', 'welcome', 'sent', now() - interval '31 days'), \
           (gen_random_uuid(), 'sent-older', gen_random_uuid(), 'a@x.test', 'welcome', 'sent', now() - interval '40 days'), \
           (gen_random_uuid(), 'failed-old', gen_random_uuid(), 'a@x.test', 'welcome', 'failed', now() - interval '40 days'), \
           (gen_random_uuid(), 'pending-old', gen_random_uuid(), 'a@x.test', 'welcome', 'pending', now() - interval '40 days'), \
           (gen_random_uuid(), 'sent-new', gen_random_uuid(), 'a@x.test', 'welcome', 'sent', now() - interval '29 days'); \
         INSERT INTO webhook_endpoints (id, url, event_types, secret) \
           VALUES ('00000000-0000-7000-8000-000000000001', 'https://hooks.example.test', '{*}', 'whsec_x'); \
         INSERT INTO webhook_messages (id, endpoint_id, event_id, event_type, body, status, created_at) VALUES \
           ('00000000-0000-7000-8000-0000000000a1', '00000000-0000-7000-8000-000000000001', 'e1', 't', '{}', 'delivered', now() - interval '31 days'), \
           ('00000000-0000-7000-8000-0000000000a2', '00000000-0000-7000-8000-000000000001', 'e2', 't', '{}', 'dead', now() - interval '31 days'), \
           ('00000000-0000-7000-8000-0000000000a3', '00000000-0000-7000-8000-000000000001', 'e3', 't', '{}', 'delivered', now() - interval '31 days'); \
         INSERT INTO webhook_attempts (message_id, endpoint_id, attempted_at, latency_ms, succeeded) VALUES \
           ('00000000-0000-7000-8000-0000000000a1', '00000000-0000-7000-8000-000000000001', now() - interval '31 days', 5, true), \
           ('00000000-0000-7000-8000-0000000000a2', '00000000-0000-7000-8000-000000000001', now() - interval '31 days', 5, false), \
           ('00000000-0000-7000-8000-0000000000a3', '00000000-0000-7000-8000-000000000001', now() - interval '2 days', 5, true);",
    )
    .await?;

    let metrics = Metrics::default();
    let db = Db::connect(&notify.settings.database, "tenx-notification-test", &metrics)?;
    let rules = tenx_notification::app::retention_rules(&notify.settings);
    let pruned = Retention::new(
        &db,
        &notify.settings.retention,
        notify.settings.outbox.retention_hours,
        rules,
        &metrics,
    )
    .prune()
    .await?;

    let left = async |query: &str| -> anyhow::Result<Vec<String>> {
        Ok(sql.query(query, &[]).await?.iter().map(|r| r.get(0)).collect())
    };
    assert_eq!(left("SELECT dedupe_key FROM notifications").await?, ["n-179"], "180 days kept");
    assert_eq!(
        left("SELECT dedupe_key FROM email_deliveries ORDER BY dedupe_key").await?,
        ["failed-old", "pending-old", "sent-new"],
        "a pending or failed delivery stays whatever its age, for the operator"
    );
    // e1: delivered, its attempt as old, both go; e2: a dead letter, stays
    // for the operator; e3: delivered, but an attempt of 2 days ago keeps it.
    assert_eq!(left("SELECT event_id FROM webhook_messages ORDER BY event_id").await?, ["e2", "e3"]);
    let attempts: i64 = sql.query_one("SELECT count(*) FROM webhook_attempts", &[]).await?.get(0);
    assert_eq!(attempts, 1, "attempts older than 30 days go, whatever their message");
    let rows = |table: &str| pruned.iter().find(|(t, _)| *t == table).map(|(_, n)| *n);
    assert_eq!(rows("notifications"), Some(2));
    assert_eq!(rows("email_deliveries"), Some(2));
    Ok(())
}
