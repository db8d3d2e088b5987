//! Hostile sources and callers (docs/design.md#bounds, README "Security"): sources whose pages
//! never end, sources that echo the credential back, and edge-case arguments to every public
//! function. The misbehaving sources are real HTTP servers on loopback.

use orders_sync_pg_test::postgres::Client;
use orders_sync_pg_test::{connect, ensure_extension, exclusive, scalar, Simulator};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

/// How the misbehaving source hands out page tokens.
#[derive(Clone, Copy)]
enum Paging {
    /// A → B → A → …: the tokens come round again.
    Cycle,
    /// A new token on every page, forever.
    Endless,
    /// A new token on every page, forever, each page 300 ms late.
    SlowEndless,
}

/// Starts a source on 127.0.0.1 that answers every page with one valid record and a next
/// page token by `paging`; returns its base URL. The server lives until the test ends.
fn misbehaving_source(paging: Paging) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers.
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header == "\r\n" || header.is_empty() {
                    break;
                }
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let query = |name: &str| {
                target.split_once('?').and_then(|(_, query)| {
                    query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_string))
                })
            };
            let token = query("page_token");
            let from = query("from").unwrap_or_else(|| "2026-01-01".into());
            let page: u64 = match &token {
                None => 0,
                Some(t) => t.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0),
            };
            let next = match paging {
                Paging::Cycle => if page.is_multiple_of(2) { "A1" } else { "B2" }.to_string(),
                Paging::Endless | Paging::SlowEndless => format!("t{}", page + 1),
            };
            if let Paging::SlowEndless = paging {
                std::thread::sleep(Duration::from_millis(300));
            }
            // Store HGOOD is served as a well-behaved source: its one page is the last.
            let next = if target.contains("/stores/HGOOD/") { "null".to_string() } else { format!("\"{next}\"") };
            let body = format!(
                r#"{{"data":[{{"id":"r{page}-{}","date":"{from}","amount":1.00}}],"next_page_token":{next}}}"#,
                token.as_deref().unwrap_or("first")
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{address}")
}

/// A fresh UC pipeline pointing at `base_url`, and `store` registered in its sync group.
fn pipeline_for(db: &mut Client, base_url: &str, store: &str) {
    ensure_extension(db);
    db.execute(
        "UPDATE orders_sync.pipelines SET base_url = $1, page_size = 10, max_attempts = 1,
                max_pages_per_window = NULL, max_window_seconds = NULL
         WHERE code = 'uc_orders_sync'",
        &[&base_url],
    )
    .unwrap();
    db.execute(
        "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date)
         VALUES ($1, 'CC01', 'UC', '2026-01-01') ON CONFLICT (store_code) DO NOTHING",
        &[&store],
    )
    .unwrap();
}

/// The test's lock, a session and the UC pipeline pointed at `base_url` with `store` registered.
fn hostile_setup(base_url: &str, store: &str) -> (std::sync::MutexGuard<'static, ()>, Client) {
    let guard = exclusive();
    let mut db = connect();
    pipeline_for(&mut db, base_url, store);
    (guard, db)
}

/// `sync_window` of one day of `store`; returns its status.
fn sync_one_day(db: &mut Client, store: &str) -> String {
    scalar(db, &format!("SELECT orders_sync.sync_window('uc_orders_sync', '{store}', '2026-01-01', '2026-01-01')"))
}

