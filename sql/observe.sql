-- The "observe" stage: what a DBA watches (docs/design.md#monitoring): progress, freshness,
-- history, stuck candidates. Plain SQL over the queue and the log; nothing here writes.

-- Whether the session advisory lock a worker holds on a store while it syncs it is taken.
-- A `running` row next to a free lock means its worker is gone.
CREATE FUNCTION orders_sync.store_lock_held(store_code text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND l.classid = hashtext('orders_sync.store')::oid
          AND l.objid = hashtext(store_code)::oid)
$$;

COMMENT ON FUNCTION orders_sync.store_lock_held(text) IS
    'True while some orders_sync worker holds the per-store advisory lock of this store.';

-- Whether the process with this pid is running: the one test of "is this worker alive".
CREATE FUNCTION orders_sync.worker_alive(worker_pid integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = worker_pid)
$$;

COMMENT ON FUNCTION orders_sync.worker_alive(integer) IS
    'True while a server process with this pid exists.';

-- Whether the worker of a `running` job is gone, the one definition the launcher's healing,
-- reset_stuck_runs and stuck_candidates share (docs/design.md#healing). A job whose worker
-- reported in is gone when that process is. A job the launcher claimed but whose worker never
-- reported in (no worker_pid) is gone at once when the claim is older than this server
-- (a crash-restart kills every worker) or than every running launcher (the one that claimed
-- it has exited, and its worker with it); otherwise only after a minute, which covers a
-- slow worker start. Definer's rights: other roles see no backend_type in pg_stat_activity,
-- and the answer must not depend on who asks (the monitor's stuck_candidates, an admin's
-- reset_stuck_runs).
CREATE FUNCTION orders_sync.job_worker_gone(worker_pid integer, claimed_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = orders_sync, pg_catalog, pg_temp
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

-- Live progress of each running or recent job (docs/design.md#monitoring).
CREATE VIEW orders_sync.job_progress AS
SELECT j.id AS job_id,
       j.run_id,
       p.code AS pipeline,
       j.store_code,
       j.from_date,
       j.to_date,
       j.reason,
       j.status,
       j.pages_done,
       j.rows_written,
       -- The wire contract does not announce how many pages a stream has: a percentage is
       -- known once a job has ended, and for a running job by the streams it completed.
       CASE
           WHEN j.status IN ('success', 'partial', 'failed', 'skipped') THEN 100.0
           WHEN j.status = 'running' THEN round(100.0 * (
                   (CASE WHEN l.orders_pulled_at IS NOT NULL AND p.streams[1] = ANY (j.streams) THEN 1 ELSE 0 END)
                 + (CASE WHEN l.sales_pulled_at IS NOT NULL AND p.streams[2] = ANY (j.streams) THEN 1 ELSE 0 END))
                 / cardinality(j.streams), 1)
       END AS percent_streams_done,
       j.worker_pid,
       j.started_at,
       j.heartbeat_at,
       round(extract(epoch FROM now() - j.heartbeat_at) / 60.0, 1) AS minutes_since_heartbeat,
       (SELECT count(*) FROM orders_sync.orders_sync_log f
        WHERE f.pipeline_id = j.pipeline_id AND f.store_code = j.store_code
          AND f.from_date = j.from_date AND f.to_date = j.to_date
          AND f.status IN ('failed', 'partial')) AS failed_attempts,
       l.attempt_no,
       j.error_message
FROM orders_sync.sync_jobs j
JOIN orders_sync.pipelines p ON p.id = j.pipeline_id
LEFT JOIN orders_sync.orders_sync_log l ON l.id = j.log_id
WHERE j.status IN ('queued', 'running') OR j.finished_at > now() - interval '1 day';

COMMENT ON VIEW orders_sync.job_progress IS
    'Each queued, running or recently finished job: pages, rows, minutes since its last heartbeat, failed attempts at its window.';

-- Per store + pipeline: the last successful day and how far behind today (in the pipeline's
-- time zone) it is. Read from store_sync_state, one row per store, so the view stays cheap
-- enough to scrape on 10,000 stores with years of history (scripts/bench_metrics.sh).
CREATE VIEW orders_sync.store_freshness AS
SELECT p.code AS pipeline,
       s.store_code,
       s.cost_center,
       s.start_date,
       st.last_success_day,
       (now() AT TIME ZONE p.timezone)::date - st.last_success_day AS lag_days,
       CASE
           WHEN st.last_status IN ('failed', 'partial') THEN 'failing'
           WHEN st.last_success_day IS NULL THEN 'never_synced'
           WHEN (now() AT TIME ZONE p.timezone)::date - st.last_success_day > 1 THEN 'lagging'
           ELSE 'fresh'
       END AS state,
       st.last_status,
       st.last_attempt_at,
       st.last_error
FROM orders_sync.store_master s
JOIN orders_sync.pipelines p ON p.sync_group = s.sync_group AND p.enabled
-- One row per store and pipeline, kept from the log by its triggers (sql/schema.sql).
LEFT JOIN orders_sync.store_sync_state st ON st.pipeline_id = p.id AND st.store_code = s.store_code
WHERE s.is_active AND s.start_date IS NOT NULL;

COMMENT ON VIEW orders_sync.store_freshness IS
    'Per active store and pipeline: last successful day, lag in days (pipeline time zone), state fresh | lagging | never_synced | failing.';

-- Runs, newest first.
CREATE VIEW orders_sync.run_history AS
SELECT r.run_id,
       r.pipeline_name,
       r.run_env,
       r.report_date,
       r.started_at,
       r.finished_at,
       coalesce(r.finished_at, now()) - r.started_at AS duration,
       r.overall_status,
       r.summary_text,
       r.parameters,
       r.counts
FROM orders_sync.pipeline_run_summaries r
ORDER BY r.started_at DESC;

COMMENT ON VIEW orders_sync.run_history IS 'Every run with its duration, status, summary and counts, newest first.';

-- Log rows still `running`, with what tells whether their worker is alive (docs/design.md#healing).
CREATE VIEW orders_sync.stuck_candidates AS
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

COMMENT ON VIEW orders_sync.stuck_candidates IS
    'Log rows in running state: heartbeat age, whether the worker process is alive and whether the store lock is held.';

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

-- Whether syncing has its engine (docs/design.md#healing): one row per component, `ok` or a
-- state a monitoring query can alert on. The launcher's row reads pg_stat_activity and
-- shared_preload_libraries, which an unprivileged role sees only in part, so it is computed by
-- a SECURITY DEFINER function that returns nothing but the state.
CREATE FUNCTION orders_sync.launcher_health(OUT state text, OUT pid integer, OUT since timestamptz, OUT detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = orders_sync, pg_catalog, pg_temp
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
