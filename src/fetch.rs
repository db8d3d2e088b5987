//! The fetch stage: one page of one stream of one store, from a source over HTTP, asked for and
//! read as the pipeline's source profile says (docs/design.md#sources, [`profile`]). Without a
//! profile, the built-in contract:
//!
//! ```text
//! GET {base_url}/v1/stores/{store_code}/{stream}?from=YYYY-MM-DD&to=YYYY-MM-DD&page_size=N[&page_token=T]
//! Authorization: Bearer <token>                      (only when a token is configured)
//! 200 -> {"data": [ {record}, ... ], "next_page_token": "<opaque>" | null}
//! ```
//!
//! The parts: [`request`] builds a page's request, [`auth`] adds the credentials, [`page`]
//! reads the body, [`pagination`] decides the next page's cursor and bounds the paging, and
//! `pace` spaces the requests of a pipeline across the cluster.
//!
//! Pure of PostgreSQL: the background worker passes plain values in and gets plain values
//! (or a [`FetchError`] whose text is safe to log) back. Nothing here retries a whole window or
//! follows the cursor: the worker commits each page with its cursor, then asks for the next
//! one.
//!
//! * Retries: 408, 429, 5xx, timeouts, connect and transport errors, up to `max_attempts`, with
//!   [`retry_delay`] between them (a `Retry-After` from the source takes precedence). Other
//!   statuses and every parse or validation failure fail at once.
//! * Bounded: a `Content-Length` over `max_response_bytes` is refused before reading; otherwise
//!   at most `max_response_bytes` are buffered and one byte more fails the page.
//! * A page that fails validation returns an error and no records.
//! * No credential appears in an error, even when a hostile source echoes it back, encoded
//!   or in part: source text reaches an error only through [`redact`]'s one rule.
//! * Proxies: reqwest honours `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY` from the server's
//!   environment, as libcurl-based extensions do.
//!
//! Threads and signals: a [`SourceClient`] owns one reqwest runtime thread (plus short-lived
//! DNS threads it starts), created with every signal blocked so PostgreSQL's handlers only run
//! on the backend's thread. They never touch PostgreSQL memory; the caller's thread only
//! blocks on them inside `fetch_page`, and dropping the client joins them.

mod auth;
mod backoff;
mod convert;
mod error;
mod extract;
#[cfg(test)]
mod leak_check;
pub mod pace;
mod page;
mod pagination;
pub mod profile;
mod redact;
mod request;
#[cfg(test)]
mod simulator_tests;

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use std::collections::BTreeMap;

use chrono::NaiveDate;
use chrono_tz::Tz;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LINK, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use auth::Authenticator;
pub use auth::Credentials;
pub use backoff::{jitter_sample, parse_retry_after, retry_delay};
pub use error::FetchError;
pub use page::{sort_keeping_last_of_each_id, Page, Record, MAX_PAGE_TOKEN_BYTES};
use page::{PagePlan, ParsedPage};
use pagination::PageSignals;
pub use pagination::{BoundHit, PageBounds, PageGuard};
use profile::{Limits, Method, Pagination, Profile, StreamProfile};
use redact::{Secrets, MESSAGE_CHARS};
pub use request::PageCall;
use request::Placeholders;

