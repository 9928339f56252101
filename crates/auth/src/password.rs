//! Password hashing: argon2id PHC strings, computed off the async runtime
//! on a fixed set of workers (each hash takes `memory_kib` of RAM and tens
//! of milliseconds of CPU, so unbounded concurrency is a memory bomb, and
//! memory the allocator keeps after a burst is one too; see [`HashPool`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{mpsc, oneshot};

use crate::error::AuthError;
use crate::settings::PasswordSettings;

/// Longest password accepted, in characters (the contract's
/// `string.max_len`): hashing cost must not be attacker-controlled.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash used older parameters: store a new one.
    pub needs_rehash: bool,
}

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    min_length: usize,
    pool: Arc<HashPool>,
    /// Verified against when the account does not exist, so that a login
    /// for an unknown email takes as long as one for a known email.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").field("min_length", &self.min_length).finish_non_exhaustive()
    }
}

impl Passwords {
    pub fn new(settings: &PasswordSettings) -> Result<Self, AuthError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
        let pool = Arc::new(HashPool::start(&params, settings.max_concurrent_hashes)?);
        let dummy_hash = hash_with(
            &params,
            "tenx-dummy-password-for-timing",
            &mut vec![Block::default(); params.block_count()],
        )?;
        Ok(Self { params, min_length: settings.min_length, pool, dummy_hash: dummy_hash.into() })
    }

    /// Rejects a new password that is too short or too long.
    pub fn check_new(&self, field: &'static str, password: &str) -> Result<(), AuthError> {
        if password.chars().count() < self.min_length {
            return Err(AuthError::invalid(
                field,
                format!("must be at least {} characters", self.min_length),
            ));
        }
        if password.chars().count() > MAX_PASSWORD_CHARS {
            return Err(AuthError::invalid(
                field,
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        Ok(())
    }

    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        match self.pool.run(Task::Hash { password: password.to_owned() }).await? {
            Done::Hashed(hash) => hash,
            Done::Verified(_) => Err(AuthError::Internal("hash worker answered a verification".into())),
        }
    }

    /// Checks `password` against `stored`, or against a dummy hash when
    /// there is no account (then `ok` is always false).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, AuthError> {
        if password.chars().count() > MAX_PASSWORD_CHARS {
            return Ok(Verified { ok: false, needs_rehash: false });
        }
        let exists = stored.is_some();
        let stored = stored.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let task = Task::Verify { password: password.to_owned(), stored, current: self.params.clone() };
        let verified = match self.pool.run(task).await? {
            Done::Verified(verified) => verified,
            Done::Hashed(Err(error)) => return Err(error),
            Done::Hashed(Ok(_)) => return Err(AuthError::Internal("hash worker answered a hash".into())),
        };
        Ok(Verified { ok: verified.ok && exists, needs_rehash: verified.needs_rehash && exists })
    }

    /// The most hashes that ever ran at once (tests, metrics).
    pub fn peak_concurrent_hashes(&self) -> usize {
        self.pool.peak.load(Ordering::Relaxed)
    }

    /// Hashes computed so far.
    pub fn hashes_computed(&self) -> usize {
        self.pool.ran.load(Ordering::Relaxed)
    }
}

/// What a worker is asked to do.
enum Task {
    Hash { password: String },
    Verify { password: String, stored: String, current: Params },
}

enum Done {
    Hashed(Result<String, AuthError>),
    Verified(Verified),
}

struct Job {
    task: Task,
    reply: oneshot::Sender<Done>,
}

/// A fixed set of `max_concurrent_hashes` threads, each owning the argon2
/// memory of one hash, allocated once and reused for every hash. So at
/// most that many hashes ever run, whatever callers do (a request that is
/// cancelled leaves its queued job to be skipped, never a hash running
/// beyond the bound), and the memory is that many blocks for the life of
/// the process: nothing for the allocator to keep after a burst.
struct HashPool {
    jobs: mpsc::Sender<Job>,
    peak: Arc<AtomicUsize>,
    /// Hashes computed (cancelled callers' jobs are skipped, not counted).
    ran: Arc<AtomicUsize>,
}

impl HashPool {
    fn start(params: &Params, workers: usize) -> Result<Self, AuthError> {
        // About a second of work per worker at the default cost.
        let (jobs, queue) = mpsc::channel::<Job>(workers.max(1) * 32);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..workers.max(1) {
            let (queue, running, peak, params) =
                (queue.clone(), running.clone(), peak.clone(), params.clone());
            let ran = ran.clone();
            let blocks = params.block_count();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory = vec![Block::default(); blocks];
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                        let Some(Job { task, reply }) = job else { return };
                        if reply.is_closed() {
                            continue; // the caller gave up while it queued
                        }
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::Relaxed);
                        // A panic (a bug) fails this one call, not the
                        // worker: the pool never shrinks below its size.
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match task {
                            Task::Hash { password } => {
                                Done::Hashed(hash_with(&params, &password, &mut memory))
                            }
                            Task::Verify { password, stored, current } => {
                                Done::Verified(verify_with(&password, &stored, &current, &mut memory))
                            }
                        }));
                        running.fetch_sub(1, Ordering::SeqCst);
                        let done = done.unwrap_or_else(|_| {
                            tracing::error!("a password hash panicked");
                            Done::Hashed(Err(AuthError::Internal("password hashing failed".into())))
                        });
                        let _ = reply.send(done);
                    }
                })
                .map_err(|e| AuthError::Internal(format!("starting a hash worker: {e}")))?;
        }
        Ok(Self { jobs, peak, ran })
    }

    async fn run(&self, task: Task) -> Result<Done, AuthError> {
        let (reply, answer) = oneshot::channel();
        // A full queue means callers are arriving faster than the workers
        // can ever serve them: say so at once (RESOURCE_EXHAUSTED, retry
        // later) instead of queueing them past their deadlines, which a
        // gateway would count as auth being down.
        self.jobs.try_send(Job { task, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AuthError::Busy,
            mpsc::error::TrySendError::Closed(_) => AuthError::Internal("password hashing stopped".into()),
        })?;
        answer.await.map_err(|_| AuthError::Internal("a hash worker failed".into()))
    }
}

