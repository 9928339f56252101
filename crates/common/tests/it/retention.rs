//! Retention on the real database: old rows go (in batches), fresh and
//! unpublished ones stay, and two instances pruning at once delete each row
//! once.

use std::time::Duration;

use tenx_common::metrics::Metrics;
use tenx_common::retention::{Retention, RetentionSettings, Rule};

use crate::support::{connect, metric, test_db};

#[tokio::test]
async fn rows_past_their_ttl_are_deleted_the_rest_stays_and_two_instances_at_once_delete_each_row_once()
-> anyhow::Result<()> {
    let tdb = test_db().await?;
    let metrics = Metrics::default();
    let db = connect(&tdb, None, &metrics)?;
    db.write()
        .await?
        .batch_execute(
            "INSERT INTO tenx_inbox (consumer, message_id, processed_at) \
               SELECT 'mailer', 'old-' || i, now() - interval '20 days' FROM generate_series(1, 25) i; \
             INSERT INTO tenx_inbox (consumer, message_id, processed_at) \
               SELECT 'mailer', 'new-' || i, now() - interval '13 days' FROM generate_series(1, 3) i; \
             INSERT INTO tenx_outbox (id, event_type, aggregate_id, partition, payload, occurred_at) \
               SELECT gen_random_uuid(), 'test.old', 'a', 0, '\\x00', now() - interval '5 days' \
               FROM generate_series(1, 7); \
             INSERT INTO tenx_outbox (id, event_type, aggregate_id, partition, payload, occurred_at) \
               SELECT gen_random_uuid(), 'test.recent', 'a', 0, '\\x00', now() - interval '2 hours' \
               FROM generate_series(1, 2); \
             INSERT INTO tenx_outbox (id, event_type, aggregate_id, partition, payload, occurred_at) \
               SELECT gen_random_uuid(), 'test.stuck', 'a', 0, '\\x00', now() - interval '10 days' \
               FROM generate_series(1, 4); \
             DELETE FROM tenx_outbox_pending WHERE seq IN \
               (SELECT seq FROM tenx_outbox WHERE event_type <> 'test.stuck'); \
             CREATE TABLE notes (id int PRIMARY KEY, written_at timestamptz NOT NULL); \
             INSERT INTO notes SELECT i, now() - make_interval(hours => i) FROM generate_series(1, 10) i;",
        )
        .await?;
    // Batches of 4: every table takes several; a service's own rule (notes
    // older than 5 h) rides along.
    let settings = RetentionSettings { batch_size: 4, inbox_days: 14, ..RetentionSettings::default() };
    let notes =
        || vec![Rule::older("notes", "written_at", Duration::from_secs(5 * 3600 + 1800)).only("id <> 9")];
    let (a, b) = (
        Retention::new(&db, &settings, 72, notes(), &metrics),
        Retention::new(&db, &settings, 72, notes(), &metrics),
    );
    let (pruned_a, pruned_b) = tokio::try_join!(a.prune(), b.prune())?;
    let total = |table: &str| -> u64 {
        pruned_a.iter().chain(&pruned_b).filter(|(t, _)| *t == table).map(|(_, n)| n).sum()
    };
    // notes 6 to 10 hours old are past 5.5 h, but 9 is spared by `only`.
    assert_eq!((total("tenx_inbox"), total("tenx_outbox"), total("notes")), (25, 7, 4));

    let conn = db.write().await?;
    let count = |sql: &'static str| {
        let conn = &conn;
        async move { anyhow::Ok(conn.query_one(sql, &[]).await?.get::<_, i64>(0)) }
    };
    assert_eq!(count("SELECT count(*) FROM tenx_inbox WHERE message_id LIKE 'new-%'").await?, 3);
    assert_eq!(count("SELECT count(*) FROM tenx_inbox").await?, 3);
    assert_eq!(count("SELECT count(*) FROM tenx_outbox WHERE event_type = 'test.recent'").await?, 2);
    assert_eq!(
        count("SELECT count(*) FROM tenx_outbox JOIN tenx_outbox_pending USING (partition, seq)").await?,
        4,
        "unpublished stays"
    );
    assert_eq!(count("SELECT count(*) FROM tenx_outbox").await?, 6);
    assert_eq!(count("SELECT count(*) FROM notes").await?, 6);
    assert_eq!(count("SELECT count(*) FROM notes WHERE id = 9").await?, 1);
    let pruned = |table: &str| {
        metric(
            &metrics,
            &format!("tenx_retention_pruned_total{{service=\"tenx-common-tests\",table=\"{table}\"}}"),
        )
    };
    assert_eq!((pruned("tenx_inbox"), pruned("tenx_outbox"), pruned("notes")), (25.0, 7.0, 4.0));

    // Nothing left to prune: a second pass deletes nothing.
    let again = a.prune().await?;
    assert!(again.iter().all(|(_, n)| *n == 0), "{again:?}");
    Ok(())
}
