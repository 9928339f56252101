//! The scenarios, by name: each a call the engine repeats, with the users
//! (and the operator) it needs made first. Every call checks its answer
//! (see [`Door`]): a wrong one is an error, not a fast success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::door::Door;
use crate::operator::Operator;

/// A call the engine repeats: `n` is the request's number.
pub type Call = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The scenarios there are.
pub const NAMES: [&str; 6] = ["me", "login", "signup", "subscribe", "notify", "mixed"];

/// `mixed`, per 100 calls: a signed-in product's day. Reads of the
/// caller's own data dominate; a session starts (login) for every ~14
/// reads; one call in 20 is a notification fanned out; a signup and a
/// purchase come once in 50 calls each.
pub const MIX: [(&str, u64); 5] = [("me", 85), ("login", 6), ("notify", 5), ("signup", 2), ("subscribe", 2)];

/// How long `notify` waits for the notification to reach the inbox.
pub const NOTIFY_DEADLINE: Duration = Duration::from_secs(10);

/// A user made for a run: its email, id and access token.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub id: String,
    pub token: String,
}

fn email(run: &str, n: u64) -> String {
    format!("load-{run}-{n}@example.com")
}

/// Whether a scenario needs users made (or logged in) before it runs.
pub fn needs_users(name: &str) -> bool {
    name != "signup"
}

/// Whether a scenario sends as the operator (`Send`).
pub fn needs_operator(name: &str) -> bool {
    matches!(name, "notify" | "mixed")
}

/// Signs up `n` users through `door` (`run` keeps their emails apart from
/// other runs').
pub async fn sign_up_users(door: &Door, run: &str, n: u64) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for i in 0..n {
        let email = email(&format!("{run}-u"), i);
        let (id, token) = door.clone().sign_up(i, email.clone()).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!id.is_empty() && !token.is_empty(), "signing up {email}: no user or token");
        users.push(User { email, id, token });
    }
    Ok(users)
}

/// Logs in `k` different ones of the `seeded` users `tenx-load seed`
/// made, picked at random (so a first read of each is a cold one), four
/// at a time (auth hashes four passwords at once).
pub async fn log_in_seeded(door: &Door, seeded: u64, k: u64) -> anyhow::Result<Vec<User>> {
    use futures_util::{StreamExt, TryStreamExt};
    anyhow::ensure!(k <= seeded, "--users {k} is more than the {seeded} seeded users");
    let mut picked = std::collections::HashSet::new();
    while (picked.len() as u64) < k {
        picked.insert(fastrand::u64(..seeded));
    }
    futures_util::stream::iter(picked.into_iter().enumerate())
        .map(|(n, i)| {
            let (door, n) = (door.clone(), n as u64);
            async move {
                let email = crate::seed::email(i);
                let (id, token) = door.login(n, email.clone()).await.map_err(anyhow::Error::msg)?;
                anyhow::ensure!(
                    id == crate::seed::user_id(i).to_string() && !token.is_empty(),
                    "logging in {email}: not the seeded user (is the platform seeded with `tenx-load seed`?)"
                );
                Ok(User { email, id, token })
            }
        })
        .buffer_unordered(4)
        .try_collect()
        .await
}

/// What a scenario's calls use.
#[derive(Debug, Clone)]
pub struct Setup {
    pub door: Door,
    pub users: Arc<Vec<User>>,
    pub operator: Option<Operator>,
    /// Names this run's new users, keys and markers.
    pub run: String,
    /// How many users `tenx-load seed` made, when the run uses them:
    /// `login` then logs in one of them at random each call.
    pub seeded: Option<u64>,
}

impl Setup {
    fn user(&self, n: u64) -> User {
        self.users[(n % self.users.len() as u64) as usize].clone()
    }
}

/// The call of scenario `name`.
pub fn call(name: &str, setup: Setup) -> Option<Call> {
    let call: Call = match name {
        // Cached authenticated reads: the caller's own profile.
        "me" => Arc::new(move |n| {
            let (door, user) = (setup.door.clone(), setup.user(n));
            Box::pin(async move {
                let id = door.me(n, user.token).await?;
                if id == user.id { Ok(()) } else { Err(format!("GetUser answered another user: {id:?}")) }
            })
        }),
        // Password logins, spread over the users (one account's failures
        // would lock it; these all succeed).
        "login" => Arc::new(move |n| {
            let (door, mut user) = (setup.door.clone(), setup.user(n));
            if let Some(seeded) = setup.seeded {
                let i = fastrand::u64(..seeded);
                (user.email, user.id) = (crate::seed::email(i), crate::seed::user_id(i).to_string());
            }
            Box::pin(async move {
                let (id, token) = door.login(n, user.email).await?;
                if id == user.id && !token.is_empty() {
                    Ok(())
                } else {
                    Err("Login answered without the user or a token".into())
                }
            })
        }),
        // A burst of new accounts (each hashes a password).
        "signup" => Arc::new(move |n| {
            let (door, email) = (setup.door.clone(), email(&setup.run, n));
            Box::pin(async move {
                let (id, token) = door.sign_up(n, email).await?;
                if !id.is_empty() && !token.is_empty() {
                    Ok(())
                } else {
                    Err("SignUp answered without a user or a token".into())
                }
            })
        }),
        // A purchase: a card, then a subscription charged to it at once;
        // done when it is active and its invoice paid.
        "subscribe" => Arc::new(move |n| {
            let (door, user, key) = (setup.door.clone(), setup.user(n), format!("load-{}-{n}", setup.run));
            Box::pin(door.subscribe(n, user.token, key))
        }),
        // A notification fanned out (email and in-app, through the
        // broker), timed from the operator's Send until the recipient's
        // inbox shows it.
        "notify" => {
            let operator = setup.operator.clone()?;
            Arc::new(move |n| {
                let (door, user, operator) = (setup.door.clone(), setup.user(n), operator.clone());
                let marker = format!("L{}-{n}", &setup.run[..12]);
                let key = format!("load-{}-{n}", setup.run);
                Box::pin(async move {
                    operator.send(user.id, user.email, marker.clone(), key).await?;
                    let (started, mut pause) = (Instant::now(), Duration::from_millis(2));
                    loop {
                        if door.clone().inbox_has(n, user.token.clone(), marker.clone()).await? {
                            return Ok(());
                        }
                        if started.elapsed() > NOTIFY_DEADLINE {
                            return Err(format!("not in the inbox after {NOTIFY_DEADLINE:?}"));
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                })
            })
        }
        "mixed" => {
            let mut table = Vec::new();
            for (scenario, share) in MIX {
                let call = self::call(scenario, setup.clone())?;
                table.extend(std::iter::repeat_n(call, share as usize));
            }
            // Spread each kind over the 100 slots rather than in runs.
            let table: Vec<Call> = (0..table.len()).map(|i| table[(i * 37) % table.len()].clone()).collect();
            Arc::new(move |n| table[(n % table.len() as u64) as usize](n))
        }
        _ => return None,
    };
    Some(call)
}