/// An argon2id PHC string of `password` with a fresh salt, computed in
/// `memory` (at least `params.block_count()` blocks).
fn hash_with(params: &Params, password: &str, memory: &mut [Block]) -> Result<String, AuthError> {
    let failed = |e: &dyn std::fmt::Display| AuthError::Internal(format!("hashing failed: {e}"));
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let mut out = [0u8; 32];
    argon2
        .hash_password_into_with_memory(password.as_bytes(), raw_salt, &mut out, memory)
        .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against the PHC string `stored` in `memory`; a hash
/// made with more memory than the current parameters (an old setting)
/// gets a buffer of its own for this once.
fn verify_with(password: &str, stored: &str, current: &Params, memory: &mut [Block]) -> Verified {
    let no = Verified { ok: false, needs_rehash: false };
    let Ok(parsed) = PasswordHash::new(stored) else { return no };
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(&parsed), parsed.hash, parsed.salt)
    else {
        return no;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return no };
    let version = parsed.version.and_then(|v| Version::try_from(v).ok()).unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(raw_salt) = salt.decode_b64(&mut salt_bytes) else { return no };
    let mut own;
    let memory = if memory.len() >= params.block_count() {
        memory
    } else {
        own = vec![Block::default(); params.block_count()];
        own.as_mut_slice()
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let ok = argon2.hash_password_into_with_memory(password.as_bytes(), raw_salt, &mut out, memory).is_ok()
        && crate::secrets::constant_time_eq(&out, expected.as_bytes());
    let needs_rehash = algorithm != Algorithm::Argon2id
        || params.m_cost() != current.m_cost()
        || params.t_cost() != current.t_cost()
        || params.p_cost() != current.p_cost();
    Verified { ok, needs_rehash }
}

#[cfg(test)]
mod tests {
    use argon2::PasswordHasher;

    use super::*;

    fn settings(max_concurrent_hashes: usize) -> PasswordSettings {
        PasswordSettings {
            min_length: 10,
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent_hashes,
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_the_format_is_argon2s_own() -> anyhow::Result<()> {
        let passwords = Passwords::new(&settings(2))?;
        let hash = passwords.hash("correct horse battery").await?;
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(passwords.verify("correct horse battery", Some(&hash)).await?.ok);
        assert!(!passwords.verify("wrong horse battery", Some(&hash)).await?.ok);
        assert!(!passwords.verify("correct horse battery", None).await?.ok, "no account: never ok");
        // A hash made by the argon2 crate itself (older params) verifies and asks for a rehash.
        let older = Params::new(2048, 1, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, older)
            .hash_password(b"old password here", &SaltString::generate(&mut OsRng))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string();
        let checked = passwords.verify("old password here", Some(&theirs)).await?;
        assert!(checked.ok && checked.needs_rehash);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cancelled_callers_never_make_more_than_the_bound_run_at_once() -> anyhow::Result<()> {
        let passwords = Passwords::new(&settings(2))?;
        let hash = passwords.hash("correct horse battery").await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (passwords, hash) = (passwords.clone(), hash.clone());
            tasks.spawn(async move {
                // Most give up after a millisecond, as a client with a
                // 10 ms deadline would; their work must not pile up.
                let wait = if i % 10 == 0 { 10_000 } else { 1 };
                tokio::time::timeout(
                    std::time::Duration::from_millis(wait),
                    passwords.verify("x", Some(&hash)),
                )
                .await
            });
        }
        let (mut answered, mut shed) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(Ok(_))) => answered += 1,
                // More callers than the queue holds are told at once.
                Ok(Ok(Err(AuthError::Busy))) => shed += 1,
                Ok(Ok(Err(other))) => panic!("unexpected {other}"),
                _ => {} // gave up waiting
            }
        }
        assert!(passwords.peak_concurrent_hashes() <= 2, "peak {}", passwords.peak_concurrent_hashes());
        // The callers who gave up left their queued jobs unrun: far fewer
        // hashes than calls (the hash of the set-up is one of them).
        let computed = passwords.hashes_computed();
        assert!(
            answered >= 1 && shed >= 1 && computed < 100,
            "{computed} hashes, {answered} answered, {shed} shed"
        );
        Ok(())
    }
}
