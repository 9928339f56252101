//! `tenx-load seed`: N users (and their billing customers) in minutes,
//! with `COPY`, so a run can show what 10M accounts cost.
//!
//! - Every seeded user has the password [`PASSWORD`]: one user is signed
//!   up through auth itself, and its hash (auth's own argon2 parameters,
//!   so a login costs what a real one does and is never rehashed) is
//!   copied to all.
//! - User `i` is `seed-<i, 9 digits>@seed.tenx.test` with an id made from
//!   `i` (a version 8 UUID: ordered, so the indexes grow at their end),
//!   and its customer's id likewise; its invoice prefix is `ZZ` and `i` in
//!   six base-32 digits.
//! - Seeding is resumable: each table gets the rows it is missing, in
//!   batches of one transaction each, so an interrupted run is finished by
//!   running it again.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use tenx_proto::auth::v1::SignUpRequest;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio_postgres::Client;
use tokio_postgres::config::Host;
use uuid::Uuid;

use crate::door::PASSWORD;

/// Rows per transaction.
const BATCH: u64 = 100_000;

/// Rows per COPY message.
const CHUNK: u64 = 5_000;

/// What `seed` was asked for.
#[derive(Clone)]
pub struct SeedOptions {
    pub users: u64,
    /// Auth's gRPC (it signs up the user whose hash is copied).
    pub auth_addr: std::net::SocketAddr,
    pub auth_db: String,
    pub auth_schema: String,
    pub billing_db: String,
    pub billing_schema: String,
    pub allow_hosts: Vec<IpAddr>,
}

impl std::fmt::Debug for SeedOptions {
    /// The database URLs may carry passwords: only their hosts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedOptions")
            .field("users", &self.users)
            .field("auth_addr", &self.auth_addr)
            .field("auth_schema", &self.auth_schema)
            .field("billing_schema", &self.billing_schema)
            .finish_non_exhaustive()
    }
}

/// Seeded user `i`'s email (what `--seeded` logs in as).
pub fn email(i: u64) -> String {
    format!("seed-{i:09}@seed.tenx.test")
}

/// Seeded user `i`'s id.
pub fn user_id(i: u64) -> Uuid {
    id(USER, i)
}

/// The email of the user whose password hash every seeded user shares.
pub const TEMPLATE_EMAIL: &str = "seed-template@seed.tenx.test";

