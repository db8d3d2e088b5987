//! Harness for the integration tests: a real PostgreSQL 15 cluster with pg_cron and
//! orders_sync preloaded, started by `scripts/test.sh` (see `scripts/pg_cluster.sh`).
//!
//! The cluster is described by environment variables; a test run without them fails loudly
//! rather than skipping, so a green run always means the tests really ran.

use postgres::{Client, NoTls};
use std::sync::{Mutex, MutexGuard};

pub use postgres;

/// Connection string of the test cluster's database.
pub fn dsn() -> String {
    std::env::var("ORDERS_SYNC_TEST_DSN").unwrap_or_else(|_| {
        panic!("ORDERS_SYNC_TEST_DSN is not set: run the integration tests through scripts/test.sh")
    })
}

/// A new autocommit session on the test database.
pub fn connect() -> Client {
    Client::connect(&dsn(), NoTls).unwrap_or_else(|error| panic!("cannot connect to {}: {error}", dsn()))
}

/// Tests in one binary that change cluster-wide state (the extension itself, roles) take
/// this lock so that they never see each other's half-done work.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes sure the extension is installed, as a DBA would: `CREATE EXTENSION ... CASCADE`.
pub fn ensure_extension(client: &mut Client) {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS orders_sync CASCADE")
        .expect("CREATE EXTENSION orders_sync CASCADE failed");
}

/// The server's programs directory (`pg_ctl`, `initdb`), named once in scripts/pg_env.sh.
pub fn pg_bin() -> String {
    std::env::var("ORDERS_SYNC_PG_BIN")
        .unwrap_or_else(|_| panic!("ORDERS_SYNC_PG_BIN is not set: run the integration tests through scripts/test.sh"))
}

/// How a test file wants the built-in pipelines and its stores before a test.
pub struct Estate {
    /// Records a page: small pages make a window span several.
    pub page_size: i32,
    pub max_attempts: i32,
    /// `None` keeps the pipelines' read timeout.
    pub read_timeout_ms: Option<i32>,
    /// Start date of every store registered.
    pub start_date: &'static str,
    /// Deactivates every other store, so that an 'ALL' run sees only these (other test
    /// files' stores would otherwise join it).
    pub only_these_active: bool,
    /// Deletes the stores' records and KPI facts before registering them.
    pub clear_data: bool,
}

/// A session on an estate made for one test: the extension installed, both built-in
/// pipelines pointed at `sim` with `estate`'s paging and retries, and `stores` (code, sync
/// group) registered active, in cost centre CC01, from `estate.start_date`.
pub fn fresh_estate<S: AsRef<str>>(sim: &Simulator, estate: &Estate, stores: &[(S, &str)]) -> Client {
    let mut db = connect();
    ensure_extension(&mut db);
    db.execute(
        "UPDATE orders_sync.pipelines SET base_url = $1, page_size = $2, max_attempts = $3,
             read_timeout_ms = coalesce($4, read_timeout_ms)",
        &[&sim.base_url, &estate.page_size, &estate.max_attempts, &estate.read_timeout_ms],
    )
    .unwrap();
    if estate.only_these_active {
        db.batch_execute("UPDATE orders_sync.store_master SET is_active = false").unwrap();
    }
    for (store, group) in stores {
        let store = store.as_ref();
        if estate.clear_data {
            db.execute("DELETE FROM orders_sync.records WHERE store_code = $1", &[&store]).unwrap();
            db.execute("DELETE FROM orders_sync.kpi_facts_daily WHERE store_code = $1", &[&store]).unwrap();
        }
        db.execute(
            "INSERT INTO orders_sync.store_master (store_code, cost_center, sync_group, start_date, is_active)
             VALUES ($1, 'CC01', $2, $3::text::date, true)
             ON CONFLICT (store_code) DO UPDATE SET sync_group = EXCLUDED.sync_group,
                 start_date = EXCLUDED.start_date, is_active = true",
            &[&store, group, &estate.start_date],
        )
        .unwrap();
    }
    db
}

/// The first column of the first row of `query`.
pub fn scalar<T>(client: &mut Client, query: &str) -> T
where
    T: for<'a> postgres::types::FromSql<'a>,
{
    client.query_one(query, &[]).unwrap_or_else(|error| panic!("{query}: {}", describe(&error))).get(0)
}

/// An error as a DBA would read it in psql: message, detail, hint.
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {}{}{}",
            db.severity(),
            db.message(),
            db.detail().map(|d| format!(" DETAIL: {d}")).unwrap_or_default(),
            db.hint().map(|h| format!(" HINT: {h}")).unwrap_or_default()
        ),
        None => error.to_string(),
    }
}

/// The message of the error `statement` fails with; panics if it succeeds.
pub fn error_of(client: &mut Client, statement: &str) -> String {
    match client.batch_execute(statement) {
        Ok(()) => panic!("expected an error from: {statement}"),
        Err(error) => error.as_db_error().map(|db| db.message().to_string()).unwrap_or_else(|| error.to_string()),
    }
}

/// The reference source simulator, started as a child process on an ephemeral loopback port
/// and stopped when dropped.
pub struct Simulator {
    child: std::process::Child,
    pub base_url: String,
    http: reqwest::blocking::Client,
}

