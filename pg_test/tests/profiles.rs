//! Source profiles end to end (docs/design.md#source-profiles): a pipeline configured with a
//! profile for one of the simulator's API shapes syncs over real HTTP, and what it stored
//! equals the simulator's truth for that shape — ids as the profile maps them, business dates,
//! exact amounts. Profiles that cannot work are refused when written; a source that answers
//! what its profile does not describe fails the window and keeps what was synced before.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{describe, error_of, exclusive, fresh_estate, scalar, Estate, Simulator};
use serde_json::{json, Value};

const TOKEN: &str = "shape-s3cret-token-0042";
const FROM: &str = "2026-01-01";
const TO: &str = "2026-01-04";

const ESTATE: Estate = Estate {
    page_size: 40,
    max_attempts: 2,
    read_timeout_ms: Some(3000),
    start_date: "2025-06-01",
    only_these_active: false,
    clear_data: true,
};

/// A pipeline made for one test; disabled when dropped, so no later run picks it up.
struct ShapePipeline {
    code: String,
}

impl Drop for ShapePipeline {
    fn drop(&mut self) {
        let mut db = orders_sync_pg_test::connect();
        let _ = db.execute("UPDATE orders_sync.pipelines SET enabled = false WHERE code = $1", &[&self.code]);
    }
}

/// Creates (or resets) pipeline `code` of group UC with stream `orders`, pointed at `sim`.
fn shape_pipeline(db: &mut Client, sim: &Simulator, code: &str, timezone: &str, source: &Value) -> ShapePipeline {
    db.execute(
        "INSERT INTO orders_sync.pipelines (code, sync_group, streams, base_url, timezone, page_size, max_attempts, source)
         VALUES ($1, 'UC', '{orders}', $2, $3, $4, 2, $5::text::jsonb)
         ON CONFLICT (code) DO UPDATE SET base_url = EXCLUDED.base_url, timezone = EXCLUDED.timezone,
             page_size = EXCLUDED.page_size, source = EXCLUDED.source, enabled = true",
        &[&code, &sim.base_url, &timezone, &ESTATE.page_size, &source.to_string()],
    )
    .unwrap_or_else(|e| panic!("pipeline {code}: {}", describe(&e)));
    db.execute(
        "DELETE FROM orders_sync.records WHERE pipeline_id = (SELECT id FROM orders_sync.pipelines WHERE code = $1)",
        &[&code],
    )
    .unwrap();
    ShapePipeline { code: code.to_owned() }
}

fn credentials(db: &mut Client, code: &str, columns: &[(&str, &str)]) {
    db.execute("DELETE FROM orders_sync.pipeline_credentials WHERE pipeline_id = (SELECT id FROM orders_sync.pipelines WHERE code = $1)", &[&code])
        .unwrap();
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let values: Vec<String> = columns.iter().map(|(_, value)| format!("'{value}'")).collect();
    db.batch_execute(&format!(
        "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, {}) SELECT id, {} FROM orders_sync.pipelines WHERE code = '{code}'",
        names.join(", "),
        values.join(", ")
    ))
    .unwrap();
}

fn sync(db: &mut Client, pipeline: &str, store: &str) -> String {
    scalar(db, &format!("SELECT orders_sync.sync_window('{pipeline}', '{store}', '{FROM}', '{TO}')"))
}

fn last_error(db: &mut Client, pipeline: &str, store: &str) -> String {
    scalar::<Option<String>>(
        db,
        &format!(
            "SELECT error_message FROM orders_sync.orders_sync_log l JOIN orders_sync.pipelines p ON p.id = l.pipeline_id
             WHERE p.code = '{pipeline}' AND l.store_code = '{store}' ORDER BY l.id DESC LIMIT 1"
        ),
    )
    .unwrap_or_default()
}

