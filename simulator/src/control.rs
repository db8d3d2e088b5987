//! Shared state and the control API's knobs.
//!
//! Tests change the source between sync runs through `/_control/*`: generation parameters,
//! late rows, deletions, changes, fault rules, and a log of data requests. Handlers here take
//! a JSON body and return a JSON value or a message for a 400, so `http.rs` only routes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::data::{parse_date, Dataset};

/// Largest rows-per-day a test may configure (ids keep sorting within 7 digits).
const MAX_ROWS_PER_DAY: u32 = 10_000_000;
/// How many data requests `/_control/requests` remembers.
const LOG_CAPACITY: usize = 1000;
/// Default lifetime of an OAuth access token (config `token_ttl_s`).
pub const DEFAULT_TOKEN_TTL_S: u64 = 3600;
/// Largest `response_delay_ms` / `token_ttl_s` a test may configure.
const MAX_DELAY_MS: u64 = 600_000;
const MAX_TOKEN_TTL_S: u64 = 86_400 * 365;

/// Values from the command line; `reset` goes back to these.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub rows_per_day: u32,
    pub token: Option<String>,
    pub max_page_size: usize,
}

pub struct App {
    pub settings: Settings,
    data: RwLock<Dataset>,
    faults: Mutex<Faults>,
    log: Mutex<RequestLog>,
    /// When the simulator started: `at_ms` of logged requests counts from here.
    started: Instant,
    concurrency: Mutex<Concurrency>,
    /// Config `response_delay_ms`: every data response of every shape waits this long.
    response_delay_ms: AtomicU64,
    /// Config `token_ttl_s`: lifetime of OAuth access tokens issued from now on.
    token_ttl_s: AtomicU64,
    /// Issued OAuth access tokens and when they expire.
    oauth_tokens: Mutex<HashMap<String, Instant>>,
    token_counter: AtomicU64,
}

/// Data requests in flight now, and the most seen at once since the last reset.
#[derive(Default)]
struct Concurrency {
    in_flight: u64,
    max_in_flight: u64,
    /// store -> requests in flight for it (entries removed at 0, so `len` = stores in flight).
    stores: HashMap<String, u64>,
    max_stores: u64,
}

/// Counts one data request as in flight until dropped.
pub struct InFlight<'a> {
    app: &'a App,
    store: Option<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.app.concurrency);
        c.in_flight = c.in_flight.saturating_sub(1);
        if let Some(store) = &self.store {
            if let Some(k) = c.stores.get_mut(store.as_str()) {
                *k -= 1;
                if *k == 0 {
                    c.stores.remove(store.as_str());
                }
            }
        }
    }
}

/// One logged data (or token) request.
pub struct LogEntry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub status: u16,
    /// Whether a credential was sent (Authorization, X-Api-Key or `api_key`), never its value.
    pub authorization: bool,
    pub at_ms: u64,
}

