//! The one way the services send a statement to Postgres, in either of two
//! modes (`database.pooling`).
//!
//! **Session** (the default; Postgres itself, or a pooler that keeps
//! session state): statements are prepared once per connection and reused.
//! tokio-postgres runs a query given as text by preparing it first: a
//! round trip of its own, and a parse and plan on the server, every call.
//! These methods prepare through deadpool's per-connection statement cache
//! instead, so a hot statement costs one round trip and is planned once
//! (Postgres switches to a generic plan after a few executions).
//!
//! **Transaction** (a transaction pooler that keeps nothing between
//! transactions, such as PgBouncer before 1.21): a named statement
//! prepared on one server connection is gone on the next, so every
//! statement is sent *unnamed* with its parameter types, parse, bind and
//! execute in one message (one round trip, planned every time). The
//! parameter types are learned once per statement text and process, by
//! `PREPARE`, reading `pg_prepared_statements` and `DEALLOCATE` in a single
//! simple query, which a transaction pooler keeps on one server.
//!
//! The mode is per process: once any pool of the process is in transaction
//! mode, every statement of the process is sent unnamed (safe everywhere,
//! only slower than cached), because a connection cannot tell which pool
//! it came from. Use these methods for statements whose text is fixed
//! (constant fragments only): both caches keep every distinct text.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::Poll;

use deadpool_postgres::{Client, GenericClient, Transaction};
use futures_util::future::Either;
use tokio_postgres::types::{Kind, ToSql, Type};
use tokio_postgres::{Error, Row, SimpleQueryMessage};

/// Set once a pool of this process is in transaction mode.
static UNNAMED: AtomicBool = AtomicBool::new(false);
/// Parameter types per statement text (transaction mode).
type ParamTypes = HashMap<Box<str>, Arc<[Type]>>;
static PARAM_TYPES: LazyLock<RwLock<ParamTypes>> = LazyLock::new(Default::default);
/// Makes every probe's statement name unique on its server connection.
static PROBE: AtomicU64 = AtomicU64::new(0);

/// From now on this process sends every statement unnamed.
pub(crate) fn send_unnamed() {
    UNNAMED.store(true, Ordering::Relaxed);
}

/// Whether this process sends its statements unnamed.
pub fn sends_unnamed() -> bool {
    UNNAMED.load(Ordering::Relaxed)
}

type Typed<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// A pooled connection or a transaction on one: the statement door.
pub trait Prepared: GenericClient {
    #[doc(hidden)]
    fn typed_query<'a>(
        &'a self,
        sql: &'a str,
        params: &'a Typed<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a;
    #[doc(hidden)]
    fn typed_query_one<'a>(
        &'a self,
        sql: &'a str,
        params: &'a Typed<'a>,
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a;
    #[doc(hidden)]
    fn typed_query_opt<'a>(
        &'a self,
        sql: &'a str,
        params: &'a Typed<'a>,
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a;
    #[doc(hidden)]
    fn typed_execute<'a>(
        &'a self,
        sql: &'a str,
        params: &'a Typed<'a>,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a;
    #[doc(hidden)]
    fn simple<'a>(
        &'a self,
        sql: &'a str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a;

    fn query_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            if sends_unnamed() {
                let types = param_types(self, sql, params.len()).await?;
                return self.typed_query(sql, &with_types(params, &types)).await;
            }
            let statement = self.prepare_cached(sql).await?;
            self.query(&statement, params).await
        }
    }

    fn query_one_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            if sends_unnamed() {
                let types = param_types(self, sql, params.len()).await?;
                return self.typed_query_one(sql, &with_types(params, &types)).await;
            }
            let statement = self.prepare_cached(sql).await?;
            self.query_one(&statement, params).await
        }
    }

    fn query_opt_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            if sends_unnamed() {
                let types = param_types(self, sql, params.len()).await?;
                return self.typed_query_opt(sql, &with_types(params, &types)).await;
            }
            let statement = self.prepare_cached(sql).await?;
            self.query_opt(&statement, params).await
        }
    }

    fn execute_cached<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            if sends_unnamed() {
                let types = param_types(self, sql, params.len()).await?;
                return self.typed_execute(sql, &with_types(params, &types)).await;
            }
            let statement = self.prepare_cached(sql).await?;
            self.execute(&statement, params).await
        }
    }
}

