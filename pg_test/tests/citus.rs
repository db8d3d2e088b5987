//! orders_sync on a Citus cluster (docs/design.md#citus, README "Scaling out with Citus"): a
//! coordinator and two workers, each a real PostgreSQL with Citus, on loopback ports. An
//! install of the released 0.1.1 with records distributed by hand is updated and
//! distribute()d; an estate synced there equals the source and a single-node install synced
//! alike (records, KPI facts, plan, monitoring views); each store's records live on its
//! shard's node; every statement of the write path is a one-shard router statement; a worker
//! node stopped mid-run fails only its stores' windows and the next run heals them; shards
//! moved by citus_rebalance_start() to a third worker while a run writes lose nothing.

use std::time::{Duration, Instant};

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, error_of, scalar, spare_port, Simulator, SpareCluster};

const DB: &str = "orders_sync_it";
const START: &str = "2026-01-01";

const CITUS_SETTINGS: [&str; 8] = [
    "shared_preload_libraries = 'citus,pg_cron,orders_sync'",
    "fsync = off",
    "synchronous_commit = off",
    // citus_rebalance_start moves shards with logical replication.
    "wal_level = logical",
    "max_connections = 200",
    "orders_sync.http_retry_base_delay = 20ms",
    // The nodes trust loopback connections; no certificates to set up.
    "citus.node_conninfo = 'sslmode=prefer'",
    "max_worker_processes = 48",
];

fn wait_until(db: &mut Client, what: &str, query: &str, timeout: Duration) {
    let start = Instant::now();
    while !scalar::<bool>(db, query) {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node with Citus created in the test database.
fn citus_node(name: &str, offset: u16) -> SpareCluster {
    let node = SpareCluster::start_new(name, spare_port(offset), DB, &CITUS_SETTINGS);
    node.connect(DB).batch_execute("CREATE EXTENSION citus").expect("CREATE EXTENSION citus");
    node
}

fn add_worker(coordinator: &mut Client, worker: &SpareCluster) {
    coordinator
        .execute("SELECT citus_add_node('127.0.0.1', $1)", &[&i32::from(worker.port)])
        .unwrap_or_else(|error| panic!("citus_add_node {}: {}", worker.port, orders_sync_pg_test::describe(&error)));
}

/// The port of the worker node holding `store`'s shard of the records.
fn node_of(db: &mut Client, store: &str) -> i32 {
    db.query_one(
        "SELECT p.nodeport FROM pg_dist_shard_placement p
         WHERE p.shardid = get_shard_id_for_distribution_column('orders_sync.records', $1::text)",
        &[&store],
    )
    .unwrap()
    .get(0)
}

/// Both built-in pipelines at the simulator, small pages, `stores` active in group UC.
fn estate(db: &mut Client, sim: &Simulator, stores: &[String]) {
    db.execute("UPDATE orders_sync.pipelines SET base_url = $1, page_size = 20, max_attempts = 2", &[&sim.base_url])
        .unwrap();
    for store in stores {
        db.execute(
            "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
             VALUES ($1, 'CC01', 'UC', $2::text::date, true)",
            &[store, &START],
        )
        .unwrap();
    }
}

fn run_profiler(db: &mut Client, as_of: &str, wait: bool) -> String {
    scalar(
        db,
        &format!(
            "SELECT orders_sync.run_profiler('citus', sync_group => 'UC', window_days => 5, max_workers => 3,
                                             as_of => '{as_of}', wait => {wait})"
        ),
    )
}

fn run_status(db: &mut Client, run_id: &str) -> String {
    scalar(
        db,
        &format!("SELECT overall_status::text FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run_id}'"),
    )
}

/// Each store's (count, sum) of gst records up to `to` equals the simulator's truth.
fn assert_records_equal_truth(db: &mut Client, sim: &Simulator, stores: &[String], to: &str) {
    for store in stores {
        let (count, sum) = sim.truth(store, "gst", START, to);
        let row = db
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::text FROM orders_sync.records
                 WHERE store_code = $1 AND stream = 'gst' AND record_date BETWEEN $2::text::date AND $3::text::date",
                &[store, &START, &to],
            )
            .unwrap();
        let (got_count, got_sum): (i64, String) = (row.get(0), row.get(1));
        assert_eq!(got_count, count, "{store}: records up to {to}");
        assert_eq!(got_sum.parse::<f64>().ok(), sum.parse::<f64>().ok(), "{store}: amount sum up to {to}");
    }
}