// A panic while a lock is held (there should be none) must not wedge every later request, so
// poisoned locks are used as they are: the data inside is still consistent for our writes.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    pub fn new(settings: Settings) -> Self {
        App {
            data: RwLock::new(Dataset::new(settings.seed, settings.rows_per_day)),
            settings,
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(RequestLog::default()),
            started: Instant::now(),
            concurrency: Mutex::new(Concurrency::default()),
            response_delay_ms: AtomicU64::new(0),
            token_ttl_s: AtomicU64::new(DEFAULT_TOKEN_TTL_S),
            oauth_tokens: Mutex::new(HashMap::new()),
            token_counter: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the simulator started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Count a data request as in flight (for `store` when known) until the guard drops.
    pub fn enter(&self, store: Option<&str>) -> InFlight<'_> {
        let mut c = lock(&self.concurrency);
        c.in_flight += 1;
        c.max_in_flight = c.max_in_flight.max(c.in_flight);
        if let Some(s) = store {
            match c.stores.get_mut(s) {
                Some(k) => *k += 1,
                None => {
                    c.stores.insert(s.to_owned(), 1);
                }
            }
            c.max_stores = c.max_stores.max(c.stores.len() as u64);
        }
        InFlight { app: self, store: store.map(str::to_owned) }
    }

    pub fn concurrency_json(&self) -> Value {
        let c = lock(&self.concurrency);
        json!({"max_in_flight": c.max_in_flight, "max_stores_in_flight": c.max_stores,
               "in_flight": c.in_flight, "stores_in_flight": c.stores.len()})
    }

    /// The configured delay of every data response.
    pub fn response_delay(&self) -> Duration {
        Duration::from_millis(self.response_delay_ms.load(Ordering::Relaxed))
    }

    /// A new OAuth access token, valid for `token_ttl_s`; returns (token, ttl).
    pub fn issue_token(&self) -> (String, u64) {
        let ttl = self.token_ttl_s.load(Ordering::Relaxed);
        let k = self.token_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let a = crate::data::mix(nanos ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.settings.seed);
        let b = crate::data::mix(a ^ k ^ (std::process::id() as u64) << 32);
        let token = format!("sim_at_{a:016x}{b:016x}");
        let expires = Instant::now() + Duration::from_secs(ttl);
        let mut tokens = lock(&self.oauth_tokens);
        // Forget expired ones so a long test run does not grow the map forever.
        if tokens.len() > 10_000 {
            let now = Instant::now();
            tokens.retain(|_, e| *e > now);
        }
        tokens.insert(token.clone(), expires);
        (token, ttl)
    }

    /// Whether `token` was issued, has not expired and was not revoked.
    pub fn token_valid(&self, token: &str) -> bool {
        lock(&self.oauth_tokens).get(token).is_some_and(|e| *e > Instant::now())
    }

    /// `POST /_control/revoke_tokens`: every issued token stops working.
    pub fn revoke_tokens(&self) -> Value {
        let mut tokens = lock(&self.oauth_tokens);
        let revoked = tokens.len();
        tokens.clear();
        json!({"ok": true, "revoked": revoked})
    }

    pub fn data(&self) -> RwLockReadGuard<'_, Dataset> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn data_mut(&self) -> RwLockWriteGuard<'_, Dataset> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The first matching fault rule, consuming one of its `times`.
    pub fn take_fault(&self, store: &str, stream: &str, page: u64) -> Option<FaultAction> {
        lock(&self.faults).take(store, stream, page)
    }

    /// Log a data or token request. The value of an `api_key` query parameter is stored as
    /// `***`.
    pub fn log_request(&self, e: LogEntry<'_>) {
        let query = mask_api_key(e.query);
        let mut log = lock(&self.log);
        log.total += 1;
        *log.by_status.entry(e.status).or_default() += 1;
        if log.recent.len() == LOG_CAPACITY {
            log.recent.pop_front();
        }
        log.recent.push_back(LoggedRequest {
            method: e.method.to_owned(),
            path: e.path.to_owned(),
            query,
            status: e.status,
            authorization: e.authorization,
            at_ms: e.at_ms,
        });
    }

    // ---- control endpoints -------------------------------------------------------------

    pub fn reset(&self) -> Value {
        *self.data_mut() = Dataset::new(self.settings.seed, self.settings.rows_per_day);
        lock(&self.faults).rules.clear();
        *lock(&self.log) = RequestLog::default();
        self.response_delay_ms.store(0, Ordering::Relaxed);
        self.token_ttl_s.store(DEFAULT_TOKEN_TTL_S, Ordering::Relaxed);
        {
            // Maxima start again from what is in flight now.
            let mut c = lock(&self.concurrency);
            c.max_in_flight = c.in_flight;
            c.max_stores = c.stores.len() as u64;
        }
        json!({"ok": true})
    }

    pub fn config_json(&self) -> Value {
        let d = self.data();
        json!({
            "seed": d.seed,
            "rows_per_day": d.rows_per_day,
            "store_rows_per_day": d.store_rows_per_day,
            "max_page_size": self.settings.max_page_size,
            "token_required": self.settings.token.is_some(),
            "response_delay_ms": self.response_delay_ms.load(Ordering::Relaxed),
            "token_ttl_s": self.token_ttl_s.load(Ordering::Relaxed),
        })
    }

    /// Fields given replace current values; `store_rows_per_day` replaces the whole map.
    pub fn set_config(&self, body: &[u8]) -> Result<Value, String> {
        let b: ConfigBody = parse_body(body)?;
        let too_big = |v: u32| v > MAX_ROWS_PER_DAY;
        if b.rows_per_day.is_some_and(too_big)
            || b.store_rows_per_day.as_ref().is_some_and(|m| m.values().copied().any(too_big))
        {
            return Err(format!("rows per day must be <= {MAX_ROWS_PER_DAY}"));
        }
        if let Some(m) = &b.store_rows_per_day {
            if let Some(bad) = m.keys().find(|s| !valid_store(s)) {
                return Err(format!("invalid store code {bad:?}"));
            }
        }
        if b.response_delay_ms.is_some_and(|v| v > MAX_DELAY_MS) {
            return Err(format!("response_delay_ms must be <= {MAX_DELAY_MS}"));
        }
        if b.token_ttl_s.is_some_and(|v| v > MAX_TOKEN_TTL_S) {
            return Err(format!("token_ttl_s must be <= {MAX_TOKEN_TTL_S}"));
        }
        if let Some(v) = b.response_delay_ms {
            self.response_delay_ms.store(v, Ordering::Relaxed);
        }
        if let Some(v) = b.token_ttl_s {
            self.token_ttl_s.store(v, Ordering::Relaxed);
        }
        {
            let mut d = self.data_mut();
            if let Some(v) = b.rows_per_day {
                d.rows_per_day = v;
            }
            if let Some(m) = b.store_rows_per_day {
                d.store_rows_per_day = m;
            }
            if let Some(s) = b.seed {
                d.seed = s;
            }
        }
        Ok(self.config_json())
    }

    pub fn late_rows(&self, body: &[u8]) -> Result<Value, String> {
        let b: RowsBody = parse_body(body)?;
        let (day, count) = (b.day()?, b.count()?);
        let mut d = self.data_mut();
        let e = d.day_edits_mut(&b.store, &b.stream, day);
        e.late = e.late.saturating_add(count).min(MAX_ROWS_PER_DAY);
        drop(d);
        Ok(json!({"ok": true, "rows": self.present(&b, day)}))
    }

    /// By count: the first `count` rows still present that day. By ids: those ids (unknown or
    /// already deleted ids are reported back, not an error).
    pub fn delete_rows(&self, body: &[u8]) -> Result<Value, String> {
        let b: RowsBody = parse_body(body)?;
        let day = b.day()?;
        let mut d = self.data_mut();
        let (targets, not_found) = {
            let v = d.view(&b.store, &b.stream);
            let ctx = v.day(day);
            match (&b.ids, b.count) {
                (Some(ids), None) => {
                    let mut found = Vec::new();
                    let mut missing = Vec::new();
                    for id in ids {
                        match v.parse_id(&ctx, id) {
                            Some(n) if n < ctx.total && !ctx.is_deleted(n) && !found.contains(&n) => found.push(n),
                            _ => missing.push(id.clone()),
                        }
                    }
                    (found, missing)
                }
                (None, Some(count)) => {
                    let present = (0..ctx.total).filter(|&n| !ctx.is_deleted(n));
                    (present.take(count as usize).collect(), Vec::new())
                }
                _ => return Err("give exactly one of \"count\" or \"ids\"".into()),
            }
        };
        let deleted = targets.len();
        d.day_edits_mut(&b.store, &b.stream, day).deleted.extend(targets);
        drop(d);
        Ok(json!({"ok": true, "deleted": deleted, "not_found": not_found, "rows": self.present(&b, day)}))
    }

    /// The first `count` rows still present that day get their next payload version.
    pub fn change_rows(&self, body: &[u8]) -> Result<Value, String> {
        let b: RowsBody = parse_body(body)?;
        let (day, count) = (b.day()?, b.count()?);
        let mut d = self.data_mut();
        let targets: Vec<u32> = {
            let ctx = d.view(&b.store, &b.stream).day(day);
            (0..ctx.total).filter(|&n| !ctx.is_deleted(n)).take(count as usize).collect()
        };
        let e = d.day_edits_mut(&b.store, &b.stream, day);
        for n in &targets {
            let v = e.versions.entry(*n).or_default();
            *v = v.saturating_add(1);
        }
        Ok(json!({"ok": true, "changed": targets.len()}))
    }

    pub fn add_fault(&self, body: &[u8]) -> Result<Value, String> {
        let spec: FaultSpec = parse_body(body)?;
        let rule = FaultRule::from_spec(spec)?;
        let mut f = lock(&self.faults);
        f.next_id += 1;
        let id = f.next_id;
        f.rules.push(FaultRule { id, ..rule });
        Ok(json!({"id": id}))
    }

    /// Active rules with what is left of their `times` (null = forever).
    pub fn faults_json(&self) -> Value {
        let f = lock(&self.faults);
        let rules: Vec<Value> = f
            .rules
            .iter()
            .map(|r| {
                json!({"id": r.id, "store": r.store, "stream": r.stream, "page": r.page,
                       "kind": r.action.kind, "remaining": r.remaining})
            })
            .collect();
        json!({"rules": rules})
    }

    pub fn clear_faults(&self) -> Value {
        lock(&self.faults).rules.clear();
        json!({"ok": true})
    }

    pub fn requests_json(&self) -> Value {
        let log = lock(&self.log);
        let by_status: BTreeMap<String, u64> = log.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        json!({"total": log.total, "by_status": by_status, "recent": log.recent})
    }

    fn present(&self, b: &RowsBody, day: i32) -> u32 {
        self.data().view(&b.store, &b.stream).day(day).present()
    }
}

