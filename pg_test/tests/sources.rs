//! Sources end to end: `sync_window` hands a window to a background worker, which fetches it
//! from the reference simulator over real HTTP and writes it transactionally (docs/design.md#sources, #writing).

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{error_of, fresh_estate, scalar, Estate, Simulator};
use serde_json::json;

const FROM: &str = "2026-01-01";
const TO: &str = "2026-01-10";

/// 50 records a page, so windows span several pages; the stores' data starts empty.
const ESTATE: Estate = Estate {
    page_size: 50,
    max_attempts: 3,
    read_timeout_ms: Some(2000),
    start_date: "2025-01-01",
    only_these_active: false,
    clear_data: true,
};

fn sync(db: &mut Client, pipeline: &str, store: &str, flags: &str) -> String {
    let query = format!("SELECT orders_sync.sync_window('{pipeline}', '{store}', '{FROM}', '{TO}'{flags})");
    scalar(db, &query)
}

/// Whether the view holds exactly the source's records for the store and window.
fn matches_truth(db: &mut Client, sim: &Simulator, view: &str, store: &str, stream: &str) -> bool {
    let (count, sum) = sim.truth(store, stream, FROM, TO);
    let query = format!(
        "SELECT count(*) = $2 AND coalesce(sum(amount), 0) = $3::text::numeric
         FROM orders_sync.{view} WHERE store_code = $1 AND record_date BETWEEN '{FROM}' AND '{TO}'"
    );
    let row = db.query_one(&query, &[&store, &count, &sum]).unwrap();
    row.get(0)
}

fn count_rows(db: &mut Client, view: &str, store: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM orders_sync.{view} WHERE store_code = $1"), &[&store]).unwrap().get(0)
}

/// The newest log row of a store's window: status, attempt, stamps set, error.
fn last_log(db: &mut Client, store: &str) -> (String, i32, bool, bool, Option<String>) {
    let row = db
        .query_one(
            "SELECT status::text, attempt_no, orders_pulled_at IS NOT NULL, sales_pulled_at IS NOT NULL, error_message
             FROM orders_sync.orders_sync_log WHERE store_code = $1 ORDER BY id DESC LIMIT 1",
            &[&store],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[test]
fn td_window_end_to_end_equals_the_source_and_stamps_both_streams() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDE2E", "TD")]);

    assert_eq!(sync(&mut db, "td_orders_sync", "TDE2E", ""), "success");

    assert!(matches_truth(&mut db, &sim, "td_orders", "TDE2E", "orders"));
    assert!(matches_truth(&mut db, &sim, "td_sales", "TDE2E", "sales"));
    assert_eq!(count_rows(&mut db, "td_orders", "TDE2E"), 200, "20 rows a day for 10 days");
    let (status, attempt, orders_stamped, sales_stamped, error) = last_log(&mut db, "TDE2E");
    assert_eq!((status.as_str(), attempt, orders_stamped, sales_stamped, error), ("success", 1, true, true, None));
    // The log row carries the resolved pipeline id, the run and the store's cost centre.
    let logged: bool = scalar(
        &mut db,
        "SELECT l.pipeline_id = p.id AND l.cost_center = 'CC01' AND l.run_env = 'manual'
                AND r.overall_status = 'success' AND r.finished_at IS NOT NULL
         FROM orders_sync.orders_sync_log l
         JOIN orders_sync.pipelines p ON p.code = 'td_orders_sync'
         JOIN orders_sync.pipeline_run_summaries r ON r.run_id = l.run_id
         WHERE l.store_code = 'TDE2E'",
    );
    assert!(logged);
    // KPI facts for the range equal the records, day by day.
    let kpi_matches: bool = scalar(
        &mut db,
        "SELECT count(*) = 20 AND bool_and(k.record_count = r.n AND k.amount_sum = r.amount)
         FROM orders_sync.kpi_facts_daily k
         JOIN (SELECT stream, record_date, count(*) AS n, coalesce(sum(amount), 0) AS amount
               FROM orders_sync.records WHERE store_code = 'TDE2E' GROUP BY 1, 2) r
           ON r.stream = k.stream AND r.record_date = k.day
         WHERE k.store_code = 'TDE2E' AND k.pipeline = 'td_orders_sync'",
    );
    assert!(kpi_matches);
    // Progress rows are gone once the window completed.
    let pages_left: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.window_pages WHERE store_code = 'TDE2E'");
    assert_eq!(pages_left, 0);
}

#[test]
fn sales_failing_makes_the_window_partial_and_keeps_the_orders() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDPART", "TD")]);
    sim.control("/_control/faults", json!({"store": "TDPART", "stream": "sales", "kind": "status", "status": 503}));

    assert_eq!(sync(&mut db, "td_orders_sync", "TDPART", ""), "partial");

    assert!(matches_truth(&mut db, &sim, "td_orders", "TDPART", "orders"));
    let (status, _, orders_stamped, sales_stamped, error) = last_log(&mut db, "TDPART");
    assert_eq!((status.as_str(), orders_stamped, sales_stamped), ("partial", true, false));
    let error = error.expect("a partial window says why");
    assert!(error.contains("sales page 1") && error.contains("503") && error.contains("3 attempts"), "{error}");
}