/// What a DBA reads after a run, without times and run ids: must be the same on one node.
fn observed(db: &mut Client, as_of: &str) -> Vec<String> {
    let query = format!(
        "SELECT 'records ' || count(*) || ' ' || coalesce(sum(amount), 0) FROM orders_sync.records
         UNION ALL SELECT 'kpi ' || string_agg(concat_ws(' ', pipeline, store_code, stream, day, record_count, amount_sum),
                                              ', ' ORDER BY store_code, stream, day) FROM orders_sync.kpi_facts_daily
         UNION ALL SELECT 'plan ' || string_agg(p::text, ', ' ORDER BY p::text)
                   FROM orders_sync.plan_sync_windows('citus', sync_group => 'UC', window_days => 5, as_of => '{as_of}') p
         UNION ALL SELECT 'freshness ' || string_agg(concat_ws(' ', pipeline, store_code, last_success_day, state, last_status),
                                                    ', ' ORDER BY pipeline, store_code) FROM orders_sync.store_freshness
         UNION ALL SELECT 'runs ' || string_agg(overall_status || ' ' || counts::text, ', ' ORDER BY started_at)
                   FROM orders_sync.run_history
         UNION ALL SELECT 'log ' || string_agg(concat_ws(' ', store_code, from_date, to_date, status), ', '
                                               ORDER BY store_code, from_date, created_at) FROM orders_sync.orders_sync_log
         UNION ALL SELECT 'pages ' || count(*) FROM orders_sync.window_pages
         UNION ALL SELECT 'stuck ' || count(*) FROM orders_sync.stuck_candidates"
    );
    db.query(&query, &[]).unwrap().iter().map(|row| row.get::<_, Option<String>>(0).unwrap_or_default()).collect()
}

