//! Prometheus metrics through Debian's real `prometheus-postgres-exporter` (metrics/queries.yaml):
//! the exporter is started against the test cluster on a loopback port, `/metrics` is scraped
//! over HTTP and the values are read back as a DBA's Prometheus would see them.

use orders_sync_pg_test::{dsn, exclusive, fresh_estate, scalar, Estate, Simulator};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ESTATE: Estate = Estate {
    page_size: 50,
    max_attempts: 1,
    read_timeout_ms: None,
    start_date: "2026-01-01",
    only_these_active: true,
    clear_data: true,
};
const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
const YEARLY: &str = "0 0 1 1 *";

/// The exporter as a child process on a free loopback port, stopped when dropped.
struct Exporter {
    child: std::process::Child,
    url: String,
}

impl Exporter {
    fn start() -> Exporter {
        let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/../metrics/queries.yaml");
        // A free port: bound, read and released; the exporter takes it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(EXPORTER)
            .arg(format!("--extend.query-path={queries}"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--disable-default-metrics", "--disable-settings-metrics", "--log.level=warn"])
            // lib/pq asks for TLS unless told otherwise; the test cluster listens without it.
            .env("DATA_SOURCE_NAME", format!("{} sslmode=disable", dsn()))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {EXPORTER} (scripts/setup.sh installs it): {error}"));
        let exporter = Exporter { child, url: format!("http://127.0.0.1:{port}/metrics") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(&exporter.url).is_err() {
            assert!(Instant::now() < deadline, "the exporter did not listen on {}", exporter.url);
            std::thread::sleep(Duration::from_millis(100));
        }
        exporter
    }

    /// One scrape: every sample as `name{label="value",...}` (labels sorted) -> value.
    fn scrape(&self) -> Samples {
        let body = reqwest::blocking::get(&self.url).and_then(|r| r.text()).expect("scrape /metrics");
        let mut samples = BTreeMap::new();
        for line in body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels: BTreeMap<&str, &str> = labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key, value.trim_matches('"')))
                .collect();
            samples.insert((name.to_string(), format!("{labels:?}")), value.parse::<f64>().expect("sample value"));
        }
        Samples { samples, body }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Samples {
    samples: BTreeMap<(String, String), f64>,
    body: String,
}

impl Samples {
    /// The one sample of `name` whose labels include every `labels` pair (other labels, such
    /// as the exporter's own `server`, are ignored).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.contains(&format!("{k:?}: {v:?}"))))
            .map(|(_, value)| *value)
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?} in\n{}", self.body);
        found[0]
    }
}