#[test]
fn orders_failing_fails_the_window_without_pulling_sales() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDFAIL", "TD")]);
    sim.control("/_control/faults", json!({"store": "TDFAIL", "stream": "orders", "kind": "status", "status": 404}));

    assert_eq!(sync(&mut db, "td_orders_sync", "TDFAIL", ""), "failed");

    let (status, _, orders_stamped, sales_stamped, error) = last_log(&mut db, "TDFAIL");
    assert_eq!((status.as_str(), orders_stamped, sales_stamped), ("failed", false, false));
    let error = error.unwrap();
    assert!(error.contains("orders page 1") && error.contains("404"), "{error}");
    assert!(error.contains("1 attempt"), "a 404 is not retried: {error}");
    assert_eq!(count_rows(&mut db, "td_sales", "TDFAIL"), 0, "sales are not pulled after orders failed");
}

#[test]
fn uc_window_pulls_gst_as_order_data() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("UCOK", "UC")]);

    assert_eq!(sync(&mut db, "uc_orders_sync", "UCOK", ""), "success");

    assert!(matches_truth(&mut db, &sim, "uc_gst", "UCOK", "gst"));
    let (status, _, orders_stamped, sales_stamped, _) = last_log(&mut db, "UCOK");
    assert_eq!((status.as_str(), orders_stamped, sales_stamped), ("success", true, false));
}

#[test]
fn orders_only_and_sales_only_pull_one_stream() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDONE", "TD")]);

    assert_eq!(sync(&mut db, "td_orders_sync", "TDONE", ", orders_only => true"), "success");
    assert_eq!(count_rows(&mut db, "td_sales", "TDONE"), 0);
    assert!(matches_truth(&mut db, &sim, "td_orders", "TDONE", "orders"));
    let (_, _, orders_stamped, sales_stamped, _) = last_log(&mut db, "TDONE");
    assert_eq!((orders_stamped, sales_stamped), (true, false));

    // A sales-only window fails or succeeds by its one stream alone.
    assert_eq!(sync(&mut db, "td_orders_sync", "TDONE", ", sales_only => true"), "success");
    assert!(matches_truth(&mut db, &sim, "td_sales", "TDONE", "sales"));
    let (_, attempt, orders_stamped, sales_stamped, _) = last_log(&mut db, "TDONE");
    assert_eq!((attempt, orders_stamped, sales_stamped), (2, false, true));
}

