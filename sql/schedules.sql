-- Schedules through pg_cron and their health (docs/design.md#schedules: a paused scheduler
-- once went unnoticed for a month).
--
-- orders_sync.schedules (sql/schema.sql) is the registry of jobs that should exist. The
-- schedule_* functions create the pg_cron job and its registry row together; the
-- scheduler_health view compares the registry with what pg_cron has and has run;
-- repair_schedules puts back what is missing or paused.
--
-- A registry row owns exactly one pg_cron job: the one whose id orders_sync recorded when it
-- created it (schedules.job_id) and whose owner is the row's registrant. Jobs are never
-- matched by name alone: another role's job of the same name is reported as a collision
-- (name_taken) and never resumed, recreated over, unscheduled or shown.
--
-- These functions run with the caller's rights (SECURITY INVOKER): the jobs they create are
-- the caller's pg_cron jobs and run as the caller, exactly as with cron.schedule itself. A
-- non-superuser admin therefore needs USAGE on schema cron (and EXECUTE on cron.alter_job to
-- resume paused jobs), which a DBA grants: pg_cron does not give them to PUBLIC.
-- Commands are always built here with format('%L'), never from raw input.

------------------------------------------------------------------------------------------
-- Can pg_cron's scheduler run this database's jobs at all? NULL when it can, else what is
-- wrong and what to do. Read from the scheduler's process in pg_stat_activity, not from
-- missed runs: pg_cron 1.4's scheduler does not come back after pg_terminate_backend, and
-- every job still says active in cron.job. The settings and other roles' processes are
-- visible to superusers only, hence definer rights; it returns nothing but this text.
-- One check for everyone: scheduler_health, schedule_profiler, schedule_maintenance,
-- run_profiler (src/schedule.rs) and start_cron_scheduler.
------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------
-- What pg_cron knows about each registered job. pg_cron's row-level security shows a role
-- only its own jobs, so the monitor role reads through this SECURITY DEFINER function: it
-- returns registered job names only, and never a job's command. A registry row's job is
-- the one orders_sync created (its recorded id) still owned by the registrant, in this
-- database; anything else of that name only sets name_taken, and nothing of it is shown.
------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------
-- One row per expected job. State, first match wins:
--   scheduler_down  pg_cron's scheduler cannot run any job here (cron_scheduler_problem)
--   name_taken      orders_sync's job is gone and a job it did not create has the name
--   missing         no pg_cron job created by orders_sync for it
--   paused          cron.job.active = false
--   failing         its latest finished run(s) failed
--   stale           no successful run within twice the schedule's longest gap, counted from
--                   the last success or, if none, from when the job was (re)scheduled
--   ok              otherwise
------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------
-- Scheduling
------------------------------------------------------------------------------------------
CREATE FUNCTION orders_sync.schedule_profiler(
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

COMMENT ON FUNCTION orders_sync.schedule_profiler(text, text, text, integer, integer, integer, text) IS
    'Creates or updates the pg_cron job that runs orders_sync.run_profiler on a schedule (UTC); returns the cron job id.';

CREATE FUNCTION orders_sync.schedule_maintenance(
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

COMMENT ON FUNCTION orders_sync.schedule_maintenance(text, text) IS
    'Creates or updates the pg_cron jobs orders_sync_reset_stuck (reset_stuck_runs, every 10 minutes) and orders_sync_prune_history (prune_history, daily).';

CREATE FUNCTION orders_sync.unschedule_all()
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
DECLARE
    v_job     record;
    v_removed integer := 0;
BEGIN
    FOR v_job IN
        SELECT r.job_name, r.job_id FROM orders_sync.scheduled_job_runs() r ORDER BY r.job_name
    LOOP
        IF v_job.job_id IS NOT NULL THEN
            PERFORM cron.unschedule(v_job.job_id);
        END IF;
        DELETE FROM orders_sync.schedules s WHERE s.job_name = v_job.job_name;
        v_removed := v_removed + 1;
    END LOOP;
    RETURN v_removed;
END
$fn$;

COMMENT ON FUNCTION orders_sync.unschedule_all() IS
    'Removes every registered job from the registry and the pg_cron job orders_sync created for it (never another job of the same name); returns how many.';

CREATE FUNCTION orders_sync.repair_schedules()
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

COMMENT ON FUNCTION orders_sync.repair_schedules() IS
    'Recreates registered jobs missing from pg_cron (as their registrant) and resumes paused ones, touching only jobs orders_sync created; returns the actions taken.';