/// Longest store code or stream name put into a URL; real ones are a few bytes.
pub const MAX_PATH_SEGMENT_BYTES: usize = 256;
/// How much of an error response is read for the message; the rest is never read.
const ERROR_BODY_PEEK_BYTES: u64 = 4 * 1024;
/// Body reads are done in chunks of this size, polling `should_stop` between them.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A body must arrive within this many read timeouts in total, so a source that trickles
/// one byte per read timeout cannot hold a worker for hours.
const BODY_DEADLINE_READ_TIMEOUTS: u32 = 4;
/// `should_stop` is polled at least this often while sleeping between attempts.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Everything the client needs to talk to one source; the worker fills it from the pipeline
/// row, its credentials and the `orders_sync.http_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    /// Keys the pipeline's share of the cluster-wide request rate.
    pub pipeline_id: i64,
    /// `http` or `https`, may carry a path prefix; no credentials, query or fragment.
    pub base_url: String,
    /// The pipeline's source profile (its `source` jsonb as text); `None` is the built-in
    /// contract.
    pub profile: Option<String>,
    /// The pipeline's streams, which the profile's per-stream overrides name.
    pub streams: Vec<String>,
    /// The pipeline's time zone: the API's timestamps are read, and written, in it.
    pub timezone: String,
    /// Never printed: its `Debug` only says which are set.
    pub credentials: Credentials,
    pub page_size: u32,
    /// Limit on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit on waiting for the response headers (connecting included) and on each read of
    /// the body; the whole body must also arrive within 4 read timeouts.
    pub read_timeout: Duration,
    /// Attempts per page, 1 = no retry.
    pub max_attempts: u32,
    /// First retry delay; doubled for each further retry, with jitter, capped.
    pub retry_base_delay: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
    /// Hosts `base_url` may name (`orders_sync.allowed_source_hosts`); empty allows any.
    pub allowed_hosts: Vec<String>,
}

/// One page of one stream of one store for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<'a> {
    pub store_code: &'a str,
    pub stream: &'a str,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The cursor saved with the previous page (see [`pagination::next_cursor`]); `None` for
    /// the first page.
    pub page_token: Option<&'a str>,
}

/// How one stream is asked for and read.
struct StreamReader {
    profile: StreamProfile,
    plan: PagePlan,
}

