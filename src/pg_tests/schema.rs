//! The schema as installed by CREATE EXTENSION: the sync log's required DDL
//! (docs/design.md#sync-log), constraints, triggers, built-in pipelines and privileges.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn count(query: &str) -> i64 {
        Spi::get_one::<i64>(query).expect("query failed").expect("NULL count")
    }

    #[pg_test]
    fn builtin_pipelines_resolve_by_code() {
        let td = Spi::get_one::<i64>("SELECT id FROM orders_sync.pipelines WHERE code = 'td_orders_sync'")
            .unwrap()
            .expect("td_orders_sync missing");
        let uc = Spi::get_one::<i64>("SELECT id FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'")
            .unwrap()
            .expect("uc_orders_sync missing");
        assert_ne!(td, uc);
        assert_eq!(
            Spi::get_one::<String>("SELECT sync_group FROM orders_sync.pipelines WHERE code = 'td_orders_sync'")
                .unwrap(),
            Some("TD".to_string())
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT array_to_string(streams, ',') FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'"
            )
            .unwrap(),
            Some("gst".to_string())
        );
    }

    #[pg_test]
    fn seed_log_indexes_exist_with_their_columns() {
        let expected = [
            ("uq_orders_sync_log_window", "CREATE UNIQUE INDEX uq_orders_sync_log_window ON orders_sync.orders_sync_log USING btree (pipeline_id, store_code, from_date, to_date, run_id)"),
            ("ix_orders_sync_log_lookup", "CREATE INDEX ix_orders_sync_log_lookup ON orders_sync.orders_sync_log USING btree (pipeline_id, store_code, from_date, to_date, status)"),
            ("ix_orders_sync_log_store_recent", "CREATE INDEX ix_orders_sync_log_store_recent ON orders_sync.orders_sync_log USING btree (store_code, created_at DESC)"),
            ("ix_orders_sync_log_pipeline_recent", "CREATE INDEX ix_orders_sync_log_pipeline_recent ON orders_sync.orders_sync_log USING btree (pipeline_id, created_at DESC)"),
        ];
        for (name, definition) in expected {
            let found = Spi::get_one_with_args::<String>(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'orders_sync' AND indexname = $1",
                &[name.into()],
            )
            .unwrap();
            assert_eq!(found.as_deref(), Some(definition), "index {name}");
        }
    }

    #[pg_test]
    fn seed_log_columns_and_foreign_keys_match_the_seed() {
        let columns = Spi::get_one::<String>(
            "SELECT string_agg(column_name || ' ' || data_type || coalesce('(' || character_maximum_length || ')', '')
                               || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END, ', ' ORDER BY ordinal_position)
             FROM information_schema.columns
             WHERE table_schema = 'orders_sync' AND table_name = 'orders_sync_log'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            columns,
            "id bigint not null, pipeline_id bigint not null, run_id character varying(64) not null, \
             run_env character varying(32) not null, cost_center character varying(8), \
             store_code character varying(8) not null, from_date date not null, to_date date not null, \
             orders_pulled_at timestamp with time zone, sales_pulled_at timestamp with time zone, \
             status character varying(16) not null, attempt_no integer not null, error_message text, \
             created_at timestamp with time zone not null, updated_at timestamp with time zone not null"
        );
        let foreign_keys = Spi::get_one::<String>(
            "SELECT string_agg(pg_get_constraintdef(oid), '; ' ORDER BY pg_get_constraintdef(oid))
             FROM pg_constraint WHERE conrelid = 'orders_sync.orders_sync_log'::regclass AND contype = 'f'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            foreign_keys,
            "FOREIGN KEY (pipeline_id) REFERENCES orders_sync.pipelines(id); \
             FOREIGN KEY (run_id) REFERENCES orders_sync.pipeline_run_summaries(run_id)"
        );
    }

    fn insert_run_and_log(status: &str) -> i64 {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, report_date)
             VALUES ('test-run-1', 'orders_sync_run_profiler', 'test', current_date)",
        )
        .unwrap();
        Spi::get_one_with_args::<i64>(
            "INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
             SELECT id, 'test-run-1', 'test', 'S001', '2026-01-01', '2026-01-06', $1
             FROM orders_sync.pipelines WHERE code = 'td_orders_sync'
             RETURNING id",
            &[status.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn log_updated_at_moves_on_every_update() {
        let id = insert_run_and_log("running");
        let before = Spi::get_one_with_args::<TimestampWithTimeZone>(
            "SELECT updated_at FROM orders_sync.orders_sync_log WHERE id = $1",
            &[id.into()],
        )
        .unwrap()
        .unwrap();
        // Same transaction on purpose: updated_at must still move.
        Spi::run_with_args(
            "UPDATE orders_sync.orders_sync_log SET status = 'success', orders_pulled_at = now() WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        let moved = Spi::get_one_with_args::<bool>(
            "SELECT updated_at > $2 FROM orders_sync.orders_sync_log WHERE id = $1",
            &[id.into(), before.into()],
        )
        .unwrap();
        assert_eq!(moved, Some(true));
    }

    #[pg_test(
        error = "new row for relation \"orders_sync_log\" violates check constraint \"orders_sync_log_status_known\""
    )]
    fn log_rejects_an_unknown_status() {
        insert_run_and_log("done");
    }

    #[pg_test(
        error = "new row for relation \"orders_sync_log\" violates check constraint \"orders_sync_log_window_ordered\""
    )]
    fn log_rejects_a_reversed_window() {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env) VALUES ('r2', 'x', 'test');
             INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
             SELECT id, 'r2', 'test', 'S001', '2026-01-06', '2026-01-01', 'running' FROM orders_sync.pipelines LIMIT 1",
        )
        .unwrap();
    }

    #[pg_test(error = "duplicate key value violates unique constraint \"uq_orders_sync_log_window\"")]
    fn log_refuses_the_same_window_twice_in_one_run() {
        insert_run_and_log("running");
        Spi::run(
            "INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
             SELECT id, 'test-run-1', 'test', 'S001', '2026-01-01', '2026-01-06', 'running'
             FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
        )
        .unwrap();
    }

    #[pg_test(error = "invalid argument timezone: unknown time zone \"Mars/Olympus_Mons\"")]
    fn pipeline_rejects_an_unknown_timezone() {
        Spi::run("UPDATE orders_sync.pipelines SET timezone = 'Mars/Olympus_Mons' WHERE code = 'td_orders_sync'")
            .unwrap();
    }

    #[pg_test]
    fn pipeline_accepts_an_iana_timezone_and_stamps_updated_at() {
        Spi::run("UPDATE orders_sync.pipelines SET timezone = 'Europe/Berlin' WHERE code = 'uc_orders_sync'").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT timezone FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'").unwrap(),
            Some("Europe/Berlin".to_string())
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM orders_sync.pipelines WHERE code = 'uc_orders_sync' AND updated_at > created_at"
            ),
            1
        );
    }

    #[pg_test(
        error = "new row for relation \"store_master\" violates check constraint \"store_master_store_code_format\""
    )]
    fn store_master_rejects_a_hostile_store_code() {
        Spi::run("INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('../x', 'TD', '2026-01-01')")
            .unwrap();
    }

    #[pg_test(error = "value too long for type character varying(8)")]
    fn store_master_rejects_a_long_store_code() {
        Spi::run("INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('S00000001', 'TD', '2026-01-01')")
            .unwrap();
    }

    #[pg_test(
        error = "new row for relation \"store_master\" violates check constraint \"store_master_sync_group_known\""
    )]
    fn store_master_rejects_an_unknown_sync_group() {
        Spi::run("INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ('S001', 'XX', '2026-01-01')")
            .unwrap();
    }

    #[pg_test(
        error = "new row for relation \"pipeline_run_summaries\" violates check constraint \"pipeline_run_summaries_finished_iff_not_running\""
    )]
    fn run_summary_cannot_be_finished_while_running() {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env, finished_at)
             VALUES ('r3', 'x', 'test', now())",
        )
        .unwrap();
    }

    #[pg_test]
    fn record_views_expose_their_stream_only() {
        Spi::run(
            "INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload)
             SELECT p.id, 'S001', s.stream, s.stream || '-1', '2026-01-06', 10.50, jsonb_build_object('id', s.stream || '-1')
             FROM orders_sync.pipelines p
             CROSS JOIN LATERAL unnest(p.streams) AS s(stream)",
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM orders_sync.td_orders WHERE record_id = 'orders-1' AND amount = 10.50"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM orders_sync.td_sales WHERE record_id = 'sales-1'"), 1);
        assert_eq!(
            count("SELECT count(*) FROM orders_sync.uc_gst WHERE record_id = 'gst-1' AND payload->>'id' = 'gst-1'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM orders_sync.td_orders"), 1);
    }

    #[pg_test(error = "permission denied for table pipeline_credentials")]
    fn monitor_role_cannot_read_credentials() {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
             SELECT id, 'secret-token' FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
        )
        .unwrap();
        Spi::run("SET LOCAL ROLE orders_sync_monitor").unwrap();
        // The monitor role can read the rest of the schema...
        assert_eq!(count("SELECT count(*) FROM orders_sync.pipelines"), 2);
        // ...but not the tokens.
        Spi::run("SELECT api_token FROM orders_sync.pipeline_credentials").unwrap();
    }

    #[pg_test]
    fn admin_role_reads_credentials() {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
             SELECT id, 'secret-token' FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
        )
        .unwrap();
        Spi::run("SET LOCAL ROLE orders_sync_admin").unwrap();
        assert_eq!(count("SELECT count(*) FROM orders_sync.pipeline_credentials"), 1);
    }

    #[pg_test(error = "permission denied for schema orders_sync")]
    fn public_has_no_access() {
        Spi::run("CREATE ROLE orders_sync_test_nobody NOLOGIN").unwrap();
        Spi::run("SET LOCAL ROLE orders_sync_test_nobody").unwrap();
        Spi::run("SELECT count(*) FROM orders_sync.store_master").unwrap();
    }

    #[pg_test(
        error = "new row for relation \"pipeline_credentials\" violates check constraint \"pipeline_credentials_token_format\""
    )]
    fn credentials_reject_a_header_injection() {
        Spi::run(
            "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
             SELECT id, E'abc\\r\\nX-Evil: 1' FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
        )
        .unwrap();
    }
}