// ---- request log -----------------------------------------------------------------------

#[derive(Default)]
struct RequestLog {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    recent: VecDeque<LoggedRequest>,
}

/// Whether a credential was sent is recorded, never its value.
#[derive(Serialize)]
struct LoggedRequest {
    method: String,
    path: String,
    query: String,
    status: u16,
    authorization: bool,
    at_ms: u64,
}

/// `a=1&api_key=secret` -> `a=1&api_key=***`; the name is matched after percent-decoding, as
/// the shapes read it (`api%5Fkey=secret` is masked too).
fn mask_api_key(query: &str) -> String {
    if !query.contains("api_key") && !query.contains('%') {
        return query.to_owned();
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_api_key(k) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// Whether a raw query parameter name is `api_key` once percent-decoded.
pub fn is_api_key(raw_name: &str) -> bool {
    raw_name == "api_key" || crate::http::percent_decode(raw_name).as_deref() == Some("api_key")
}

// ---- faults ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Status,
    Timeout,
    Slow,
    Malformed,
    BadRecord,
    Huge,
    /// A hostile source: sends the client's credential back in `place`.
    EchoToken,
}

/// Where an `echo_token` fault puts the credential it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EchoPlace {
    /// A record id: the credential and 300 `x`, over the client's id limit.
    Id,
    /// A record's date.
    Date,
    /// A record's amount, unquoted: a number only when the credential is one.
    Amount,
    /// An error body (`status`), raw, percent-encoded and in part.
    Body,
    /// Response headers of a 401.
    Headers,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    store: Option<String>,
    stream: Option<String>,
    page: Option<u64>,
    kind: FaultKind,
    status: Option<u16>,
    retry_after: Option<u64>,
    delay_ms: Option<u64>,
    size_bytes: Option<u64>,
    place: Option<EchoPlace>,
    times: Option<u64>,
}