/// Runs `sql` (resolved as [`Prepared::execute_cached`] resolves it) with
/// the simple query `then` behind it in the same round trip, and returns
/// both answers. `Err`: the statement failed before it reached the server
/// (it could not be prepared or its parameters encoded, or the connection
/// is gone) and `then` was not sent.
///
/// The statement is resolved first, so its one message is sent at its
/// first poll; that poll is made alone, and only a statement it left
/// waiting for its answer (so: sent) gets `then` sent behind it. Postgres
/// runs the two in that order.
pub(crate) async fn send_then(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    then: &str,
) -> Result<(Result<u64, Error>, Result<(), Error>), Error> {
    let typed;
    let statement;
    let execute = if sends_unnamed() {
        typed = with_types(params, &param_types(client, sql, params.len()).await?);
        Either::Left(client.typed_execute(sql, &typed))
    } else {
        statement = client.prepare_cached(sql).await?;
        Either::Right(client.execute(&statement, params))
    };
    let mut execute = pin!(execute);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(execute.as_mut().poll(cx))).await {
        let changed = done?;
        return Ok((Ok(changed), client.batch_execute(then).await));
    }
    Ok(futures_util::join!(execute, client.batch_execute(then)))
}

fn with_types<'a>(
    params: &'a [&'a (dyn ToSql + Sync)],
    types: &[Type],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

/// The parameter types Postgres infers for `sql` (a domain as its base
/// type, which the Rust values encode as), learned once per process.
async fn param_types<C: Prepared>(client: &C, sql: &str, count: usize) -> Result<Arc<[Type]>, Error> {
    if count == 0 {
        return Ok(Arc::from([]));
    }
    if let Some(types) = PARAM_TYPES.read().unwrap_or_else(|p| p.into_inner()).get(sql) {
        return Ok(types.clone());
    }
    let name = format!("tenx_probe_{}_{}", std::process::id(), PROBE.fetch_add(1, Ordering::Relaxed));
    // One simple query: a transaction pooler runs it on one server
    // connection, and the statement is gone again when it returns.
    let probe = format!(
        "PREPARE {name} AS {sql};\n\
         SELECT coalesce(string_agg((CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)::text, ',' \
         ORDER BY p.ord), '') FROM pg_prepared_statements s, unnest(s.parameter_types::oid[]) WITH ORDINALITY p(oid, ord) \
         JOIN pg_type t ON t.oid = p.oid WHERE s.name = '{name}';\n\
         DEALLOCATE {name}"
    );
    let mut oids = None;
    for message in client.simple(&probe).await? {
        if let SimpleQueryMessage::Row(row) = message {
            oids = row.get(0).map(str::to_owned);
        }
    }
    let types: Arc<[Type]> = oids
        .unwrap_or_default()
        .split(',')
        .filter(|oid| !oid.is_empty())
        .map(|oid| {
            let oid = oid.parse().unwrap_or(0);
            // A type tokio-postgres does not know (no such type is used
            // today) gets a stand-in: binding a value to it then fails
            // with the driver's own conversion error.
            Type::from_oid(oid)
                .unwrap_or_else(|| Type::new(format!("oid {oid}"), oid, Kind::Simple, String::new()))
        })
        .collect();
    PARAM_TYPES.write().unwrap_or_else(|p| p.into_inner()).insert(sql.into(), types.clone());
    Ok(types)
}

/// Both kinds of connection deref to a tokio-postgres type with the same
/// typed methods; this forwards to them.
macro_rules! forward {
    () => {
        fn typed_query<'a>(
            &'a self,
            sql: &'a str,
            params: &'a Typed<'a>,
        ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
            (**self).query_typed(sql, params)
        }
        fn typed_query_one<'a>(
            &'a self,
            sql: &'a str,
            params: &'a Typed<'a>,
        ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
            (**self).query_typed_one(sql, params)
        }
        fn typed_query_opt<'a>(
            &'a self,
            sql: &'a str,
            params: &'a Typed<'a>,
        ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
            (**self).query_typed_opt(sql, params)
        }
        fn typed_execute<'a>(
            &'a self,
            sql: &'a str,
            params: &'a Typed<'a>,
        ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
            (**self).execute_typed(sql, params)
        }
        fn simple<'a>(
            &'a self,
            sql: &'a str,
        ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a {
            (**self).simple_query(sql)
        }
    };
}

impl Prepared for Client {
    forward!();
}

impl Prepared for Transaction<'_> {
    forward!();
}
