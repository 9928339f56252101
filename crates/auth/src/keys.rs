//! Access-token signing keys and JWTs.
//!
//! Keys are Ed25519 (`alg: EdDSA`), kept in Postgres with the private half
//! encrypted (AES-256-GCM) under the configured key-encryption key.
//!
//! A key's life: **next** (published in the JWKS, not signing yet: every
//! verifier fetches it before its first token exists), **current** (the
//! newest unretired key whose `activates_at` has passed: it signs),
//! **retired** (replaced; still published until every token it signed has
//! expired, so no rotation invalidates a live token). [`rotate_if_due`],
//! run by every instance, creates the next key `tokens.rotation_lead_seconds`
//! before the current one is `tokens.rotation_period_seconds` old and
//! retires the replaced one once its successor signs; `tenx-auth
//! rotate-keys` ([`rotate`]) replaces the key at once (a key that leaked).
//! Instances reload keys periodically and on every `GetJwks` (which
//! verifiers call when they meet an unknown `kid`); each picks its signer
//! by activation time when it signs, so they all switch at the same
//! moment. Verification itself is `tenx_common::authn`'s, as in every
//! service.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tenx_common::db::{Db, Prepared};
use tenx_common::sealed::SealKey;
use tenx_proto::auth::v1::Jwk;

use crate::error::AuthError;
use crate::settings::TokenSettings;

/// Retired keys stay published this much longer than the token lifetime,
/// covering instances that signed with them before reloading.
const RETIRED_MARGIN: Duration = Duration::from_secs(120);

/// The key-encryption key: AES-256-GCM (`tenx_common::sealed`, with no
/// associated data), `nonce ‖ ciphertext ‖ tag` at rest.
#[derive(Clone, Debug)]
pub struct Kek(SealKey);

impl Kek {
    pub fn parse(base64_key: &str) -> Result<Self, String> {
        SealKey::parse(base64_key).map(Kek)
    }

    /// Seals another secret at rest (a TOTP secret), bound to `context`
    /// (its owner's id): moved to another row, it does not open.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        self.0.seal(plain, context)
    }

    /// Opens what [`Kek::seal`] sealed with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, AuthError> {
        self.0.open(sealed, context).ok_or_else(|| {
            AuthError::Internal("cannot decrypt a sealed secret: wrong tokens.key_encryption_key?".into())
        })
    }

    fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, AuthError> {
        Ok(self.0.seal(plain, b""))
    }

    fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < 12 {
            return Err(AuthError::Internal("stored signing key is truncated".into()));
        }
        self.0.open(sealed, b"").ok_or_else(|| {
            AuthError::Internal("cannot decrypt signing key: wrong tokens.key_encryption_key?".into())
        })
    }
}

/// Access-token claims.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    /// The user's roles (`admin`), as stored when the token was issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Set on service tokens only: the service's name (`sub` is then
    /// `service:<svc>` and `sid` is empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub svc: String,
    /// When the session last authenticated (OIDC `auth_time`, unix
    /// seconds); user tokens only. Step-up rules read it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub auth_time: u64,
    /// How it authenticated (RFC 8176): `pwd`, and `otp` with a second
    /// factor; user tokens only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The session's active organization, and the user's role in it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub org: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub org_role: String,
    /// The session's grant: revoked when `org` or `org_role` stop being
    /// true (the session itself lives on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grt: String,
}

/// What a session's access token says besides who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The user's platform roles (`admin`).
    pub roles: Vec<String>,
    pub authenticated: Authenticated,
    pub org: Option<tenx_common::authn::OrgMembership>,
    pub grant: Option<uuid::Uuid>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How and when a session last authenticated, as its tokens say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub at: SystemTime,
    /// With a second factor.
    pub mfa: bool,
}

impl Authenticated {
    fn claims(self) -> (u64, Vec<String>) {
        let at = self.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut amr = vec!["pwd".to_owned()];
        if self.mfa {
            amr.push("otp".to_owned());
        }
        (at, amr)
    }
}

struct KeySet {
    /// Unretired keys, the latest activation first: the first whose
    /// activation has passed signs.
    signers: Vec<Signer>,
    jwks: Vec<Jwk>,
}

struct Signer {
    kid: String,
    activates_at: SystemTime,
    key: EncodingKey,
}

impl KeySet {
    fn signer(&self, now: SystemTime) -> Option<&Signer> {
        self.signers.iter().find(|s| s.activates_at <= now)
    }
}

/// The live key set of one instance.
pub struct Keys {
    db: Arc<Db>,
    kek: Kek,
    settings: TokenSettings,
    set: RwLock<KeySet>,
    /// When the set was last read from Postgres.
    loaded_at: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Loads the keys, creating the first one if there is none.
    pub async fn load(db: Arc<Db>, settings: &TokenSettings) -> Result<Self, AuthError> {
        let kek = Kek::parse(settings.key_encryption_key.expose()).map_err(AuthError::Internal)?;
        ensure_current_key(&db, &kek).await?;
        let keys = Self {
            db,
            kek,
            settings: settings.clone(),
            set: RwLock::new(KeySet { signers: Vec::new(), jwks: Vec::new() }),
            loaded_at: std::sync::Mutex::new(Instant::now()),
        };
        keys.reload().await?;
        Ok(keys)
    }

