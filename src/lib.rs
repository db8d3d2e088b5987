//! orders_sync: keeps per-store order data in sync with HTTP sources, from inside PostgreSQL.
//!
//! The modules follow the pipeline: plan → queue → fetch → write → observe.
//! This file only wires them together; the schema itself lives in `sql/`.

use pgrx::prelude::*;

mod bgw;
mod clock;
mod distributed;
mod errors;
mod fetch;
mod gucs;
mod launcher;
mod names;
mod observe;
mod orchestrate;
mod outcome;
mod plan;
mod queue;
mod schedule;
mod shared_memory;
mod source;
mod worker;
mod write;

::pgrx::pg_module_magic!(name, version);

// Tables, indexes, triggers and built-in rows. Needs `check_timezone`, `is_env_name` and
// `check_source_profile` for CHECK constraints.
extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [clock::check_timezone, names::is_env_name_sql, source::check_source_profile]
);
// Typed per-stream views over the records store.
extension_sql_file!("../sql/views.sql", name = "views", requires = ["schema"]);
// Monitoring views and history pruning (the "observe" stage).
extension_sql_file!("../sql/observe.sql", name = "observe", requires = ["schema"]);
// Schedules through pg_cron: registry functions and the scheduler_health view.
extension_sql_file!(
    "../sql/schedules.sql",
    name = "schedules",
    requires = ["schema", schedule::cron_interval, schedule::check_cron_schedule]
);
// Scale-out on Citus: distribute() and the list of store-keyed tables.
extension_sql_file!("../sql/distributed.sql", name = "distributed", requires = ["schema"]);
// Privileges: runs last so that it sees every function pgrx generated.
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    shared_memory::init();
    launcher::register();
}

// SQL-level tests run by `cargo pgrx test`; each file wraps its tests in `#[pg_schema] mod tests`.
#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`: the test cluster preloads pg_cron and orders_sync.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_cron,orders_sync'",
            "cron.database_name = 'pgrx_tests'",
            "orders_sync.database = 'pgrx_tests'",
        ]
    }
}