/// The EXPLAIN text of `statement`.
fn plan_of(db: &mut Client, statement: &str) -> String {
    let rows = db.query(&format!("EXPLAIN (COSTS OFF) {statement}"), &[]).unwrap_or_else(|error| {
        panic!("EXPLAIN {statement}: {}", orders_sync_pg_test::describe(&error));
    });
    rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

/// A router plan: Citus's adaptive executor with exactly one task.
fn assert_routed(db: &mut Client, statement: &str) {
    let plan = plan_of(db, statement);
    assert!(
        plan.contains("Custom Scan (Citus Adaptive)")
            && plan.contains("Task Count: 1")
            && !plan.contains("INSERT ... SELECT"),
        "not a one-shard router plan:\n{statement}\n{plan}"
    );
}

/// The write path's statements (src/write.rs, src/distributed.rs), with the constants a page
/// of store `store` would bind, each planned as a one-shard router statement.
fn assert_write_path_is_routed(db: &mut Client, store: &str) {
    let window = format!("pipeline_id = 2 AND store_code = '{store}'");
    let statements = [
        // The page: its cursor row, the stored versions of its id range, its records.
        format!(
            "INSERT INTO orders_sync.window_pages (pipeline_id, store_code, from_date, to_date, stream, page_no,
                 next_page_token, row_count, record_ids, job_id)
             VALUES (2, '{store}', '2026-01-01', '2026-01-05', 'gst', 99, NULL, 1, '{{x}}', NULL)"
        ),
        format!(
            "SELECT record_id, payload_md5 FROM orders_sync.records
             WHERE {window} AND stream = 'gst' AND record_id BETWEEN 'a' AND 'z' ORDER BY record_id LIMIT 10"
        ),
        format!(
            "INSERT INTO orders_sync.records AS r (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
             SELECT p.pipeline_id, p.store_code, p.stream, u.record_id, u.record_date, u.amount::numeric,
                    u.payload::jsonb, u.payload_md5
             FROM orders_sync.window_pages p
             CROSS JOIN LATERAL (SELECT unnest('{{x1,x2}}'::text[]) AS record_id,
                                        unnest('{{2026-01-01,2026-01-02}}'::date[]) AS record_date,
                                        unnest('{{1.5,2.5}}'::text[]) AS amount, unnest(ARRAY['{{}}', '{{}}']) AS payload,
                                        unnest('{{NULL,NULL}}'::uuid[]) AS payload_md5) AS u
             WHERE p.pipeline_id = 2 AND p.store_code = '{store}' AND p.from_date = '2026-01-01'
               AND p.to_date = '2026-01-05' AND p.stream = 'gst' AND p.page_no = 99
             ON CONFLICT (pipeline_id, store_code, stream, record_id) DO UPDATE
             SET amount = EXCLUDED.amount WHERE r.payload_md5 IS DISTINCT FROM EXCLUDED.payload_md5"
        ),
        // The window's completion: stale check, stale removal, KPI recompute, progress dropped.
        format!(
            "SELECT (SELECT count(*) FROM orders_sync.records WHERE {window} AND stream = 'gst'
                       AND record_date BETWEEN '2026-01-01' AND '2026-01-05')
                  = (SELECT count(DISTINCT seen.record_id)
                     FROM orders_sync.window_pages p CROSS JOIN LATERAL unnest(p.record_ids) AS seen(record_id)
                     WHERE p.pipeline_id = 2 AND p.store_code = '{store}' AND p.from_date = '2026-01-01'
                       AND p.to_date = '2026-01-05' AND p.stream = 'gst')"
        ),
        format!(
            "SELECT r.record_id FROM orders_sync.records r
             WHERE r.pipeline_id = 2 AND r.store_code = '{store}' AND r.stream = 'gst'
               AND r.record_date BETWEEN '2026-01-01' AND '2026-01-05'
             EXCEPT
             SELECT unnest(p.record_ids) FROM orders_sync.window_pages p
             WHERE p.pipeline_id = 2 AND p.store_code = '{store}' AND p.from_date = '2026-01-01'
               AND p.to_date = '2026-01-05' AND p.stream = 'gst'"
        ),
        format!("DELETE FROM orders_sync.records WHERE {window} AND stream = 'gst' AND record_id = ANY('{{x1}}')"),
        format!(
            "DELETE FROM orders_sync.kpi_facts_daily
             WHERE pipeline = 'uc_orders_sync' AND store_code = '{store}' AND stream = ANY('{{gst}}')
               AND day BETWEEN '2026-01-01' AND '2026-01-05'"
        ),
        format!(
            "INSERT INTO orders_sync.kpi_facts_daily (pipeline, store_code, stream, day, record_count, amount_sum)
             SELECT 'uc_orders_sync', r.store_code, r.stream, r.record_date, count(*), coalesce(sum(r.amount), 0)
             FROM orders_sync.records r
             WHERE r.pipeline_id = 2 AND r.store_code = '{store}' AND r.stream = ANY('{{gst}}')
               AND r.record_date BETWEEN '2026-01-01' AND '2026-01-05'
             GROUP BY r.store_code, r.stream, r.record_date"
        ),
        format!(
            "DELETE FROM orders_sync.window_pages
             WHERE pipeline_id = 2 AND store_code = '{store}' AND from_date = '2026-01-01' AND to_date = '2026-01-05'"
        ),
    ];
    for statement in &statements {
        assert_routed(db, statement);
    }
    // What the page write is not: INSERT ... SELECT from arrays is gathered on the coordinator.
    let unnest = plan_of(
        db,
        &format!(
            "INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload, payload_md5)
             SELECT 2, '{store}', 'gst', u.id, '2026-01-01', NULL, '{{}}', NULL FROM unnest('{{a,b}}'::text[]) AS u(id)"
        ),
    );
    eprintln!("citus: INSERT ... SELECT unnest(...) is planned as:\n{unnest}");
}