/// The window's last job: (status, error_message, records stored). The source puts one
/// record on each page, so the records count the pages committed.
fn window_outcome(db: &mut Client, store: &str) -> (String, String, i64) {
    let row = db
        .query_one(
            "SELECT j.status, coalesce(j.error_message, ''),
                    (SELECT count(*) FROM orders_sync.records r WHERE r.store_code = $1)
             FROM orders_sync.sync_jobs j WHERE j.store_code = $1 ORDER BY j.id DESC LIMIT 1",
            &[&store],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn assert_store_free(db: &mut Client, store: &str) {
    let held: bool = scalar(db, &format!("SELECT orders_sync.store_lock_held('{store}')"));
    assert!(!held, "the store's lock is released when its window fails");
    let running: i64 = scalar(
        db,
        &format!("SELECT count(*) FROM orders_sync.sync_jobs WHERE store_code = '{store}' AND status = 'running'"),
    );
    assert_eq!(running, 0, "no job of the store stays running");
}

#[test]
fn pagination_that_cycles_fails_the_window_and_keeps_its_pages() {
    let (_guard, mut db) = hostile_setup(&misbehaving_source(Paging::Cycle), "HCYCLE");
    let status = sync_one_day(&mut db, "HCYCLE");
    assert_eq!(status, "failed");
    let (job_status, message, pages) = window_outcome(&mut db, "HCYCLE");
    assert_eq!(job_status, "failed");
    assert!(message.contains("the source's pages run in a cycle"), "{message}");
    // Pages 1 (→ A1), 2 (→ B2) and 3 (→ A1 again, the cycle) are written; page 4 is never asked for.
    assert_eq!(pages, 3, "the pages up to the cycle stay committed");
    assert_store_free(&mut db, "HCYCLE");
}

#[test]
fn pagination_that_never_ends_stops_at_the_pipelines_page_limit() {
    let (_guard, mut db) = hostile_setup(&misbehaving_source(Paging::Endless), "HENDLESS");
    db.batch_execute("UPDATE orders_sync.pipelines SET max_pages_per_window = 5 WHERE code = 'uc_orders_sync'")
        .unwrap();
    let status = sync_one_day(&mut db, "HENDLESS");
    assert_eq!(status, "failed");
    let (_, message, pages) = window_outcome(&mut db, "HENDLESS");
    assert!(message.contains("the limit of 5 pages per window was reached"), "{message}");
    assert!(message.contains("max_pages_per_window"), "the message names the setting: {message}");
    assert_eq!(pages, 5, "the five pages allowed are committed");
    assert_store_free(&mut db, "HENDLESS");
    db.batch_execute("UPDATE orders_sync.pipelines SET max_pages_per_window = NULL WHERE code = 'uc_orders_sync'")
        .unwrap();
}

#[test]
fn pagination_that_never_ends_slowly_stops_at_the_time_limit() {
    let source = misbehaving_source(Paging::SlowEndless);
    let (_guard, mut db) = hostile_setup(&source, "HSLOW");
    pipeline_for(&mut db, &source, "HGOOD");
    db.batch_execute("UPDATE orders_sync.pipelines SET max_window_seconds = 1 WHERE code = 'uc_orders_sync'").unwrap();
    // Another store syncs while this one pages forever: it is not held up.
    let other_store = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(200));
        sync_one_day(&mut connect(), "HGOOD")
    });
    let status = sync_one_day(&mut db, "HSLOW");
    assert_eq!(other_store.join().expect("other store's session"), "success", "other stores are unaffected");
    assert_eq!(status, "failed");
    let (_, message, pages) = window_outcome(&mut db, "HSLOW");
    assert!(message.contains("the limit of 1 s of paging per window was reached"), "{message}");
    assert!(pages >= 1, "pages fetched before the limit stay committed");
    assert_store_free(&mut db, "HSLOW");
    db.batch_execute("UPDATE orders_sync.pipelines SET max_window_seconds = NULL WHERE code = 'uc_orders_sync'")
        .unwrap();
}

