//! Idempotency keys (`idempotency-key` metadata) on every mutating RPC:
//! the first outcome is stored with a hash of the request and replayed for
//! the same request; the same key with another request is refused; the
//! same key while the first request runs is ABORTED with a retry hint, so
//! however many duplicates arrive at once, the effect happens once.
//!
//! The success response is stored **in the transaction of the effects**
//! ([`Claim::complete`]), so no effect exists without its stored answer.

use std::time::{Duration, SystemTime};

use prost::Message;
use sha2::{Digest, Sha256};
use tenx_common::db::{Db, Pipelined, Prepared};
use tenx_common::outbox::{EventsWith, NewEvent};
use tokio_postgres::types::ToSql;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::BillingError;
use crate::settings::IdempotencySettings;

pub use tenx_common::idempotency::{METADATA as HEADER, REPLAYED};

/// The key of a request, checked: 1–255 printable ASCII characters.
pub fn key_of(metadata: &MetadataMap, required: bool) -> Result<Option<String>, BillingError> {
    let Some(value) = metadata.get(HEADER) else {
        return if required {
            Err(BillingError::invalid(HEADER, "is required on this call"))
        } else {
            Ok(None)
        };
    };
    let key = value.to_str().map_err(|_| BillingError::invalid(HEADER, "must be printable ASCII"))?;
    if !tenx_common::idempotency::well_formed(key) {
        return Err(BillingError::invalid(HEADER, tenx_common::idempotency::RULE));
    }
    Ok(Some(key.to_owned()))
}

/// SHA-256 of the method and the request, re-encoded (so field order and
/// unknown fields do not matter).
pub fn request_hash<M: Message>(method: &str, request: &M) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claimed {
    /// Run the request; store its outcome through the claim.
    Run(Claim),
    /// Already answered: the stored response.
    Replay(tonic::Status, Option<Vec<u8>>),
}

/// A held key.
#[derive(Debug, Clone)]
pub struct Claim {
    pub caller: String,
    pub key: String,
    /// Set when an earlier holder crashed after recording progress.
    pub recovery_point: String,
    pub resource_id: Option<Uuid>,
}

/// A key as [`Keys::claim`] inserts it when it is new, for a statement
/// that claims it together with the request's first step (one round trip
/// and one commit instead of two): inserted only if absent (`ON CONFLICT
/// DO NOTHING`), and when it was not, the caller claims it the usual way.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub caller: String,
    pub key: String,
    pub method: String,
    pub hash: Vec<u8>,
    /// Held for this long from the statement's `now` (then a retry may
    /// take over), kept for `ttl`.
    pub lease: Duration,
    pub ttl: Duration,
}