impl Simulator {
    /// Starts `$ORDERS_SYNC_SIMULATOR` (built by scripts/test.sh) with extra arguments.
    pub fn start(args: &[&str]) -> Simulator {
        use std::io::BufRead;
        let binary = std::env::var("ORDERS_SYNC_SIMULATOR").unwrap_or_else(|_| {
            panic!("ORDERS_SYNC_SIMULATOR is not set: run the integration tests through scripts/test.sh")
        });
        let mut child = std::process::Command::new(&binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start simulator {binary}: {error}"));
        let stdout = child.stdout.take().expect("simulator stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("simulator banner");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected simulator banner {line:?}"))
            .to_string();
        Simulator { child, base_url: format!("http://{address}"), http: reqwest::blocking::Client::new() }
    }

    /// POSTs a control request (`/_control/...`) and returns the JSON answer.
    pub fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .json(&body)
            .send()
            .unwrap_or_else(|error| panic!("simulator {path}: {error}"));
        assert!(response.status().is_success(), "simulator {path}: {}", response.status());
        response.json().unwrap_or(serde_json::Value::Null)
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        let response = self
            .http
            .delete(format!("{}/_control/faults", self.base_url))
            .send()
            .unwrap_or_else(|error| panic!("simulator DELETE /_control/faults: {error}"));
        assert!(response.status().is_success(), "simulator DELETE /_control/faults: {}", response.status());
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .and_then(|response| response.json())
            .unwrap_or_else(|error| panic!("simulator {path}: {error}"))
    }

    /// What the source holds now for a store, stream and window: (count, exact amount sum).
    pub fn truth(&self, store: &str, stream: &str, from: &str, to: &str) -> (i64, String) {
        let truth = self.get(&format!("/_truth/stores/{store}/{stream}?from={from}&to={to}"));
        (
            truth["count"].as_i64().expect("truth count"),
            truth["amount_sum"].as_str().expect("truth amount_sum").to_string(),
        )
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the tests may use for a cluster of their own: `ORDERS_SYNC_SPARE_PORT` (set by
/// scripts/test.sh to the next ports after the test cluster's) plus `offset`.
pub fn spare_port(offset: u16) -> u16 {
    let base: u16 =
        std::env::var("ORDERS_SYNC_SPARE_PORT").ok().and_then(|port| port.parse().ok()).unwrap_or_else(|| {
            panic!("ORDERS_SYNC_SPARE_PORT is not set: run the integration tests through scripts/test.sh")
        });
    base + offset
}

/// Runs a server program (`pg_ctl`, `pg_basebackup`, `pg_dump`...) as the postgres OS user;
/// panics with its output when it fails.
pub fn run_as_postgres(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("sudo")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/{program}", pg_bin()))
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A private cluster a test starts besides the shared test cluster (a replica, a restore
/// target), in a directory of its own next to the test cluster's. Stopped and removed when
/// dropped, also when the test fails.
pub struct SpareCluster {
    pub dir: String,
    pub port: u16,
}

impl SpareCluster {
    /// The directory `name` beside the test cluster's, emptied; nothing is started.
    pub fn prepare(name: &str, port: u16) -> SpareCluster {
        let test_dir = std::env::var("ORDERS_SYNC_TEST_DIR").unwrap_or_else(|_| {
            panic!("ORDERS_SYNC_TEST_DIR is not set: run the integration tests through scripts/test.sh")
        });
        let cluster = SpareCluster { dir: format!("{test_dir}-{name}"), port };
        cluster.stop();
        let _ = std::fs::remove_dir_all(&cluster.dir);
        std::fs::create_dir_all(&cluster.dir).expect("spare cluster dir");
        let owned = std::process::Command::new("chown").args(["postgres:", &cluster.dir]).status();
        assert!(owned.map(|status| status.success()).unwrap_or(false), "chown {}", cluster.dir);
        cluster
    }

    /// A new cluster like the test cluster (scripts/pg_cluster.sh: pg_cron and orders_sync
    /// preloaded, database `database`), started; `settings` are extra postgresql.conf lines.
    pub fn start_new(name: &str, port: u16, database: &str, settings: &[&str]) -> SpareCluster {
        let cluster = SpareCluster::prepare(name, port);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg_cluster.sh");
        let output = std::process::Command::new("bash")
            .arg(script)
            .args(["start", &cluster.dir, &port.to_string(), database])
            .args(settings)
            .output()
            .expect("pg_cluster.sh");
        assert!(output.status.success(), "pg_cluster.sh start: {}", String::from_utf8_lossy(&output.stderr));
        cluster
    }

    pub fn data(&self) -> String {
        format!("{}/data", self.dir)
    }

    pub fn log(&self) -> String {
        format!("{}/server.log", self.dir)
    }

    pub fn dsn(&self, database: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={database}", self.port)
    }

    /// A session, waiting up to a minute for the server to accept connections.
    pub fn connect(&self, database: &str) -> Client {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match Client::connect(&self.dsn(database), NoTls) {
                Ok(client) => return client,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(error) => panic!("cannot connect to {}: {error}", self.dsn(database)),
            }
        }
    }

    /// `pg_ctl start` of the data directory as it is, on this cluster's port and socket dir.
    pub fn start(&self) {
        let options = format!("-p {} -c unix_socket_directories={}", self.port, self.dir);
        run_as_postgres("pg_ctl", &["-D", &self.data(), "-l", &self.log(), "-o", &options, "-w", "-t", "120", "start"]);
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash or a power cut.
    pub fn crash(&self) {
        run_as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    pub fn stop(&self) {
        if std::path::Path::new(&format!("{}/postmaster.pid", self.data())).exists() {
            let _ = std::process::Command::new("sudo")
                .args(["-u", "postgres", "--"])
                .arg(format!("{}/pg_ctl", pg_bin()))
                .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

impl Drop for SpareCluster {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
