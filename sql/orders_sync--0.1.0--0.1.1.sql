-- orders_sync 0.1.0 -> 0.1.1: run with ALTER EXTENSION orders_sync UPDATE TO '0.1.1'.
\echo Use "ALTER EXTENSION orders_sync UPDATE TO '0.1.1'" to load this file. \quit

-- Whether a store has a running job: asked for every dispatch decision (a store runs one
-- window at a time). Partial, so it stays as small as the number of running jobs.
CREATE INDEX ix_sync_jobs_running ON orders_sync.sync_jobs (store_code) WHERE status = 'running';

-- Registry rows remember the role a job runs as; repair_schedules recreates a missing job as
-- that role instead of the caller (an admin could otherwise have a superuser schedule any
-- command). Existing rows take the role of the pg_cron job in this database with the same
-- name and the same command; a row whose job is gone, or whose command differs from what
-- pg_cron runs, stays NULL (unknown) until it is registered again.
ALTER TABLE orders_sync.schedules ADD COLUMN registered_by NAME;
UPDATE orders_sync.schedules s
SET registered_by = (SELECT j.username FROM cron.job j
                     WHERE j.jobname = s.job_name AND j.command = s.command
                       AND j.database = current_database()
                     ORDER BY j.jobid DESC
                     LIMIT 1);
ALTER TABLE orders_sync.schedules ALTER COLUMN registered_by SET DEFAULT current_user;
COMMENT ON TABLE orders_sync.schedules IS
    'Registry of the pg_cron jobs orders_sync expects (job name, cron schedule in UTC, command, the role it runs as); see scheduler_health.';

CREATE FUNCTION orders_sync.stamp_schedule_registrant() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_superuser boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user);
BEGIN
    -- The command is what runs, so its writer is the registrant. Only a superuser may name
    -- another role (a restore from pg_dump copies the rows as a superuser and must keep
    -- them); anyone else is stamped as themselves, whatever they put here.
    IF TG_OP = 'INSERT' THEN
        IF NEW.registered_by IS NULL OR NOT v_superuser THEN
            NEW.registered_by := current_user;
        END IF;
    ELSIF NEW.registered_by IS DISTINCT FROM OLD.registered_by THEN
        IF NEW.registered_by IS NULL OR NOT v_superuser THEN
            NEW.registered_by := current_user;
        END IF;
    ELSIF NEW.command IS DISTINCT FROM OLD.command THEN
        NEW.registered_by := current_user;
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER schedules_stamp_registrant
    BEFORE INSERT OR UPDATE ON orders_sync.schedules
    FOR EACH ROW EXECUTE FUNCTION orders_sync.stamp_schedule_registrant();
-- As sql/grants.sql does for every function: nothing executable by PUBLIC.
REVOKE EXECUTE ON FUNCTION orders_sync.stamp_schedule_registrant() FROM PUBLIC;

-- The schedule_* functions stamp the registrant when they re-register a job, and
-- repair_schedules recreates jobs as their registrant (bodies as in sql/schedules.sql).
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
    IF schedule_profiler.env IS NULL OR schedule_profiler.env !~ '^[A-Za-z0-9_.-]{1,32}$' THEN
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
    v_job record;
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
        INSERT INTO orders_sync.schedules AS s (job_name, schedule, command, kind)
        VALUES (v_job.name, v_job.schedule, v_job.command, 'maintenance')
        ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
            SET schedule = EXCLUDED.schedule, command = EXCLUDED.command, kind = EXCLUDED.kind,
            registered_by = current_user, updated_at = now();
        job_name := v_job.name;
        RETURN NEXT;
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION orders_sync.repair_schedules()
RETURNS TABLE (job_name text, action text)
LANGUAGE plpgsql VOLATILE
SET search_path = orders_sync, pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_job record;
    v_skip text;
BEGIN
    FOR v_job IN
        SELECT s.job_name, s.schedule, s.command, s.registered_by, r.job_id, r.active
        FROM orders_sync.schedules s
        JOIN orders_sync.scheduled_job_runs() r ON r.job_name = s.job_name
        ORDER BY s.job_name
    LOOP
        IF v_job.job_id IS NULL THEN
            -- Recreated as the role that registered it, never as the caller: the command is
            -- whatever that role wrote into the registry. A job that cannot be recreated is
            -- reported and skipped; the others are still repaired.
            IF v_job.registered_by IS NULL THEN
                v_skip := 'the role it runs as is unknown; register it again with orders_sync.schedule_profiler or orders_sync.schedule_maintenance';
            ELSIF v_job.registered_by = current_user THEN
                PERFORM cron.schedule(v_job.job_name, v_job.schedule, v_job.command);
            ELSIF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                PERFORM cron.schedule_in_database(v_job.job_name, v_job.schedule, v_job.command,
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
            UPDATE orders_sync.schedules s SET updated_at = now() WHERE s.job_name = v_job.job_name;
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