impl NewKey {
    /// The claim held once the key was inserted, at `recovery_point`.
    pub fn claim(&self, recovery_point: &str, resource_id: Option<Uuid>) -> Claim {
        Claim {
            caller: self.caller.clone(),
            key: self.key.clone(),
            recovery_point: recovery_point.to_owned(),
            resource_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Keys {
    settings: IdempotencySettings,
}

/// The statement that stores a successful answer under a key, with its
/// parameters' positions: the caller, the key, the encoded response and
/// the time. [`Keys::complete`] sends it alone, and
/// [`Keys::complete_committing`] alone or inside the events' statement.
macro_rules! store_answer {
    ($caller:literal, $key:literal, $body:literal, $at:literal) => {
        concat!(
            "UPDATE idempotency_keys SET status = 'completed', response_code = 0, response_message = '', \
               response_body = ",
            $body,
            ", completed_at = ",
            $at,
            ", locked_until = NULL \
             WHERE caller = ",
            $caller,
            " AND key = ",
            $key
        )
    };
}

/// [`store_answer`] as the companion of the events' statement
/// ([`EventsWith`]), its parameters after the events'.
const WITH_ANSWER: &str = concat!("completed AS (", store_answer!("$8", "$9", "$10", "$11"), ")");

impl Keys {
    pub fn new(settings: IdempotencySettings) -> Self {
        Self { settings }
    }

    /// A key to claim inside another statement (see [`NewKey`]).
    pub fn new_key(&self, caller: &str, key: &str, method: &str, hash: &[u8]) -> NewKey {
        NewKey {
            caller: caller.to_owned(),
            key: key.to_owned(),
            method: method.to_owned(),
            hash: hash.to_vec(),
            lease: self.settings.lease(),
            ttl: self.settings.ttl(),
        }
    }

    /// Claims `key` for this request, or says why not.
    pub async fn claim(
        &self,
        db: &Db,
        clock: &dyn Clock,
        caller: &str,
        key: &str,
        method: &str,
        hash: &[u8],
    ) -> Result<Claimed, BillingError> {
        let now = clock.now();
        let lease = now + self.settings.lease();
        let expires = now + self.settings.ttl();
        let mut conn = db.write().await?;
        // The common case, a new key, is one statement on its own (no
        // transaction around it): one round trip instead of three.
        let inserted = conn
            .execute_cached(
                "INSERT INTO idempotency_keys (caller, key, method, request_hash, status, locked_until, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, 'in_progress', $5, $6, $7) ON CONFLICT (caller, key) DO NOTHING",
                &[&caller, &key, &method, &hash, &lease, &now, &expires],
            )
            .await?;
        let claim = |recovery_point: String, resource_id| Claim {
            caller: caller.to_owned(),
            key: key.to_owned(),
            recovery_point,
            resource_id,
        };
        if inserted == 1 {
            return Ok(Claimed::Run(claim("started".into(), None)));
        }
        let tx = conn.transaction().await?;
        let row = tx
            .query_one_cached(
                "SELECT method, request_hash, status, recovery_point, resource_id, locked_until, expires_at, \
                        response_code, response_message, response_body \
                 FROM idempotency_keys WHERE caller = $1 AND key = $2 FOR UPDATE",
                &[&caller, &key],
            )
            .await?;
        if row.get::<_, SystemTime>("expires_at") <= now {
            tx.execute_cached(
                "UPDATE idempotency_keys SET method = $3, request_hash = $4, status = 'in_progress', \
                   recovery_point = 'started', resource_id = NULL, locked_until = $5, response_code = NULL, \
                   response_message = NULL, response_body = NULL, created_at = $6, completed_at = NULL, expires_at = $7 \
                 WHERE caller = $1 AND key = $2",
                &[&caller, &key, &method, &hash, &lease, &now, &expires],
            )
            .await?;
            tx.commit().await?;
            return Ok(Claimed::Run(claim("started".into(), None)));
        }
        if row.get::<_, String>("method") != method || row.get::<_, Vec<u8>>("request_hash") != hash {
            return Err(BillingError::refused(
                "IDEMPOTENCY_KEY_REUSED",
                "this idempotency key was used for another request; use a new key",
            ));
        }
        if row.get::<_, String>("status") == "completed" {
            let code = tonic::Code::from_i32(i32::from(row.get::<_, i16>("response_code")));
            let message: String = row.get::<_, Option<String>>("response_message").unwrap_or_default();
            let body: Vec<u8> = row.get::<_, Option<Vec<u8>>>("response_body").unwrap_or_default();
            return Ok(if code == tonic::Code::Ok {
                Claimed::Replay(tonic::Status::ok(""), Some(body))
            } else {
                Claimed::Replay(tonic::Status::with_details(code, message, body.into()), None)
            });
        }
        if row.get::<_, Option<SystemTime>>("locked_until").is_some_and(|until| until > now) {
            return Err(BillingError::Busy {
                reason: "IDEMPOTENCY_KEY_IN_USE",
                message:
                    "a request with this idempotency key is still being processed; retry with the same key"
                        .into(),
                retry_after: Duration::from_millis(self.settings.retry_after_ms),
            });
        }
        // The holder crashed (its lease lapsed): take over where it stopped.
        tx.execute_cached(
            "UPDATE idempotency_keys SET locked_until = $3 WHERE caller = $1 AND key = $2",
            &[&caller, &key, &lease],
        )
        .await?;
        tx.commit().await?;
        Ok(Claimed::Run(claim(row.get("recovery_point"), row.get("resource_id"))))
    }

    /// Records how far a multi-step request got (e.g. `charge_pending`
    /// with the attempt id), in the transaction of that step, so a retry
    /// after a crash resumes there.
    pub async fn progress<C: Prepared>(
        &self,
        tx: &C,
        claim: &Claim,
        point: &str,
        resource: Uuid,
    ) -> Result<(), BillingError> {
        tx.execute_cached(
            "UPDATE idempotency_keys SET recovery_point = $3, resource_id = $4 WHERE caller = $1 AND key = $2",
            &[&claim.caller, &claim.key, &point, &resource],
        )
        .await?;
        Ok(())
    }

    /// Stores the successful response, inside the transaction of the
    /// request's effects.
    pub async fn complete<C: Prepared, M: Message>(
        &self,
        tx: &C,
        clock: &dyn Clock,
        claim: &Claim,
        response: &M,
    ) -> Result<(), BillingError> {
        let body = response.encode_to_vec();
        tx.execute_cached(
            store_answer!("$1", "$2", "$3", "$4"),
            &[&claim.caller, &claim.key, &body, &clock.now()],
        )
        .await?;
        Ok(())
    }

    /// [`Self::complete`] and the request's events (written to the
    /// outbox) in one statement, the last of `tx`, which commits with it
    /// in the same round trip.
    pub async fn complete_committing<M: Message>(
        &self,
        tx: Pipelined<'_>,
        clock: &dyn Clock,
        claim: &Claim,
        response: &M,
        events: &[NewEvent],
    ) -> Result<(), BillingError> {
        let (body, now) = (response.encode_to_vec(), clock.now());
        let answer: [&(dyn ToSql + Sync); 4] = [&claim.caller, &claim.key, &body, &now];
        if events.is_empty() {
            tx.commit_with(store_answer!("$1", "$2", "$3", "$4"), &answer).await?;
            return Ok(());
        }
        let statement = EventsWith::new(events, WITH_ANSWER, &answer);
        tx.commit_with(statement.sql(), &statement.params()).await?;
        Ok(())
    }

    /// Settles a claim whose request failed: a final answer (NOT_FOUND,
    /// FAILED_PRECONDITION) is stored and replayed; a transient one
    /// releases the key so a retry runs (and resumes) at once.
    pub async fn fail(&self, db: &Db, clock: &dyn Clock, claim: &Claim, error: BillingError) -> BillingError {
        let now = clock.now();
        if error.is_final() {
            let status = tonic::Status::from(error);
            let stored = async {
                db.write()
                    .await?
                    .execute_cached(
                        "UPDATE idempotency_keys SET status = 'completed', response_code = $3, response_message = $4, \
                           response_body = $5, completed_at = $6, locked_until = NULL WHERE caller = $1 AND key = $2",
                        &[
                            &claim.caller,
                            &claim.key,
                            &(status.code() as i16),
                            &status.message(),
                            &status.details().to_vec(),
                            &now,
                        ],
                    )
                    .await?;
                Ok::<_, BillingError>(())
            }
            .await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not store a final answer under its idempotency key");
            }
            return BillingError::Replayed(status);
        }
        let released = async {
            db.write()
                .await?
                .execute_cached(
                    "UPDATE idempotency_keys SET locked_until = $3 \
                     WHERE caller = $1 AND key = $2 AND status = 'in_progress'",
                    &[&claim.caller, &claim.key, &now],
                )
                .await?;
            Ok::<_, BillingError>(())
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        error
    }
}
