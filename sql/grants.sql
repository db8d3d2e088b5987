-- Privileges. Runs after every other object of the extension exists.
--
-- Nothing is granted to PUBLIC: functions are executable by PUBLIC by default, so that is
-- revoked first and each role gets exactly what it needs.

REVOKE ALL ON SCHEMA orders_sync FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA orders_sync FROM PUBLIC;

GRANT USAGE ON SCHEMA orders_sync TO orders_sync_monitor;

-- Monitor: read everything but credentials.
GRANT SELECT ON
    orders_sync.pipelines,
    orders_sync.store_master,
    orders_sync.pipeline_run_summaries,
    orders_sync.orders_sync_log,
    orders_sync.store_sync_state,
    orders_sync.records,
    orders_sync.kpi_facts_daily,
    orders_sync.td_orders,
    orders_sync.td_sales,
    orders_sync.uc_gst
TO orders_sync_monitor;

-- CHECK constraints and schedule_profiler call them, so every role that writes must be able to.
GRANT EXECUTE ON FUNCTION orders_sync.check_timezone(text) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.is_env_name(text) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.check_source_profile(jsonb, text[]) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.default_source_profile() TO orders_sync_monitor;

-- Admin (a member of monitor): configure pipelines, stores and credentials.
GRANT INSERT, UPDATE, DELETE ON orders_sync.pipelines, orders_sync.store_master TO orders_sync_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders_sync.pipeline_credentials TO orders_sync_admin;
GRANT USAGE ON SEQUENCE orders_sync.pipelines_id_seq TO orders_sync_admin;

GRANT SELECT ON orders_sync.sync_jobs, orders_sync.window_pages TO orders_sync_monitor;

-- A source profile's dry run reads the credentials and calls the source: the admin's job.
GRANT EXECUTE ON FUNCTION orders_sync.test_source(text, text, text, date, date, integer) TO orders_sync_admin;

-- Running syncs is the admin's job.
GRANT EXECUTE ON FUNCTION orders_sync.sync_window(text, text, date, date, boolean, boolean, text) TO orders_sync_admin;

-- The planner is read-only and reads only what the monitor role can read.
GRANT EXECUTE ON FUNCTION orders_sync.plan_sync_windows(text, text, integer, integer, boolean, text, date) TO orders_sync_monitor;

-- Starting runs is the admin's job.
GRANT EXECUTE ON FUNCTION orders_sync.run_profiler(text, text, integer, integer, integer, boolean, text, boolean, date) TO orders_sync_admin;

-- Monitoring (sql/observe.sql).
GRANT SELECT ON orders_sync.job_progress, orders_sync.store_freshness, orders_sync.run_history,
    orders_sync.stuck_candidates TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.store_lock_held(text) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.worker_alive(integer) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.job_worker_gone(integer, timestamptz) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.prune_history(interval) TO orders_sync_admin;
GRANT EXECUTE ON FUNCTION orders_sync.reset_stuck_runs(interval) TO orders_sync_admin;

-- Schedules (sql/schedules.sql). The monitor reads the registry and its health; the health
-- view reads pg_cron through scheduled_job_runs(), which shows no commands.
GRANT SELECT ON orders_sync.schedules, orders_sync.scheduler_health TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.cron_interval(text), orders_sync.scheduled_job_runs(),
    orders_sync.cron_scheduler_problem() TO orders_sync_monitor;
-- orders_sync.start_cron_scheduler() starts a cluster-wide process: superusers only (it also
-- checks), so it is granted to no role.
-- The schedule_* functions run with the admin's rights, so the admin writes the registry.
GRANT INSERT, UPDATE, DELETE ON orders_sync.schedules TO orders_sync_admin;
GRANT EXECUTE ON FUNCTION
    orders_sync.check_cron_schedule(text),
    orders_sync.schedule_profiler(text, text, text, integer, integer, integer, text),
    orders_sync.schedule_maintenance(text, text),
    orders_sync.unschedule_all(),
    orders_sync.repair_schedules()
TO orders_sync_admin;

-- Health (sql/observe.sql): the monitor reads it; launcher_health() is SECURITY DEFINER.
GRANT SELECT ON orders_sync.health TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.launcher_health() TO orders_sync_monitor;
