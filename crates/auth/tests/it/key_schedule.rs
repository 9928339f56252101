//! Signing keys replaced on schedule: the next key is published before it
//! signs, takes over at its activation on every instance, and the key it
//! replaced stays published for the tokens it signed; several instances
//! create one next key, not one each; `rotate-keys` still replaces the
//! key at once.

use std::time::{Duration, SystemTime};

use tenx_auth::keys;
use tenx_common::db::Db;
use tenx_common::metrics::Metrics;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::signing_key::State;
use tonic::Code;

use crate::support::{Client, PASSWORD, TestAuth, access, authed, sign_up, unique_email};

const OPERATOR_SECRET: &str = "the operator tool's secret, 32 chars or more";

/// The `kid` a token was signed with.
fn kid(token: &str) -> anyhow::Result<String> {
    Ok(jsonwebtoken::decode_header(token)?.kid.unwrap_or_default())
}

async fn login(client: &mut Client, email: &str) -> anyhow::Result<String> {
    let request =
        pb::LoginRequest { email: email.into(), password: PASSWORD.into(), device_name: String::new() };
    Ok(client.login(request).await?.into_inner().tokens.map(|t| t.access_token).unwrap_or_default())
}

async fn published(client: &mut Client) -> anyhow::Result<Vec<String>> {
    Ok(client.get_jwks(pb::GetJwksRequest {}).await?.into_inner().keys.into_iter().map(|k| k.kid).collect())
}

async fn schedule(client: &mut Client, operator: &str) -> anyhow::Result<pb::ListSigningKeysResponse> {
    Ok(client.list_signing_keys(authed(operator, pb::ListSigningKeysRequest {})).await?.into_inner())
}

fn state(listed: &pb::ListSigningKeysResponse, kid: &str) -> Option<State> {
    listed.keys.iter().find(|k| k.kid == kid).map(|k| k.state())
}