#[test]
fn rerunning_a_window_changes_nothing() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDIDEM", "TD")]);
    assert_eq!(sync(&mut db, "td_orders_sync", "TDIDEM", ""), "success");
    let versions_before: String = scalar(
        &mut db,
        "SELECT string_agg(xmin::text || ctid::text, ',' ORDER BY record_id) FROM orders_sync.records WHERE store_code = 'TDIDEM'",
    );

    assert_eq!(sync(&mut db, "td_orders_sync", "TDIDEM", ""), "success");

    let versions_after: String = scalar(
        &mut db,
        "SELECT string_agg(xmin::text || ctid::text, ',' ORDER BY record_id) FROM orders_sync.records WHERE store_code = 'TDIDEM'",
    );
    assert_eq!(versions_before, versions_after, "an unchanged source must not rewrite a single row");
    let (_, attempt, _, _, _) = last_log(&mut db, "TDIDEM");
    assert_eq!(attempt, 2, "attempt_no counts earlier attempts at the same window");
}

#[test]
fn late_rows_appear_and_deleted_rows_disappear_after_a_rerun() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDLATE", "TD")]);
    assert_eq!(sync(&mut db, "td_orders_sync", "TDLATE", ""), "success");

    sim.control(
        "/_control/late_rows",
        json!({"store": "TDLATE", "stream": "orders", "date": "2026-01-06", "count": 3}),
    );
    sim.control(
        "/_control/delete_rows",
        json!({"store": "TDLATE", "stream": "orders", "date": "2026-01-02", "count": 5}),
    );
    sim.control(
        "/_control/change_rows",
        json!({"store": "TDLATE", "stream": "sales", "date": "2026-01-03", "count": 2}),
    );
    assert_eq!(sync(&mut db, "td_orders_sync", "TDLATE", ""), "success");

    assert!(matches_truth(&mut db, &sim, "td_orders", "TDLATE", "orders"));
    assert!(matches_truth(&mut db, &sim, "td_sales", "TDLATE", "sales"));
    assert_eq!(count_rows(&mut db, "td_orders", "TDLATE"), 200 + 3 - 5);
    let kpi: i64 = scalar(
        &mut db,
        "SELECT record_count FROM orders_sync.kpi_facts_daily
         WHERE store_code = 'TDLATE' AND stream = 'orders' AND day = '2026-01-02'",
    );
    assert_eq!(kpi, 15, "KPI facts follow the deletion");
}