/// A version 8 UUID from `tag` (which table) and `i`: ordered by `i`.
fn id(tag: u8, i: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(b"tenx");
    bytes[4] = tag;
    bytes[8..].copy_from_slice(&i.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

const USER: u8 = 1;
const CUSTOMER: u8 = 2;

/// `ZZ` and `i` in six Crockford base-32 digits: unique up to 2^30 users.
/// (Billing draws its own customers' prefixes at random and draws again
/// when one is taken, seeded or not.)
fn invoice_prefix(i: u64) -> String {
    const DIGITS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut prefix = *b"ZZ000000";
    for (k, slot) in prefix[2..].iter_mut().rev().enumerate() {
        *slot = DIGITS[((i >> (5 * k)) & 31) as usize];
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// Refuses a database that is neither on loopback nor allowed.
fn check_database(url: &str, allowed: &[IpAddr]) -> anyhow::Result<tokio_postgres::Config> {
    let config: tokio_postgres::Config = url.parse()?;
    for host in config.get_hosts() {
        let local = match host {
            Host::Tcp(name) => {
                name == "localhost"
                    || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || allowed.contains(&ip))
            }
            Host::Unix(_) => true,
        };
        anyhow::ensure!(local, "{host:?} is not a loopback database; name it with --allow-host to seed it");
    }
    Ok(config)
}

async fn connect(config: &tokio_postgres::Config, schema: &str) -> anyhow::Result<Client> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    anyhow::ensure!(
        schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "schema {schema:?} is not a plain identifier"
    );
    client.batch_execute(&format!("SET search_path TO {schema}")).await?;
    Ok(client)
}

/// How many of the first `n` ids of `tag` `table` holds.
async fn present(client: &Client, table: &str, tag: u8, n: u64) -> anyhow::Result<u64> {
    let sql = format!("SELECT count(*) FROM {table} WHERE id >= $1 AND id < $2");
    let row = client.query_one(&sql, &[&id(tag, 0), &id(tag, n)]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Copies rows `from..to` made by `row` into `copy` (a `COPY … FROM
/// STDIN` statement), one transaction per [`BATCH`].
async fn copy(
    client: &mut Client,
    copy: &str,
    from: u64,
    to: u64,
    row: impl Fn(u64, &mut BytesMut),
    done: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut start = from;
    while start < to {
        let end = (start + BATCH).min(to);
        let tx = client.transaction().await?;
        let sink = tx.copy_in::<_, bytes::Bytes>(copy).await?;
        futures_util::pin_mut!(sink);
        let mut chunk = start;
        while chunk < end {
            let last = (chunk + CHUNK).min(end);
            let mut buffer = BytesMut::with_capacity(256 * CHUNK as usize);
            for i in chunk..last {
                row(i, &mut buffer);
            }
            sink.send(buffer.freeze()).await?;
            chunk = last;
        }
        sink.finish().await?;
        tx.commit().await?;
        done.inc(end - start);
        start = end;
    }
    Ok(())
}

/// What `seed` did.
#[derive(Debug)]
pub struct Seeded {
    pub users_added: u64,
    pub customers_added: u64,
    pub took: Duration,
}

/// Seeds until there are `options.users` seeded users and customers.
pub async fn seed(options: &SeedOptions) -> anyhow::Result<Seeded> {
    crate::check_target(options.auth_addr, &options.allow_hosts)?;
    let auth_config = check_database(&options.auth_db, &options.allow_hosts)?;
    let billing_config = check_database(&options.billing_db, &options.allow_hosts)?;
    let started = Instant::now();
    let mut auth = connect(&auth_config, &options.auth_schema).await?;
    let mut billing = connect(&billing_config, &options.billing_schema).await?;

    // The one hash: from a user auth signed up itself.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", options.auth_addr))?.connect().await?;
    let request = SignUpRequest {
        email: TEMPLATE_EMAIL.into(),
        password: PASSWORD.into(),
        display_name: "Seed".into(),
        ..Default::default()
    };
    match AuthServiceClient::new(channel).sign_up(request).await {
        Ok(_) => {}
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => anyhow::bail!("signing up {TEMPLATE_EMAIL}: {}", crate::door::status(e)),
    }
    let hash: String =
        auth.query_one("SELECT password_hash FROM users WHERE email = $1", &[&TEMPLATE_EMAIL]).await?.get(0);

    let n = options.users;
    let users_from = present(&auth, "users", USER, n).await?;
    let customers_from = present(&billing, "customers", CUSTOMER, n).await?;
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>9} {wide_bar} {human_pos}/{human_len} {per_sec} {eta} left",
    )?;
    let bar = |prefix: &'static str, from: u64| {
        let bar = bars.add(indicatif::ProgressBar::new(n).with_style(style.clone()).with_prefix(prefix));
        bar.set_position(from);
        bar.reset_eta();
        bar
    };
    let (users_bar, customers_bar) = (bar("users", users_from), bar("customers", customers_from));
    let users = copy(
        &mut auth,
        "COPY users (id, email, password_hash, display_name) FROM STDIN",
        users_from,
        n,
        |i, out| {
            out.put_slice(format!("{}\t{}\t{hash}\tSeed {i}\n", id(USER, i), email(i)).as_bytes());
        },
        &users_bar,
    );
    let customers = copy(
        &mut billing,
        "COPY customers (id, user_id, email, invoice_prefix, created_at, updated_at) FROM STDIN",
        customers_from,
        n,
        |i, out| {
            let line = format!(
                "{}\t{}\t{}\t{}\tnow\tnow\n",
                id(CUSTOMER, i),
                id(USER, i),
                email(i),
                invoice_prefix(i)
            );
            out.put_slice(line.as_bytes());
        },
        &customers_bar,
    );
    let (users, customers) = tokio::join!(users, customers);
    users?;
    customers?;
    users_bar.finish();
    customers_bar.finish();
    // Fresh statistics, so the planner sees 10M rows, not the few it saw.
    auth.batch_execute("ANALYZE users").await?;
    billing.batch_execute("ANALYZE customers").await?;
    Ok(Seeded {
        users_added: n - users_from.min(n),
        customers_added: n - customers_from.min(n),
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_and_prefixes_are_distinct_ordered_and_valid() {
        assert!(id(USER, 1) < id(USER, 2) && id(USER, 9_999_999) < id(USER, 10_000_000));
        assert_ne!(id(USER, 7), id(CUSTOMER, 7));
        assert_eq!(id(USER, 3).get_version_num(), 8);
        let prefixes: std::collections::HashSet<_> = (0..100_000).map(invoice_prefix).collect();
        assert_eq!(prefixes.len(), 100_000);
        let crockford = |c: char| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c));
        assert!(prefixes.iter().all(|p| p.len() == 8 && p.chars().all(crockford)));
        assert_eq!(email(42), "seed-000000042@seed.tenx.test");
    }
}
