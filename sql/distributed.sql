-- Scale-out on Citus (docs/design.md#citus): the tables whose rows belong to one store are
-- distributed on store_code, co-located, so that everything one window writes lives on one
-- node; the coordination tables stay local on the coordinator.
--
-- Nothing here names a Citus object outside EXECUTE: an install without Citus must create
-- and call these functions without Citus being there.

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