/// Window records of a store, each with the transaction that wrote its current version.
fn row_versions(db: &mut Client, store: &str) -> Vec<(String, String)> {
    db.query(
        &format!(
            "SELECT record_id, xmin::text FROM orders_sync.records
             WHERE store_code = $1 AND record_date BETWEEN '{FROM}' AND '{TO}' ORDER BY record_id"
        ),
        &[&store],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

#[test]
fn a_record_stored_under_another_date_is_moved_not_a_key_violation() {
    // The window is empty, but one id the source sends is already stored (written when the
    // source dated it elsewhere): it must be updated in place, not inserted a second time.
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDMOVE", "TD")]);
    db.execute(
        "INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload)
         SELECT id, 'TDMOVE', 'orders', 'orders-TDMOVE-20260105-000003', '2025-06-01', 1, '{}'
         FROM orders_sync.pipelines WHERE code = 'td_orders_sync'",
        &[],
    )
    .unwrap();

    assert_eq!(sync(&mut db, "td_orders_sync", "TDMOVE", ""), "success");

    assert!(matches_truth(&mut db, &sim, "td_orders", "TDMOVE", "orders"));
    assert_eq!(count_rows(&mut db, "td_orders", "TDMOVE"), 200, "moved, not duplicated");
    let date: String = scalar(
        &mut db,
        "SELECT record_date::text FROM orders_sync.records WHERE record_id = 'orders-TDMOVE-20260105-000003'",
    );
    assert_eq!(date, "2026-01-05");
}

#[test]
fn pages_whose_id_range_holds_many_other_records_still_write_only_changes() {
    // 500 records stored by other means, dated outside the window, whose ids sort inside the
    // first page's id range: reading that range would fetch far more than the page, so the
    // page's ids are looked up one by one. Only the 2 changed records may be rewritten.
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDWIDE", "TD")]);
    assert_eq!(sync(&mut db, "td_orders_sync", "TDWIDE", ""), "success");
    db.execute(
        "INSERT INTO orders_sync.records (pipeline_id, store_code, stream, record_id, record_date, amount, payload)
         SELECT p.id, 'TDWIDE', 'orders', 'orders-TDWIDE-20260101-000000-' || n, '2025-06-01', n, '{}'
         FROM orders_sync.pipelines p, generate_series(1, 500) AS n WHERE p.code = 'td_orders_sync'",
        &[],
    )
    .unwrap();
    sim.control(
        "/_control/change_rows",
        json!({"store": "TDWIDE", "stream": "orders", "date": "2026-01-01", "count": 2}),
    );
    let before = row_versions(&mut db, "TDWIDE");

    assert_eq!(sync(&mut db, "td_orders_sync", "TDWIDE", ""), "success");

    assert!(matches_truth(&mut db, &sim, "td_orders", "TDWIDE", "orders"));
    assert!(matches_truth(&mut db, &sim, "td_sales", "TDWIDE", "sales"));
    let after = row_versions(&mut db, "TDWIDE");
    let rewritten: Vec<&str> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(b, _)| b.0.as_str()).collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(rewritten, ["orders-TDWIDE-20260101-000000", "orders-TDWIDE-20260101-000001"]);
    let others: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM orders_sync.records WHERE store_code = 'TDWIDE' AND record_date = '2025-06-01'",
    );
    assert_eq!(others, 500, "records outside the window are left alone");
}

#[test]
fn a_500_then_success_is_retried() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("UCRETRY", "UC")]);
    sim.control(
        "/_control/faults",
        json!({"store": "UCRETRY", "stream": "gst", "page": 1, "kind": "status", "status": 500, "times": 1}),
    );

    assert_eq!(sync(&mut db, "uc_orders_sync", "UCRETRY", ""), "success");

    assert!(matches_truth(&mut db, &sim, "uc_gst", "UCRETRY", "gst"));
    let requests = sim.get("/_control/requests");
    assert_eq!(requests["by_status"]["500"], json!(1), "{requests}");
}

#[test]
fn a_malformed_page_fails_the_window_and_keeps_earlier_data() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("UCBAD", "UC")]);
    assert_eq!(sync(&mut db, "uc_orders_sync", "UCBAD", ""), "success");
    let before = count_rows(&mut db, "uc_gst", "UCBAD");

    // The source changes, then breaks on its second page.
    sim.control("/_control/delete_rows", json!({"store": "UCBAD", "stream": "gst", "date": "2026-01-09", "count": 4}));
    sim.control("/_control/faults", json!({"store": "UCBAD", "stream": "gst", "page": 1, "kind": "malformed"}));
    assert_eq!(sync(&mut db, "uc_orders_sync", "UCBAD", ""), "failed");

    let (status, _, _, _, error) = last_log(&mut db, "UCBAD");
    assert_eq!(status, "failed");
    let error = error.unwrap();
    assert!(error.contains("gst page 2"), "{error}");
    assert_eq!(count_rows(&mut db, "uc_gst", "UCBAD"), before, "a failed window removes nothing");

    sim.control("/_control/faults", json!({"store": "UCBAD", "stream": "gst", "page": 1, "kind": "bad_record"}));
    assert_eq!(sync(&mut db, "uc_orders_sync", "UCBAD", ""), "failed");
    let (_, _, _, _, error) = last_log(&mut db, "UCBAD");
    assert!(error.unwrap().contains("gst page 2"));
    assert_eq!(count_rows(&mut db, "uc_gst", "UCBAD"), before);
}

