//! New records through COPY's bulk path (issue 17, docs/design.md#writing): pages still
//! commit with their cursor, users' triggers and constraints on `records` still act, a
//! table COPY would treat differently from an INSERT (rewrite rules) gets the SQL INSERT,
//! and a writer outside orders_sync that stores one of a page's ids first loses nothing.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, fresh_estate, scalar, Estate, Simulator};
use serde_json::json;

const FROM: &str = "2026-01-01";
const TO: &str = "2026-01-10";

/// 50 records a page (the simulator's 20 a day: 4 pages a window), one attempt per request.
const ESTATE: Estate = Estate {
    page_size: 50,
    max_attempts: 1,
    read_timeout_ms: Some(2000),
    start_date: "2025-01-01",
    only_these_active: false,
    clear_data: true,
};

fn sync(db: &mut Client, store: &str) -> String {
    scalar(db, &format!("SELECT orders_sync.sync_window('uc_orders_sync', '{store}', '{FROM}', '{TO}')::text"))
}

/// Whether the records table holds exactly the source's records for the store's window.
fn matches_truth(db: &mut Client, sim: &Simulator, store: &str) -> bool {
    let (count, sum) = sim.truth(store, "gst", FROM, TO);
    db.query_one(
        "SELECT count(*) = $2 AND coalesce(sum(amount), 0) = $3::text::numeric AND bool_and(payload_md5 IS NOT NULL)
         FROM orders_sync.records WHERE store_code = $1 AND stream = 'gst' AND record_date BETWEEN $4::text::date AND $5::text::date",
        &[&store, &count, &sum, &FROM, &TO],
    )
    .unwrap()
    .get(0)
}

fn count_records(db: &mut Client, store: &str) -> i64 {
    db.query_one("SELECT count(*) FROM orders_sync.records WHERE store_code = $1", &[&store]).unwrap().get(0)
}

/// The users' objects these tests put on `records`, removed before and after each test.
fn drop_user_objects(db: &mut Client) {
    db.batch_execute(
        "DROP TRIGGER IF EXISTS audit_new_records ON orders_sync.records;
         DROP TRIGGER IF EXISTS count_insert_statements ON orders_sync.records;
         DROP RULE IF EXISTS audit_by_rule ON orders_sync.records;
         ALTER TABLE orders_sync.records DROP CONSTRAINT IF EXISTS amount_not_negative;
         DROP TABLE IF EXISTS public.records_audit, public.insert_statements;
         DROP FUNCTION IF EXISTS public.audit_new_record(), public.count_insert_statement();",
    )
    .unwrap();
}

#[test]
fn bulk_loaded_pages_commit_one_by_one_with_their_cursor() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("BULKP", "UC")]);
    // The fourth request is slow: meanwhile the first three pages are committed, each with
    // the cursor to the next, and another session sees exactly their records.
    sim.control(
        "/_control/faults",
        json!({"store": "BULKP", "stream": "gst", "page": 3, "kind": "slow", "delay_ms": 1500}),
    );
    let syncing = std::thread::spawn(|| sync(&mut connect(), "BULKP"));
    let mut seen = (0i64, 0i64, 0i64);
    for _ in 0..100 {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM orders_sync.window_pages WHERE store_code = 'BULKP' AND stream = 'gst'),
                        (SELECT count(next_page_token) FROM orders_sync.window_pages
                         WHERE store_code = 'BULKP' AND stream = 'gst'),
                        (SELECT count(*) FROM orders_sync.records WHERE store_code = 'BULKP')",
                &[],
            )
            .unwrap();
        seen = (row.get(0), row.get(1), row.get(2));
        if seen.0 >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(seen, (3, 3, 150), "three pages committed, each with its cursor and exactly its records");

    assert_eq!(syncing.join().unwrap(), "success");
    assert!(matches_truth(&mut db, &sim, "BULKP"));
}