#[test]
fn distribute_without_citus_says_what_is_missing() {
    let mut db = connect();
    ensure_extension(&mut db);
    let error = db.batch_execute("SELECT * FROM orders_sync.distribute()").expect_err("distribute() without Citus");
    let error = orders_sync_pg_test::describe(&error);
    assert!(error.contains("orders_sync.distribute needs the Citus extension"), "{error}");
    assert!(error.contains("HINT: Install Citus (package postgresql-15-citus-13.2)"), "{error}");
    let error = db.batch_execute("SELECT * FROM orders_sync.distribute(shard_count => 0)").expect_err("shard_count 0");
    assert!(orders_sync_pg_test::describe(&error).contains("invalid argument shard_count"));
}

#[test]
fn estate_on_a_coordinator_and_workers_syncs_heals_and_rebalances_like_one_node() {
    let started = Instant::now();
    let sim = Simulator::start(&["--rows-per-day", "6"]);
    let coordinator = citus_node("citus-coordinator", 10);
    let workers = [citus_node("citus-worker1", 11), citus_node("citus-worker2", 12)];
    let single =
        SpareCluster::start_new("citus-single", spare_port(14), DB, &["fsync = off", "synchronous_commit = off"]);
    let mut db = coordinator.connect(DB);
    db.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", &[&i32::from(coordinator.port)]).unwrap();
    for worker in &workers {
        add_worker(&mut db, worker);
    }

    // The upgrade story: the released 0.1.1, records distributed by hand (as a DBA tried
    // before distribute() existed), then ALTER EXTENSION UPDATE, which Citus carries to the
    // workers, then distribute() finishes the job and a second call changes nothing.
    db.batch_execute(
        "CREATE EXTENSION orders_sync VERSION '0.1.1' CASCADE;
         SELECT create_distributed_table('orders_sync.records', 'store_code', shard_count => 8);
         ALTER EXTENSION orders_sync UPDATE;",
    )
    .unwrap_or_else(|error| panic!("install, distribute records, update: {}", orders_sync_pg_test::describe(&error)));
    let versions: String = scalar(
        &mut db,
        "SELECT string_agg(result, ',') FROM run_command_on_workers(
             $$SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'$$)",
    );
    assert_eq!(versions, "0.2.0,0.2.0", "the update reached every worker node");
    let actions: Vec<(String, String, i64)> = db
        .query("SELECT table_name, action, shards FROM orders_sync.distribute(shard_count => 8)", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        actions,
        [
            ("orders_sync.records".to_string(), "already distributed".to_string(), 8),
            ("orders_sync.window_pages".to_string(), "distributed".to_string(), 8),
            ("orders_sync.kpi_facts_daily".to_string(), "distributed".to_string(), 8),
        ]
    );
    let again: i64 = scalar(
        &mut db,
        "SELECT count(*) FILTER (WHERE action = 'already distributed') FROM orders_sync.distribute(shard_count => 8)",
    );
    assert_eq!(again, 3, "distribute() is idempotent");
    let colocations: i64 = scalar(
        &mut db,
        "SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE logicalrelid = ANY (orders_sync.store_keyed_tables())",
    );
    assert_eq!(colocations, 1, "the store-keyed tables are co-located");
    let local: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'orders_sync.%'
           AND logicalrelid <> ALL (orders_sync.store_keyed_tables())",
    );
    assert_eq!(local, 0, "coordination tables stay plain local tables on the coordinator");

    // Three stores on each worker node.
    let worker_ports: Vec<i32> = workers.iter().map(|worker| i32::from(worker.port)).collect();
    let mut stores: Vec<String> = Vec::new();
    for port in &worker_ports {
        let mut on_node = (1..60).map(|n| format!("CIT{n:02}")).filter(|store| node_of(&mut db, store) == *port);
        stores.extend(on_node.by_ref().take(3));
    }
    assert_eq!(stores.len(), 6);
    let stores_on = |port: i32, db: &mut Client| -> Vec<String> {
        stores.iter().filter(|store| node_of(db, store) == port).cloned().collect()
    };

    assert_write_path_is_routed(&mut db, &stores[0]);
    db.batch_execute(&format!(
        "DELETE FROM orders_sync.records WHERE store_code = '{0}'; DELETE FROM orders_sync.window_pages WHERE store_code = '{0}';
         DELETE FROM orders_sync.kpi_facts_daily WHERE store_code = '{0}'",
        stores[0]
    ))
    .unwrap();

    // The same estate on one plain node, synced alike, is what the cluster must look like.
    let mut alone = single.connect(DB);
    alone.batch_execute("CREATE EXTENSION orders_sync CASCADE").unwrap();
    estate(&mut db, &sim, &stores);
    estate(&mut alone, &sim, &stores);
    // Any statement of the job workers that Citus would run on more than one shard fails the
    // run (Citus raises it as an error for sessions started from here on).
    db.batch_execute(&format!("ALTER DATABASE {DB} SET citus.multi_task_query_log_level = 'error'")).unwrap();
    let first_as_of = "2026-01-10";
    let run = run_profiler(&mut db, first_as_of, true);
    assert_eq!(run_status(&mut db, &run), "success", "{:#?}", observed(&mut db, first_as_of));
    let run = run_profiler(&mut alone, first_as_of, true);
    assert_eq!(run_status(&mut alone, &run), "success");
    assert_records_equal_truth(&mut db, &sim, &stores, first_as_of);
    assert_eq!(observed(&mut db, first_as_of), observed(&mut alone, first_as_of), "the cluster reads as one node");
    eprintln!("citus: first sync of {} stores done after {:?}", stores.len(), started.elapsed());

    // Each store's records are on its shard's node, in that shard.
    for (worker, port) in workers.iter().zip(&worker_ports) {
        let mut node = worker.connect(DB);
        for store in stores_on(*port, &mut db) {
            let shard: i64 = db
                .query_one("SELECT get_shard_id_for_distribution_column('orders_sync.records', $1::text)", &[&store])
                .unwrap()
                .get(0);
            let on_node: i64 = scalar(
                &mut node,
                &format!("SELECT count(*) FROM orders_sync.records_{shard} WHERE store_code = '{store}'"),
            );
            let total: i64 =
                scalar(&mut db, &format!("SELECT count(*) FROM orders_sync.records WHERE store_code = '{store}'"));
            assert!(total > 0 && on_node == total, "{store}: {on_node} of {total} records on node {port}");
        }
        // The launcher idles on worker nodes: no job there, no job worker, nothing logged.
        let jobs: i64 = scalar(&mut node, "SELECT count(*) FROM orders_sync.sync_jobs");
        let job_workers: i64 =
            scalar(&mut node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'orders_sync job%'");
        assert_eq!((jobs, job_workers), (0, 0), "worker node {port} runs no orders_sync job");
        // Nor may a run be started there: it would wait for a launcher that idles.
        for call in
            ["SELECT orders_sync.run_profiler('citus')", "SELECT orders_sync.sync_window('td_orders_sync', 'S1')"]
        {
            let refused = error_of(&mut node, call);
            assert!(refused.contains("on a Citus worker node"), "{call} on node {port}: {refused}");
        }
    }

    // A worker node stops mid-run: its stores' windows fail, saying why; the other node's
    // stores complete. Pages are slow so that the run is under way when the node stops.
    let (up, down) = (stores_on(worker_ports[0], &mut db), stores_on(worker_ports[1], &mut db));
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 150}));
    let second_as_of = "2026-01-20";
    let run = run_profiler(&mut db, second_as_of, false);
    wait_until(
        &mut db,
        "the run's first windows to complete",
        &format!("SELECT count(*) >= 1 FROM orders_sync.sync_jobs WHERE run_id = '{run}' AND status = 'success'"),
        Duration::from_secs(60),
    );
    workers[1].crash();
    wait_until(
        &mut db,
        "the run to end with a worker node down",
        &format!("SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run}'"),
        Duration::from_secs(180),
    );
    let outcomes = db
        .query(
            "SELECT store_code::text, status, coalesce(error_message, '') FROM orders_sync.sync_jobs WHERE run_id = $1
             ORDER BY store_code, from_date",
            &[&run],
        )
        .unwrap();
    let mut failed_down = 0;
    for row in &outcomes {
        let (store, status, error): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        eprintln!("citus: node down: {store} {status} {error}");
        if up.contains(&store) {
            assert_eq!(status, "success", "{store} lives on the node that stayed up");
        } else if status != "success" {
            assert!(down.contains(&store));
            assert!(status == "failed" || status == "skipped", "{store}: {status}");
            if status == "failed" {
                assert!(!error.is_empty(), "{store}: a failed window says why");
                failed_down += 1;
            }
        }
    }
    assert!(failed_down >= 1, "some window of the stopped node's stores failed");
    assert_ne!(run_status(&mut db, &run), "success");
    assert_records_equal_truth(&mut db, &sim, &up, second_as_of);

    // The node returns; the next run heals everything.
    workers[1].start();
    drop(workers[1].connect(DB));
    sim.clear_faults();
    let run = run_profiler(&mut db, second_as_of, true);
    assert_eq!(run_status(&mut db, &run), "success", "{:#?}", observed(&mut db, second_as_of));
    assert_records_equal_truth(&mut db, &sim, &stores, second_as_of);

    // A third worker joins; citus_rebalance_start() moves shards to it while a run writes.
    // Shard moves run as multi-shard statements of Citus's own: strictness off again.
    db.batch_execute(&format!("ALTER DATABASE {DB} RESET citus.multi_task_query_log_level")).unwrap();
    let third = citus_node("citus-worker3", 13);
    add_worker(&mut db, &third);
    sim.control("/_control/faults", serde_json::json!({"kind": "slow", "delay_ms": 400}));
    let third_as_of = "2026-01-30";
    let run = run_profiler(&mut db, third_as_of, false);
    wait_until(
        &mut db,
        "the run's first pages",
        &format!("SELECT sum(pages_done) >= 1 FROM orders_sync.sync_jobs WHERE run_id = '{run}'"),
        Duration::from_secs(60),
    );
    // Two statements, two transactions: the rebalance job must be committed to be waited for.
    db.batch_execute("SELECT citus_rebalance_start()")
        .unwrap_or_else(|error| panic!("rebalance: {}", orders_sync_pg_test::describe(&error)));
    let running_during_rebalance: bool = scalar(
        &mut db,
        &format!("SELECT finished_at IS NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run}'"),
    );
    db.batch_execute("SELECT citus_rebalance_wait()")
        .unwrap_or_else(|error| panic!("rebalance: {}", orders_sync_pg_test::describe(&error)));
    assert!(running_during_rebalance, "the run was still writing when the shards began to move");
    let rebalance_ended: bool = scalar(&mut db, "SELECT bool_and(state = 'finished') FROM pg_dist_background_job");
    assert!(rebalance_ended, "the rebalance finished");
    wait_until(
        &mut db,
        "the run during the rebalance to end",
        &format!("SELECT finished_at IS NOT NULL FROM orders_sync.pipeline_run_summaries WHERE run_id = '{run}'"),
        Duration::from_secs(180),
    );
    assert_eq!(run_status(&mut db, &run), "success", "{:#?}", observed(&mut db, third_as_of));
    let moved: i64 =
        scalar(&mut db, &format!("SELECT count(*) FROM pg_dist_shard_placement WHERE nodeport = {}", third.port));
    assert!(moved > 0, "the rebalancer moved shards to the third worker");
    assert_records_equal_truth(&mut db, &sim, &stores, third_as_of);
    eprintln!("citus: whole scenario took {:?}", started.elapsed());
}