/// What a fired rule asks the data handler to do.
#[derive(Debug, Clone)]
pub struct FaultAction {
    pub kind: FaultKind,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
    pub size_bytes: u64,
    pub place: EchoPlace,
}

#[derive(Debug, Clone)]
struct FaultRule {
    id: u64,
    store: Option<String>,
    stream: Option<String>,
    page: Option<u64>,
    /// None = fires forever.
    remaining: Option<u64>,
    action: FaultAction,
}

impl FaultRule {
    fn from_spec(s: FaultSpec) -> Result<Self, String> {
        let status = s.status.unwrap_or(if s.kind == FaultKind::EchoToken { 400 } else { 500 });
        // 1xx are not final responses; hyper cannot send them as one.
        if !(200..=599).contains(&status) {
            return Err("status must be 200..=599".into());
        }
        if s.place.is_some() != (s.kind == FaultKind::EchoToken) {
            return Err("place is required for echo_token, and only for it".into());
        }
        if s.times == Some(0) {
            return Err("times must be >= 1, or null for forever".into());
        }
        let default_delay = match s.kind {
            FaultKind::Timeout => 30_000,
            _ => 1_000,
        };
        Ok(FaultRule {
            id: 0,
            store: s.store,
            stream: s.stream,
            page: s.page,
            remaining: s.times,
            action: FaultAction {
                kind: s.kind,
                status,
                retry_after: s.retry_after,
                delay: Duration::from_millis(s.delay_ms.unwrap_or(default_delay)),
                size_bytes: s.size_bytes.unwrap_or(64 << 20),
                place: s.place.unwrap_or(EchoPlace::Body),
            },
        })
    }

