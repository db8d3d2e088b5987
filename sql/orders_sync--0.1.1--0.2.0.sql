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