#[test]
fn exporter_shows_a_failed_store_in_window_counts_lag_and_states() {
    let _guard = exclusive();
    let sim = Simulator::start(&[]);
    let mut db = fresh_estate(&sim, &ESTATE, &[("MTRC1", "TD"), ("MTRC2", "TD")]);
    let exporter = Exporter::start();

    // MTRC1 synced up to today; MTRC2 up to 2026-01-02, then its next window fails.
    let today = "(now() AT TIME ZONE (SELECT timezone FROM orders_sync.pipelines WHERE code = 'td_orders_sync'))::date";
    let status: String =
        scalar(&mut db, &format!("SELECT orders_sync.sync_window('td_orders_sync', 'MTRC1', '2026-01-01', {today})"));
    assert_eq!(status, "success");
    let status: String =
        scalar(&mut db, "SELECT orders_sync.sync_window('td_orders_sync', 'MTRC2', '2026-01-01', '2026-01-02')");
    assert_eq!(status, "success");
    let before = exporter.scrape();
    let td = [("pipeline", "td_orders_sync")];
    assert_eq!(before.value("orders_sync_freshness_lag_days_worst", &td), {
        let lag: i32 = scalar(&mut db, &format!("SELECT {today} - '2026-01-02'::date"));
        f64::from(lag)
    });

    sim.control("/_control/faults", serde_json::json!({"store": "MTRC2", "kind": "status", "status": 500}));
    let status: String =
        scalar(&mut db, "SELECT orders_sync.sync_window('td_orders_sync', 'MTRC2', '2026-01-03', '2026-01-04')");
    sim.clear_faults();
    assert_eq!(status, "failed");

    // The launcher restarts a few seconds after the extension was (re)created by another test.
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar::<i64>(&mut db, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher'")
        == 0
    {
        assert!(Instant::now() < deadline, "the launcher did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }

    let after = exporter.scrape();
    let failed = [("pipeline", "td_orders_sync"), ("status", "failed")];
    assert_eq!(
        after.value("orders_sync_windows_last_day", &failed),
        before.value("orders_sync_windows_last_day", &failed) + 1.0,
        "the failed window is counted"
    );
    let failed_run = [("status", "failed")];
    assert_eq!(
        after.value("orders_sync_runs_last_day", &failed_run),
        before.value("orders_sync_runs_last_day", &failed_run) + 1.0,
        "the failed run is counted"
    );
    let lag: i32 = scalar(&mut db, &format!("SELECT {today} - '2026-01-02'::date"));
    assert!(lag > 2, "the fixture's lag must be over the alert threshold: {lag}");
    assert_eq!(after.value("orders_sync_freshness_lag_days_worst", &td), f64::from(lag));
    for (state, stores) in [("fresh", 1.0), ("failing", 1.0), ("lagging", 0.0), ("never_synced", 0.0)] {
        assert_eq!(after.value(&format!("orders_sync_freshness_stores_{state}"), &td), stores, "stores {state}");
    }
    // The lag histogram over the two stores: 0 days (MTRC1) and `lag` days (MTRC2).
    let bucket = |le: &str| after.value("orders_sync_freshness_lag_days_bucket", &[td[0], ("le", le)]);
    assert_eq!((bucket("0"), bucket("1"), bucket("+Inf")), (1.0, 1.0, 2.0));
    assert_eq!(after.value("orders_sync_freshness_lag_days_count", &td), 2.0);
    assert_eq!(after.value("orders_sync_freshness_lag_days_sum", &td), f64::from(lag));
    let synced: i64 = scalar(
        &mut db,
        "SELECT coalesce(sum(rows_written), 0)::bigint FROM orders_sync.sync_jobs j
         JOIN orders_sync.pipelines p ON p.id = j.pipeline_id
         WHERE p.code = 'td_orders_sync' AND j.created_at > now() - interval '1 day'",
    );
    assert!(synced > 0);
    assert_eq!(after.value("orders_sync_rows_synced_last_day", &td), synced as f64);
    assert_eq!(after.value("orders_sync_launcher_running", &[]), 1.0, "the launcher is up");
    assert_eq!(after.value("orders_sync_running_windows_stuck", &td), 0.0);
    assert_eq!(after.value("orders_sync_queue_queued_jobs", &td), 0.0);
    assert_eq!(after.value("orders_sync_queue_oldest_queued_seconds", &td), 0.0);
}

#[test]
fn exporter_shows_a_paused_cron_job_in_the_schedule_gauge() {
    let _guard = exclusive();
    let mut db = orders_sync_pg_test::connect();
    orders_sync_pg_test::ensure_extension(&mut db);
    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
    let name = "orders_sync_metrics_paused";
    db.query_one(
        "SELECT orders_sync.schedule_profiler(schedule => $1, env => 'it', job_name => $2)",
        &[&YEARLY, &name],
    )
    .unwrap();
    let exporter = Exporter::start();
    let state = |samples: &Samples, state: &str| {
        samples.value("orders_sync_schedule_state_info", &[("job_name", name), ("state", state)])
    };
    assert_eq!(state(&exporter.scrape(), "ok"), 1.0);

    db.execute("UPDATE cron.job SET active = false WHERE jobname = $1", &[&name]).unwrap();
    let paused = exporter.scrape();
    assert_eq!(state(&paused, "paused"), 1.0, "the paused job is shown as paused");
    assert!(!paused.body.contains(&format!("job_name=\"{name}\",state=\"ok\"")), "and no longer as ok");

    let _: i32 = scalar(&mut db, "SELECT orders_sync.unschedule_all()");
}