/// What the pipeline stored for the store's window: (ids sorted, per-day counts, amount sum).
fn stored(db: &mut Client, pipeline: &str, store: &str) -> (Vec<String>, Vec<(String, i64)>, String) {
    let filter = format!(
        "FROM orders_sync.records r JOIN orders_sync.pipelines p ON p.id = r.pipeline_id
         WHERE p.code = '{pipeline}' AND r.store_code = '{store}' AND r.stream = 'orders'"
    );
    let ids = db
        .query(&format!("SELECT record_id {filter} ORDER BY record_id COLLATE \"C\""), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let days = db
        .query(&format!("SELECT record_date::text, count(*) {filter} GROUP BY 1 ORDER BY 1"), &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let sum = scalar::<String>(db, &format!("SELECT coalesce(sum(amount), 0)::text {filter}"));
    (ids, days, sum)
}

/// The simulator's truth for the shape: the same three things.
fn truth(sim: &Simulator, shape: &str, store: &str) -> (Vec<String>, Vec<(String, i64)>, String) {
    let t = sim.get(&format!("/_truth/stores/{store}/orders?from={FROM}&to={TO}&ids=true&shape={shape}"));
    let mut ids: Vec<String> =
        t["ids"].as_array().expect("truth ids").iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    ids.sort();
    let days = t["days"]
        .as_array()
        .expect("truth days")
        .iter()
        .filter(|d| d["count"].as_i64().unwrap_or(0) > 0)
        .map(|d| (d["date"].as_str().unwrap().to_owned(), d["count"].as_i64().unwrap()))
        .collect();
    let sum: String = t["amount_sum"].as_str().expect("truth amount_sum").to_owned();
    (ids, days, sum)
}

/// Syncs the window and checks it against the truth, amounts compared as numbers.
fn assert_synced_as_truth(db: &mut Client, sim: &Simulator, pipeline: &str, shape: &str, store: &str) {
    let status = sync(db, pipeline, store);
    assert_eq!(status, "success", "{pipeline}: {}", last_error(db, pipeline, store));
    let (ids, days, sum) = stored(db, pipeline, store);
    let (true_ids, true_days, true_sum) = truth(sim, shape, store);
    assert!(!true_ids.is_empty(), "the window holds records");
    assert_eq!(ids, true_ids, "{pipeline}: ids as the profile maps them");
    assert_eq!(days, true_days, "{pipeline}: business dates");
    let same_sum: bool = scalar(db, &format!("SELECT '{sum}'::numeric = '{true_sum}'::numeric"));
    assert!(same_sum, "{pipeline}: amounts {sum} vs {true_sum}");
}

/// The offset shape's profile (offset with a total, Unix milliseconds, API key in the query)
/// with `records`.
fn offset_profile(records: Value) -> Value {
    json!({
        "request": {"path": "/offset/api/{stream}",
                    "query": {"store": "{store_code}", "from_ms": "{from}", "to_ms": "{to}", "limit": "{page_size}"}},
        "dates": {"format": "unix_millis", "end": "inclusive"},
        "pagination": {"style": "offset", "offset_param": "offset", "total_path": "meta.total"},
        "records": records,
        "auth": {"type": "api_key", "in": "query", "name": "api_key"}
    })
}

/// A jsonb result, read as text and parsed.
fn json_of(db: &mut Client, query: &str) -> Value {
    serde_json::from_str(&scalar::<String>(db, query)).expect("JSON")
}

fn data_requests(sim: &Simulator, prefix: &str) -> Vec<Value> {
    let log = sim.get("/_control/requests");
    log["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .collect()
}

#[test]
fn next_url_rfc3339_nested_numeric_ids_string_amounts_and_an_api_key_header() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHNX1", "UC")]);
    let profile = json!({
        "request": {"path": "/nexturl/v2/orders",
                    "query": {"store_code": "{store_code}", "channel": "{stream}", "since": "{from}", "until": "{to}", "limit": "{page_size}"}},
        "dates": {"format": "rfc3339", "end": "exclusive"},
        "pagination": {"style": "next_url", "url_path": "links.next"},
        "records": {"path": "result.items", "id": "order.number", "date": "created_at", "date_format": "rfc3339",
                    "amount": "total", "amount_format": "string"},
        "auth": {"type": "api_key", "in": "header", "name": "X-Api-Key"}
    });
    let _p = shape_pipeline(&mut db, &sim, "shape_nexturl", "Asia/Ho_Chi_Minh", &profile);
    credentials(&mut db, "shape_nexturl", &[("api_token", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_nexturl", "nexturl", "SHNX1");
    // Several pages were followed by their URLs.
    let (ids, _, _) = truth(&sim, "nexturl", "SHNX1");
    assert_eq!(data_requests(&sim, "/nexturl").len(), ids.len().div_ceil(ESTATE.page_size as usize));
}

#[test]
fn link_header_unix_seconds_top_level_array_composite_ids_minor_units_and_basic_auth() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHLK1", "UC")]);
    let profile = json!({
        "request": {"path": "/link/stores/{store_code}/{stream}/receipts",
                    "query": {"from_ts": "{from}", "to_ts": "{to}", "per_page": "{page_size}"}},
        "dates": {"format": "unix_seconds", "end": "exclusive"},
        "pagination": {"style": "link_header"},
        "records": {"path": "", "id": ["register", "receipt_no"], "date": "business_day",
                    "amount": "amount_cents", "amount_format": "minor_units", "amount_scale": 2},
        "auth": {"type": "basic"}
    });
    let _p = shape_pipeline(&mut db, &sim, "shape_link", "UTC", &profile);
    credentials(&mut db, "shape_link", &[("username", "orders_sync"), ("password", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_link", "link", "SHLK1");
}

#[test]
fn offset_with_a_total_unix_millis_and_an_api_key_in_the_query() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHOF1", "UC")]);
    let profile = offset_profile(json!({"path": "data.orders"}));
    let _p = shape_pipeline(&mut db, &sim, "shape_offset", "UTC", &profile);
    credentials(&mut db, "shape_offset", &[("api_token", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_offset", "offset", "SHOF1");
    // Ended by the total: no request past the last record.
    let (ids, _, _) = truth(&sim, "offset", "SHOF1");
    let pages = ids.len().div_ceil(ESTATE.page_size as usize);
    assert_eq!(data_requests(&sim, "/offset").len(), pages);
    // The key never shows in what the source logged as a query, nor in the log table.
    let logged = sim.get("/_control/requests").to_string();
    assert!(!logged.contains(TOKEN), "the simulator masks it, and so must we: {logged}");
}

#[test]
fn page_numbers_from_zero_ending_on_an_empty_page_and_from_one_with_a_total() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHPG1", "UC")]);
    let zero = json!({
        "request": {"path": "/page0/{store_code}/{stream}", "query": {"date_from": "{from}", "date_to": "{to}", "size": "{page_size}"}},
        "dates": {"end": "exclusive"},
        "pagination": {"style": "page_number", "page_param": "page", "first_page": 0},
        "records": {"path": "items"}
    });
    let _p0 = shape_pipeline(&mut db, &sim, "shape_page0", "UTC", &zero);
    credentials(&mut db, "shape_page0", &[("api_token", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_page0", "page0", "SHPG1");
    let (ids, _, _) = truth(&sim, "page0", "SHPG1");
    let pages = ids.len().div_ceil(ESTATE.page_size as usize);
    assert_eq!(data_requests(&sim, "/page0").len(), pages + 1, "the empty page ends it");

    let one = json!({
        "request": {"path": "/page1/{store_code}/{stream}", "query": {"date_from": "{from}", "date_to": "{to}", "size": "{page_size}"}},
        "dates": {"end": "exclusive"},
        "pagination": {"style": "page_number", "page_param": "page", "first_page": 1, "total_pages_path": "total_pages"},
        "records": {"path": "items"}
    });
    let _p1 = shape_pipeline(&mut db, &sim, "shape_page1", "UTC", &one);
    credentials(&mut db, "shape_page1", &[("api_token", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_page1", "page1", "SHPG1");
    assert_eq!(data_requests(&sim, "/page1").len(), pages, "the total ends it");
}

#[test]
fn post_search_with_last_id_cursors_and_oauth2_client_credentials_renewed_on_401() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHLI1", "UC"), ("SHLI2", "UC")]);
    let profile = json!({
        "request": {"method": "POST", "path": "/lastid/search", "query": {},
                    "body": {"store": "{store_code}", "stream": "{stream}", "from": "{from}", "to": "{to}", "limit": "{page_size}"}},
        "pagination": {"style": "last_id", "param": "starting_after", "has_more_path": "has_more"},
        "auth": {"type": "oauth2_client_credentials", "token_url": format!("{}/oauth/token", sim.base_url), "scope": "orders.read"}
    });
    let _p = shape_pipeline(&mut db, &sim, "shape_lastid", "UTC", &profile);
    credentials(&mut db, "shape_lastid", &[("client_id", "orders_sync"), ("client_secret", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_lastid", "lastid", "SHLI1");
    let tokens_before = data_requests(&sim, "/oauth/token").len();
    assert!(tokens_before >= 1);
    // The source forgets every token: the next window gets a new one once, and succeeds.
    sim.control("/_control/revoke_tokens", json!({}));
    assert_synced_as_truth(&mut db, &sim, "shape_lastid", "lastid", "SHLI2");
    assert!(data_requests(&sim, "/oauth/token").len() > tokens_before);
    // No secret or access token in the log.
    let leaked: i64 = scalar(
        &mut db,
        &format!("SELECT count(*) FROM orders_sync.orders_sync_log WHERE error_message LIKE '%{TOKEN}%'"),
    );
    assert_eq!(leaked, 0);
}

#[test]
fn no_pagination_one_request_for_the_whole_window() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHNO1", "UC")]);
    let profile = json!({
        "request": {"path": "/none/{store_code}/{stream}", "query": {"from": "{from}", "to": "{to}"}},
        "pagination": {"style": "none"},
        "records": {"path": "orders"}
    });
    let _p = shape_pipeline(&mut db, &sim, "shape_none", "UTC", &profile);
    credentials(&mut db, "shape_none", &[("api_token", TOKEN)]);
    assert_synced_as_truth(&mut db, &sim, "shape_none", "none", "SHNO1");
    assert_eq!(data_requests(&sim, "/none").len(), 1);
}

#[test]
fn a_stream_override_sends_sales_to_its_own_endpoint() {
    let _guard = exclusive();
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHOV1", "TD")]);
    // TD's orders stay on the built-in contract; its sales come from the page0 endpoint.
    let profile = json!({
        "streams": {"sales": {
            "request": {"path": "/page0/{store_code}/{stream}", "query": {"date_from": "{from}", "date_to": "{to}", "size": "{page_size}"}},
            "dates": {"end": "exclusive"},
            "pagination": {"style": "page_number", "page_param": "page", "first_page": 0},
            "records": {"path": "items"}
        }}
    });
    db.execute(
        "UPDATE orders_sync.pipelines SET source = $1::text::jsonb WHERE code = 'td_orders_sync'",
        &[&profile.to_string()],
    )
    .unwrap();
    let status = sync(&mut db, "td_orders_sync", "SHOV1");
    db.batch_execute("UPDATE orders_sync.pipelines SET source = NULL WHERE code = 'td_orders_sync'").unwrap();
    assert_eq!(status, "success", "{}", last_error(&mut db, "td_orders_sync", "SHOV1"));
    assert!(!data_requests(&sim, "/page0/SHOV1/sales").is_empty());
    assert!(!data_requests(&sim, "/v1/stores/SHOV1/orders").is_empty());
    assert!(data_requests(&sim, "/v1/stores/SHOV1/sales").is_empty());
}

#[test]
fn profiles_that_cannot_work_are_refused_with_the_path_and_what_is_expected() {
    let mut db = orders_sync_pg_test::connect();
    orders_sync_pg_test::ensure_extension(&mut db);
    let update =
        |source: &str| format!("UPDATE orders_sync.pipelines SET source = '{source}' WHERE code = 'uc_orders_sync'");
    assert_eq!(
        error_of(&mut db, &update(r#"{"records": {"date_format": "iso"}}"#)),
        r#"invalid source profile at $.records.date_format: expected one of "date", "rfc3339", "unix_seconds", "unix_millis"; found unknown variant "iso""#
    );
    assert_eq!(
        error_of(&mut db, &update(r#"{"pagination": {"style": "offset"}}"#)),
        r#"invalid source profile at $.pagination: missing field "offset_param""#
    );
    assert_eq!(
        error_of(&mut db, &update(r#"{"request": {"path": "/v1/{shop}"}}"#)),
        "invalid source profile at $.request.path: expected placeholders among {store_code}, {stream}, {from}, {to}, {page_size}, found {shop}"
    );
    assert_eq!(
        error_of(&mut db, &update(r#"{"records": {"amount_format": "minor_units"}}"#)),
        "invalid source profile at $.records.amount_scale: expected digits after the point (0 to 18) with minor_units"
    );
    assert_eq!(
        error_of(&mut db, &update(r#"{"streams": {"refunds": {}}}"#)),
        r#"invalid source profile at $.streams.refunds: expected one of the pipeline's streams (gst), found "refunds""#
    );
    // A profile that works is taken, and NULL is the built-in contract again.
    db.batch_execute(&update(r#"{"records": {"path": "data"}}"#)).unwrap();
    db.batch_execute("UPDATE orders_sync.pipelines SET source = NULL WHERE code = 'uc_orders_sync'").unwrap();
    let default = json_of(&mut db, "SELECT orders_sync.default_source_profile()::text");
    assert_eq!(default["pagination"]["style"], "cursor");
}

#[test]
fn an_answer_the_profile_does_not_describe_fails_the_window_and_keeps_what_was_synced() {
    let _guard = exclusive();
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHBD1", "UC")]);
    let good = json!({
        "request": {"path": "/none/{store_code}/{stream}", "query": {"from": "{from}", "to": "{to}"}},
        "pagination": {"style": "none"},
        "records": {"path": "orders"}
    });
    let _p = shape_pipeline(&mut db, &sim, "shape_drift", "UTC", &good);
    assert_synced_as_truth(&mut db, &sim, "shape_drift", "none", "SHBD1");
    let before = stored(&mut db, "shape_drift", "SHBD1");
    // The source "changed": the profile now reads a date field that is not there.
    let drifted = json!({
        "request": {"path": "/none/{store_code}/{stream}", "query": {"from": "{from}", "to": "{to}"}},
        "pagination": {"style": "none"},
        "records": {"path": "orders", "date": "business.date"}
    });
    db.execute(
        "UPDATE orders_sync.pipelines SET source = $1::text::jsonb WHERE code = 'shape_drift'",
        &[&drifted.to_string()],
    )
    .unwrap();
    assert_eq!(sync(&mut db, "shape_drift", "SHBD1"), "failed");
    let error = last_error(&mut db, "shape_drift", "SHBD1");
    assert!(error.contains("business.date") && error.contains("index 0"), "{error}");
    assert_eq!(stored(&mut db, "shape_drift", "SHBD1"), before, "nothing synced before is lost");
}

#[test]
fn test_source_shows_requests_mapped_records_and_warnings_and_writes_nothing() {
    let _guard = exclusive();
    let sim = Simulator::start(&["--token", TOKEN]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("SHTS1", "UC")]);
    let profile = offset_profile(json!({"path": "data.orders"}));
    let _p = shape_pipeline(&mut db, &sim, "shape_dry", "UTC", &profile);
    credentials(&mut db, "shape_dry", &[("api_token", TOKEN)]);
    let before: i64 = scalar(&mut db, "SELECT count(*) FROM orders_sync.records");
    let report = json_of(
        &mut db,
        &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'orders', '{FROM}', '{TO}', pages => 2)::text"),
    );
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM orders_sync.records"), before, "a dry run writes nothing");
    let requests = report["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(request["status"], 200);
        assert_eq!(request["records"], ESTATE.page_size);
        let url = request["url"].as_str().unwrap();
        assert!(url.contains("api_key=***") && !url.contains(TOKEN), "{url}");
    }
    assert!(requests[1]["url"].as_str().unwrap().contains("offset=40"));
    let records = report["records"].as_array().expect("records");
    assert_eq!(records.len(), 10);
    assert!(records[0]["id"].as_str().is_some_and(|id| id.starts_with("2026010")), "{report}");
    assert!(records[0]["business_date"].as_str().is_some_and(|d| d.as_bytes()[..4] == *b"2026"));
    assert_eq!(report["more_pages"], false, "the total was reached on page 2: {report}");
    assert!(!report.to_string().contains(TOKEN));

    let first_page = json_of(
        &mut db,
        &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'orders', '{FROM}', '{TO}')::text"),
    );
    assert_eq!(first_page["requests"].as_array().map(Vec::len), Some(1));
    assert_eq!(first_page["more_pages"], true, "{first_page}");

    // Warnings: a record outside the window is reported, not written.
    let drifted = offset_profile(json!({"path": "data.orders", "date": "qty", "date_format": "unix_seconds"}));
    db.execute(
        "UPDATE orders_sync.pipelines SET source = $1::text::jsonb WHERE code = 'shape_dry'",
        &[&drifted.to_string()],
    )
    .unwrap();
    let report = json_of(
        &mut db,
        &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'orders', '{FROM}', '{TO}')::text"),
    );
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("outside the window"), "{report}");

    // Only the admin may run it: it reads credentials and calls the source.
    db.batch_execute("DROP ROLE IF EXISTS shape_watcher; CREATE ROLE shape_watcher IN ROLE orders_sync_monitor")
        .unwrap();
    db.batch_execute("SET ROLE shape_watcher").unwrap();
    let refused =
        error_of(&mut db, &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'orders', '{FROM}', '{TO}')"));
    db.batch_execute("RESET ROLE; DROP ROLE shape_watcher").unwrap();
    assert!(refused.contains("permission denied"), "{refused}");
    // Arguments are named when wrong.
    assert!(error_of(
        &mut db,
        &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'refunds', '{FROM}', '{TO}')")
    )
    .starts_with("invalid argument stream"));
    assert!(error_of(
        &mut db,
        &format!("SELECT orders_sync.test_source('shape_dry', 'SHTS1', 'orders', '{TO}', '{FROM}')")
    )
    .starts_with("invalid argument to_date"));
}
