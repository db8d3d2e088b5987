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

GRANT SELECT ON orders_sync.health TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.launcher_health() TO orders_sync_monitor;

------------------------------------------------------------------------------------------
-- Issues 19 and 14 (item 3): schedules
--   19: pg_cron's scheduler terminated, cron.database_name elsewhere or pg_cron not
--       preloaded is reported at once (scheduler_health state scheduler_down, a warning
--       from schedule_* and run_profiler); start_cron_scheduler() brings a terminated
--       scheduler back without a restart.
--   14.3: a registry row owns the pg_cron job orders_sync created for it (its id and owner),
--       never any job of the same name; a foreign job of that name is name_taken.
------------------------------------------------------------------------------------------

-- The id of the job orders_sync created. Existing rows take it only from the job in this
-- database with the same name, the same command and the recorded registrant as owner;
-- otherwise it stays NULL (the job is then missing or name_taken, and repair says why).
ALTER TABLE orders_sync.schedules ADD COLUMN job_id BIGINT;
UPDATE orders_sync.schedules s
SET job_id = (SELECT j.jobid FROM cron.job j
              WHERE j.jobname = s.job_name AND j.command = s.command
                AND j.database = current_database() AND j.username = s.registered_by::text
              ORDER BY j.jobid DESC
              LIMIT 1)
WHERE s.registered_by IS NOT NULL;
COMMENT ON TABLE orders_sync.schedules IS
    'Registry of the pg_cron jobs orders_sync expects (job name, cron schedule in UTC, command, the role it runs as, the id of the job it created); see scheduler_health.';

CREATE FUNCTION orders_sync.cron_scheduler_problem()
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
DECLARE
    v_cron_database text;
    v_launcher_databases text;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN 'this server is a standby (in recovery): pg_cron runs jobs only on the primary';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.current_setting('shared_preload_libraries'), ',')) AS l (library)
        WHERE pg_catalog.regexp_replace(pg_catalog.btrim(l.library, ' "'), '^.*/|\.so$', '', 'g') = 'pg_cron'
    ) THEN
        RETURN 'pg_cron is not in shared_preload_libraries, so its scheduler never starts and no job runs: '
            || 'add pg_cron to shared_preload_libraries and restart the server';
    END IF;
    v_cron_database := pg_catalog.current_setting('cron.database_name', true);
    IF v_cron_database IS DISTINCT FROM pg_catalog.current_database() THEN
        RETURN pg_catalog.format('cron.database_name is %L, not this database (%L): pg_cron''s scheduler runs only the jobs of that database, so the jobs registered here never run; '
                                 'set cron.database_name = %L and restart the server (the setting is read only at server start)',
                                 v_cron_database, pg_catalog.current_database(), pg_catalog.current_database());
    END IF;
    -- Within a transaction pg_stat_activity is read once and cached; a caller that polls
    -- (a monitoring loop, start_cron_scheduler) must see the process as it is now.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT pg_catalog.string_agg(DISTINCT coalesce(a.datname::text, '(none)'), ', ')
    INTO v_launcher_databases
    FROM pg_catalog.pg_stat_activity a
    WHERE a.backend_type = 'pg_cron launcher';
    IF v_launcher_databases IS NULL THEN
        RETURN 'pg_cron''s scheduler is not running (no "pg_cron launcher" process in pg_stat_activity; it was terminated or failed), so no job runs, '
            || 'and pg_cron before 1.6.1 does not restart it by itself: as a superuser run SELECT orders_sync.start_cron_scheduler(), or restart the server';
    END IF;
    IF pg_catalog.strpos(', ' || v_launcher_databases || ', ', ', ' || pg_catalog.current_database() || ', ') = 0 THEN
        RETURN pg_catalog.format('pg_cron''s scheduler is connected to %s, not to this database: the jobs registered here never run; restart the server',
                                 v_launcher_databases);
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION orders_sync.cron_scheduler_problem() FROM PUBLIC;

