//! `orders_sync.plan_sync_windows` against real store_master and orders_sync_log rows.

#[pgrx::pg_schema]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};
    use pgrx::prelude::*;

    use crate::plan::sql::{plan_selection, PlanParams};
    use crate::plan::Reason;

    fn store(code: &str, group: &str, start_date: &str) {
        Spi::run_with_args(
            "INSERT INTO orders_sync.store_master (store_code, sync_group, start_date) VALUES ($1, $2, $3::date)",
            &[code.into(), group.into(), start_date.into()],
        )
        .unwrap();
    }

    /// One log row of `pipeline` for `store`; its run summary is created on first use.
    fn log(run_id: &str, pipeline: &str, store: &str, from: &str, to: &str, status: &str) {
        Spi::run_with_args(
            "INSERT INTO orders_sync.pipeline_run_summaries (run_id, pipeline_name, run_env)
             VALUES ($1, 'orders_sync_run_profiler', 'test') ON CONFLICT DO NOTHING",
            &[run_id.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "INSERT INTO orders_sync.orders_sync_log (pipeline_id, run_id, run_env, store_code, from_date, to_date, status)
             SELECT id, $1, 'test', $3, $4::date, $5::date, $6 FROM orders_sync.pipelines WHERE code = $2",
            &[run_id.into(), pipeline.into(), store.into(), from.into(), to.into(), status.into()],
        )
        .unwrap();
    }

    /// The plan of `query` (a SELECT over plan_sync_windows) as readable lines.
    fn plan(query: &str) -> Vec<String> {
        Spi::connect(|client| {
            client
                .select(query, None, &[])
                .unwrap()
                .map(|row| {
                    let text = |n: usize| row.get::<String>(n).unwrap().unwrap_or_else(|| "NULL".into());
                    let will_run = row.get::<bool>(6).unwrap().unwrap();
                    format!(
                        "{} {} {}..{} {}{}",
                        text(1),
                        text(2),
                        text(3),
                        text(4),
                        text(5),
                        if will_run { "" } else { " (skip)" }
                    )
                })
                .collect()
        })
    }

    #[pg_test]
    fn new_store_is_backfilled_in_window_day_chunks() {
        store("S001", "TD", "2026-01-01");
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', window_days => 30, as_of => '2026-03-15')"
            ),
            [
                "td_orders_sync S001 2026-01-01..2026-01-30 backfill",
                "td_orders_sync S001 2026-01-31..2026-03-01 backfill",
                "td_orders_sync S001 2026-03-02..2026-03-15 backfill",
            ]
        );
    }

    #[pg_test]
    fn caught_up_store_refetches_only_its_last_day_and_today() {
        store("S001", "UC", "2026-01-01");
        log("r1", "uc_orders_sync", "S001", "2026-01-01", "2026-03-31", "success");
        log("r2", "uc_orders_sync", "S001", "2026-04-01", "2026-04-09", "success");
        // Other statuses cover nothing.
        log("r3", "uc_orders_sync", "S001", "2026-04-10", "2026-04-10", "failed");
        log("r4", "uc_orders_sync", "S001", "2026-04-10", "2026-04-10", "running");
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', as_of => '2026-04-10')"
            ),
            ["uc_orders_sync S001 2026-04-09..2026-04-10 overlap"]
        );
    }

    #[pg_test]
    fn hole_left_by_a_failed_window_is_repaired_as_missing() {
        // A forced run: Feb 1..10 failed, the windows around it succeeded.
        store("S001", "TD", "2026-01-01");
        log("forced", "td_orders_sync", "S001", "2026-01-01", "2026-01-31", "success");
        log("forced", "td_orders_sync", "S001", "2026-02-01", "2026-02-10", "failed");
        log("forced", "td_orders_sync", "S001", "2026-02-11", "2026-03-14", "success");
        log("later", "td_orders_sync", "S001", "2026-02-05", "2026-02-06", "partial");
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', as_of => '2026-03-15')"
            ),
            [
                "td_orders_sync S001 2026-02-01..2026-02-10 missing",
                "td_orders_sync S001 2026-03-14..2026-03-15 overlap",
            ]
        );
    }

    #[pg_test]
    fn zero_overlap_refetches_today_after_a_multi_day_success_ending_today() {
        // Seed 003 §6: only an exact (today, today) success window suppresses the refresh.
        store("S001", "TD", "2026-01-01");
        log("r1", "td_orders_sync", "S001", "2026-01-01", "2026-01-20", "success");
        let query = "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                     FROM orders_sync.plan_sync_windows('test', overlap_days => 0, as_of => '2026-01-20')";
        assert_eq!(plan(query), ["td_orders_sync S001 2026-01-20..2026-01-20 today"]);

        log("r2", "td_orders_sync", "S001", "2026-01-20", "2026-01-20", "success");
        assert_eq!(plan(query), ["td_orders_sync S001 2026-01-20..2026-01-20 today (skip)"]);
    }

    #[pg_test]
    fn force_replans_every_day_from_start_date() {
        store("S001", "TD", "2026-01-01");
        log("r1", "td_orders_sync", "S001", "2026-01-01", "2026-03-15", "success");
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', window_days => 45, force => true, as_of => '2026-03-15')"
            ),
            [
                "td_orders_sync S001 2026-01-01..2026-02-14 forced",
                "td_orders_sync S001 2026-02-15..2026-03-15 forced",
            ]
        );
    }

    #[pg_test]
    fn selection_follows_store_master_pipelines_and_filters() {
        store("S002", "TD", "2026-03-14");
        store("S001", "TD", "2026-03-15");
        store("U001", "UC", "2026-03-15");
        store("LATER", "UC", "2026-04-01"); // starts after as_of: selected, nothing to plan
        store("OLD", "TD", "2026-01-01");
        store("NOSTART", "TD", "2026-01-01");
        Spi::run("UPDATE orders_sync.store_master SET is_active = false WHERE store_code = 'OLD'").unwrap();
        Spi::run("UPDATE orders_sync.store_master SET start_date = NULL WHERE store_code = 'NOSTART'").unwrap();
        // A success of the other pipeline does not count for this one.
        log("r1", "uc_orders_sync", "S001", "2026-03-15", "2026-03-15", "success");

        let all = "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                   FROM orders_sync.plan_sync_windows('test', as_of => '2026-03-15')";
        assert_eq!(
            plan(all),
            [
                "td_orders_sync S001 2026-03-15..2026-03-15 backfill",
                "td_orders_sync S002 2026-03-14..2026-03-15 backfill",
                "uc_orders_sync U001 2026-03-15..2026-03-15 backfill",
            ]
        );
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', store_code => 'S002', as_of => '2026-03-15')"
            ),
            ["td_orders_sync S002 2026-03-14..2026-03-15 backfill"]
        );
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', sync_group => 'UC', as_of => '2026-03-15')"
            ),
            ["uc_orders_sync U001 2026-03-15..2026-03-15 backfill"]
        );
        assert!(plan(
            "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
             FROM orders_sync.plan_sync_windows('test', store_code => 'LATER', as_of => '2026-03-15')"
        )
        .is_empty());

        Spi::run("UPDATE orders_sync.pipelines SET enabled = false WHERE code = 'uc_orders_sync'").unwrap();
        assert_eq!(plan(all).len(), 2, "a disabled pipeline plans nothing");
    }

    #[pg_test]
    fn vietnam_pipeline_plans_through_tomorrow_in_utc_terms() {
        // 23:30 UTC on Jan 6 is already 06:30 on Jan 7 in Ho Chi Minh City.
        Spi::run("UPDATE orders_sync.pipelines SET timezone = 'Asia/Ho_Chi_Minh' WHERE code = 'td_orders_sync'")
            .unwrap();
        Spi::run("UPDATE orders_sync.pipelines SET timezone = 'UTC' WHERE code = 'uc_orders_sync'").unwrap();
        store("S001", "TD", "2026-01-01");
        store("U001", "UC", "2026-01-01");
        log("r1", "td_orders_sync", "S001", "2026-01-01", "2026-01-06", "success");
        log("r1", "uc_orders_sync", "U001", "2026-01-01", "2026-01-06", "success");

        let now = Utc.with_ymd_and_hms(2026, 1, 6, 23, 30, 0).unwrap();
        let params =
            PlanParams::from_sql_args(Some("test"), Some("ALL"), Some(90), Some(1), Some(false), None, None).unwrap();
        let rows = Spi::connect(|client| plan_selection(client, &params, now)).unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.pipeline_code.as_str(), r.store_code.as_str(), r.window.from, r.window.to, r.window.reason))
            .collect();
        assert_eq!(
            summary,
            [
                ("td_orders_sync", "S001", day(6), day(7), Reason::Overlap),
                ("uc_orders_sync", "U001", day(6), day(6), Reason::Overlap),
            ]
        );
        assert!(rows.iter().all(|r| r.window.will_run));
    }

    #[pg_test]
    fn non_finite_start_date_is_skipped_not_fatal() {
        store("S001", "TD", "-infinity");
        store("S002", "TD", "2026-01-01");
        assert_eq!(
            plan(
                "SELECT pipeline_code, store_code, to_char(from_date, 'YYYY-MM-DD'), to_char(to_date, 'YYYY-MM-DD'), reason, will_run
                 FROM orders_sync.plan_sync_windows('test', as_of => '2026-01-02')"
            ),
            ["td_orders_sync S002 2026-01-01..2026-01-02 backfill"]
        );
    }

    #[pg_test(error = "invalid argument env: must not be NULL")]
    fn env_is_required() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows(NULL)").unwrap();
    }

    #[pg_test(error = "invalid argument window_days: must be between 1 and 3660, got 0")]
    fn window_days_must_be_positive() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', window_days => 0)").unwrap();
    }

    #[pg_test(error = "invalid argument window_days: must be between 1 and 3660, got 100000")]
    fn window_days_must_be_sane() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', window_days => 100000)").unwrap();
    }

    #[pg_test(error = "invalid argument overlap_days: must be between 0 and 3660, got -1")]
    fn overlap_days_cannot_be_negative() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', overlap_days => -1)").unwrap();
    }

    #[pg_test(error = "invalid argument sync_group: unknown sync group \"td\"")]
    fn sync_group_must_be_known() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', sync_group => 'td')").unwrap();
    }

    #[pg_test(error = "invalid argument store_code: no selectable store \"S999\"")]
    fn unknown_store_code_is_an_error() {
        store("S001", "TD", "2026-01-01");
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', store_code => 'S999')").unwrap();
    }

    #[pg_test(error = "invalid argument store_code: no selectable store \"S001\"")]
    fn store_of_another_sync_group_is_not_selectable() {
        store("S001", "TD", "2026-01-01");
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', sync_group => 'UC', store_code => 'S001')")
            .unwrap();
    }

    #[pg_test(error = "invalid argument store_code: not a valid store code")]
    fn hostile_store_code_is_refused() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', store_code => '../../etc')").unwrap();
    }

    #[pg_test(error = "invalid argument as_of: must be a finite date")]
    fn as_of_must_be_finite() {
        Spi::run("SELECT * FROM orders_sync.plan_sync_windows('test', as_of => 'infinity')").unwrap();
    }

    #[pg_test]
    fn unselectable_store_hint_says_why() {
        store("S001", "TD", "2026-01-01");
        Spi::run("UPDATE orders_sync.store_master SET is_active = false WHERE store_code = 'S001'").unwrap();
        Spi::run(
            "DO $$ BEGIN PERFORM * FROM orders_sync.plan_sync_windows('test', store_code => 'S001');
               EXCEPTION WHEN invalid_parameter_value THEN
                 DECLARE h text; BEGIN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; PERFORM set_config('plan_test.hint', h, true); END;
             END $$",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT current_setting('plan_test.hint')").unwrap().as_deref(),
            Some("The store is inactive (orders_sync.store_master.is_active = false).")
        );
    }
}