    /// The key-encryption key, for other secrets kept at rest.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// Re-reads the keys from Postgres.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let keep =
            Duration::from_secs(self.settings.access_ttl_seconds.max(self.settings.service_ttl_seconds))
                + RETIRED_MARGIN;
        let conn = self.db.write().await?;
        let rows = conn
            .query_cached(
                "SELECT kid, public_key, private_key_enc, retired_at IS NULL AS unretired, activates_at \
                 FROM signing_keys \
                 WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1) \
                 ORDER BY activates_at DESC, created_at DESC",
                &[&keep.as_secs_f64()],
            )
            .await?;
        let mut set = KeySet { signers: Vec::new(), jwks: Vec::new() };
        for row in rows {
            let kid: String = row.get("kid");
            let public: Vec<u8> = row.get("public_key");
            if row.get::<_, bool>("unretired") {
                let seed = self.kek.decrypt(row.get("private_key_enc"))?;
                let activates_at: SystemTime = row.get("activates_at");
                set.signers.push(Signer { kid: kid.clone(), activates_at, key: encoding_key(&seed)? });
            }
            set.jwks.push(Jwk {
                kid,
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(&public),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            });
        }
        if set.signers.is_empty() {
            return Err(AuthError::Internal("no current signing key".into()));
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = set;
        *self.loaded_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(())
    }

    /// Re-reads the keys unless they were read within `interval`.
    pub async fn reload_at_most_every(&self, interval: Duration) -> Result<(), AuthError> {
        {
            let mut at = self.loaded_at.lock().unwrap_or_else(|p| p.into_inner());
            if at.elapsed() < interval {
                return Ok(());
            }
            // The attempt counts, not only a success: with Postgres down,
            // callers must not each try again.
            *at = Instant::now();
        }
        self.reload().await
    }

    /// Signs an access token for `user` in `session`, saying what
    /// `state` holds; returns it and its expiry.
    pub fn issue(
        &self,
        user: &str,
        session: &str,
        state: &SessionState,
    ) -> Result<(String, SystemTime), AuthError> {
        let (auth_time, amr) = state.authenticated.claims();
        let org = state.org.map(|m| (m.org_id.to_string(), m.role.as_str().to_owned()));
        let (org, org_role) = org.unwrap_or_default();
        self.sign(
            Claims {
                sub: user.to_owned(),
                sid: session.to_owned(),
                roles: state.roles.clone(),
                auth_time,
                amr,
                org,
                org_role,
                grt: state.grant.map(|g| g.to_string()).unwrap_or_default(),
                ..Claims::default()
            },
            self.settings.access_ttl_seconds,
        )
    }

    /// Signs a service token for `service`, valid `ttl_seconds`.
    pub fn issue_service(&self, service: &str, ttl_seconds: u64) -> Result<(String, SystemTime), AuthError> {
        let claims =
            Claims { sub: format!("service:{service}"), svc: service.to_owned(), ..Claims::default() };
        self.sign(claims, ttl_seconds)
    }

    /// Signs `claims` (subject, session, roles, …) stamped with now, the
    /// expiry, the issuer and the audience.
    fn sign(&self, claims: Claims, ttl_seconds: u64) -> Result<(String, SystemTime), AuthError> {
        let now = SystemTime::now();
        let iat = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let exp = iat + ttl_seconds;
        let claims = Claims {
            iat,
            exp,
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            ..claims
        };
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        // Before any key's activation (a clock behind the database's):
        // the oldest unretired key, which is the one that was signing.
        let signer = set
            .signer(now)
            .or_else(|| set.signers.last())
            .ok_or_else(|| AuthError::Internal("no signing key".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signer.key)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(exp)))
    }

    pub fn jwks(&self) -> Vec<Jwk> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).jwks.clone()
    }
}

fn encoding_key(seed: &[u8]) -> Result<EncodingKey, AuthError> {
    let seed: [u8; 32] = seed.try_into().map_err(|_| AuthError::Internal("bad signing key length".into()))?;
    let der = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|e| AuthError::Internal(format!("encoding signing key: {e}")))?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}