COMMENT ON FUNCTION orders_sync.cron_scheduler_problem() IS
    'NULL when pg_cron''s scheduler runs this database''s jobs; else why not (not preloaded, cron.database_name elsewhere, scheduler process gone, standby) and what to do.';

-- scheduled_job_runs() gains name_taken and matches by id and owner; its result type
-- changes, so it and the view over it are dropped and created again (grants below).
DROP VIEW orders_sync.scheduler_health;
DROP FUNCTION orders_sync.scheduled_job_runs();

CREATE FUNCTION orders_sync.scheduled_job_runs()
RETURNS TABLE (
    job_name          text,
    job_id            bigint,
    active            boolean,
    cron_schedule     text,
    last_run_at       timestamptz,
    last_status       text,
    last_message      text,
    last_success_at   timestamptz,
    failures_in_a_row integer,
    name_taken        boolean
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
    SELECT s.job_name,
           j.jobid,
           j.active,
           j.schedule,
           r.start_time,
           r.status,
           left(r.return_message, 200),
           ok.last_success_at,
           coalesce(f.failures, 0)::integer,
           j.jobid IS NULL AND EXISTS (SELECT FROM cron.job c WHERE c.jobname OPERATOR(pg_catalog.=) s.job_name)
    FROM orders_sync.schedules s
    LEFT JOIN LATERAL (
        SELECT c.jobid, c.active, c.schedule
        FROM cron.job c
        WHERE c.jobid OPERATOR(pg_catalog.=) s.job_id
          AND c.username OPERATOR(pg_catalog.=) s.registered_by::text
          AND c.database OPERATOR(pg_catalog.=) current_database()
    ) j ON true
    LEFT JOIN LATERAL (
        SELECT d.start_time, d.status, d.return_message
        FROM cron.job_run_details d
        WHERE d.jobid OPERATOR(pg_catalog.=) j.jobid
        ORDER BY d.start_time DESC NULLS LAST, d.runid DESC
        LIMIT 1
    ) r ON true
    LEFT JOIN LATERAL (
        SELECT max(d.start_time) AS last_success_at
        FROM cron.job_run_details d
        WHERE d.jobid OPERATOR(pg_catalog.=) j.jobid AND d.status OPERATOR(pg_catalog.=) 'succeeded'
    ) ok ON true
    LEFT JOIN LATERAL (
        -- Failures since the last success: more than zero means the latest finished run failed.
        SELECT count(*) AS failures
        FROM cron.job_run_details d
        WHERE d.jobid OPERATOR(pg_catalog.=) j.jobid AND d.status OPERATOR(pg_catalog.=) 'failed'
          AND d.start_time OPERATOR(pg_catalog.>) coalesce(ok.last_success_at, '-infinity'::timestamptz)
    ) f ON true
$fn$;

REVOKE ALL ON FUNCTION orders_sync.scheduled_job_runs() FROM PUBLIC;

COMMENT ON FUNCTION orders_sync.scheduled_job_runs() IS
    'pg_cron state of the job orders_sync created for each registered name (id, active, schedule, last run, failures since the last success; name_taken when only a job it did not create has the name); no commands.';

CREATE VIEW orders_sync.scheduler_health AS
WITH scheduler AS (
    -- Once per query, not per job (volatile: a CTE keeps it to one call).
    SELECT orders_sync.cron_scheduler_problem() AS problem
)
SELECT h.job_name,
       h.schedule,
       CASE WHEN c.problem IS NULL THEN h.state ELSE 'scheduler_down' END AS state,
       h.last_run_at,
       h.last_status,
       h.expected_interval,
       CASE WHEN c.problem IS NULL THEN h.detail
            ELSE format('%s (the job itself: %s)', c.problem, h.state) END AS detail
FROM (
    SELECT s.job_name,
           s.schedule,
           CASE
               WHEN r.job_id IS NULL AND r.name_taken THEN 'name_taken'
               WHEN r.job_id IS NULL THEN 'missing'
               WHEN NOT r.active THEN 'paused'
               WHEN r.failures_in_a_row > 0 THEN 'failing'
               WHEN now() - greatest(r.last_success_at, s.updated_at) > 2 * i.expected_interval THEN 'stale'
               ELSE 'ok'
           END AS state,
           r.last_run_at,
           r.last_status,
           i.expected_interval,
           CASE
               WHEN r.job_id IS NULL AND r.name_taken THEN
                   format('the pg_cron job orders_sync created for %s is gone and that name is taken by a job it did not create '
                          '(another role''s, or made outside orders_sync), which orders_sync neither reports on nor touches; '
                          'register the schedule under another job_name, or have that job''s owner remove it', s.job_name)
               WHEN r.job_id IS NULL THEN
                   format('no pg_cron job named %s created by orders_sync; run orders_sync.repair_schedules() to recreate it', s.job_name)
               WHEN NOT r.active THEN
                   format('pg_cron job %s is paused (active = false); run orders_sync.repair_schedules() to resume it', r.job_id)
               WHEN r.failures_in_a_row > 0 THEN
                   format('%s failed run(s) since the last success; last error: %s',
                          r.failures_in_a_row, coalesce(r.last_message, 'none recorded'))
               WHEN now() - greatest(r.last_success_at, s.updated_at) > 2 * i.expected_interval THEN
                   CASE WHEN r.last_success_at IS NULL
                        THEN format('no successful run since it was scheduled at %s; expected one every %s',
                                    s.updated_at, i.expected_interval)
                        ELSE format('last successful run at %s; expected one every %s',
                                    r.last_success_at, i.expected_interval)
                   END
               WHEN r.last_success_at IS NULL THEN 'scheduled; no run yet'
               ELSE format('last successful run at %s', r.last_success_at)
           END
           || CASE WHEN r.cron_schedule IS DISTINCT FROM s.schedule AND r.job_id IS NOT NULL
                   THEN format(' (pg_cron has schedule %L, the registry %L)', r.cron_schedule, s.schedule)
                   ELSE '' END AS detail
    FROM orders_sync.schedules s
    JOIN orders_sync.scheduled_job_runs() r ON r.job_name = s.job_name
    CROSS JOIN LATERAL (SELECT orders_sync.cron_interval(s.schedule) AS expected_interval) i
) h
CROSS JOIN scheduler c;

COMMENT ON VIEW orders_sync.scheduler_health IS
    'Each expected pg_cron job: ok, paused, missing, stale (no success within twice its interval), failing, name_taken (its name held by a job orders_sync did not create) or scheduler_down (pg_cron''s scheduler cannot run jobs here); see repair_schedules().';

-- Bodies as in sql/schedules.sql: record the created job's id, warn when pg_cron cannot run it,
-- repair only jobs orders_sync created.
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
    v_problem  text;
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

    INSERT INTO orders_sync.schedules AS s (job_name, schedule, command, kind, job_id)
    VALUES (v_job_name, schedule_profiler.schedule, v_command, 'profiler', v_job_id)
    ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
        SET schedule = EXCLUDED.schedule, command = EXCLUDED.command, kind = EXCLUDED.kind,
            registered_by = current_user, job_id = EXCLUDED.job_id, updated_at = now();

    v_problem := orders_sync.cron_scheduler_problem();
    IF v_problem IS NOT NULL THEN
        RAISE WARNING 'orders_sync: pg_cron job % is scheduled, but pg_cron cannot run it: %', v_job_name, v_problem
            USING HINT = 'orders_sync.scheduler_health shows it as scheduler_down until this is fixed; see the README''s runbook.';
    END IF;
    RETURN v_job_id;
END
$fn$;

CREATE OR REPLACE FUNCTION orders_sync.schedule_maintenance(
    reset_schedule text DEFAULT '*/10 * * * *',
    prune_schedule text DEFAULT '30 3 * * *'
)
RETURNS TABLE (job_name text, job_id bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_job     record;
    v_problem text;
BEGIN
    PERFORM orders_sync.check_cron_schedule(schedule_maintenance.reset_schedule);
    PERFORM orders_sync.check_cron_schedule(schedule_maintenance.prune_schedule);
    FOR v_job IN
        SELECT v.name, v.schedule, v.command
        FROM (VALUES
            ('orders_sync_reset_stuck', schedule_maintenance.reset_schedule, 'SELECT orders_sync.reset_stuck_runs()'),
            ('orders_sync_prune_history', schedule_maintenance.prune_schedule, 'SELECT orders_sync.prune_history()')
        ) AS v (name, schedule, command)
    LOOP
        job_id := cron.schedule(v_job.name, v_job.schedule, v_job.command);
        INSERT INTO orders_sync.schedules AS s (job_name, schedule, command, kind, job_id)
        VALUES (v_job.name, v_job.schedule, v_job.command, 'maintenance', job_id)
        ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
            SET schedule = EXCLUDED.schedule, command = EXCLUDED.command, kind = EXCLUDED.kind,
            registered_by = current_user, job_id = EXCLUDED.job_id, updated_at = now();
        job_name := v_job.name;
        RETURN NEXT;
    END LOOP;

    v_problem := orders_sync.cron_scheduler_problem();
    IF v_problem IS NOT NULL THEN
        RAISE WARNING 'orders_sync: the maintenance jobs are scheduled, but pg_cron cannot run them: %', v_problem
            USING HINT = 'orders_sync.scheduler_health shows them as scheduler_down until this is fixed; see the README''s runbook.';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION orders_sync.repair_schedules()
RETURNS TABLE (job_name text, action text)
LANGUAGE plpgsql VOLATILE
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_job    record;
    v_skip   text;
    v_job_id bigint;
BEGIN
    FOR v_job IN
        SELECT s.job_name, s.schedule, s.command, s.registered_by, r.job_id, r.active, r.name_taken
        FROM orders_sync.schedules s
        JOIN orders_sync.scheduled_job_runs() r ON r.job_name = s.job_name
        ORDER BY s.job_name
    LOOP
        IF v_job.job_id IS NULL THEN
            -- Recreated as the role that registered it, never as the caller: the command is
            -- whatever that role wrote into the registry. A job that cannot be recreated is
            -- reported and skipped; the others are still repaired. A job of that name that
            -- orders_sync did not create is never overwritten (cron.schedule would update a
            -- same-named job of the registrant) nor shadowed: the name is reported as taken.
            IF v_job.name_taken THEN
                v_skip := 'the name is taken by a pg_cron job orders_sync did not create; register the schedule under another job_name, or have that job''s owner remove it';
            ELSIF v_job.registered_by IS NULL THEN
                v_skip := 'the role it runs as is unknown; register it again with orders_sync.schedule_profiler or orders_sync.schedule_maintenance';
            ELSIF v_job.registered_by = current_user THEN
                v_job_id := cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
            ELSIF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                v_job_id := cron.schedule_in_database(v_job.job_name, v_job.schedule, v_job.command,
                                                      current_database(), v_job.registered_by);
            ELSE
                v_skip := format('it runs as role %s; only that role or a superuser may recreate it', v_job.registered_by);
            END IF;
            IF v_skip IS NOT NULL THEN
                RAISE WARNING 'orders_sync: pg_cron job % not recreated: %', v_job.job_name, v_skip;
                job_name := v_job.job_name;
                action := 'not recreated: ' || v_skip;
                v_skip := NULL;
                RETURN NEXT;
                CONTINUE;
            END IF;
            -- The stale clock restarts: the recreated job has had no chance to run yet.
            UPDATE orders_sync.schedules s SET job_id = v_job_id, updated_at = now() WHERE s.job_name = v_job.job_name;
            job_name := v_job.job_name;
            action := 'recreated';
            RETURN NEXT;
        ELSIF NOT v_job.active THEN
            PERFORM cron.alter_job(v_job.job_id, active => true);
            job_name := v_job.job_name;
            action := 'resumed';
            RETURN NEXT;
        END IF;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION orders_sync.unschedule_all() IS
    'Removes every registered job from the registry and the pg_cron job orders_sync created for it (never another job of the same name); returns how many.';

COMMENT ON FUNCTION orders_sync.repair_schedules() IS
    'Recreates registered jobs missing from pg_cron (as their registrant) and resumes paused ones, touching only jobs orders_sync created; returns the actions taken.';

-- src/schedule.rs, as pgrx generates it for the install script.
CREATE FUNCTION orders_sync."start_cron_scheduler"() RETURNS INT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'start_cron_scheduler_wrapper';
-- As sql/grants.sql: nothing executable by PUBLIC; start_cron_scheduler is for superusers only.
REVOKE EXECUTE ON FUNCTION orders_sync.start_cron_scheduler() FROM PUBLIC;
GRANT SELECT ON orders_sync.scheduler_health TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.scheduled_job_runs(), orders_sync.cron_scheduler_problem() TO orders_sync_monitor;
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

-- Issue 16, within the scrape target: store_freshness reads store_sync_state, one row per
-- store and pipeline kept from the log by statement triggers, instead of probing the log
-- twice per store. Filled here from the log as it is.
------------------------------------------------------------------------------------------
-- store_sync_state: each store's freshness per pipeline (last successful day, latest attempt),
-- kept by statement triggers on the log, so that store_freshness and the exporter's scrape
-- read one row per store instead of probing the log twice per store. Derived data: never
-- dumped (a restore rebuilds it from the log's rows), emptied with the log.
------------------------------------------------------------------------------------------
CREATE TABLE orders_sync.store_sync_state (
    pipeline_id      BIGINT NOT NULL,
    store_code       VARCHAR(8) COLLATE "C" NOT NULL,
    last_success_day DATE,
    last_status      VARCHAR(16) NOT NULL,
    last_error       TEXT,
    last_attempt_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT store_sync_state_pkey PRIMARY KEY (pipeline_id, store_code)
);

COMMENT ON TABLE orders_sync.store_sync_state IS
    'Per pipeline and store, from orders_sync_log: last successful day and the latest attempt. Kept by triggers; read by store_freshness.';

-- Recomputes the state of the (pipeline, store) pairs a statement on the log touched, from
-- the log itself (two index probes a pair), so it stays exact whatever the statement did.
CREATE FUNCTION orders_sync.store_sync_state_refresh() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_pipelines bigint[];
    v_stores    text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE orders_sync.store_sync_state;
        RETURN NULL;
    END IF;
    SELECT array_agg(k.pipeline_id), array_agg(k.store_code) INTO v_pipelines, v_stores
    FROM (SELECT DISTINCT pipeline_id, store_code::text AS store_code FROM log_rows) k;
    IF v_pipelines IS NULL THEN
        RETURN NULL;
    END IF;
    -- The recomputation below must start after any other writer of a pair has committed, and
    -- see its rows. A statement over a few pairs locks each pair, in a fixed order (no deadlock
    -- between two statements over several pairs). One over many pairs (a purge, a backfill)
    -- locks the state table instead, which waits for every writer already recomputing and
    -- which later ones wait for: a lock per pair would fill the shared lock table ("out of
    -- shared memory") on a large estate.
    IF pg_catalog.cardinality(v_pipelines) > 64 THEN
        LOCK TABLE orders_sync.store_sync_state IN SHARE ROW EXCLUSIVE MODE;
    ELSE
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('orders_sync.store_sync_state'),
                                                 pg_catalog.hashtext(k.pipeline_id || '/' || k.store_code))
        FROM unnest(v_pipelines, v_stores) AS k(pipeline_id, store_code)
        ORDER BY k.pipeline_id, k.store_code;
    END IF;
    DELETE FROM orders_sync.store_sync_state s
    USING unnest(v_pipelines, v_stores) AS k(pipeline_id, store_code)
    WHERE s.pipeline_id = k.pipeline_id AND s.store_code = k.store_code COLLATE "C";
    INSERT INTO orders_sync.store_sync_state
        (pipeline_id, store_code, last_success_day, last_status, last_error, last_attempt_at)
    SELECT k.pipeline_id, k.store_code, ls.last_success_day, lt.status, lt.error_message, lt.updated_at
    FROM unnest(v_pipelines, v_stores) AS k(pipeline_id, store_code)
    JOIN LATERAL (
        SELECT l.status, l.error_message, l.updated_at
        FROM orders_sync.orders_sync_log l
        WHERE l.pipeline_id = k.pipeline_id AND l.store_code = k.store_code
        ORDER BY l.created_at DESC, l.id DESC
        LIMIT 1
    ) lt ON true
    LEFT JOIN LATERAL (
        SELECT max(l.to_date) AS last_success_day
        FROM orders_sync.orders_sync_log l
        WHERE l.pipeline_id = k.pipeline_id AND l.store_code = k.store_code AND l.status = 'success'
    ) ls ON true;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_sync_log_state_insert
    AFTER INSERT ON orders_sync.orders_sync_log REFERENCING NEW TABLE AS log_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders_sync.store_sync_state_refresh();
CREATE TRIGGER orders_sync_log_state_update
    AFTER UPDATE ON orders_sync.orders_sync_log REFERENCING NEW TABLE AS log_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders_sync.store_sync_state_refresh();
CREATE TRIGGER orders_sync_log_state_delete
    AFTER DELETE ON orders_sync.orders_sync_log REFERENCING OLD TABLE AS log_rows
    FOR EACH STATEMENT EXECUTE FUNCTION orders_sync.store_sync_state_refresh();
CREATE TRIGGER orders_sync_log_state_truncate
    AFTER TRUNCATE ON orders_sync.orders_sync_log
    FOR EACH STATEMENT EXECUTE FUNCTION orders_sync.store_sync_state_refresh();

INSERT INTO orders_sync.store_sync_state
    (pipeline_id, store_code, last_success_day, last_status, last_error, last_attempt_at)
SELECT k.pipeline_id, k.store_code, ls.last_success_day, lt.status, lt.error_message, lt.updated_at
FROM (SELECT DISTINCT pipeline_id, store_code::text AS store_code FROM orders_sync.orders_sync_log) k
JOIN LATERAL (
    SELECT l.status, l.error_message, l.updated_at
    FROM orders_sync.orders_sync_log l
    WHERE l.pipeline_id = k.pipeline_id AND l.store_code = k.store_code
    ORDER BY l.created_at DESC, l.id DESC
    LIMIT 1
) lt ON true
LEFT JOIN LATERAL (
    SELECT max(l.to_date) AS last_success_day
    FROM orders_sync.orders_sync_log l
    WHERE l.pipeline_id = k.pipeline_id AND l.store_code = k.store_code AND l.status = 'success'
) ls ON true;

GRANT SELECT ON orders_sync.store_sync_state TO orders_sync_monitor;
REVOKE ALL ON FUNCTION orders_sync.store_sync_state_refresh() FROM PUBLIC;

CREATE OR REPLACE VIEW orders_sync.store_freshness AS
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

-- A log row's job by index (stuck_candidates, reset_stuck_runs, the exporter's running windows).
CREATE INDEX ix_sync_jobs_log ON orders_sync.sync_jobs (log_id);

------------------------------------------------------------------------------------------
-- #13 source profiles: each pipeline's API described by a checked jsonb profile (request,
-- dates, pagination, records, auth, limits), the secrets a profile's auth may need, and
-- test_source, the dry run. NULL is the built-in contract, so existing pipelines are unchanged.
------------------------------------------------------------------------------------------
-- src/source.rs, as pgrx generates it for the install script.
CREATE FUNCTION orders_sync."check_source_profile"("source" JSONB, "streams" TEXT[]) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'check_source_profile_wrapper';
CREATE FUNCTION orders_sync."default_source_profile"() RETURNS JSONB
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'default_source_profile_wrapper';
CREATE FUNCTION orders_sync."test_source"(
    "pipeline" TEXT, "store_code" TEXT, "stream" TEXT, "from_date" date, "to_date" date, "pages" INT DEFAULT 1
) RETURNS JSONB
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'test_source_wrapper';
REVOKE ALL ON FUNCTION orders_sync.check_source_profile(jsonb, text[]), orders_sync.default_source_profile(),
    orders_sync.test_source(text, text, text, date, date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orders_sync.check_source_profile(jsonb, text[]) TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.default_source_profile() TO orders_sync_monitor;
GRANT EXECUTE ON FUNCTION orders_sync.test_source(text, text, text, date, date, integer) TO orders_sync_admin;

ALTER TABLE orders_sync.pipelines ADD COLUMN source jsonb;
ALTER TABLE orders_sync.pipelines
    ADD CONSTRAINT pipelines_source_valid CHECK (orders_sync.check_source_profile(source, streams));
COMMENT ON COLUMN orders_sync.pipelines.source IS
    'Source profile: request, dates, pagination, records, auth, limits and per-stream overrides (README, "Source profiles"); NULL = the built-in contract. Never holds a secret.';

ALTER TABLE orders_sync.pipeline_credentials
    ALTER COLUMN api_token DROP NOT NULL,
    ADD COLUMN username TEXT
        CONSTRAINT pipeline_credentials_username_format CHECK (username ~ '^[ -~]+$' AND length(username) <= 1024 AND position(':' IN username) = 0),
    ADD COLUMN password TEXT
        CONSTRAINT pipeline_credentials_password_format CHECK (password ~ '^[ -~]+$' AND length(password) <= 4096),
    ADD COLUMN client_id TEXT
        CONSTRAINT pipeline_credentials_client_id_format CHECK (client_id ~ '^[!-~]+$' AND length(client_id) <= 1024),
    ADD COLUMN client_secret TEXT
        CONSTRAINT pipeline_credentials_client_secret_format CHECK (client_secret ~ '^[!-~]+$' AND length(client_secret) <= 4096),
    ADD CONSTRAINT pipeline_credentials_some_secret CHECK (num_nonnulls(api_token, username, password, client_id, client_secret) > 0);
COMMENT ON TABLE orders_sync.pipeline_credentials IS
    'Secrets per pipeline: api_token (bearer or API key), username and password (HTTP basic), client_id and client_secret (OAuth2). Readable by orders_sync_admin only; never shown in views, logs or errors.';

-- #17 a chain-sized daily run: a job worker's next claim reads the run's queued windows from
-- the one it just ran on, not from the queue's start.
CREATE INDEX ix_sync_jobs_queued ON orders_sync.sync_jobs (run_id, id) WHERE status = 'queued';

-- #18 orders_sync on a Citus cluster: distribute() distributes the store-keyed tables on
-- store_code, co-located (docs/design.md#citus). Only functions: on a distributed install
-- this section creates no table and alters none; the sections above alter only tables that
-- stay on the coordinator (pipelines, credentials, jobs), so the update runs there as on one node.
-- The store-keyed tables, in the order they are distributed (records first: the others are
-- co-located with it). Every primary key among them starts with or contains store_code.
CREATE FUNCTION orders_sync.store_keyed_tables() RETURNS regclass[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['orders_sync.records'::regclass, 'orders_sync.window_pages'::regclass,
                 'orders_sync.kpi_facts_daily'::regclass]
$$;

COMMENT ON FUNCTION orders_sync.store_keyed_tables() IS
    'The tables orders_sync.distribute() distributes on store_code (records, window_pages, kpi_facts_daily).';

-- Distributes the store-keyed tables on store_code with `shard_count` shards, co-located.
-- Idempotent: a table already distributed on store_code is left as it is (and reported), so
-- a second call, or a call after a DBA distributed records by hand, finishes the job. Rows
-- already present move into the shards.
CREATE FUNCTION orders_sync.distribute(shard_count integer DEFAULT 32)
RETURNS TABLE (table_name text, distribution_column text, shards bigint, action text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_table        regclass;
    v_column       text;
    v_colocate     text := 'none';
    v_distributed  boolean;
BEGIN
    IF shard_count IS NULL OR shard_count NOT BETWEEN 1 AND 64000 THEN
        RAISE EXCEPTION 'invalid argument shard_count: % is not between 1 and 64000', shard_count
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a few shards per worker core, e.g. distribute(shard_count => 32).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'orders_sync.distribute needs the Citus extension, which is not installed in database %',
                        current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Install Citus (package postgresql-15-citus-13.2), put citus first in shared_preload_libraries, restart, '
                         'CREATE EXTENSION citus, add the worker nodes with citus_add_node(), then call distribute() again.';
    END IF;
    -- Citus's own catalog, read by name: this function must compile without Citus.
    EXECUTE 'SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group' INTO v_distributed;
    IF v_distributed THEN
        RAISE EXCEPTION 'orders_sync.distribute must run on the Citus coordinator, not on a worker node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Connect to the coordinator and call orders_sync.distribute() there.';
    END IF;

    -- A distributed table may only reference reference tables; pipelines stays a local
    -- coordination table, so the KPI facts lose their foreign key to it (distribute()'s
    -- one schema change; docs/design.md#citus). Dropping a pipeline then leaves its facts.
    FOR v_column IN
        SELECT c.conname::text FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = 'orders_sync.kpi_facts_daily'::regclass AND c.contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE orders_sync.kpi_facts_daily DROP CONSTRAINT %I', v_column);
    END LOOP;
    v_column := NULL;

    FOREACH v_table IN ARRAY orders_sync.store_keyed_tables() LOOP
        EXECUTE 'SELECT a.attname::text FROM pg_catalog.pg_dist_partition p
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = p.logicalrelid
                  AND a.attname = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                 WHERE p.logicalrelid = $1'
            INTO v_column USING v_table;
        IF v_column IS NOT NULL AND v_column <> 'store_code' THEN
            RAISE EXCEPTION 'table % is already distributed on column %, not store_code', v_table, v_column
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('Undistribute it first: SELECT undistribute_table(%L); then call distribute() again.',
                                    v_table::text);
        END IF;
        IF v_column IS NULL THEN
            IF v_colocate = 'none' THEN
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, $2, colocate_with => $3, shard_count => $4)'
                    USING v_table, 'store_code', 'none', shard_count;
            ELSE
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, $2, colocate_with => $3)'
                    USING v_table, 'store_code', v_colocate;
            END IF;
            -- The rows that were there are now in the shards; the coordinator's copy would
            -- only take space (and come back on undistribute_table).
            EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING v_table;
            action := 'distributed';
        ELSE
            action := 'already distributed';
        END IF;
        -- The first table's co-location group is the one the others join.
        v_colocate := v_table::text;
        table_name := v_table::text;
        distribution_column := 'store_code';
        EXECUTE 'SELECT count(*) FROM pg_catalog.pg_dist_shard WHERE logicalrelid = $1' INTO shards USING v_table;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION orders_sync.distribute(integer) IS
    'On a Citus coordinator: distributes records, window_pages and kpi_facts_daily on store_code, co-located, with shard_count shards; idempotent. Coordination tables stay local.';

REVOKE EXECUTE ON FUNCTION orders_sync.store_keyed_tables(), orders_sync.distribute(integer) FROM PUBLIC;