/// `ALTER SYSTEM` for the allow-list, then a reload the workers see before the next window.
fn set_allowed_hosts(db: &mut Client, hosts: Option<&str>) {
    match hosts {
        Some(hosts) => db.batch_execute(&format!("ALTER SYSTEM SET orders_sync.allowed_source_hosts = '{hosts}'")),
        None => db.batch_execute("ALTER SYSTEM RESET orders_sync.allowed_source_hosts"),
    }
    .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn a_source_off_the_host_allow_list_fails_the_window_without_a_request() {
    let sim = Simulator::start(&[]);
    let (_guard, mut db) = hostile_setup(&sim.base_url, "HALLOW");
    set_allowed_hosts(&mut db, Some("api.example.com"));
    let status = sync_one_day(&mut db, "HALLOW");
    set_allowed_hosts(&mut db, None);
    assert_eq!(status, "failed");
    let (_, message, pages) = window_outcome(&mut db, "HALLOW");
    assert!(message.contains("is not in orders_sync.allowed_source_hosts"), "{message}");
    assert_eq!(pages, 0);
    let requests = sim.get("/_control/requests");
    assert_eq!(requests["total"].as_i64(), Some(0), "no request reached the source: {requests}");
    // Allowed again, the same window syncs.
    let status = sync_one_day(&mut db, "HALLOW");
    assert_eq!(status, "success");
}

#[test]
fn a_source_echoing_the_credential_never_gets_it_into_a_message_a_log_or_a_view() {
    let sim = Simulator::start(&[]);
    let (_guard, mut db) = hostile_setup(&sim.base_url, "HECHO");
    let tokens = [
        "sk_live_51HdE7nKq8ZxLmNpRsTuVwXyZ0123456789abcdefghijkl".to_string(),
        "short-8c".to_string(),
        format!("{}/+=%\"x", "Z".repeat(300)),
    ];
    for token in &tokens {
        db.execute(
            "INSERT INTO orders_sync.pipeline_credentials (pipeline_id, api_token)
             SELECT id, $1 FROM orders_sync.pipelines WHERE code = 'uc_orders_sync'
             ON CONFLICT (pipeline_id) DO UPDATE SET api_token = EXCLUDED.api_token",
            &[token],
        )
        .unwrap();
        for place in ["id", "date", "amount", "body", "headers"] {
            sim.clear_faults();
            sim.control("/_control/faults", serde_json::json!({"kind": "echo_token", "place": place}));
            let status: String = scalar(
                &mut db,
                "SELECT orders_sync.sync_window('uc_orders_sync', 'HECHO', '2026-01-01', '2026-01-01')",
            );
            assert_eq!(status, "failed", "place {place}");
            let texts: Vec<String> = db
                .query(
                    "SELECT coalesce(error_message, '') FROM orders_sync.sync_jobs WHERE store_code = 'HECHO'
                     UNION ALL SELECT coalesce(error_message, '') FROM orders_sync.orders_sync_log WHERE store_code = 'HECHO'
                     UNION ALL SELECT coalesce(summary_text, '') || coalesce(counts::text, '') FROM orders_sync.pipeline_run_summaries
                     UNION ALL SELECT row_to_json(s)::text FROM orders_sync.stuck_candidates s",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            for text in &texts {
                for start in 0..token.len().saturating_sub(7) {
                    let fragment = &token[start..start + 8];
                    assert!(!text.contains(fragment), "place {place}: fragment {fragment:?} leaked into {text:?}");
                }
            }
        }
    }
    sim.clear_faults();
    db.batch_execute(
        "DELETE FROM orders_sync.pipeline_credentials WHERE pipeline_id = (SELECT id FROM orders_sync.pipelines WHERE code = 'uc_orders_sync')",
    )
    .unwrap();
}

/// SQLSTATE, message and hint of the error `statement` fails with.
fn argument_error(db: &mut Client, statement: &str) -> (String, String, Option<String>) {
    match db.batch_execute(statement) {
        Ok(()) => panic!("expected an error from: {statement}"),
        Err(error) => {
            let db_error = error.as_db_error().unwrap_or_else(|| panic!("{statement}: {error}"));
            (db_error.code().code().to_string(), db_error.message().to_string(), db_error.hint().map(str::to_string))
        }
    }
}

#[test]
fn edge_case_arguments_are_argument_errors_that_leave_nothing_behind() {
    // No request is ever sent: every call is refused before a worker starts.
    let (_guard, mut db) = hostile_setup("http://127.0.0.1:9", "HARG1");
    let rows_before: i64 = scalar(
        &mut db,
        "SELECT (SELECT count(*) FROM orders_sync.pipeline_run_summaries) + (SELECT count(*) FROM orders_sync.sync_jobs)
              + (SELECT count(*) FROM orders_sync.orders_sync_log)",
    );
    let cases = [
        ("SELECT orders_sync.sync_window(NULL, 'HARG1')", "pipeline"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', NULL)", "store_code"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', from_date => 'infinity')", "from_date"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', from_date => '-infinity')", "from_date"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', to_date => 'infinity')", "to_date"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', from_date => '1899-12-31')", "from_date"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', to_date => '10000-01-05')", "to_date"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', orders_only => NULL)", "orders_only"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', sales_only => NULL)", "sales_only"),
        ("SELECT orders_sync.sync_window('uc_orders_sync', 'HARG1', run_env => NULL)", "run_env"),
        ("SELECT orders_sync.run_profiler(NULL)", "env"),
        ("SELECT orders_sync.run_profiler('itarg', sync_group => NULL)", "sync_group"),
        ("SELECT orders_sync.run_profiler('itarg', window_days => NULL)", "window_days"),
        ("SELECT orders_sync.run_profiler('itarg', overlap_days => NULL)", "overlap_days"),
        ("SELECT orders_sync.run_profiler('itarg', max_workers => NULL)", "max_workers"),
        ("SELECT orders_sync.run_profiler('itarg', force => NULL)", "force"),
        ("SELECT orders_sync.run_profiler('itarg', as_of => 'infinity')", "as_of"),
        ("SELECT orders_sync.run_profiler('itarg', as_of => '-infinity')", "as_of"),
        ("SELECT orders_sync.run_profiler('itarg', as_of => '10000-01-05')", "as_of"),
        ("SELECT orders_sync.run_profiler('itarg', as_of => '1800-01-01')", "as_of"),
        ("SELECT * FROM orders_sync.plan_sync_windows('itarg', as_of => '10000-01-05')", "as_of"),
        ("SELECT * FROM orders_sync.plan_sync_windows('itarg', as_of => 'infinity')", "as_of"),
        ("SELECT * FROM orders_sync.plan_sync_windows(NULL)", "env"),
        ("SELECT * FROM orders_sync.reset_stuck_runs(NULL)", "older_than"),
        ("SELECT * FROM orders_sync.prune_history(NULL)", "keep"),
    ];
    for (statement, argument) in cases {
        let (sqlstate, message, hint) = argument_error(&mut db, statement);
        assert!(sqlstate.starts_with("22"), "{statement}: SQLSTATE {sqlstate} ({message}) is not class 22");
        assert!(message.contains(&format!("argument {argument}")), "{statement}: {message} does not name {argument}");
        assert!(hint.as_deref().is_some_and(|h| !h.is_empty()), "{statement}: {message} has no hint");
    }
    let rows_after: i64 = scalar(
        &mut db,
        "SELECT (SELECT count(*) FROM orders_sync.pipeline_run_summaries) + (SELECT count(*) FROM orders_sync.sync_jobs)
              + (SELECT count(*) FROM orders_sync.orders_sync_log)",
    );
    assert_eq!(rows_before, rows_after, "no run, job or log row is left behind by a refused call");
}