async fn ensure_current_key(db: &Db, kek: &Kek) -> Result<(), AuthError> {
    let mut conn = db.write().await?;
    let tx = conn.transaction().await?;
    tx.execute_cached("SELECT pg_advisory_xact_lock(hashtext('tenx.auth.signing_keys'))", &[]).await?;
    let current =
        tx.query_opt_cached("SELECT 1 FROM signing_keys WHERE retired_at IS NULL LIMIT 1", &[]).await?;
    if current.is_none() {
        insert_key(&tx, kek).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn insert_key(tx: &deadpool_postgres::Transaction<'_>, kek: &Kek) -> Result<String, AuthError> {
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let kid = uuid::Uuid::now_v7().simple().to_string();
    let public = signing.verifying_key().to_bytes().to_vec();
    let sealed = kek.encrypt(&signing.to_bytes())?;
    tx.execute_cached(
        "INSERT INTO signing_keys (kid, public_key, private_key_enc) VALUES ($1, $2, $3)",
        &[&kid, &public, &sealed],
    )
    .await?;
    Ok(kid)
}

/// Creates a new signing key that signs at once, and retires every other
/// (the current one stays in the JWKS until its tokens have expired; a
/// next key scheduled but not yet signing is dropped with it). For a key
/// that leaked: verifiers meet the new `kid` before its JWKS refresh and
/// refetch. Returns the new `kid`.
pub async fn rotate(db: &Db, settings: &TokenSettings) -> Result<String, AuthError> {
    let kek = Kek::parse(settings.key_encryption_key.expose()).map_err(AuthError::Internal)?;
    let mut conn = db.write().await?;
    let tx = conn.transaction().await?;
    tx.execute_cached("SELECT pg_advisory_xact_lock(hashtext('tenx.auth.signing_keys'))", &[]).await?;
    let kid = insert_key(&tx, &kek).await?;
    tx.execute_cached(
        "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL AND kid <> $1",
        &[&kid],
    )
    .await?;
    tx.commit().await?;
    Ok(kid)
}

/// What [`rotate_if_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// The next key it created, if it was time.
    pub created: Option<String>,
    /// Keys it retired because a successor now signs.
    pub retired: u64,
}

/// The scheduled rotation's step, run by every instance (one at a time,
/// under the key set's advisory lock, so several instances create one
/// key): retires the keys a newer active key replaced, as of that key's
/// activation; and, when the current key is within `rotation_lead_seconds`
/// of `rotation_period_seconds` old and no next key exists, creates the
/// next one, activating when the current one has served its period (and
/// never sooner than the lead from now).
pub async fn rotate_if_due(db: &Db, settings: &TokenSettings) -> Result<Scheduled, AuthError> {
    let kek = Kek::parse(settings.key_encryption_key.expose()).map_err(AuthError::Internal)?;
    let mut conn = db.write().await?;
    let tx = conn.transaction().await?;
    tx.execute_cached("SELECT pg_advisory_xact_lock(hashtext('tenx.auth.signing_keys'))", &[]).await?;
    let retired = tx
        .execute_cached(
            "UPDATE signing_keys s SET retired_at = c.activates_at \
             FROM (SELECT activates_at FROM signing_keys WHERE retired_at IS NULL AND activates_at <= now() \
                   ORDER BY activates_at DESC LIMIT 1) c \
             WHERE s.retired_at IS NULL AND s.activates_at < c.activates_at",
            &[],
        )
        .await?;
    let mut created = None;
    if settings.rotation_period_seconds > 0 {
        let (period, lead) = (settings.rotation_period_seconds as f64, settings.rotation_lead_seconds as f64);
        let due = tx
            .query_one_cached(
                "SELECT coalesce(bool_and(activates_at <= now()) \
                                 AND max(activates_at) + make_interval(secs => $1::float8 - $2::float8) <= now(), false), \
                        max(activates_at) + make_interval(secs => $1::float8) \
                 FROM signing_keys WHERE retired_at IS NULL",
                &[&period, &lead],
            )
            .await?;
        if due.get::<_, bool>(0) {
            let at: SystemTime = due.get(1);
            let kid = insert_key(&tx, &kek).await?;
            tx.execute_cached(
                "UPDATE signing_keys SET activates_at = greatest($2::timestamptz, now() + make_interval(secs => $3::float8)) \
                 WHERE kid = $1",
                &[&kid, &at, &lead],
            )
            .await?;
            created = Some(kid);
        }
    }
    tx.commit().await?;
    Ok(Scheduled { created, retired })
}

/// A key as operators see it (`ListSigningKeys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub created_at: SystemTime,
    pub activates_at: SystemTime,
    pub retired_at: Option<SystemTime>,
    /// When it leaves the JWKS (retired keys only).
    pub published_until: Option<SystemTime>,
}

/// Every key still published, the latest activation first.
pub async fn list(db: &Db, settings: &TokenSettings) -> Result<Vec<KeyInfo>, AuthError> {
    let keep =
        Duration::from_secs(settings.access_ttl_seconds.max(settings.service_ttl_seconds)) + RETIRED_MARGIN;
    let conn = db.write().await?;
    let rows = conn
        .query_cached(
            "SELECT kid, created_at, activates_at, retired_at FROM signing_keys \
             WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1) \
             ORDER BY activates_at DESC, created_at DESC",
            &[&keep.as_secs_f64()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let retired_at: Option<SystemTime> = row.get("retired_at");
            KeyInfo {
                kid: row.get("kid"),
                created_at: row.get("created_at"),
                activates_at: row.get("activates_at"),
                retired_at,
                published_until: retired_at.map(|at| at + keep),
            }
        })
        .collect())
}