fn at(timestamp: Option<&prost_types::Timestamp>) -> SystemTime {
    let t = timestamp.cloned().unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

async fn until<T>(
    what: &str,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_next_key_is_published_before_it_signs_and_takes_over_on_every_instance() -> anyhow::Result<()> {
    // A 6 s period with a 3 s lead: the next key appears 3 s in and signs 6 s in.
    let mut auth = TestAuth::start_with(|s| {
        s.tokens.rotation_period_seconds = 6;
        s.tokens.rotation_lead_seconds = 3;
        s.service_clients.insert("operator".into(), OPERATOR_SECRET.to_owned().into());
    })
    .await?;
    let second = auth.start_instance().await?;
    let (mut one, mut two) = (auth.client(0).await?, auth.client(second).await?);
    let email = unique_email();
    let first_token = access(&sign_up(&mut one, &email).await?);
    let first = kid(&first_token)?;
    let request = pb::IssueServiceTokenRequest { service: "operator".into(), secret: OPERATOR_SECRET.into() };
    let operator = one.issue_service_token(request).await?.into_inner().access_token;
    let listed = schedule(&mut one, &operator).await?;
    assert_eq!((listed.keys.len(), state(&listed, &first)), (1, Some(State::Current)));
    assert_eq!(listed.rotation_period_seconds, 6);
    assert!(listed.next_key_due_at.is_some(), "the schedule says when the next key comes");

    // The next key is published, and both instances still sign with the first.
    let next = until("the next key published", async || {
        Ok(published(&mut one).await?.into_iter().find(|k| *k != first))
    })
    .await?;
    for client in [&mut one, &mut two] {
        assert_eq!(kid(&login(client, &email).await?)?, first, "the next key does not sign yet");
    }
    let listed = schedule(&mut two, &operator).await?;
    assert_eq!((state(&listed, &first), state(&listed, &next)), (Some(State::Current), Some(State::Next)));
    let activates = at(listed.keys.iter().find(|k| k.kid == next).and_then(|k| k.activates_at.as_ref()));
    assert!(activates > SystemTime::now(), "it activates later");
    assert!(listed.next_key_due_at.is_none(), "a next key exists");
    assert!(published(&mut two).await?.contains(&next), "every instance publishes it");

    // At its activation both instances switch to it; not before.
    for client in [&mut one, &mut two] {
        until("signing with the next key", async || {
            let token = login(client, &email).await?;
            Ok((kid(&token)? == next).then_some(()))
        })
        .await?;
    }
    assert!(SystemTime::now() >= activates, "it signed only from its activation");

    // The first key is retired as of that moment and still published:
    // its tokens verify on both instances.
    // Listed as retired once a newer key signs, and recorded as retired
    // (`retired_at`) when the schedule's step runs: wait for both.
    let listed = until("the first key retired", async || {
        let listed = schedule(&mut one, &operator).await?;
        let recorded = listed.keys.iter().any(|k| k.kid == first && k.retired_at.is_some());
        Ok((state(&listed, &first) == Some(State::Retired) && recorded).then_some(listed))
    })
    .await?;
    let retired = listed.keys.iter().find(|k| k.kid == first).cloned().unwrap_or_default();
    assert_eq!(at(retired.retired_at.as_ref()), activates);
    let keep = Duration::from_secs(auth.settings.tokens.access_ttl_seconds) + Duration::from_secs(120);
    assert_eq!(at(retired.published_until.as_ref()), activates + keep);
    for client in [&mut one, &mut two] {
        assert!(published(client).await?.contains(&first));
        client.get_user(authed(&first_token, pb::GetUserRequest::default())).await?;
    }

    // Two instances ran the schedule: never two keys for one slot.
    let sql = auth.sql().await?;
    let row = sql.query_one("SELECT count(*), count(DISTINCT activates_at) FROM signing_keys", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1), "one key per activation");

    // Operators only.
    let user = sign_up(&mut one, &unique_email()).await?;
    let refused = one
        .list_signing_keys(authed(&access(&user), pb::ListSigningKeysRequest {}))
        .await
        .expect_err("a user");
    assert_eq!(refused.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn eight_racing_instances_create_one_next_key_and_rotate_keys_replaces_it_at_once() -> anyhow::Result<()>
{
    let auth = TestAuth::start().await?;
    let sql = auth.sql().await?;
    // The current key has served its 30 days.
    sql.execute("UPDATE signing_keys SET activates_at = now() - interval '31 days'", &[]).await?;
    let db =
        std::sync::Arc::new(Db::connect(&auth.settings.database, "key-schedule-test", &Metrics::default())?);
    let tokens = auth.settings.tokens.clone();
    let racing = (0..8).map(|_| {
        let (db, tokens) = (db.clone(), tokens.clone());
        async move { keys::rotate_if_due(&db, &tokens).await }
    });
    let outcomes = futures_util::future::join_all(racing).await;
    let created: Vec<String> =
        outcomes.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().filter_map(|d| d.created).collect();
    assert_eq!(created.len(), 1, "{created:?}");
    // Overdue: it still waits the whole lead, so verifiers fetch it first.
    let lead: f64 = sql
        .query_one(
            "SELECT extract(epoch FROM activates_at - created_at)::float8 FROM signing_keys WHERE kid = $1",
            &[&created[0]],
        )
        .await?
        .get(0);
    let want = auth.settings.tokens.rotation_lead_seconds as f64;
    assert!((lead - want).abs() < 5.0, "activates {lead} s after creation, want ≈ {want}");

    // A leaked key: rotate-keys signs with a new key at once and drops the
    // scheduled one with the old.
    let now = tenx_auth::rotate_keys(&auth.settings, &Metrics::default()).await?;
    let rows =
        sql.query("SELECT kid, retired_at IS NULL, activates_at <= now() FROM signing_keys", &[]).await?;
    let live: Vec<(String, bool)> =
        rows.iter().filter(|r| r.get::<_, bool>(1)).map(|r| (r.get(0), r.get(2))).collect();
    assert_eq!(live, [(now, true)], "only the new key is unretired, and it is active");
    Ok(())
}
