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

-- Always on (issue 15): orders_sync.health, a missing launcher as a state a monitoring query
-- can alert on.
-- launcher_health() reads pg_stat_activity and shared_preload_libraries with the owner's rights.
CREATE FUNCTION orders_sync.launcher_health(OUT state text, OUT pid integer, OUT since timestamptz, OUT detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = orders_sync, pg_temp
AS $$
    SELECT CASE
               WHEN NOT s.preloaded THEN 'not_preloaded'
               WHEN pg_catalog.pg_is_in_recovery() THEN 'standby'
               WHEN s.served IS DISTINCT FROM pg_catalog.current_database() THEN 'other_database'
               WHEN l.pid IS NULL THEN 'launcher_down'
               ELSE 'ok'
           END,
           l.pid,
           l.backend_start,
           CASE
               WHEN NOT s.preloaded THEN
                   'orders_sync is not in shared_preload_libraries, so no launcher runs and queued work waits; add it and restart the server'
               WHEN pg_catalog.pg_is_in_recovery() THEN
                   'hot standby: the launcher starts when this server is promoted; syncing runs on the primary'
               WHEN s.served IS DISTINCT FROM pg_catalog.current_database() THEN
                   pg_catalog.format('orders_sync.database is %L, so the launcher serves that database, not this one; set it to %L and restart the server',
                                     s.served, pg_catalog.current_database())
               WHEN l.pid IS NULL THEN
                   'no orders_sync launcher is connected to this database, so queued work waits; it comes back 5 s after it exits: if this lasts, read the server log (max_worker_processes, orders_sync.database) or restart the server'
               ELSE pg_catalog.format('launcher pid %s running since %s', l.pid, l.backend_start)
           END
    FROM (SELECT pg_catalog.current_setting('shared_preload_libraries')
                     ~ '(^|[\s,/"])orders_sync(\.so)?("|\s|,|$)' AS preloaded,
                 pg_catalog.current_setting('orders_sync.database', true) AS served) s
    LEFT JOIN LATERAL (SELECT a.pid, a.backend_start FROM pg_catalog.pg_stat_activity a
                       WHERE a.backend_type = 'orders_sync launcher'
                         AND a.datname = pg_catalog.current_database()
                       ORDER BY a.backend_start LIMIT 1) l ON true
$$;

REVOKE ALL ON FUNCTION orders_sync.launcher_health() FROM PUBLIC;

COMMENT ON FUNCTION orders_sync.launcher_health() IS
    'State of this database''s launcher: ok, launcher_down, standby, other_database or not_preloaded, with what to do.';

CREATE VIEW orders_sync.health AS
SELECT 'launcher'::text AS component, h.state, h.pid, h.since, h.detail
FROM orders_sync.launcher_health() h;

COMMENT ON VIEW orders_sync.health IS
    'One row per component that keeps syncing running; alert on state <> ''ok'' (''standby'' is expected on a hot standby).';

GRANT SELECT ON orders_sync.health TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.launcher_health() TO orders_sync_monitor;

-- One home for every rule (issue 12, completing it): schedule_profiler asks is_env_name too.
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
