//! Harness for the integration tests: a real PostgreSQL 15 cluster with pg_cron and
//! orders_sync preloaded, started by `scripts/test.sh` (see `scripts/pg_cluster.sh`).
//!
//! The cluster is described by environment variables; a test run without them fails loudly
//! rather than skipping, so a green run always means the tests really ran.

use postgres::{Client, NoTls};
use std::sync::{Mutex, MutexGuard};

pub use postgres;

/// Connection string of the test cluster's database.
pub fn dsn() -> String {
    std::env::var("ORDERS_SYNC_TEST_DSN").unwrap_or_else(|_| {
        panic!("ORDERS_SYNC_TEST_DSN is not set: run the integration tests through scripts/test.sh")
    })
}

/// A new autocommit session on the test database.
pub fn connect() -> Client {
    Client::connect(&dsn(), NoTls).unwrap_or_else(|error| panic!("cannot connect to {}: {error}", dsn()))
}

/// Tests in one binary that change cluster-wide state (the extension itself, roles) take
/// this lock so that they never see each other's half-done work.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes sure the extension is installed, as a DBA would: `CREATE EXTENSION ... CASCADE`.
pub fn ensure_extension(client: &mut Client) {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS orders_sync CASCADE")
        .expect("CREATE EXTENSION orders_sync CASCADE failed");
}

/// The first column of the first row of `query`.
pub fn scalar<T>(client: &mut Client, query: &str) -> T
where
    T: for<'a> postgres::types::FromSql<'a>,
{
    client
        .query_one(query, &[])
        .unwrap_or_else(|error| panic!("{query}: {error}"))
        .get(0)
}

/// The message of the error `statement` fails with; panics if it succeeds.
pub fn error_of(client: &mut Client, statement: &str) -> String {
    match client.batch_execute(statement) {
        Ok(()) => panic!("expected an error from: {statement}"),
        Err(error) => error
            .as_db_error()
            .map(|db| db.message().to_string())
            .unwrap_or_else(|| error.to_string()),
    }
}
