-- orders_sync 0.1.1 -> 0.2.0: run with ALTER EXTENSION orders_sync UPDATE TO '0.2.0'.
\echo Use "ALTER EXTENSION orders_sync UPDATE TO '0.2.0'" to load this file. \quit

-- Each change below also lives in the install scripts (sql/*.sql); the catalog-diff upgrade
-- test (pg_test/tests/install.rs) compares "install 0.2.0" with "install 0.1.x, update".

-- One home for every rule (issue 12): the env-name rule is written once, in Rust, and asked
-- by the CHECK constraint and schedule_profiler.
CREATE FUNCTION orders_sync."is_env_name"("env" TEXT) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'is_env_name_sql_wrapper';
REVOKE ALL ON FUNCTION orders_sync.is_env_name(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orders_sync.is_env_name(text) TO orders_sync_monitor;
ALTER TABLE orders_sync.pipeline_run_summaries
    DROP CONSTRAINT pipeline_run_summaries_run_env_format,
    ADD CONSTRAINT pipeline_run_summaries_run_env_format CHECK (orders_sync.is_env_name(run_env));

-- One definition of "dead" (issues 12 and 20): worker_alive and job_worker_gone, shared by
-- the launcher's healing, reset_stuck_runs and stuck_candidates. A claim made before the
-- server (re)started, or before every running launcher started, is dead at once.
CREATE FUNCTION orders_sync.worker_alive(worker_pid integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = worker_pid)
$$;

COMMENT ON FUNCTION orders_sync.worker_alive(integer) IS
    'True while a server process with this pid exists.';

CREATE FUNCTION orders_sync.job_worker_gone(worker_pid integer, claimed_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN worker_pid IS NOT NULL THEN NOT orders_sync.worker_alive(worker_pid)
        ELSE claimed_at IS NULL
             OR claimed_at < now() - interval '60 seconds'
             OR claimed_at < pg_catalog.pg_postmaster_start_time()
             OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                            WHERE a.backend_type = 'orders_sync launcher' AND a.backend_start <= claimed_at)
    END
$$;

COMMENT ON FUNCTION orders_sync.job_worker_gone(integer, timestamptz) IS
    'True when the worker of a running job (its worker_pid, or the launcher''s claim at claimed_at) is gone.';

REVOKE ALL ON FUNCTION orders_sync.worker_alive(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION orders_sync.job_worker_gone(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orders_sync.worker_alive(integer) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.job_worker_gone(integer, timestamptz) TO orders_sync_monitor;

CREATE OR REPLACE VIEW orders_sync.stuck_candidates AS
SELECT l.id AS log_id,
       l.run_id,
       p.code AS pipeline,
       l.store_code,
       l.from_date,
       l.to_date,
       l.attempt_no,
       l.created_at AS started_at,
       now() - coalesce(j.heartbeat_at, l.updated_at) AS since_heartbeat,
       j.worker_pid,
       NOT orders_sync.job_worker_gone(j.worker_pid, j.heartbeat_at) AS worker_alive,
       orders_sync.store_lock_held(l.store_code) AS store_lock_held
FROM orders_sync.orders_sync_log l
JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
LEFT JOIN orders_sync.sync_jobs j ON j.log_id = l.id
WHERE l.status = 'running';

-- Bounded pagination (issue 14): each pipeline may narrow the GUCs that bound one window's
-- paging (orders_sync.max_pages_per_window, orders_sync.max_window_seconds).
ALTER TABLE orders_sync.pipelines
    ADD COLUMN max_pages_per_window INTEGER
        CONSTRAINT pipelines_max_pages_per_window_range CHECK (max_pages_per_window BETWEEN 1 AND 10000000),
    ADD COLUMN max_window_seconds INTEGER
        CONSTRAINT pipelines_max_window_seconds_range CHECK (max_window_seconds BETWEEN 1 AND 604800);

-- Edge-case arguments (issue 14): NULL older_than is an argument error, not an empty result.
ALTER FUNCTION orders_sync.reset_stuck_runs(interval) CALLED ON NULL INPUT;

-- One home for every rule (issue 12), completed: schedule_profiler asks is_env_name too, as
-- sql/schedules.sql does (without this the upgraded function kept its own copy of the
-- pattern and the catalog-diff test failed).
CREATE OR REPLACE FUNCTION orders_sync.schedule_profiler(
    schedule     text    DEFAULT '*/30 * * * *',
    env          text    DEFAULT 'prod',
    sync_group   text    DEFAULT 'ALL',
    window_days  integer DEFAULT 90,
    overlap_days integer DEFAULT 1,
    max_workers  integer DEFAULT 3,
    job_name     text    DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
DECLARE
    v_job_name text;
    v_command  text;
    v_job_id   bigint;
BEGIN
    PERFORM orders_sync.check_cron_schedule(schedule_profiler.schedule);
    IF schedule_profiler.env IS NULL OR NOT orders_sync.is_env_name(schedule_profiler.env) THEN
        RAISE EXCEPTION 'invalid argument env: must be 1 to 32 letters, digits, ''_'', ''.'' or ''-'''
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the environment the runs are recorded under, e.g. env => ''prod''.';
    END IF;
    IF schedule_profiler.sync_group IS NULL OR schedule_profiler.sync_group NOT IN ('TD', 'UC', 'ALL') THEN
        RAISE EXCEPTION 'invalid argument sync_group: unknown sync group'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use ''TD'', ''UC'' or ''ALL'' (upper case).';
    END IF;
    IF schedule_profiler.window_days IS NULL OR schedule_profiler.window_days NOT BETWEEN 1 AND 3660 THEN
        RAISE EXCEPTION 'invalid argument window_days: must be between 1 and 3660'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass a number of days between 1 and 3660.';
    END IF;
    IF schedule_profiler.overlap_days IS NULL OR schedule_profiler.overlap_days NOT BETWEEN 0 AND 3660 THEN
        RAISE EXCEPTION 'invalid argument overlap_days: must be between 0 and 3660'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass a number of days between 0 and 3660.';
    END IF;
    IF schedule_profiler.max_workers IS NULL OR schedule_profiler.max_workers NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'invalid argument max_workers: must be between 1 and 64'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many windows of a run may be fetched at once (orders_sync.max_workers caps all runs).';
    END IF;

    v_job_name := coalesce(schedule_profiler.job_name,
                           format('orders_sync_profiler_%s_%s',
                                  lower(schedule_profiler.env), lower(schedule_profiler.sync_group)));
    IF v_job_name !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid argument job_name: must be 1 to 63 letters, digits, ''_'', ''.'' or ''-'''
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass NULL for orders_sync_profiler_<env>_<group>, or a name such as ''orders_sync_profiler_nightly''.';
    END IF;

    v_command := format(
        'SELECT orders_sync.run_profiler(env => %L, sync_group => %L, window_days => %L, overlap_days => %L, max_workers => %L)',
        schedule_profiler.env, schedule_profiler.sync_group, schedule_profiler.window_days,
        schedule_profiler.overlap_days, schedule_profiler.max_workers);

    -- cron.schedule with a name updates that job if the caller already has it.
    v_job_id := cron.schedule(v_job_name, schedule_profiler.schedule, v_command);

    INSERT INTO orders_sync.schedules AS s (job_name, schedule, command, kind)
    VALUES (v_job_name, schedule_profiler.schedule, v_command, 'profiler')
    ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
        SET schedule = EXCLUDED.schedule, command = EXCLUDED.command, kind = EXCLUDED.kind,
            registered_by = current_user, updated_at = now();
    RETURN v_job_id;
END
$fn$;

-- Install it like any PostgreSQL extension, watch it like any PostgreSQL service (issue 16):
-- prune_history also prunes pg_cron's run details of orders_sync's own jobs and the pages of
-- windows that will never be retried, and says how many of each it removed. Its result
-- type changes, so it is dropped and created again (with its grant).
DROP FUNCTION orders_sync.prune_history(interval);

-- History pruning: log rows, jobs and runs older than `keep` go, except what the planner
-- relies on. A success row is kept unless a newer success covers exactly the same window,
-- so the days the planner sees as covered never change.
-- pg_cron never prunes cron.job_run_details (one row per run, forever): the run details of
-- orders_sync's own jobs (those named in orders_sync.schedules) older than `keep` go too,
-- except what scheduler_health reads: each job's latest run, its latest success and every
-- failure since then. And window_pages of interrupted windows that will never be retried
-- (no queued or running job has the window, and today's plan with run_profiler's default
-- parameters does not run it) go once their last page is a day old: a retry that
-- does come later starts the window from its first page, which is safe, only slower.
CREATE FUNCTION orders_sync.prune_history(keep interval DEFAULT '90 days')
RETURNS TABLE (log_rows bigint, jobs bigint, runs bigint, cron_runs bigint, window_pages bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
BEGIN
    IF keep IS NULL OR keep < interval '1 day' THEN
        RAISE EXCEPTION 'invalid argument keep: % is shorter than 1 day', keep
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Keep at least a day of history, e.g. prune_history(''90 days'').';
    END IF;
    cutoff := now() - keep;

    WITH removed AS (
        DELETE FROM orders_sync.sync_jobs j
        WHERE j.status NOT IN ('queued', 'running') AND coalesce(j.finished_at, j.created_at) < cutoff
        RETURNING 1)
    SELECT count(*) INTO jobs FROM removed;

    WITH removed AS (
        DELETE FROM orders_sync.orders_sync_log l
        WHERE l.created_at < cutoff AND l.status <> 'running'
          AND (l.status <> 'success'
               OR EXISTS (SELECT 1 FROM orders_sync.orders_sync_log n
                          WHERE n.pipeline_id = l.pipeline_id AND n.store_code = l.store_code
                            AND n.from_date = l.from_date AND n.to_date = l.to_date
                            AND n.status = 'success' AND n.id > l.id))
        RETURNING 1)
    SELECT count(*) INTO log_rows FROM removed;

    WITH removed AS (
        DELETE FROM orders_sync.pipeline_run_summaries r
        WHERE r.finished_at < cutoff
          AND NOT EXISTS (SELECT 1 FROM orders_sync.orders_sync_log l WHERE l.run_id = r.run_id)
          AND NOT EXISTS (SELECT 1 FROM orders_sync.sync_jobs j WHERE j.run_id = r.run_id)
        RETURNING 1)
    SELECT count(*) INTO runs FROM removed;

    -- pg_cron's row-level security limits a non-superuser to the runs of its own jobs; a
    -- caller without USAGE on schema cron prunes none (scheduler_health needs the same).
    cron_runs := 0;
    IF pg_catalog.has_schema_privilege('cron', 'USAGE') THEN
        WITH own AS (
            SELECT c.jobid FROM cron.job c JOIN orders_sync.schedules s ON s.job_name = c.jobname
        ),
        last_success AS (
            SELECT d.jobid, max(d.start_time) AS at
            FROM cron.job_run_details d JOIN own USING (jobid)
            WHERE d.status = 'succeeded'
            GROUP BY d.jobid
        ),
        latest AS (
            SELECT DISTINCT ON (d.jobid) d.runid
            FROM cron.job_run_details d JOIN own USING (jobid)
            ORDER BY d.jobid, d.start_time DESC NULLS LAST, d.runid DESC
        ),
        removed AS (
            DELETE FROM cron.job_run_details d
            USING own
            WHERE d.jobid = own.jobid AND d.start_time < cutoff
              AND d.runid NOT IN (SELECT runid FROM latest)
              -- The latest success and every failure after it (failures_in_a_row).
              AND NOT EXISTS (SELECT 1 FROM last_success ls
                              WHERE ls.jobid = d.jobid
                                AND (d.start_time = ls.at OR (d.start_time > ls.at AND d.status = 'failed')))
              AND NOT (d.status = 'failed'
                       AND NOT EXISTS (SELECT 1 FROM last_success ls WHERE ls.jobid = d.jobid))
            RETURNING 1)
        SELECT count(*) INTO cron_runs FROM removed;
    END IF;

    WITH planned AS (
        SELECT pl.id AS pipeline_id, w.store_code COLLATE "C", w.from_date, w.to_date
        FROM orders_sync.plan_sync_windows('prune') w
        JOIN orders_sync.pipelines pl ON pl.code = w.pipeline_code
        WHERE w.will_run
    ),
    abandoned AS (
        SELECT p.pipeline_id, p.store_code, p.from_date, p.to_date
        FROM orders_sync.window_pages p
        GROUP BY p.pipeline_id, p.store_code, p.from_date, p.to_date
        HAVING max(p.written_at) < now() - interval '1 day'
        EXCEPT
        SELECT j.pipeline_id, j.store_code, j.from_date, j.to_date
        FROM orders_sync.sync_jobs j WHERE j.status IN ('queued', 'running')
        EXCEPT
        SELECT pipeline_id, store_code, from_date, to_date FROM planned
    ),
    removed AS (
        DELETE FROM orders_sync.window_pages p
        USING abandoned a
        WHERE p.pipeline_id = a.pipeline_id AND p.store_code = a.store_code
          AND p.from_date = a.from_date AND p.to_date = a.to_date
        RETURNING 1)
    SELECT count(*) INTO window_pages FROM removed;

    RETURN NEXT;
END
$$;

COMMENT ON FUNCTION orders_sync.prune_history(interval) IS
    'Removes log rows, jobs, runs and orders_sync''s pg_cron run details older than keep, and the pages of windows that will never be retried; keeps the latest success of every window and what scheduler_health reads.';

REVOKE EXECUTE ON FUNCTION orders_sync.prune_history(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orders_sync.prune_history(interval) TO orders_sync_admin;

-- Issue 16, cheap to scrape: store_freshness probes two indexes per store instead of
-- aggregating the whole log, and the running rows have an index of their own.
CREATE INDEX ix_orders_sync_log_last_success
ON orders_sync.orders_sync_log (pipeline_id, store_code, to_date)
WHERE status = 'success';

CREATE INDEX ix_orders_sync_log_running
ON orders_sync.orders_sync_log (pipeline_id)
WHERE status = 'running';

CREATE OR REPLACE VIEW orders_sync.store_freshness AS
SELECT p.code AS pipeline,
       s.store_code,
       s.cost_center,
       s.start_date,
       ls.last_success_day,
       (now() AT TIME ZONE p.timezone)::date - ls.last_success_day AS lag_days,
       CASE
           WHEN lt.status IN ('failed', 'partial') THEN 'failing'
           WHEN ls.last_success_day IS NULL THEN 'never_synced'
           WHEN (now() AT TIME ZONE p.timezone)::date - ls.last_success_day > 1 THEN 'lagging'
           ELSE 'fresh'
       END AS state,
       lt.status AS last_status,
       lt.updated_at AS last_attempt_at,
       lt.error_message AS last_error
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group AND p.enabled
LEFT JOIN LATERAL (
    SELECT max(l.to_date) AS last_success_day
    FROM orders_sync.orders_sync_log l
    WHERE l.pipeline_id = p.id AND l.store_code = s.store_code COLLATE "default" AND l.status = 'success'
) ls ON true
LEFT JOIN LATERAL (
    -- The latest attempt at any window of the store.
    SELECT l.status, l.error_message, l.updated_at
    FROM orders_sync.orders_sync_log l
    WHERE l.store_code = s.store_code COLLATE "default" AND l.pipeline_id = p.id
    ORDER BY l.created_at DESC, l.id DESC
    LIMIT 1
) lt ON true
WHERE s.is_active AND s.start_date IS NOT NULL;
