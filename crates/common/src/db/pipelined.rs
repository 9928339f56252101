//! A short transaction whose `BEGIN` and `COMMIT` cost no round trip of
//! their own.
//!
//! tokio-postgres's `transaction()` waits for `BEGIN`'s answer before the
//! first statement goes out, and `commit()` sends `COMMIT` alone after the
//! last statement's answer: two of a short transaction's round trips, each
//! a wake-up of the server's backend and of the caller. Here `BEGIN` goes
//! out in the same write as the first statement and `COMMIT` in the same
//! write as the last, which Postgres runs in order: the semantics of a
//! transaction, two round trips fewer.
//!
//! Order is the whole point, so it is not left to the caller where it could
//! go wrong: tokio-postgres sends a request when its future is first
//! polled, `join!` polls its futures in order, and
//! - `BEGIN` is polled before the first step is even made, so it goes
//!   first whatever that step does;
//! - the last statement is given as text and parameters, and resolved
//!   (prepared, or its parameter types learned) before anything is sent, so
//!   its one message goes out at its first poll; `COMMIT` is sent only
//!   once that poll has left it waiting for its answer. A statement that
//!   fails before it is sent (a parameter that does not encode) is never
//!   followed by a `COMMIT` that would keep the steps before it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use deadpool_postgres::Client;
use tokio_postgres::Error;
use tokio_postgres::types::ToSql;

use super::prepared::send_then;

/// A transaction on one pooled connection, begun with its first step
/// ([`Pipelined::begin_with`]) and committed with its last statement
/// ([`Pipelined::commit_with`]). Run the statements in between on
/// [`Pipelined::client`]. Dropped before it commits (an error, a
/// cancelled caller), it rolls back, as a tokio-postgres transaction does.
#[must_use = "a pipelined transaction rolls back unless it is committed"]
pub struct Pipelined<'a> {
    client: &'a Client,
    open: bool,
}

impl<'a> Pipelined<'a> {
    /// Sends `BEGIN` and the statements of `first(client)` behind it, in
    /// the same round trip. `first` is called only once `BEGIN` is on its
    /// way, so nothing of it can go ahead. Its error rolls the transaction
    /// back. (`BEGIN` alone fails only with the connection, and then so
    /// does `first`.)
    pub async fn begin_with<T, E, F>(
        client: &'a Client,
        first: impl FnOnce(&'a Client) -> F,
    ) -> Result<(Self, T), E>
    where
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
    {
        let transaction = Self { client, open: true };
        let (begun, first) =
            futures_util::join!(client.batch_execute("BEGIN"), async { first(client).await });
        begun?;
        Ok((transaction, first?))
    }

    /// The connection the transaction runs on, for the statements between
    /// the first and the last; borrowed from the transaction, so no
    /// statement made with it can outlive the commit.
    pub fn client(&self) -> &Client {
        self.client
    }

    /// Runs `sql` (its statement cached as [`super::Prepared`] caches it)
    /// and commits, in one round trip. Returns the rows it changed. A
    /// failed statement leaves nothing committed: Postgres answers the
    /// `COMMIT` of an aborted transaction by rolling it back.
    pub async fn commit_with(mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        // An error here sent nothing: the transaction is still open, and
        // dropping `self` rolls it back.
        let (changed, committed) = send_then(self.client, sql, params, "COMMIT").await?;
        // Sent: the transaction is over, committed or not.
        self.open = false;
        let changed = changed?;
        committed?;
        Ok(changed)
    }

    /// Commits with nothing more to run (a round trip of its own).
    pub async fn commit(mut self) -> Result<(), Error> {
        self.open = false;
        self.client.batch_execute("COMMIT").await
    }
}

impl std::fmt::Debug for Pipelined<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelined").field("open", &self.open).finish_non_exhaustive()
    }
}

impl Drop for Pipelined<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Sent now, before the connection can go back to its pool (this
        // borrows it); the answer is not waited for, as tokio-postgres's
        // own transactions do. The first poll sends the request.
        let rollback = pin!(self.client.batch_execute("ROLLBACK"));
        let _ = rollback.poll(&mut Context::from_waker(Waker::noop()));
    }
}
