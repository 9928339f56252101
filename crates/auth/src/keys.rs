//! Access-token signing keys and JWTs.
//!
//! Keys are Ed25519 (`alg: EdDSA`), kept in Postgres with the private half
//! encrypted (AES-256-GCM) under the configured key-encryption key. The
//! newest unretired key signs; retired keys stay in the JWKS until every
//! token they signed has expired, so rotation (`tenx-auth rotate-keys`)
//! never invalidates a live token. Instances reload keys periodically and
//! on every `GetJwks` (which verifiers call when they meet an unknown
//! `kid`). Verification itself is `tenx_common::authn`'s, as in every
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
}

struct KeySet {
    signer: Option<(String, EncodingKey)>,
    jwks: Vec<Jwk>,
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
            set: RwLock::new(KeySet { signer: None, jwks: Vec::new() }),
            loaded_at: std::sync::Mutex::new(Instant::now()),
        };
        keys.reload().await?;
        Ok(keys)
    }

    /// Re-reads the keys from Postgres.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let keep =
            Duration::from_secs(self.settings.access_ttl_seconds.max(self.settings.service_ttl_seconds))
                + RETIRED_MARGIN;
        let conn = self.db.write().await?;
        let rows = conn
            .query_cached(
                "SELECT kid, public_key, private_key_enc, retired_at IS NULL AS current FROM signing_keys \
                 WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1) \
                 ORDER BY created_at DESC",
                &[&keep.as_secs_f64()],
            )
            .await?;
        let mut set = KeySet { signer: None, jwks: Vec::new() };
        for row in rows {
            let kid: String = row.get("kid");
            let public: Vec<u8> = row.get("public_key");
            if set.signer.is_none() && row.get::<_, bool>("current") {
                let seed = self.kek.decrypt(row.get("private_key_enc"))?;
                set.signer = Some((kid.clone(), encoding_key(&seed)?));
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
        if set.signer.is_none() {
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

    /// Signs an access token for `user` in `session` with the user's
    /// `roles`; returns it and its expiry.
    pub fn issue(
        &self,
        user: &str,
        session: &str,
        roles: &[String],
    ) -> Result<(String, SystemTime), AuthError> {
        self.sign(
            user.to_owned(),
            session.to_owned(),
            roles.to_vec(),
            String::new(),
            self.settings.access_ttl_seconds,
        )
    }

    /// Signs a service token for `service`, valid `ttl_seconds`.
    pub fn issue_service(&self, service: &str, ttl_seconds: u64) -> Result<(String, SystemTime), AuthError> {
        self.sign(format!("service:{service}"), String::new(), Vec::new(), service.to_owned(), ttl_seconds)
    }

    fn sign(
        &self,
        sub: String,
        sid: String,
        roles: Vec<String>,
        svc: String,
        ttl_seconds: u64,
    ) -> Result<(String, SystemTime), AuthError> {
        let now = SystemTime::now();
        let iat = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let exp = iat + ttl_seconds;
        let claims = Claims {
            sub,
            sid,
            iat,
            exp,
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            roles,
            svc,
        };
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        let (kid, key) = set.signer.as_ref().ok_or_else(|| AuthError::Internal("no signing key".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, key).map_err(|e| AuthError::Internal(e.to_string()))?;
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

/// Creates a new signing key and retires the current one (which stays in
/// the JWKS until its tokens have expired). Returns the new `kid`.
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
