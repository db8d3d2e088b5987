//! Every `orders_sync.*` setting, registered once at `_PG_init`.
//!
//! Other modules read the typed accessors below and never touch `GucSetting`s directly, so
//! the defaults and bounds documented in the README live in exactly one place.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
static HTTP_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static HTTP_READ_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static HTTP_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(4);
static HTTP_RETRY_BASE_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(500);
static HTTP_MAX_RESPONSE_KB: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
static DEFAULT_TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));
static ALLOWED_SOURCE_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static MAX_PAGES_PER_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(100_000);
static MAX_WINDOW_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(6 * 3600);
static BULK_LOAD: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"orders_sync.bulk_load",
        c"Load a page's new records through COPY's bulk path (off: a SQL INSERT).",
        c"Read by each job worker when it starts (docs/design.md#writing).",
        &BULK_LOAD,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"orders_sync.database",
        c"Database the orders_sync background workers connect to.",
        c"The database where CREATE EXTENSION orders_sync was run; usually the same as cron.database_name.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"orders_sync.max_workers",
        c"Cluster-wide cap on concurrently running fetch workers.",
        c"A run's own max_workers is further limited by this and by max_worker_processes.",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"orders_sync.http_connect_timeout",
        c"Connect timeout for source HTTP requests, unless the pipeline sets its own.",
        c"",
        &HTTP_CONNECT_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"orders_sync.http_read_timeout",
        c"Read timeout for source HTTP requests, unless the pipeline sets its own.",
        c"",
        &HTTP_READ_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"orders_sync.http_max_attempts",
        c"Attempts per source request (1 = no retry), unless the pipeline sets its own.",
        c"Retries happen on 429, 5xx and timeouts only, with exponential backoff and jitter.",
        &HTTP_MAX_ATTEMPTS,
        1,
        20,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"orders_sync.http_retry_base_delay",
        c"First retry delay; each further retry doubles it (with jitter).",
        c"A Retry-After header from the source takes precedence.",
        &HTTP_RETRY_BASE_DELAY_MS,
        1,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"orders_sync.http_max_response_size",
        c"Largest source response body accepted; a larger one fails the window.",
        c"Bounds the memory a hostile or broken source can make a worker allocate.",
        &HTTP_MAX_RESPONSE_KB,
        64,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_string_guc(
        c"orders_sync.allowed_source_hosts",
        c"Comma-separated hosts (host, host:port or *.domain) that pipelines' base_url may name; empty allows any.",
        c"An admin can point base_url anywhere, and up to 200 characters of any answer reach error_message: restrict it here.",
        &ALLOWED_SOURCE_HOSTS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"orders_sync.max_pages_per_window",
        c"Most pages one window's stream may be fetched in, unless the pipeline sets its own.",
        c"A source whose pages never end fails the window instead of holding a worker forever.",
        &MAX_PAGES_PER_WINDOW,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"orders_sync.max_window_seconds",
        c"Longest one attempt may page through a window's stream, unless the pipeline sets its own.",
        c"A source that pages forever, however slowly, fails the window instead of holding a worker.",
        &MAX_WINDOW_SECONDS,
        1,
        604_800,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"orders_sync.default_timezone",
        c"IANA time zone given to new pipelines that do not name one.",
        c"Each pipeline's own timezone decides what 'today' is for its windows.",
        &DEFAULT_TIMEZONE,
        GucContext::Userset,
        GucFlags::default(),
    );
}

fn string_setting(setting: &GucSetting<Option<CString>>, fallback: &str) -> String {
    setting.get().and_then(|value| value.into_string().ok()).unwrap_or_else(|| fallback.to_owned())
}

pub fn database() -> String {
    string_setting(&DATABASE, "postgres")
}

/// The allow-list of source hosts; empty allows any.
pub fn allowed_source_hosts() -> Vec<String> {
    string_setting(&ALLOWED_SOURCE_HOSTS, "")
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn max_pages_per_window() -> u32 {
    MAX_PAGES_PER_WINDOW.get() as u32
}

pub fn max_window_seconds() -> u64 {
    MAX_WINDOW_SECONDS.get() as u64
}

pub fn bulk_load() -> bool {
    BULK_LOAD.get()
}

pub fn max_workers() -> u32 {
    MAX_WORKERS.get().max(1) as u32
}

pub fn http_connect_timeout_ms() -> u64 {
    HTTP_CONNECT_TIMEOUT_MS.get() as u64
}

pub fn http_read_timeout_ms() -> u64 {
    HTTP_READ_TIMEOUT_MS.get() as u64
}

pub fn http_max_attempts() -> u32 {
    HTTP_MAX_ATTEMPTS.get().max(1) as u32
}

pub fn http_retry_base_delay_ms() -> u64 {
    HTTP_RETRY_BASE_DELAY_MS.get() as u64
}

pub fn http_max_response_bytes() -> u64 {
    HTTP_MAX_RESPONSE_KB.get() as u64 * 1024
}