    fn matches(&self, store: &str, stream: &str, page: u64) -> bool {
        self.store.as_deref().is_none_or(|s| s == store)
            && self.stream.as_deref().is_none_or(|s| s == stream)
            && self.page.is_none_or(|p| p == page)
    }
}

#[derive(Default)]
struct Faults {
    next_id: u64,
    rules: Vec<FaultRule>,
}

impl Faults {
    /// Rules are tried in the order they were added; a rule that has used up its `times` is
    /// dropped so a later, more general rule can take over.
    fn take(&mut self, store: &str, stream: &str, page: u64) -> Option<FaultAction> {
        let i = self.rules.iter().position(|r| r.matches(store, stream, page))?;
        let rule = &mut self.rules[i];
        let action = rule.action.clone();
        if let Some(left) = rule.remaining.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.rules.remove(i);
            }
        }
        Some(action)
    }
}

// ---- bodies and validation ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    rows_per_day: Option<u32>,
    store_rows_per_day: Option<HashMap<String, u32>>,
    seed: Option<u64>,
    response_delay_ms: Option<u64>,
    token_ttl_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RowsBody {
    store: String,
    stream: String,
    date: String,
    count: Option<u32>,
    ids: Option<Vec<String>>,
}

impl RowsBody {
    fn day(&self) -> Result<i32, String> {
        if !valid_store(&self.store) {
            return Err(format!("invalid store code {:?}", self.store));
        }
        if !valid_stream(&self.stream) {
            return Err(format!("invalid stream {:?} (want [a-z_]{{1,32}})", self.stream));
        }
        parse_date(&self.date).ok_or_else(|| format!("invalid date {:?} (want YYYY-MM-DD)", self.date))
    }