/// A blocking HTTP client for one source. Create it once per worker (after fork, never in the
/// postmaster) and reuse it: it keeps the connection to the source alive between pages.
pub struct SourceClient {
    http: Client,
    base_url: Url,
    pipeline_id: i64,
    timezone: Tz,
    /// By stream, from the pipeline's profile.
    readers: BTreeMap<String, StreamReader>,
    /// The built-in contract, for any stream, when the pipeline has no profile.
    builtin: Option<StreamReader>,
    auth: Authenticator,
    limits: Limits,
    page_size: u32,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_attempts: u32,
    retry_base_delay: Duration,
    max_response_bytes: u64,
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceClient")
            .field("base_url", &self.base_url.as_str())
            .field("secrets", &self.auth.secrets())
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, and when the source asked us to come back.
struct AttemptFailure {
    error: FetchError,
    retry_after: Option<Duration>,
}

impl From<FetchError> for AttemptFailure {
    fn from(error: FetchError) -> Self {
        AttemptFailure { error, retry_after: None }
    }
}

impl SourceClient {
    /// Checks the settings and starts reqwest's runtime thread (see [`with_signals_blocked`]).
    pub fn new(settings: SourceSettings) -> Result<Self, FetchError> {
        let invalid = |what: &str| Err(FetchError::Settings(what.to_owned()));
        let base_url = parse_base_url(&settings.base_url)?;
        if !host_allowed(&base_url, &settings.allowed_hosts) {
            return Err(FetchError::Settings(format!(
                "base_url host {} is not in orders_sync.allowed_source_hosts",
                base_url.host_str().unwrap_or("")
            )));
        }
        if settings.page_size == 0 {
            return invalid("page_size must be at least 1");
        }
        if settings.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if settings.connect_timeout.is_zero() || settings.read_timeout.is_zero() {
            return invalid("connect_timeout and read_timeout must be positive");
        }
        if settings.max_response_bytes == 0 {
            return invalid("max_response_bytes must be at least 1");
        }
        let timezone: Tz = settings
            .timezone
            .parse()
            .map_err(|_| FetchError::Settings(format!("time zone {:?} is unknown", settings.timezone)))?;
        let (profile, builtin) = match &settings.profile {
            None => (Profile::builtin(&[]), Some(StreamProfile::default_contract())),
            Some(text) => {
                let value: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| FetchError::Settings(format!("the source profile is not JSON ({e})")))?;
                let profile = Profile::parse(&value, &settings.streams)
                    .map_err(|e| FetchError::Settings(format!("invalid source profile at {e}")))?;
                (profile, None)
            }
        };
        let reader = |profile: StreamProfile| StreamReader { plan: PagePlan::new(&profile, timezone), profile };
        let auth = Authenticator::new(&profile.auth, settings.credentials, &settings.allowed_hosts)?;
        let builder = Client::builder()
            .connect_timeout(settings.connect_timeout)
            // reqwest's blocking timeout bounds the wait for the response headers (connect
            // included) and then each read of the body separately.
            .timeout(settings.read_timeout)
            // A redirect could carry the request (and, same-host, the credentials) elsewhere;
            // a 3xx is reported as a status error instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orders_sync/", env!("CARGO_PKG_VERSION")));
        let http = with_signals_blocked(|| builder.build())
            .map_err(|e| FetchError::Settings(format!("cannot create the HTTP client: {}", error_chain(&e))))?;
        Ok(SourceClient {
            http,
            base_url,
            pipeline_id: settings.pipeline_id,
            timezone,
            readers: profile.streams.into_iter().map(|(stream, p)| (stream, reader(p))).collect(),
            builtin: builtin.map(reader),
            auth,
            limits: profile.limits,
            page_size: settings.page_size,
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            max_attempts: settings.max_attempts,
            retry_base_delay: settings.retry_base_delay,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    fn reader(&self, stream: &str) -> Result<&StreamReader, FetchError> {
        self.readers
            .get(stream)
            .or(self.builtin.as_ref())
            .ok_or_else(|| FetchError::Request(format!("stream {stream:?} is not one of the pipeline's streams")))
    }

    /// The request of one page, without credentials.
    pub fn page_call(&self, request: &PageRequest<'_>) -> Result<PageCall, FetchError> {
        check_request(request)?;
        let reader = self.reader(request.stream)?;
        let values = Placeholders::new(
            request.store_code,
            request.stream,
            request.from,
            request.to,
            &reader.profile.dates,
            self.timezone,
            self.page_size,
        );
        request::page_call(&reader.profile, &self.base_url, &values, request.page_token).map_err(FetchError::Request)
    }

    /// The URL of one page. Store code and stream are single percent-encoded path segments,
    /// so no store code can change the path or the query. Contains no credential.
    pub fn page_url(&self, request: &PageRequest<'_>) -> Result<Url, FetchError> {
        self.page_call(request).map(|call| call.url)
    }

    /// The URL of one page as a DBA may see it: a key sent as a query parameter shows as `***`.
    pub fn shown_url(&self, request: &PageRequest<'_>) -> Result<String, FetchError> {
        let mut url = self.page_url(request)?;
        if let Some(name) = self.auth.query_key_name() {
            url.query_pairs_mut().append_pair(name, "***");
        }
        Ok(url.to_string())
    }

    /// One page, with retries. `should_stop` is polled before each attempt, between body
    /// reads and at least every 50 ms while sleeping between attempts; once it returns true
    /// the result is [`FetchError::Cancelled`]. It cannot interrupt a request that is waiting
    /// for headers: that wait is bounded by the read timeout.
    pub fn fetch_page(&self, request: &PageRequest<'_>, should_stop: &dyn Fn() -> bool) -> Result<Page, FetchError> {
        let call = self.page_call(request)?;
        let reader = self.reader(request.stream)?;
        let mut attempts = 0;
        let mut renewed = false;
        loop {
            if should_stop() {
                return Err(FetchError::Cancelled { attempts });
            }
            attempts += 1;
            let failure = match self.attempt(&call, reader, request, should_stop) {
                Ok(mut page) => {
                    page.attempts = attempts;
                    return Ok(page);
                }
                Err(failure) => failure,
            };
            // An access token the source no longer takes: fetch a new one, once per page.
            if failure.error.http_status() == Some(401) && self.auth.renews_on_401() && !renewed {
                renewed = true;
                self.auth.forget_token();
                continue;
            }
            if !failure.error.is_retryable() || attempts >= self.max_attempts {
                return Err(failure.error.with_attempts(attempts));
            }
            let delay = retry_delay(attempts, self.retry_base_delay, failure.retry_after, jitter_sample());
            if !sleep_unless_stopped(delay, should_stop) {
                return Err(FetchError::Cancelled { attempts });
            }
        }
    }

    fn attempt(
        &self,
        call: &PageCall,
        reader: &StreamReader,
        request: &PageRequest<'_>,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Page, AttemptFailure> {
        if let Some(rate) = self.limits.requests_per_second {
            if !pace::wait_turn(self.pipeline_id, rate, should_stop) {
                return Err(FetchError::Cancelled { attempts: 0 }.into());
            }
        }
        let mut builder = match call.method {
            Method::Get => self.http.get(call.url.clone()),
            Method::Post => self.http.post(call.url.clone()),
        };
        builder = builder.header(ACCEPT, "application/json");
        for (name, value) in &call.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &call.body {
            builder = builder.header(CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let builder = self.auth.apply(&self.http, builder, self.read_timeout)?;
        let secrets = self.auth.secrets();
        let response = builder.send().map_err(|e| self.request_error(e, "waiting for the response", &secrets))?;
        let status = response.status();
        if status != StatusCode::OK {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = peek_body(response, Instant::now() + self.read_timeout);
            let snippet = error::body_snippet(&body, &secrets);
            return Err(AttemptFailure {
                error: FetchError::status(status.as_u16(), status.canonical_reason(), snippet),
                retry_after,
            });
        }
        if let Some(declared) = response.content_length() {
            if declared > self.max_response_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.max_response_bytes,
                    content_length: Some(declared),
                    attempts: 0,
                }
                .into());
            }
        }
        let link = response.headers().get(LINK).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let capacity = response.content_length().unwrap_or(0);
        let deadline = Instant::now() + self.read_timeout * BODY_DEADLINE_READ_TIMEOUTS;
        let body = read_bounded(
            response,
            self.max_response_bytes,
            capacity,
            deadline,
            self.read_timeout,
            should_stop,
            &secrets,
        )?;
        let parsed = page::parse_page(&body, &reader.plan, request, &secrets)?;
        let next = self.next_cursor(reader, request, &parsed, link.as_deref(), &call.url, &secrets)?;
        Ok(Page {
            records: parsed.records,
            next_page_token: next,
            attempts: 0,
            body_bytes: parsed.body_bytes,
            duplicate_ids: parsed.duplicate_ids,
        })
    }

    /// The cursor of the next page, by the stream's pagination style; a next page's URL is
    /// checked here, when it arrives, so a saved cursor is always one we may follow.
    fn next_cursor(
        &self,
        reader: &StreamReader,
        request: &PageRequest<'_>,
        parsed: &ParsedPage,
        link: Option<&str>,
        url: &Url,
        secrets: &Secrets,
    ) -> Result<Option<String>, FetchError> {
        let invalid =
            |reason: String| FetchError::InvalidPage { reason: secrets.quote(&reason, MESSAGE_CHARS), attempts: 0 };
        let signals = PageSignals {
            received: parsed.received,
            last_id: parsed.last_id.as_deref(),
            next: parsed.next.as_deref(),
            total: parsed.total,
            has_more: parsed.has_more,
            link_next: link.and_then(pagination::link_next),
        };
        let next =
            pagination::next_cursor(&reader.profile.pagination, request.page_token, &signals).map_err(invalid)?;
        let Some(next) = next else { return Ok(None) };
        let next = match reader.profile.pagination {
            Pagination::NextUrl { .. } | Pagination::LinkHeader {} => {
                request::next_page_url(url, &next).map_err(invalid)?.to_string()
            }
            _ => next,
        };
        if next.len() > MAX_PAGE_TOKEN_BYTES || next.chars().any(char::is_control) {
            return Err(invalid(format!(
                "the next page's cursor is longer than {MAX_PAGE_TOKEN_BYTES} bytes or has control characters"
            )));
        }
        Ok(Some(next))
    }

    fn request_error(&self, error: reqwest::Error, phase: &'static str, secrets: &Secrets) -> FetchError {
        let error = error.without_url();
        if error.is_timeout() {
            let (phase, limit) = if error.is_connect() {
                ("connecting to the source", self.connect_timeout)
            } else {
                (phase, self.read_timeout)
            };
            FetchError::Timeout { phase, limit_ms: millis(limit), attempts: 0 }
        } else if error.is_connect() {
            FetchError::Connect { detail: secrets.quote(&error_chain(&error), MESSAGE_CHARS), attempts: 0 }
        } else {
            FetchError::Transport { detail: secrets.quote(&error_chain(&error), MESSAGE_CHARS), attempts: 0 }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_base_url(text: &str) -> Result<Url, FetchError> {
    let invalid = |why: &str| FetchError::Settings(format!("base_url {why}"));
    // The URL parser's message never quotes the input, which may hold a password.
    let url = Url::parse(text.trim()).map_err(|e| invalid(&format!("is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must start with http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain credentials; set the pipeline's token instead"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(url)
}

/// Whether `url` names a host of the allow-list: an entry is a host name or IP address,
/// optionally with `:port`, or `*.domain` for any host under that domain. An empty list
/// allows any host (docs/design.md#sources).
pub fn host_allowed(url: &Url, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
    else {
        return false;
    };
    let port = url.port_or_known_default();
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let (name, entry_port) = match entry.rsplit_once(':') {
            Some((name, p)) if !name.contains(':') || name.ends_with(']') => (name.to_string(), p.parse::<u16>().ok()),
            _ => (entry.clone(), None),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']').to_string();
        let host_matches = match name.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == name,
        };
        host_matches && entry_port.is_none_or(|p| Some(p) == port)
    })
}

fn check_request(request: &PageRequest<'_>) -> Result<(), FetchError> {
    let invalid = |why: String| Err(FetchError::Request(why));
    for (name, value) in [("store_code", request.store_code), ("stream", request.stream)] {
        if value.is_empty() || value.len() > MAX_PATH_SEGMENT_BYTES {
            return invalid(format!("{name} must be 1 to {MAX_PATH_SEGMENT_BYTES} bytes"));
        }
        // The URL library drops "." and ".." segments, which would change the path.
        if value == "." || value == ".." {
            return invalid(format!("{name} must not be {value:?}"));
        }
    }
    if request.from > request.to {
        return invalid(format!("from {} is after to {}", request.from, request.to));
    }
    if let Some(token) = request.page_token {
        if token.is_empty() || token.len() > MAX_PAGE_TOKEN_BYTES {
            return invalid(format!("page_token must be 1 to {MAX_PAGE_TOKEN_BYTES} bytes"));
        }
    }
    Ok(())
}

/// The first few KiB of an error response, for its message. Read errors, and the deadline
/// (checked between reads, so a trickling source cannot stall us), just end it.
fn peek_body(response: Response, deadline: Instant) -> Vec<u8> {
    let mut peek = Vec::new();
    let mut reader = response.take(ERROR_BODY_PEEK_BYTES);
    let mut chunk = [0u8; 1024];
    while Instant::now() < deadline {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => peek.extend_from_slice(&chunk[..n]),
        }
    }
    peek
}

/// Reads a body of at most `limit` bytes: never buffers more, fails on byte `limit + 1`, on
/// `deadline`, or when `should_stop` says so. `capacity` (a checked Content-Length) sizes the
/// buffer up front.
fn read_bounded(
    mut body: impl Read,
    limit: u64,
    capacity: u64,
    deadline: Instant,
    read_timeout: Duration,
    should_stop: &dyn Fn() -> bool,
    secrets: &Secrets,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge { limit, content_length: None, attempts: 0 };
    let mut buffer = Vec::with_capacity(usize::try_from(capacity.min(limit)).unwrap_or(0));
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        if should_stop() {
            return Err(FetchError::Cancelled { attempts: 0 });
        }
        let n = match body.read(&mut chunk) {
            Ok(0) => return Ok(buffer),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body_read_error(&e, read_timeout, secrets)),
        };
        if buffer.len() as u64 + n as u64 > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if Instant::now() >= deadline {
            return Err(FetchError::Timeout {
                phase: "reading the response body",
                limit_ms: millis(read_timeout * BODY_DEADLINE_READ_TIMEOUTS),
                attempts: 0,
            });
        }
    }
}

/// reqwest's blocking body reader reports its errors as `io::Error`s wrapping a
/// `reqwest::Error`; a timeout is one whose chain says so.
fn body_read_error(error: &std::io::Error, read_timeout: Duration, secrets: &Secrets) -> FetchError {
    let timed_out = error.kind() == std::io::ErrorKind::TimedOut
        || error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout);
    if timed_out {
        FetchError::Timeout { phase: "reading the response body", limit_ms: millis(read_timeout), attempts: 0 }
    } else {
        let detail = secrets.quote(&format!("reading the response body: {}", error_chain(error)), MESSAGE_CHARS);
        FetchError::Transport { detail, attempts: 0 }
    }
}

/// "a: b: c" from an error and its sources, skipping a source whose text its parent
/// already repeats (hyper and reqwest often do).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sleeps `delay` in short steps; false as soon as `should_stop` returns true.
fn sleep_unless_stopped(delay: Duration, should_stop: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if should_stop() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(STOP_POLL_INTERVAL));
    }
}