#[test]
fn a_token_never_appears_in_error_message() {
    let sim = Simulator::start(&["--token", "right-token"]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("UCTOKEN", "UC")]);
    let secret = "tok-Secret-987654321";
    db.execute(
        "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
         SELECT id, $1 FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'
         ON CONFLICT (pipeline_id) DO UPDATE SET api_token = EXCLUDED.api_token",
        &[&secret],
    )
    .unwrap();

    let status = sync(&mut db, "uc_orders_sync", "UCTOKEN", "");

    db.batch_execute("DELETE FROM orders_sync.pipeline_credentials").unwrap();
    assert_eq!(status, "failed");
    let (_, _, _, _, error) = last_log(&mut db, "UCTOKEN");
    let error = error.unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains(secret), "token leaked: {error}");
    let leaked: i64 =
        scalar(&mut db, "SELECT count(*) FROM orders_sync.orders_sync_log WHERE error_message LIKE '%tok-Secret%'");
    assert_eq!(leaked, 0);

    // With the right token the same window syncs.
    db.batch_execute(
        "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
         SELECT id, 'right-token' FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'",
    )
    .unwrap();
    let status = sync(&mut db, "uc_orders_sync", "UCTOKEN", "");
    db.batch_execute("DELETE FROM orders_sync.pipeline_credentials").unwrap();
    assert_eq!(status, "success");
}

#[test]
fn bad_arguments_are_clear_sql_errors() {
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("TDARGS", "TD"), ("UCARGS", "UC")]);
    let cases = [
        (
            "SELECT orders_sync.sync_window('td_orders_sync', 'TDARGS', '2026-02-01', '2026-01-01')",
            "invalid argument from_date: 2026-02-01 is after to_date 2026-01-01",
        ),
        (
            "SELECT orders_sync.sync_window('xx_orders_sync', 'TDARGS')",
            "invalid argument pipeline: no pipeline with code \"xx_orders_sync\"",
        ),
        (
            "SELECT orders_sync.sync_window('td_orders_sync', 'NOPE')",
            "invalid argument store_code: no store \"NOPE\" in orders_sync.store_master",
        ),
        (
            "SELECT orders_sync.sync_window('td_orders_sync', 'UCARGS')",
            "invalid argument store_code: store \"UCARGS\" belongs to sync group UC, pipeline td_orders_sync to TD",
        ),
        (
            "SELECT orders_sync.sync_window('td_orders_sync', 'TDARGS', orders_only => true, sales_only => true)",
            "invalid argument orders_only: orders_only and sales_only cannot both be true",
        ),
        (
            "SELECT orders_sync.sync_window('td_orders_sync', 'TDARGS', run_env => 'x; DROP TABLE y')",
            "invalid argument run_env: must be 1 to 32 letters, digits, '_', '.' or '-'",
        ),
    ];
    for (statement, message) in cases {
        assert_eq!(error_of(&mut db, statement), message, "{statement}");
    }
    let runs: i64 =
        scalar(&mut db, "SELECT count(*) FROM orders_sync.orders_sync_log WHERE store_code IN ('TDARGS', 'UCARGS')");
    assert_eq!(runs, 0, "a refused call starts nothing");
}

#[test]
fn default_window_is_the_last_90_days_in_the_pipeline_timezone() {
    let sim = Simulator::start(&["--rows-per-day", "1"]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("UCDEF", "UC")]);
    let status: String = scalar(&mut db, "SELECT orders_sync.sync_window('uc_orders_sync', 'UCDEF')");
    assert_eq!(status, "success");
    let window_ok: bool = scalar(
        &mut db,
        "SELECT to_date = (now() AT TIME ZONE p.timezone)::date AND to_date - from_date = 89
         FROM orders_sync.orders_sync_log l JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
         WHERE l.store_code = 'UCDEF'",
    );
    assert!(window_ok);
}
