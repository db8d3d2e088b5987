-- orders_sync 0.1.0 -> 0.1.1: run with ALTER EXTENSION orders_sync UPDATE TO '0.1.1'.
\echo Use "ALTER EXTENSION orders_sync UPDATE TO '0.1.1'" to load this file. \quit

-- Whether a store has a running job: asked for every dispatch decision (a store runs one
-- window at a time). Partial, so it stays as small as the number of running jobs.
CREATE INDEX ix_sync_jobs_running ON orders_sync.sync_jobs (store_code) WHERE status = 'running';