    fn count(&self) -> Result<u32, String> {
        self.count.ok_or_else(|| "\"count\" is required".to_string())
    }
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

/// Streams are `[a-z_]{1,32}` (the real ones: orders, sales, gst).
pub fn valid_stream(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Store codes are any text of 1..=64 bytes without control characters (they are escaped in
/// JSON output, so quotes and the like are harmless).
pub fn valid_store(s: &str) -> bool {
    (1..=64).contains(&s.len()) && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        App::new(Settings { seed: 42, rows_per_day: 10, token: None, max_page_size: 100 })
    }

    fn add(app: &App, body: &str) -> u64 {
        let v = app.add_fault(body.as_bytes()).expect("rule accepted");
        v["id"].as_u64().expect("id")
    }

    #[test]
    fn faults_match_store_stream_page_and_honour_times() {
        let a = app();
        add(&a, r#"{"store":"S1","stream":"sales","page":2,"kind":"status","status":503,"retry_after":1,"times":2}"#);
        // Wrong store / stream / page: nothing.
        assert!(a.take_fault("S2", "sales", 2).is_none());
        assert!(a.take_fault("S1", "orders", 2).is_none());
        assert!(a.take_fault("S1", "sales", 1).is_none());
        // Fires exactly twice.
        let f = a.take_fault("S1", "sales", 2).expect("first");
        assert_eq!((f.kind, f.status, f.retry_after), (FaultKind::Status, 503, Some(1)));
        assert!(a.take_fault("S1", "sales", 2).is_some());
        assert!(a.take_fault("S1", "sales", 2).is_none());
        // Wildcards and forever.
        add(&a, r#"{"kind":"slow","delay_ms":5}"#);
        for p in 0..5 {
            let f = a.take_fault("ANY", "gst", p).expect("forever");
            assert_eq!((f.kind, f.delay), (FaultKind::Slow, Duration::from_millis(5)));
        }
        assert_eq!(a.faults_json()["rules"][0]["kind"], "slow");
        assert!(a.faults_json()["rules"][0]["remaining"].is_null());
        a.clear_faults();
        assert!(a.take_fault("ANY", "gst", 0).is_none());
    }

    #[test]
    fn earlier_rules_win_then_fall_through() {
        let a = app();
        let id1 = add(&a, r#"{"store":"S1","kind":"malformed","times":1}"#);
        let id2 = add(&a, r#"{"kind":"huge","size_bytes":10}"#);
        assert!(id2 > id1);
        assert_eq!(a.take_fault("S1", "orders", 0).map(|f| f.kind), Some(FaultKind::Malformed));
        let f = a.take_fault("S1", "orders", 0).expect("general rule");
        assert_eq!((f.kind, f.size_bytes), (FaultKind::Huge, 10));
    }

    #[test]
    fn bad_bodies_are_rejected() {
        let a = app();
        for body in [
            r#"{"kind":"nope"}"#,
            r#"{"kind":"status","status":42}"#,
            r#"{"kind":"status","times":0}"#,
            r#"{"kind":"status","colour":"red"}"#,
            "not json",
        ] {
            assert!(a.add_fault(body.as_bytes()).is_err(), "{body}");
        }
        assert!(a.late_rows(br#"{"store":"S1","stream":"Orders","date":"2024-01-01","count":1}"#).is_err());
        assert!(a.late_rows(br#"{"store":"S1","stream":"orders","date":"2024-1-1","count":1}"#).is_err());
        assert!(a.late_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01"}"#).is_err());
        assert!(a.delete_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01","count":1,"ids":[]}"#).is_err());
        assert!(a.set_config(br#"{"rows_per_day":20000000}"#).is_err());
    }

    #[test]
    fn edits_and_reset() {
        let a = app();
        let r = a.late_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01","count":5}"#);
        assert_eq!(r.ok().map(|v| v["rows"].clone()), Some(json!(15)));
        let r = a.delete_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01","count":3}"#).expect("delete");
        assert_eq!((r["deleted"].clone(), r["rows"].clone()), (json!(3), json!(12)));
        let r = a
            .delete_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01","ids":["orders-S1-20240101-000000","orders-S1-20240101-000003","orders-S1-20240101-000099"]}"#)
            .expect("delete by id");
        assert_eq!(r["deleted"], 1);
        assert_eq!(r["not_found"], json!(["orders-S1-20240101-000000", "orders-S1-20240101-000099"]));
        // Changes skip deleted rows: rows 4 and 5 are the first two present.
        let r = a.change_rows(br#"{"store":"S1","stream":"orders","date":"2024-01-01","count":2}"#).expect("change");
        assert_eq!(r["changed"], 2);
        {
            let d = a.data();
            let day = parse_date("2024-01-01").unwrap_or(0);
            let e = &d.edits["S1"]["orders"][&day];
            assert_eq!(e.versions.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        }
        a.set_config(br#"{"rows_per_day":3,"store_rows_per_day":{"S9":7},"seed":1}"#).expect("config");
        assert_eq!(a.config_json()["store_rows_per_day"]["S9"], 7);
        a.reset();
        let d = a.data();
        assert!(d.edits.is_empty() && d.store_rows_per_day.is_empty());
        assert_eq!((d.seed, d.rows_per_day), (42, 10));
    }

    #[test]
    fn request_log_is_bounded_and_counts() {
        let a = app();
        for i in 0..1005u32 {
            let query = format!("i={i}");
            let status = if i % 2 == 0 { 200 } else { 500 };
            let at_ms = i as u64;
            a.log_request(LogEntry {
                method: "GET",
                path: "/v1/stores/S1/orders",
                query: &query,
                status,
                authorization: true,
                at_ms,
            });
        }
        let v = a.requests_json();
        assert_eq!(v["total"], 1005);
        assert_eq!(v["by_status"]["200"], 503);
        assert_eq!(v["by_status"]["500"], 502);
        let recent = v["recent"].as_array().map(Vec::len);
        assert_eq!(recent, Some(1000));
        assert_eq!(v["recent"][999]["query"], "i=1004");
        assert_eq!(v["recent"][999]["method"], "GET");
        assert_eq!(v["recent"][999]["at_ms"], 1004);
        assert_eq!(mask_api_key("store=S&api_key=s3cret&x=1"), "store=S&api_key=***&x=1");
        assert_eq!(mask_api_key("my_api_key=1"), "my_api_key=1");
        assert_eq!(mask_api_key("api%5Fkey=s3cret&api_key"), "api%5Fkey=***&api_key");
        assert_eq!(mask_api_key("a=%20"), "a=%20");
    }

    #[test]
    fn concurrency_counts_requests_and_stores() {
        let a = app();
        {
            let _g1 = a.enter(Some("S1"));
            let _g2 = a.enter(Some("S1"));
            let _g3 = a.enter(Some("S2"));
            let _g4 = a.enter(None);
        }
        let v = a.concurrency_json();
        assert_eq!((v["max_in_flight"].clone(), v["max_stores_in_flight"].clone()), (json!(4), json!(2)));
        assert_eq!(v["in_flight"], 0);
        let _g = a.enter(Some("S3"));
        a.reset();
        let v = a.concurrency_json();
        assert_eq!((v["max_in_flight"].clone(), v["max_stores_in_flight"].clone()), (json!(1), json!(1)));
    }

    #[test]
    fn oauth_tokens_issue_expire_revoke() {
        let a = app();
        let (t1, ttl) = a.issue_token();
        let (t2, _) = a.issue_token();
        assert_eq!(ttl, DEFAULT_TOKEN_TTL_S);
        assert_ne!(t1, t2);
        assert!(a.token_valid(&t1) && a.token_valid(&t2));
        assert!(!a.token_valid("sim_at_0"));
        a.revoke_tokens();
        assert!(!a.token_valid(&t1));
        a.set_config(br#"{"token_ttl_s":0}"#).expect("config");
        let (t3, ttl) = a.issue_token();
        assert_eq!(ttl, 0);
        assert!(!a.token_valid(&t3), "a 0 s token is expired at once");
        a.set_config(br#"{"response_delay_ms":25}"#).expect("config");
        assert_eq!(a.response_delay(), Duration::from_millis(25));
        a.reset();
        assert_eq!(a.response_delay(), Duration::ZERO);
        assert_eq!(a.config_json()["token_ttl_s"], DEFAULT_TOKEN_TTL_S);
    }
}
