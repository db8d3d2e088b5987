//! Routing and the data endpoints.
//!
//! ```text
//! GET    /v1/stores/{store}/{stream}?from&to&page_size[&page_token]   the wire contract (Bearer T)
//!
//! Shapes (shapes.rs; auth only when started with --token T; ids: NUM = YYYYMMDD*1e6 + n):
//! GET    /nexturl/v2/orders?store_code&channel&since&until&limit[&cursor]
//!          RFC 3339 since (incl.) / until (excl.), business day in UTC+07:00; X-Api-Key: T
//!          -> {"result":{"items":[{"order":{"number":NUM,"channel"},"created_at":"..Z","total":"12.34"|null,..}]},
//!              "links":{"next":"http://<Host>/nexturl/v2/orders?<query>&cursor=C"|null}}
//! GET    /link/stores/{store}/{stream}/receipts?from_ts&to_ts&per_page[&page]
//!          Unix seconds, to_ts exclusive, days whose 00:00Z is in range; page 1-based;
//!          Basic base64("orders_sync:T") -> [{"register":"R1","receipt_no":NUM,"business_day",
//!          "amount_cents":1234|null,..}] + `Link: <next>; rel="next"` unless last page
//! GET    /offset/api/{stream}?store&from_ms&to_ms&offset&limit[&api_key]
//!          Unix ms, to_ms inclusive; api_key=T -> {"data":{"orders":[{"id":NUM,"date","amount",..}]},
//!          "meta":{"total":N}}
//! GET    /page0/{store}/{stream}?date_from&date_to&page&size    date_to exclusive, page 0-based,
//!          Bearer T -> {"items":[v1 records]} (empty past the end)
//! GET    /page1/{store}/{stream}?date_from&date_to&page&size    page 1-based, Bearer T
//!          -> {"items":[v1 records],"total_pages":K}
//! POST   /lastid/search  application/json {"store","stream","from","to"(incl.),"limit"[,"starting_after"]}
//!          Bearer <token from /oauth/token> -> {"data":[v1 records],"has_more":bool}
//! GET    /none/{store}/{stream}?from&to                          inclusive, Bearer T -> {"orders":[v1 records]}
//! POST   /oauth/token    form grant_type=client_credentials&client_id=orders_sync&client_secret=T
//!          [&scope=orders.read] (or the client in a Basic header)
//!          -> {"access_token","token_type":"Bearer","expires_in":token_ttl_s,"scope"}
//!
//! GET    /_truth/stores/{store}/{stream}?from&to[&ids=true][&shape=NAME]   what the source holds
//!          (ids as that shape's client maps them: v1 id, NUM, or "R<n%3+1>:NUM" for link)
//! POST   /_control/{reset,config,late_rows,delete_rows,change_rows,faults,revoke_tokens}
//! GET    /_control/{config,requests,faults,concurrency}
//! DELETE /_control/faults
//! ```
//!
//! Only data requests (anything outside `/_control` and `/_truth`) and token requests are
//! logged (with `method` and `at_ms`, never a credential: `api_key` values read `***`). Data
//! requests of every shape are counted in flight (`/_control/concurrency`), wait
//! `response_delay_ms`, and are subject to faults and credentials; the truth and control
//! endpoints are the tests' own back door and must keep working while faults are on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::control::{valid_store, valid_stream, App, EchoPlace, FaultAction, FaultKind, LogEntry};
use crate::data::{cents_string, day_string, parse_date, MAX_WINDOW_DAYS};
use crate::shapes::{self, Shape};
use crate::token::{self, PageToken};

/// Control bodies are tiny; anything bigger is a mistake.
const MAX_CONTROL_BODY: usize = 1 << 20;

// ---- response body -------------------------------------------------------------------------

/// A whole body (sent with Content-Length) or a synthetic stream of `remaining` bytes for the
/// `huge` fault, which repeats one shared chunk so that 64 MiB costs no memory, and has no
/// Content-Length so the client must enforce its size cap while reading.
pub enum SimBody {
    Full(Option<Bytes>),
    Huge { head: Option<Bytes>, remaining: u64 },
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            SimBody::Full(b) => b.take(),
            SimBody::Huge { head, remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let chunk = head.take().unwrap_or_else(|| huge_filler().clone());
                    let n = (chunk.len() as u64).min(*remaining) as usize;
                    *remaining -= n as u64;
                    Some(chunk.slice(..n))
                }
            }
        };
        Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Huge { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            SimBody::Huge { .. } => SizeHint::default(),
        }
    }
}