/// Runs `f` with every signal blocked in the calling thread, so that threads it starts
/// (reqwest's runtime thread, and the DNS threads that one starts later) inherit a fully
/// blocked mask. PostgreSQL's signal handlers then only ever run on the backend's own thread,
/// which is the only thread they are written for. The caller's mask is restored afterwards.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the mask saved below, for this thread only.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
            }
        }
    }
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigfillset before use, and
    // pthread_sigmask only changes the calling thread's mask.
    let _restore = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigemptyset(&mut previous);
        (libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous) == 0).then_some(Restore(previous))
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_allow_list_matches_hosts_ports_and_domains() {
        let url = |u: &str| Url::parse(u).unwrap();
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(host_allowed(&url("http://169.254.169.254/latest"), &[]));
        let allowed = list(&["api.example.com", "127.0.0.1:8080", "*.pos.example.net", "[::1]"]);
        assert!(host_allowed(&url("https://API.example.com/v1"), &allowed));
        assert!(host_allowed(&url("http://127.0.0.1:8080/"), &allowed));
        assert!(!host_allowed(&url("http://127.0.0.1:8081/"), &allowed));
        assert!(host_allowed(&url("https://eu.pos.example.net/"), &allowed));
        assert!(!host_allowed(&url("https://pos.example.net.evil.com/"), &allowed));
        assert!(!host_allowed(&url("http://169.254.169.254/latest"), &allowed));
        assert!(host_allowed(&url("http://[::1]:9000/"), &allowed));
        assert!(!host_allowed(&url("http://api.example.com.evil.com/"), &allowed));
    }

    #[test]
    fn a_host_off_the_allow_list_is_refused_before_any_request() {
        let settings = SourceSettings { allowed_hosts: vec!["api.example.com".into()], ..settings("http://10.0.0.1/") };
        match SourceClient::new(settings) {
            Err(FetchError::Settings(message)) => {
                assert_eq!(message, "base_url host 10.0.0.1 is not in orders_sync.allowed_source_hosts")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a host off the allow-list must be refused"),
        }
    }
    use std::cell::Cell;

    fn settings(base_url: &str) -> SourceSettings {
        SourceSettings {
            pipeline_id: 1,
            base_url: base_url.to_owned(),
            profile: None,
            streams: vec!["orders".to_owned(), "sales".to_owned()],
            timezone: "UTC".to_owned(),
            credentials: Credentials::default(),
            page_size: 100,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(10),
            max_response_bytes: 1 << 20,
            allowed_hosts: Vec::new(),
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test date")
    }

    fn request<'a>(store_code: &'a str, stream: &'a str) -> PageRequest<'a> {
        PageRequest { store_code, stream, from: day("2024-01-01"), to: day("2024-01-07"), page_token: None }
    }

    fn client(base_url: &str) -> SourceClient {
        SourceClient::new(settings(base_url)).expect("client")
    }

    #[test]
    fn url_has_contract_path_and_query() {
        let url = client("http://127.0.0.1:1").page_url(&request("S001", "orders")).expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/v1/stores/S001/orders?from=2024-01-01&to=2024-01-07&page_size=100"
        );
        let mut next = request("S001", "orders");
        next.page_token = Some("p1.d20240101.n5.c&x=1");
        let url = client("http://127.0.0.1:1").page_url(&next).expect("url");
        assert_eq!(url.query_pairs().count(), 4);
        assert!(url.as_str().ends_with("&page_token=p1.d20240101.n5.c%26x%3D1"), "{url}");
    }

    #[test]
    fn url_keeps_base_path_prefix() {
        for base in ["https://src.example/api/source", "https://src.example/api/source/"] {
            let url = client(base).page_url(&request("S1", "sales")).expect("url");
            assert_eq!(url.path(), "/api/source/v1/stores/S1/sales", "{base}");
        }
    }

    #[test]
    fn hostile_store_code_stays_one_path_segment() {
        let c = client("http://127.0.0.1:1/prefix");
        for store in ["../admin", "a/b", "a?x=1", "a#frag", "a\\b", "%2e%2e", "a b", "é/..", "..."] {
            let url = c.page_url(&request(store, "orders")).expect("url");
            let segments: Vec<&str> = url.path_segments().expect("segments").collect();
            assert_eq!(segments.len(), 5, "{store}: {url}");
            assert_eq!(segments[..3], ["prefix", "v1", "stores"], "{store}: {url}");
            assert_eq!(segments[4], "orders", "{store}: {url}");
            assert_eq!(url.query_pairs().count(), 3, "{store}: {url}");
            assert!(url.fragment().is_none(), "{store}: {url}");
        }
        for store in ["", ".", ".."] {
            let err = c.page_url(&request(store, "orders")).expect_err(store);
            assert!(matches!(err, FetchError::Request(_)), "{store}: {err}");
        }
        let long = "x".repeat(MAX_PATH_SEGMENT_BYTES + 1);
        assert!(c.page_url(&request(&long, "orders")).is_err());
    }

    #[test]
    fn bad_requests_are_refused_before_any_io() {
        let c = client("http://127.0.0.1:1");
        let mut backwards = request("S1", "orders");
        backwards.from = day("2024-02-01");
        let err = c.fetch_page(&backwards, &|| false).expect_err("from after to");
        assert_eq!(err.to_string(), "invalid page request: from 2024-02-01 is after to 2024-01-07");
        let long_token = "t".repeat(MAX_PAGE_TOKEN_BYTES + 1);
        let mut with_token = request("S1", "orders");
        with_token.page_token = Some(&long_token);
        assert!(matches!(c.fetch_page(&with_token, &|| false), Err(FetchError::Request(_))));
    }

    #[test]
    fn bad_settings_are_refused() {
        let check = |s: SourceSettings, expected: &str| {
            let err = SourceClient::new(s).expect_err(expected);
            assert!(matches!(err, FetchError::Settings(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        };
        check(settings("ftp://x/"), "http:// or https://");
        check(settings("not a url"), "not a valid URL");
        check(settings("http://user:hunter2@x/"), "must not contain credentials");
        check(settings("http://x/?key=1"), "query or fragment");
        check(SourceSettings { page_size: 0, ..settings("http://x/") }, "page_size");
        check(SourceSettings { max_attempts: 0, ..settings("http://x/") }, "max_attempts");
        check(SourceSettings { read_timeout: Duration::ZERO, ..settings("http://x/") }, "read_timeout");
        check(SourceSettings { max_response_bytes: 0, ..settings("http://x/") }, "max_response_bytes");
        let err = SourceClient::new(SourceSettings {
            credentials: Credentials { api_token: Some("sec\nret-token".to_owned()), ..Credentials::default() },
            ..settings("http://x/")
        })
        .expect_err("newline in token");
        assert!(!err.to_string().contains("ret-token"), "{err}");
        // The password must not leak through the settings error either.
        let err = SourceClient::new(settings("http://user:hunter2@x/")).expect_err("userinfo");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let s = SourceSettings {
            credentials: Credentials { api_token: Some("s3cr3t-t0ken".to_owned()), ..Credentials::default() },
            ..settings("http://x/")
        };
        assert!(!format!("{s:?}").contains("s3cr3t-t0ken"));
        let c = SourceClient::new(s).expect("client");
        assert!(!format!("{c:?}").contains("s3cr3t-t0ken"));
    }

    #[test]
    fn bounded_read_never_buffers_past_the_limit() {
        // An endless body: only the limit can end this read.
        let err = read_bounded(
            std::io::repeat(b'x'),
            100_000,
            0,
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            &|| false,
            &Secrets::none(),
        )
        .expect_err("endless body");
        assert_eq!(err, FetchError::TooLarge { limit: 100_000, content_length: None, attempts: 0 });
        let exact = read_bounded(
            std::io::repeat(b'x').take(100_000),
            100_000,
            100_000,
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            &|| false,
            &Secrets::none(),
        )
        .expect("a body of exactly the limit is fine");
        assert_eq!(exact.len(), 100_000);
    }

    #[test]
    fn bounded_read_stops_on_request_and_on_deadline() {
        let polls = Cell::new(0);
        let stop_after_two = || {
            polls.set(polls.get() + 1);
            polls.get() > 2
        };
        let err = read_bounded(
            std::io::repeat(b'x'),
            u64::MAX,
            0,
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            &stop_after_two,
            &Secrets::none(),
        )
        .expect_err("stopped");
        assert_eq!(err, FetchError::Cancelled { attempts: 0 });
        let err = read_bounded(
            std::io::repeat(b'x'),
            u64::MAX,
            0,
            Instant::now(),
            Duration::from_millis(250),
            &|| false,
            &Secrets::none(),
        )
        .expect_err("past deadline");
        assert!(err.to_string().contains("timed out reading the response body after 1000 ms"), "{err}");
    }

    #[test]
    fn sleep_between_attempts_ends_early_on_stop() {
        let start = Instant::now();
        let stop_at = start + Duration::from_millis(120);
        assert!(!sleep_unless_stopped(Duration::from_secs(30), &|| Instant::now() >= stop_at));
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        assert!(sleep_unless_stopped(Duration::from_millis(20), &|| false));
    }

    #[test]
    fn signal_mask_is_restored_after_building() {
        // SAFETY: reads this thread's mask only.
        let mask = || unsafe {
            let mut current: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
            libc::sigismember(&current, libc::SIGTERM)
        };
        let before = mask();
        let inside = with_signals_blocked(mask);
        assert_eq!(inside, 1);
        assert_eq!(mask(), before);
    }
}