#[test]
fn users_row_and_statement_triggers_and_check_constraints_act_on_bulk_loaded_records() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("BULKT", "UC"), ("BULKN", "UC")]);
    drop_user_objects(&mut db);
    // An AFTER ROW trigger that also notes whether it runs inside COPY (the bulk path), and a
    // statement trigger counting statements.
    db.batch_execute(
        "CREATE TABLE public.records_audit (record_id text, via_copy boolean);
         CREATE TABLE public.insert_statements (n int);
         CREATE FUNCTION public.audit_new_record() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.records_audit VALUES (NEW.record_id,
                 EXISTS (SELECT FROM pg_stat_progress_copy WHERE pid = pg_backend_pid() AND type = 'CALLBACK'));
             RETURN NULL;
         END $$;
         CREATE FUNCTION public.count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.insert_statements VALUES (1); RETURN NULL; END $$;
         CREATE TRIGGER audit_new_records AFTER INSERT ON orders_sync.records
             FOR EACH ROW EXECUTE FUNCTION public.audit_new_record();
         CREATE TRIGGER count_insert_statements AFTER INSERT ON orders_sync.records
             FOR EACH STATEMENT EXECUTE FUNCTION public.count_insert_statement();",
    )
    .unwrap();

    assert_eq!(sync(&mut db, "BULKT"), "success");
    assert!(matches_truth(&mut db, &sim, "BULKT"));
    let (audited, via_copy): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE via_copy) FROM public.records_audit
                 WHERE record_id LIKE 'gst-BULKT-%'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(audited, count_records(&mut db, "BULKT"), "the row trigger fired once per record");
    assert_eq!(via_copy, audited, "every record came through COPY's bulk path");
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM public.insert_statements"), 4, "one statement a page");

    // A CHECK constraint one record of page 2 breaks fails that page, names the constraint,
    // and keeps page 1 only.
    db.batch_execute(
        "ALTER TABLE orders_sync.records ADD CONSTRAINT amount_not_negative
             CHECK (record_id <> 'gst-BULKN-20260103-000015') NOT VALID",
    )
    .unwrap();
    assert_eq!(sync(&mut db, "BULKN"), "failed");
    let error: String = scalar(
        &mut db,
        "SELECT error_message FROM orders_sync.orders_sync_log WHERE store_code = 'BULKN' ORDER BY id DESC LIMIT 1",
    );
    assert!(error.contains("amount_not_negative"), "{error}");
    assert_eq!(count_records(&mut db, "BULKN"), 50, "page 1 kept, nothing of page 2");

    drop_user_objects(&mut db);
}

#[test]
fn a_rewrite_rule_on_records_sends_new_records_through_the_sql_insert() {
    // COPY ignores rules; a table with one gets the INSERT, which applies it.
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("BULKR", "UC")]);
    drop_user_objects(&mut db);
    db.batch_execute(
        "CREATE TABLE public.records_audit (record_id text, via_copy boolean);
         CREATE RULE audit_by_rule AS ON INSERT TO orders_sync.records
             DO ALSO INSERT INTO public.records_audit VALUES (NEW.record_id, false);",
    )
    .unwrap();

    assert_eq!(sync(&mut db, "BULKR"), "success");

    assert!(matches_truth(&mut db, &sim, "BULKR"));
    let audited: i64 = scalar(&mut db, "SELECT count(*) FROM public.records_audit WHERE record_id LIKE 'gst-BULKR-%'");
    assert_eq!(audited, count_records(&mut db, "BULKR"), "the rule ran for every new record");
    drop_user_objects(&mut db);
}

#[test]
fn a_concurrent_writers_row_makes_the_page_fall_back_to_the_upsert_without_loss() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("BULKC", "UC")]);
    // Another writer stores one of page 1's ids and keeps its transaction open: the page's
    // lookup does not see the row, so the id is classified new, and the load waits on it.
    let mut writer = connect();
    let mut open = writer.transaction().unwrap();
    open.batch_execute(
        "INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload)
         SELECT id, 'BULKC', 'gst', 'gst-BULKC-20260101-000003', '2026-01-01', -1, '{\"by\": \"another writer\"}'
         FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'",
    )
    .unwrap();

    let syncing = std::thread::spawn(|| sync(&mut connect(), "BULKC"));
    // Commit once the worker waits for the writer's transaction: its load then hits the key.
    let mut waited = false;
    for _ in 0..200 {
        let waiting: i64 = scalar(
            &mut db,
            "SELECT count(*) FROM pg_stat_activity
             WHERE backend_type <> 'client backend' AND wait_event_type = 'Lock' AND wait_event = 'transactionid'",
        );
        if waiting > 0 {
            waited = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    open.commit().unwrap();
    assert!(waited, "the worker never waited for the other writer's row");

    assert_eq!(syncing.join().unwrap(), "success");
    assert!(matches_truth(&mut db, &sim, "BULKC"));
    let by_other: i64 =
        scalar(&mut db, "SELECT count(*) FROM orders_sync.records WHERE store_code = 'BULKC' AND payload ? 'by'");
    assert_eq!(by_other, 0, "the other writer's row now holds the source's record");
}