/// 64 KiB of plausible records, shared by every `huge` response.
fn huge_filler() -> &'static Bytes {
    static FILLER: OnceLock<Bytes> = OnceLock::new();
    FILLER.get_or_init(|| {
        let rec = br#"{"id":"huge-000000","date":"2024-01-01","amount":1.00,"customer_id":"C0000000"},"#;
        let mut v = Vec::with_capacity(64 * 1024);
        while v.len() + rec.len() <= 64 * 1024 {
            v.extend_from_slice(rec);
        }
        Bytes::from(v)
    })
}

pub(crate) fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<SimBody> {
    let mut r = Response::new(SimBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response<SimBody> {
    // Serialising a serde_json::Value cannot fail.
    let body = serde_json::to_vec(v).unwrap_or_default();
    full(status, "application/json", Bytes::from(body))
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response<SimBody> {
    json_response(status, &json!({"error": msg.into()}))
}

// ---- routing --------------------------------------------------------------------------------

pub async fn handle(req: Request<Incoming>, app: Arc<App>) -> Response<SimBody> {
    let at_ms = app.now_ms();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let r = Req {
        app: &app,
        method: &parts.method,
        path: &path,
        query: &query,
        headers: &parts.headers,
        at_ms,
        auth_present: credential_present(&parts.headers, &query),
    };
    match segments.as_slice() {
        ["v1", "stores", store, stream] => data_request(&r, store, stream).await,
        ["nexturl", "v2", "orders"] => shapes::nexturl(&r).await,
        ["link", "stores", store, stream, "receipts"] => shapes::link(&r, store, stream).await,
        ["offset", "api", stream] => shapes::offset(&r, stream).await,
        ["page0", store, stream] => shapes::page_number(&r, store, stream, 0).await,
        ["page1", store, stream] => shapes::page_number(&r, store, stream, 1).await,
        ["lastid", "search"] => shapes::lastid(&r, body).await,
        ["none", store, stream] => shapes::no_paging(&r, store, stream).await,
        ["oauth", "token"] => shapes::oauth_token(&r, body).await,
        ["_truth", "stores", store, stream] => {
            if parts.method != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            }
            truth(&app, store, stream, &query)
        }
        ["_control", what] => {
            let what = (*what).to_owned();
            control(&parts.method, body, &app, &what).await
        }
        _ => {
            // Wrong data URLs are logged too: a test can then see what a client asked for.
            if !path.starts_with("/_control") && !path.starts_with("/_truth") {
                r.log(StatusCode::NOT_FOUND);
            }
            error(StatusCode::NOT_FOUND, format!("no route for {path}"))
        }
    }
}

/// One incoming request, as the data handlers of every shape see it.
#[derive(Clone, Copy)]
pub(crate) struct Req<'a> {
    pub app: &'a App,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// Milliseconds since the simulator started, when the request arrived.
    pub at_ms: u64,
    /// A credential was sent (Authorization, X-Api-Key or an `api_key` parameter).
    pub auth_present: bool,
}

impl Req<'_> {
    /// Log this request with `status` (credentials never logged; `api_key` masked).
    pub fn log(&self, status: StatusCode) {
        self.app.log_request(LogEntry {
            method: self.method.as_str(),
            path: self.path,
            query: self.query,
            status: status.as_u16(),
            authorization: self.auth_present,
            at_ms: self.at_ms,
        });
    }

    /// The configured `response_delay_ms`, slept while counted in flight.
    pub async fn delay(&self) {
        let d = self.app.response_delay();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

fn credential_present(headers: &HeaderMap, query: &str) -> bool {
    headers.contains_key(AUTHORIZATION)
        || headers.contains_key("x-api-key")
        || query.split('&').any(|p| crate::control::is_api_key(p.split_once('=').map_or(p, |(k, _)| k)))
}

async fn control(method: &Method, body: Incoming, app: &App, what: &str) -> Response<SimBody> {
    let result = match (method, what) {
        (&Method::GET, "config") => Ok(app.config_json()),
        (&Method::GET, "requests") => Ok(app.requests_json()),
        (&Method::GET, "faults") => Ok(app.faults_json()),
        (&Method::GET, "concurrency") => Ok(app.concurrency_json()),
        (&Method::POST, "reset") => Ok(app.reset()),
        (&Method::POST, "revoke_tokens") => Ok(app.revoke_tokens()),
        (&Method::DELETE, "faults") => Ok(app.clear_faults()),
        (&Method::POST, "config" | "late_rows" | "delete_rows" | "change_rows" | "faults") => {
            let body = match Limited::new(body, MAX_CONTROL_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
            };
            match what {
                "config" => app.set_config(&body),
                "late_rows" => app.late_rows(&body),
                "delete_rows" => app.delete_rows(&body),
                "change_rows" => app.change_rows(&body),
                _ => app.add_fault(&body),
            }
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no control endpoint {method} {what}")),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

// ---- the data endpoint ------------------------------------------------------------------------

/// A validated data request.
struct PageQuery {
    store: String,
    stream: String,
    from: i32,
    to: i32,
    page_size: usize,
    token: Option<PageToken>,
}

impl PageQuery {
    fn page(&self) -> u64 {
        self.token.map_or(0, |t| t.page)
    }
}

async fn data_request(r: &Req<'_>, raw_store: &str, raw_stream: &str) -> Response<SimBody> {
    let app = r.app;
    let store_hint = percent_decode(raw_store);
    let _in_flight = app.enter(store_hint.as_deref());
    r.delay().await;
    let auth = r.headers.get(AUTHORIZATION);
    let log = |status: StatusCode| r.log(status);
    let q = match validate(app, raw_store, raw_stream, r.query, r.method == Method::GET, auth) {
        Ok(q) => q,
        Err(resp) => {
            log(resp.status());
            return resp;
        }
    };
    let Some(fault) = app.take_fault(&q.store, &q.stream, q.page()) else {
        log(StatusCode::OK);
        return page_response(app, &q, false, false);
    };
    // Logged when the decision is made, so a client that gives up during a delay still shows.
    match fault.kind {
        FaultKind::Status => {
            let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            log(status);
            status_fault(status, &fault)
        }
        FaultKind::Timeout => {
            // Answer (too late) with 504, so a client whose timeout is longer than the delay
            // still sees a failure rather than a good page.
            log(StatusCode::GATEWAY_TIMEOUT);
            tokio::time::sleep(fault.delay).await;
            error(StatusCode::GATEWAY_TIMEOUT, "injected fault: timeout")
        }
        FaultKind::Slow => {
            log(StatusCode::OK);
            tokio::time::sleep(fault.delay).await;
            page_response(app, &q, false, false)
        }
        FaultKind::Malformed => {
            log(StatusCode::OK);
            page_response(app, &q, false, true)
        }
        FaultKind::BadRecord => {
            log(StatusCode::OK);
            page_response(app, &q, true, false)
        }
        FaultKind::Huge => {
            log(StatusCode::OK);
            let mut r = Response::new(SimBody::Huge {
                head: Some(Bytes::from_static(b"{\"data\":[")),
                remaining: fault.size_bytes,
            });
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        FaultKind::EchoToken => {
            let r = echo_token(&q, &fault, auth);
            log(r.status());
            r
        }
    }
}

/// The `echo_token` fault: what a careless or hostile source does with the credential it was
/// sent (debug echoes, error pages quoting the request). Clients must never show it.
fn echo_token(q: &PageQuery, fault: &FaultAction, auth: Option<&HeaderValue>) -> Response<SimBody> {
    let header = auth.map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()).unwrap_or_default();
    let credential = header.split_once(' ').map_or(header.as_str(), |(_, c)| c);
    let page = |record: String| {
        let body = format!("{{\"data\":[{record}],\"next_page_token\":null}}");
        full(StatusCode::OK, "application/json", Bytes::from(body))
    };
    let json = |text: &str| Value::from(text).to_string();
    let from = json(&day_string(q.from));
    match fault.place {
        EchoPlace::Id => {
            page(format!(r#"{{"id":{},"date":{from}}}"#, json(&format!("{credential}{}", "x".repeat(300)))))
        }
        EchoPlace::Date => page(format!(r#"{{"id":"echo-1","date":{}}}"#, json(credential))),
        EchoPlace::Amount => page(format!(r#"{{"id":"echo-1","date":{from},"amount":{credential}}}"#)),
        EchoPlace::Body => echo_body(fault, &header, credential),
        EchoPlace::Headers => {
            let mut r = error(StatusCode::UNAUTHORIZED, "credential echoed in the headers");
            if let Some(auth) = auth {
                r.headers_mut().insert("x-echo-authorization", auth.clone());
                let challenge = format!("Bearer error_description=\"{credential}\"");
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(WWW_AUTHENTICATE, value);
                }
            }
            r
        }
    }
}

/// The `body` place of `echo_token`: an error quoting the credential raw, percent-encoded
/// (upper and lower case) and its first half.
pub(crate) fn echo_body(fault: &FaultAction, header: &str, credential: &str) -> Response<SimBody> {
    let half: String = credential.chars().take(credential.chars().count().div_ceil(2)).collect();
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = format!(
        "you sent {header}; as a URL: {}; lower: {}; starting: {half}",
        percent_encode(credential, false),
        percent_encode(credential, true)
    );
    error(status, message)
}

/// Every byte but ASCII letters, digits and `-._~` as `%XX`.
pub(crate) fn percent_encode(text: &str, lower: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn status_fault(status: StatusCode, fault: &FaultAction) -> Response<SimBody> {
    let mut r = error(status, format!("injected fault: status {}", status.as_u16()));
    if let Some(secs) = fault.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// Path, auth and query checks, in the order a client would want to see them: unknown path
/// (404), then credentials (401), then parameters (400). The error is the ready response; its
/// size does not matter once per request.
#[allow(clippy::result_large_err)]
fn validate(
    app: &App,
    raw_store: &str,
    raw_stream: &str,
    query: &str,
    method_ok: bool,
    auth: Option<&HeaderValue>,
) -> Result<PageQuery, Response<SimBody>> {
    let not_found = || error(StatusCode::NOT_FOUND, "unknown store path or stream");
    let store = percent_decode(raw_store).filter(|s| valid_store(s)).ok_or_else(not_found)?;
    let stream = percent_decode(raw_stream).filter(|s| valid_stream(s)).ok_or_else(not_found)?;
    if !method_ok {
        return Err(error(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
    }
    if let Some(expected) = &app.settings.token {
        if !bearer_matches(auth, expected) {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(r);
        }
    }
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let params = parse_query(query).map_err(bad)?;
    let (from, to) = window(&params).map_err(bad)?;
    let max = app.settings.max_page_size;
    let page_size = params
        .get("page_size")
        .ok_or_else(|| "page_size is required".to_string())
        .and_then(|v| v.parse::<usize>().map_err(|_| format!("page_size {v:?} is not an integer")))
        .and_then(|n| if (1..=max).contains(&n) { Ok(n) } else { Err(format!("page_size must be in 1..={max}")) })
        .map_err(bad)?;
    let token = match params.get("page_token") {
        None => None,
        Some(t) => Some(token::decode(t, &store, &stream, from, to).ok_or_else(|| bad("bad page_token".to_string()))?),
    };
    Ok(PageQuery { store, stream, from, to, page_size, token })
}

/// Constant-time-ish comparison is not needed on loopback; exact match of the credential,
/// with the scheme name case-insensitive as RFC 7235 says.
pub(crate) fn bearer_matches(auth: Option<&HeaderValue>, expected: &str) -> bool {
    let Some(v) = auth.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    match v.split_once(' ') {
        Some((scheme, cred)) => scheme.eq_ignore_ascii_case("bearer") && cred == expected,
        None => false,
    }
}

thread_local! {
    /// Reused response buffer: `split().freeze()` hands the bytes to hyper, and once hyper
    /// drops them the next `reserve` reclaims the same allocation.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Render a body into the reused per-thread buffer.
pub(crate) fn render(reserve: usize, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        buf.reserve(reserve);
        f(&mut buf);
        buf.split().freeze()
    })
}

/// `{"data":[...],"next_page_token":...}` for one page. `bad_first` drops the first record's
/// date (the `bad_record` fault); `truncate` cuts the body in half (the `malformed` fault).
fn page_response(app: &App, q: &PageQuery, bad_first: bool, truncate: bool) -> Response<SimBody> {
    let start = q.token.map_or(crate::data::Cursor { day: q.from, n: 0 }, |t| t.cursor);
    let body = SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        buf.reserve(q.page_size.min(4096) * 180 + 128);
        buf.extend_from_slice(b"{\"data\":[");
        let written = {
            let data = app.data();
            let view = data.view(&q.store, &q.stream);
            let (written, next) = view.write_records(&mut buf, start, q.to, q.page_size, bad_first);
            buf.extend_from_slice(b"],\"next_page_token\":");
            match next {
                Some(cursor) => {
                    let t = PageToken { page: q.page().saturating_add(1), cursor };
                    buf.extend_from_slice(b"\"");
                    buf.extend_from_slice(token::encode(t, &q.store, &q.stream, q.from, q.to).as_bytes());
                    buf.extend_from_slice(b"\"}");
                }
                None => buf.extend_from_slice(b"null}"),
            }
            written
        };
        if bad_first && written == 0 {
            // Nothing to spoil on an empty page: serve one record with a non-numeric amount.
            buf.clear();
            buf.extend_from_slice(
                br#"{"data":[{"id":"bad-record","date":"2024-01-01","amount":"12.x"}],"next_page_token":null}"#,
            );
        }
        buf.split().freeze()
    });
    let body = if truncate { body.slice(..body.len() / 2) } else { body };
    full(StatusCode::OK, "application/json", body)
}

// ---- truth ------------------------------------------------------------------------------------

fn truth(app: &App, raw_store: &str, raw_stream: &str, query: &str) -> Response<SimBody> {
    let (Some(store), Some(stream)) = (percent_decode(raw_store), percent_decode(raw_stream)) else {
        return error(StatusCode::NOT_FOUND, "unknown store path or stream");
    };
    if !valid_store(&store) || !valid_stream(&stream) {
        return error(StatusCode::NOT_FOUND, "unknown store path or stream");
    }
    let params = match parse_query(query) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let (from, to) = match window(&params) {
        Ok(w) => w,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let with_ids = match params.get("ids").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("ids must be true or false, not {other:?}")),
    };
    let shape = match params.get("shape") {
        None => Shape::V1,
        Some(name) => match Shape::parse(name) {
            Some(s) => s,
            None => return error(StatusCode::BAD_REQUEST, format!("unknown shape {name:?} (want {})", Shape::NAMES)),
        },
    };
    let t = app.data().view(&store, &stream).truth_with(from, to, with_ids, |v, ctx, n| shape.truth_id(v, ctx, n));
    let days: Vec<Value> =
        t.days.iter().map(|d| json!({"date": d.date, "count": d.count, "amount_sum": cents_string(d.cents)})).collect();
    let mut v = json!({"count": t.count, "amount_sum": cents_string(t.cents), "days": days});
    if let Some(ids) = t.ids {
        v["ids"] = json!(ids);
    }
    json_response(StatusCode::OK, &v)
}

// ---- query helpers ------------------------------------------------------------------------------

pub(crate) fn window(params: &HashMap<String, String>) -> Result<(i32, i32), String> {
    let date = |name: &str| -> Result<i32, String> {
        let v = params.get(name).ok_or_else(|| format!("{name} is required"))?;
        parse_date(v).ok_or_else(|| format!("{name} {v:?} is not a YYYY-MM-DD date"))
    };
    let (from, to) = (date("from")?, date("to")?);
    if from > to {
        return Err("from is after to".into());
    }
    if (to - from) as i64 >= MAX_WINDOW_DAYS {
        return Err(format!("window longer than {MAX_WINDOW_DAYS} days"));
    }
    Ok((from, to))
}

/// `a=1&b=2` with percent-decoding (and `+` as space, as forms encode it). A repeated
/// parameter is an error: it would hide a client bug.
pub(crate) fn parse_query(q: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " ")).ok_or("bad percent-encoding in query")?;
        let v = percent_decode(&v.replace('+', " ")).ok_or("bad percent-encoding in query")?;
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("parameter {k:?} given twice"));
        }
    }
    Ok(out)
}

/// Strict percent-decoding to UTF-8; None on a bad escape or invalid UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("S%20001").as_deref(), Some("S 001"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("from=2024-01-01&to=2024-01-02&page_token=p1.d20240101.n0.c%30").unwrap_or_default();
        assert_eq!(q.get("page_token").map(String::as_str), Some("p1.d20240101.n0.c0"));
        assert!(parse_query("a=1&a=2").is_err());
        let w = |s: &str| window(&parse_query(s).unwrap_or_default());
        assert!(w("from=2024-01-02&to=2024-01-01").is_err());
        assert!(w("from=2024-01-01").is_err());
        assert!(w("from=2024-13-01&to=2024-12-01").is_err());
        assert!(w("from=0001-01-01&to=9999-12-31").is_err());
        assert!(w("from=2024-01-01&to=2024-01-01").is_ok());
    }

    #[test]
    fn bearer() {
        let h = HeaderValue::from_static("Bearer s3cret");
        assert!(bearer_matches(Some(&h), "s3cret"));
        assert!(bearer_matches(Some(&HeaderValue::from_static("bearer s3cret")), "s3cret"));
        assert!(!bearer_matches(Some(&h), "other"));
        assert!(!bearer_matches(Some(&HeaderValue::from_static("s3cret")), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }
}
