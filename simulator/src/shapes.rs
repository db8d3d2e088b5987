//! The other API shapes: the same deterministic rows as `/v1`, served the way real point-of-sale
//! and tax APIs serve them (issue #13: declarative source profiles), so every shape a profile
//! can describe is tested end to end against the truth API.
//!
//! Every shape serves exactly the rows whose business day lies in the requested range, in v1
//! order (day, then row), with late rows, deletions and changes like v1. Each handler counts
//! itself in flight, sleeps `response_delay_ms`, validates (404 path, 401 credentials, 400
//! parameters), then goes through the fault rules (matched on store, stream and the page's
//! 0-based index) and logs. Bodies are written by hand into the reused buffer, like v1.
//!
//! Numeric ids are `YYYYMMDD * 1_000_000 + n`. See `http.rs` for the routes.

// Validation errors are ready responses, built at most once per request (as in `http.rs`).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, LINK, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::control::{valid_store, valid_stream, FaultKind};
use crate::data::{date_strings, json_escape_into, parse_date, write_u64, Cursor, DayCtx, StreamView, MAX_WINDOW_DAYS};
use crate::http::{
    bearer_matches, echo_body, error, full, json_response, parse_query, percent_decode, render, status_fault, window,
    Req, SimBody,
};
use crate::token::{self, PageToken};

/// Days from CE of 1970-01-01 (Unix day 0).
const UNIX_EPOCH_DAY: i64 = 719_163;
/// The `nexturl` shape's business time zone: fixed UTC+07:00 (Asia/Ho_Chi_Minh, no DST).
const LOCAL_OFFSET_S: i64 = 7 * 3600;
/// Client id the OAuth token endpoint accepts (the secret is `--token`).
pub const OAUTH_CLIENT_ID: &str = "orders_sync";
/// The only scope the token endpoint grants.
pub const OAUTH_SCOPE: &str = "orders.read";
/// Search bodies are tiny.
const MAX_SEARCH_BODY: usize = 64 * 1024;

type Resp = Response<SimBody>;

/// A wire shape: selects the truth API's id mapping (`shape=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    V1,
    NextUrl,
    Link,
    Offset,
    Page0,
    Page1,
    LastId,
    None,
}

impl Shape {
    pub const NAMES: &'static str = "v1, nexturl, link, offset, page0, page1, lastid, none";

    pub fn parse(name: &str) -> Option<Shape> {
        Some(match name {
            "v1" => Shape::V1,
            "nexturl" => Shape::NextUrl,
            "link" => Shape::Link,
            "offset" => Shape::Offset,
            "page0" => Shape::Page0,
            "page1" => Shape::Page1,
            "lastid" => Shape::LastId,
            "none" => Shape::None,
            _ => return None,
        })
    }

    /// The id a client of this shape maps row n to (as text): the v1 id, the numeric id, or
    /// `R<register>:<number>` for `link`.
    pub fn truth_id(self, view: &StreamView<'_>, ctx: &DayCtx<'_>, n: u32) -> String {
        match self {
            Shape::NextUrl | Shape::Offset => ctx.num_id(n).to_string(),
            Shape::Link => format!("R{}:{}", n % 3 + 1, ctx.num_id(n)),
            _ => view.id_string(ctx, n),
        }
    }
}

// ---- auth ------------------------------------------------------------------------------------

/// Where a shape expects its credential when the simulator runs with `--token T`.
#[derive(Clone, Copy)]
enum Auth {
    /// `X-Api-Key: T`
    ApiKeyHeader,
    /// `Authorization: Basic base64("orders_sync:T")`
    Basic,
    /// `?api_key=T`
    ApiKeyQuery,
    /// `Authorization: Bearer T`
    Bearer,
    /// `Authorization: Bearer <token issued by /oauth/token>`
    IssuedToken,
}

/// 401 unless the request carries the shape's credential. Bodies never quote what was sent.
fn check_auth(r: &Req<'_>, auth: Auth, params: &HashMap<String, String>) -> Result<(), Resp> {
    let Some(expected) = r.app.settings.token.as_deref() else {
        return Ok(());
    };
    let header = r.headers.get(AUTHORIZATION);
    let (ok, msg, challenge) = match auth {
        Auth::ApiKeyHeader => (
            r.headers.get("x-api-key").is_some_and(|v| v.as_bytes() == expected.as_bytes()),
            "missing or wrong X-Api-Key header",
            None,
        ),
        Auth::Basic => {
            let ok = basic_credentials(header).is_some_and(|(id, secret)| id == OAUTH_CLIENT_ID && secret == expected);
            (ok, "missing or wrong basic credentials", Some("Basic realm=\"orders_sync\""))
        }
        Auth::ApiKeyQuery => {
            (params.get("api_key").is_some_and(|k| k == expected), "missing or wrong api_key parameter", None)
        }
        Auth::Bearer => (bearer_matches(header, expected), "missing or wrong bearer token", Some("Bearer")),
        Auth::IssuedToken => {
            let token = header
                .and_then(|h| h.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .and_then(|(s, t)| s.eq_ignore_ascii_case("bearer").then_some(t));
            match token {
                None => (false, "missing bearer token", Some("Bearer")),
                Some(t) => (
                    r.app.token_valid(t),
                    "invalid_token: unknown, expired or revoked access token",
                    Some("Bearer error=\"invalid_token\""),
                ),
            }
        }
    };
    if ok {
        return Ok(());
    }
    let mut resp = error(StatusCode::UNAUTHORIZED, msg);
    if let Some(c) = challenge {
        resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    Err(resp)
}

/// (id, secret) of `Authorization: Basic ...`; both parts percent-decoded as RFC 6749 asks
/// (plain ones decode to themselves).
fn basic_credentials(h: Option<&HeaderValue>) -> Option<(String, String)> {
    let v = h?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(base64_decode(b64.trim())?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((
        percent_decode(id).unwrap_or_else(|| id.to_owned()),
        percent_decode(secret).unwrap_or_else(|| secret.to_owned()),
    ))
}

/// Standard base64 with or without padding; None on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

// ---- shared plumbing ------------------------------------------------------------------------------

/// What a validated request asks for, for fault matching.
struct Target {
    store: String,
    stream: String,
    page: u64,
}

/// Count in flight, delay, validate, then faults and the normal page. `validate` returns the
/// target and a value for `page`; `page(value, bad_first)` renders the normal response.
async fn serve<V>(
    r: &Req<'_>,
    store_hint: Option<&str>,
    huge_head: &'static [u8],
    validate: impl FnOnce() -> Result<(Target, V), Resp>,
    page: impl FnOnce(V, bool) -> Resp,
) -> Resp {
    let _in_flight = r.app.enter(store_hint);
    r.delay().await;
    let (t, v) = match validate() {
        Ok(x) => x,
        Err(resp) => {
            r.log(resp.status());
            return resp;
        }
    };
    let Some(fault) = r.app.take_fault(&t.store, &t.stream, t.page) else {
        r.log(StatusCode::OK);
        return page(v, false);
    };
    match fault.kind {
        FaultKind::Status => {
            let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.log(status);
            status_fault(status, &fault)
        }
        FaultKind::Timeout => {
            r.log(StatusCode::GATEWAY_TIMEOUT);
            tokio::time::sleep(fault.delay).await;
            error(StatusCode::GATEWAY_TIMEOUT, "injected fault: timeout")
        }
        FaultKind::Slow => {
            r.log(StatusCode::OK);
            tokio::time::sleep(fault.delay).await;
            page(v, false)
        }
        FaultKind::Malformed => {
            r.log(StatusCode::OK);
            let (parts, body) = page(v, false).into_parts();
            let body = match body {
                SimBody::Full(Some(b)) => SimBody::Full(Some(b.slice(..b.len() / 2))),
                other => other,
            };
            Response::from_parts(parts, body)
        }
        FaultKind::BadRecord => {
            r.log(StatusCode::OK);
            page(v, true)
        }
        FaultKind::Huge => {
            r.log(StatusCode::OK);
            let mut resp =
                Response::new(SimBody::Huge { head: Some(Bytes::from_static(huge_head)), remaining: fault.size_bytes });
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        FaultKind::EchoToken => {
            // Shapes answer every place as `body`, quoting whichever credential was sent.
            let (header, credential) = sent_credential(r);
            let resp = echo_body(&fault, &header, &credential);
            r.log(resp.status());
            resp
        }
    }
}

/// (what to quote as "you sent", the bare credential) for the `echo_token` fault.
fn sent_credential(r: &Req<'_>) -> (String, String) {
    if let Some(h) = r.headers.get(AUTHORIZATION) {
        let header = String::from_utf8_lossy(h.as_bytes()).into_owned();
        let cred = header.split_once(' ').map_or(header.as_str(), |(_, c)| c).to_owned();
        return (header, cred);
    }
    if let Some(h) = r.headers.get("x-api-key") {
        let k = String::from_utf8_lossy(h.as_bytes()).into_owned();
        return (format!("X-Api-Key: {k}"), k);
    }
    let key = parse_query(r.query).ok().and_then(|p| p.get("api_key").cloned()).unwrap_or_default();
    (format!("api_key={key}"), key)
}

fn bad(m: impl Into<String>) -> Resp {
    error(StatusCode::BAD_REQUEST, m)
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "unknown store path or stream")
}

fn method_not_allowed(want: &'static str) -> Resp {
    error(StatusCode::METHOD_NOT_ALLOWED, want)
}

/// What every GET shape checks after its path, in this order: the method, the query (parsed
/// by the caller), the credentials.
fn get_query(
    r: &Req<'_>,
    params: Result<HashMap<String, String>, String>,
    auth: Auth,
) -> Result<HashMap<String, String>, Resp> {
    if *r.method != Method::GET {
        return Err(method_not_allowed("use GET"));
    }
    let params = params.map_err(bad)?;
    check_auth(r, auth, &params)?;
    Ok(params)
}

fn path_store_stream(raw_store: &str, raw_stream: &str) -> Result<(String, String), Resp> {
    let store = percent_decode(raw_store).filter(|s| valid_store(s)).ok_or_else(not_found)?;
    let stream = percent_decode(raw_stream).filter(|s| valid_stream(s)).ok_or_else(not_found)?;
    Ok((store, stream))
}

fn required<'p>(params: &'p HashMap<String, String>, name: &str) -> Result<&'p str, String> {
    params.get(name).map(String::as_str).ok_or_else(|| format!("{name} is required"))
}

fn int_param<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str) -> Result<T, String> {
    let v = required(params, name)?;
    // Plain decimal only: `+5` or ` 5` hide client bugs.
    if v.is_empty() || !v.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-')) {
        return Err(format!("{name} {v:?} is not an integer"));
    }
    v.parse().map_err(|_| format!("{name} {v:?} is not an integer in range"))
}

/// A page size parameter in 1..=max_page_size.
fn size_param(r: &Req<'_>, params: &HashMap<String, String>, name: &str) -> Result<usize, String> {
    let max = r.app.settings.max_page_size;
    let n: usize = int_param(params, name)?;
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{name} must be in 1..={max}"))
    }
}

/// Valid day numbers: 0001-01-01 ..= 9999-12-31.
fn day_in_range(day: i64) -> bool {
    let max = parse_date("9999-12-31").unwrap_or(i32::MAX) as i64;
    (1..=max).contains(&day)
}

/// A day range `from..=to` (may be empty: `from > to`) checked against the window limit.
fn check_days(from: i64, to: i64) -> Result<(i32, i32), String> {
    if from > to {
        return Ok((1, 0));
    }
    if !day_in_range(from) || !day_in_range(to) {
        return Err("range outside years 0001..=9999".into());
    }
    if to - from >= MAX_WINDOW_DAYS {
        return Err(format!("window longer than {MAX_WINDOW_DAYS} days"));
    }
    Ok((from as i32, to as i32))
}

/// `ceil(a / b)` for b > 0.
fn div_ceil(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// The request's query without `drop` (raw, as sent), for building next-page URLs.
fn query_without(query: &str, drop: &str) -> String {
    let mut out = String::with_capacity(query.len() + 32);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if percent_decode(key).as_deref() == Some(drop) {
            continue;
        }
        out.push_str(pair);
        out.push('&');
    }
    out
}

/// `http://<Host><path>?<query without drop>&<drop>=<value>`.
fn next_url(r: &Req<'_>, drop: &str, value: &str) -> String {
    let host = r.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}{}?{}{drop}={value}", r.path, query_without(r.query, drop))
}

fn json_page(body: Bytes) -> Resp {
    full(StatusCode::OK, "application/json", body)
}

/// About how many bytes a page of `n` records needs.
fn reserve(n: usize) -> usize {
    n.min(4096) * 200 + 256
}

// ---- 1. nexturl ----------------------------------------------------------------------------------

struct NextUrlQ {
    store: String,
    stream: String,
    limit: usize,
    /// Range `start..end` (end exclusive) as row positions.
    start: Cursor,
    end: Cursor,
    token: Option<PageToken>,
    /// What the cursor is bound to.
    key: String,
}

/// `GET /nexturl/v2/orders?store_code&channel&since&until&limit[&cursor]`
pub(crate) async fn nexturl(r: &Req<'_>) -> Resp {
    let params = parse_query(r.query);
    let hint = params.as_ref().ok().and_then(|p| p.get("store_code").cloned());
    serve(
        r,
        hint.as_deref(),
        b"{\"result\":{\"items\":[",
        || {
            let params = get_query(r, params, Auth::ApiKeyHeader)?;
            let q = nexturl_query(r, &params).map_err(bad)?;
            let page = q.token.map_or(0, |t| t.page);
            Ok((Target { store: q.store.clone(), stream: q.stream.clone(), page }, q))
        },
        |q, bad_first| nexturl_page(r, &q, bad_first),
    )
    .await
}

fn nexturl_query(r: &Req<'_>, params: &HashMap<String, String>) -> Result<NextUrlQ, String> {
    let store = required(params, "store_code")?;
    if !valid_store(store) {
        return Err(format!("store_code {store:?} is not a store code"));
    }
    let stream = required(params, "channel")?;
    if !valid_stream(stream) {
        return Err(format!("channel {stream:?} is not a stream ([a-z_]{{1,32}})"));
    }
    let instant = |name: &str| -> Result<i64, String> {
        let v = required(params, name)?;
        let t = chrono::DateTime::parse_from_rfc3339(v)
            .map_err(|e| format!("{name} {v:?} is not an RFC 3339 timestamp ({e})"))?;
        // Rows happen on whole seconds: `row >= t` is `row >= ceil(t)`.
        Ok(t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0))
    };
    let (since, until) = (instant("since")?, instant("until")?);
    if since > until {
        return Err("since is after until".into());
    }
    let limit = size_param(r, params, "limit")?;
    // Local day and second of each bound; the row positions follow from that day's row count.
    let local =
        |t: i64| ((t + LOCAL_OFFSET_S).div_euclid(86_400) + UNIX_EPOCH_DAY, (t + LOCAL_OFFSET_S).rem_euclid(86_400));
    let ((d0, s0), (d1, s1)) = (local(since), local(until));
    if !day_in_range(d0) || !day_in_range(d1) {
        return Err("range outside years 0001..=9999".into());
    }
    if d1 - d0 > MAX_WINDOW_DAYS {
        return Err(format!("window longer than {MAX_WINDOW_DAYS} days"));
    }
    let (start, end) = {
        let data = r.app.data();
        let view = data.view(store, stream);
        let at = |d: i64, s: i64| {
            let ctx = view.day(d as i32);
            Cursor { day: d as i32, n: ctx.first_row_at_or_after(s as u32) }
        };
        (at(d0, s0), at(d1, s1))
    };
    let key = format!("nexturl\u{0}{store}\u{0}{stream}\u{0}{since}\u{0}{until}");
    let token = match params.get("cursor") {
        None => None,
        Some(c) => Some(token::decode_keyed(c, &key, start.day, end.day).ok_or("bad cursor")?),
    };
    Ok(NextUrlQ { store: store.to_owned(), stream: stream.to_owned(), limit, start, end, token, key })
}

/// `{"result":{"items":[...]},"links":{"next":"http://...&cursor=..."|null}}`
fn nexturl_page(r: &Req<'_>, q: &NextUrlQ, bad_first: bool) -> Resp {
    let start = q.token.map_or(q.start, |t| t.cursor);
    let body = render(reserve(q.limit), |buf| {
        buf.extend_from_slice(b"{\"result\":{\"items\":[");
        let data = r.app.data();
        let view = data.view(&q.store, &q.stream);
        let mut prev: (i32, [u8; 10]) = (i32::MIN, [b'0'; 10]);
        let (_, next) = view.write_rows(buf, start, q.end, q.limit, |buf, ctx, row, first| {
            if prev.0 != ctx.day {
                prev = (ctx.day, date_strings(ctx.day - 1).0);
            }
            StreamView::write_nexturl_record(buf, ctx, &prev.1, row, bad_first && first);
        });
        buf.extend_from_slice(b"]},\"links\":{\"next\":");
        match next {
            Some(cursor) => {
                let t = PageToken { page: q.token.map_or(0, |t| t.page).saturating_add(1), cursor };
                let url = next_url(r, "cursor", &token::encode_keyed(t, &q.key));
                buf.extend_from_slice(b"\"");
                let mut esc = Vec::with_capacity(url.len());
                json_escape_into(&mut esc, &url);
                buf.extend_from_slice(&esc);
                buf.extend_from_slice(b"\"}}");
            }
            None => buf.extend_from_slice(b"null}}"),
        }
    });
    json_page(body)
}

// ---- 2. link ---------------------------------------------------------------------------------------

struct DayPageQ {
    store: String,
    stream: String,
    from: i32,
    to: i32,
    size: usize,
    /// Rows before this page.
    offset: u64,
}

/// `GET /link/stores/{store}/{stream}/receipts?from_ts&to_ts&per_page[&page]`
pub(crate) async fn link(r: &Req<'_>, raw_store: &str, raw_stream: &str) -> Resp {
    let hint = percent_decode(raw_store);
    serve(
        r,
        hint.as_deref(),
        b"[",
        || {
            let (store, stream) = path_store_stream(raw_store, raw_stream)?;
            let params = get_query(r, parse_query(r.query), Auth::Basic)?;
            let q = (|| -> Result<(DayPageQ, u64), String> {
                let from_ts: i64 = int_param(&params, "from_ts")?;
                let to_ts: i64 = int_param(&params, "to_ts")?;
                if from_ts > to_ts {
                    return Err("from_ts is after to_ts".into());
                }
                // Days whose start (00:00 UTC) lies in [from_ts, to_ts).
                let lim = 400_000 * 366 * 86_400;
                if from_ts.abs() > lim || to_ts.abs() > lim {
                    return Err("range outside years 0001..=9999".into());
                }
                let first = div_ceil(from_ts, 86_400) + UNIX_EPOCH_DAY;
                let last = div_ceil(to_ts, 86_400) - 1 + UNIX_EPOCH_DAY;
                let (from, to) = check_days(first, last)?;
                let size = size_param(r, &params, "per_page")?;
                let page: u64 = if params.contains_key("page") { int_param(&params, "page")? } else { 1 };
                if page == 0 {
                    return Err("page is 1-based".into());
                }
                let offset = (page - 1).saturating_mul(size as u64);
                Ok((DayPageQ { store: store.clone(), stream: stream.clone(), from, to, size, offset }, page))
            })()
            .map_err(bad)?;
            Ok((Target { store, stream, page: q.1 - 1 }, q))
        },
        |(q, page), bad_first| {
            let mut next = false;
            let body = render(reserve(q.size), |buf| {
                buf.extend_from_slice(b"[");
                let data = r.app.data();
                let view = data.view(&q.store, &q.stream);
                if let Some(start) = view.seek(q.from, q.to, q.offset) {
                    let end = Cursor { day: q.to + 1, n: 0 };
                    let (_, n) = view.write_rows(buf, start, end, q.size, |buf, ctx, row, first| {
                        StreamView::write_link_record(buf, ctx, row, bad_first && first)
                    });
                    next = n.is_some();
                }
                buf.extend_from_slice(b"]");
            });
            let mut resp = json_page(body);
            if next {
                let url = next_url(r, "page", &(page + 1).to_string());
                if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
                    resp.headers_mut().insert(LINK, v);
                }
            }
            resp
        },
    )
    .await
}

// ---- 3. offset -------------------------------------------------------------------------------------

/// `GET /offset/api/{stream}?store&from_ms&to_ms&offset&limit[&api_key]`
pub(crate) async fn offset(r: &Req<'_>, raw_stream: &str) -> Resp {
    let params = parse_query(r.query);
    let hint = params.as_ref().ok().and_then(|p| p.get("store").cloned());
    serve(
        r,
        hint.as_deref(),
        b"{\"data\":{\"orders\":[",
        || {
            let stream = percent_decode(raw_stream).filter(|s| valid_stream(s)).ok_or_else(not_found)?;
            let params = get_query(r, params, Auth::ApiKeyQuery)?;
            let q = (|| -> Result<DayPageQ, String> {
                let store = required(&params, "store")?;
                if !valid_store(store) {
                    return Err(format!("store {store:?} is not a store code"));
                }
                let from_ms: i64 = int_param(&params, "from_ms")?;
                let to_ms: i64 = int_param(&params, "to_ms")?;
                if from_ms > to_ms {
                    return Err("from_ms is after to_ms".into());
                }
                let lim = 400_000 * 366 * 86_400_000;
                if from_ms.abs() > lim || to_ms.abs() > lim {
                    return Err("range outside years 0001..=9999".into());
                }
                // Days whose start lies in [from_ms, to_ms] (to_ms inclusive).
                let first = div_ceil(from_ms, 86_400_000) + UNIX_EPOCH_DAY;
                let last = to_ms.div_euclid(86_400_000) + UNIX_EPOCH_DAY;
                let (from, to) = check_days(first, last)?;
                let offset: u64 = int_param(&params, "offset")?;
                let size = size_param(r, &params, "limit")?;
                Ok(DayPageQ { store: store.to_owned(), stream: stream.clone(), from, to, size, offset })
            })()
            .map_err(bad)?;
            let page = q.offset / q.size as u64;
            Ok((Target { store: q.store.clone(), stream, page }, q))
        },
        |q, bad_first| {
            let body = render(reserve(q.size), |buf| {
                buf.extend_from_slice(b"{\"data\":{\"orders\":[");
                let data = r.app.data();
                let view = data.view(&q.store, &q.stream);
                if let Some(start) = view.seek(q.from, q.to, q.offset) {
                    let end = Cursor { day: q.to + 1, n: 0 };
                    view.write_rows(buf, start, end, q.size, |buf, ctx, row, first| {
                        StreamView::write_offset_record(buf, ctx, row, bad_first && first)
                    });
                }
                buf.extend_from_slice(b"]},\"meta\":{\"total\":");
                let total = if q.from <= q.to { view.count(q.from, q.to) } else { 0 };
                write_u64(buf, total);
                buf.extend_from_slice(b"}}");
            });
            json_page(body)
        },
    )
    .await
}

// ---- 4./5. page0, page1 ---------------------------------------------------------------------------

/// `GET /page{0,1}/{store}/{stream}?date_from&date_to&page&size` (date_to exclusive).
pub(crate) async fn page_number(r: &Req<'_>, raw_store: &str, raw_stream: &str, base: u64) -> Resp {
    let hint = percent_decode(raw_store);
    serve(
        r,
        hint.as_deref(),
        b"{\"items\":[",
        || {
            let (store, stream) = path_store_stream(raw_store, raw_stream)?;
            let params = get_query(r, parse_query(r.query), Auth::Bearer)?;
            let q = (|| -> Result<(DayPageQ, u64), String> {
                let date = |name: &str| -> Result<i64, String> {
                    let v = required(&params, name)?;
                    parse_date(v).map(i64::from).ok_or_else(|| format!("{name} {v:?} is not a YYYY-MM-DD date"))
                };
                let (from, to_excl) = (date("date_from")?, date("date_to")?);
                if from > to_excl {
                    return Err("date_from is after date_to".into());
                }
                let (from, to) = check_days(from, to_excl - 1)?;
                let page: u64 = int_param(&params, "page")?;
                if page < base {
                    return Err(format!("page is {base}-based"));
                }
                let size = size_param(r, &params, "size")?;
                let offset = (page - base).saturating_mul(size as u64);
                Ok((DayPageQ { store: store.clone(), stream: stream.clone(), from, to, size, offset }, page - base))
            })()
            .map_err(bad)?;
            Ok((Target { store, stream, page: q.1 }, q.0))
        },
        |q, bad_first| {
            let body = render(reserve(q.size), |buf| {
                buf.extend_from_slice(b"{\"items\":[");
                let data = r.app.data();
                let view = data.view(&q.store, &q.stream);
                if let Some(start) = view.seek(q.from, q.to, q.offset) {
                    let end = Cursor { day: q.to + 1, n: 0 };
                    view.write_rows(buf, start, end, q.size, |buf, ctx, row, first| {
                        view.write_record(buf, ctx, row, bad_first && first)
                    });
                }
                buf.extend_from_slice(b"]");
                if base == 1 {
                    let total = if q.from <= q.to { view.count(q.from, q.to) } else { 0 };
                    buf.extend_from_slice(b",\"total_pages\":");
                    write_u64(buf, total.div_ceil(q.size as u64));
                }
                buf.extend_from_slice(b"}");
            });
            json_page(body)
        },
    )
    .await
}

// ---- 6. lastid ----------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    store: String,
    stream: String,
    from: String,
    to: String,
    limit: u64,
    starting_after: Option<String>,
}

#[derive(Deserialize)]
struct StoreHint {
    store: Option<String>,
}

struct SearchQ {
    store: String,
    stream: String,
    start: Cursor,
    to: i32,
    limit: usize,
    /// `starting_after` was given.
    after: bool,
}

/// `POST /lastid/search` with `{"store","stream","from","to","limit"[,"starting_after"]}`.
pub(crate) async fn lastid(r: &Req<'_>, body: Incoming) -> Resp {
    // The body is read first: the store it names is what the request is in flight for.
    let body = match Limited::new(body, MAX_SEARCH_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(format!("cannot read body: {e}")),
    };
    let hint = body.as_ref().ok().and_then(|b| serde_json::from_slice::<StoreHint>(b).ok()).and_then(|h| h.store);
    serve(
        r,
        hint.as_deref(),
        b"{\"data\":[",
        || {
            if *r.method != Method::POST {
                return Err(method_not_allowed("use POST"));
            }
            check_auth(r, Auth::IssuedToken, &HashMap::new())?;
            let json_ct = r.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json_ct {
                return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"));
            }
            let body = body.map_err(bad)?;
            let q = search_query(r, &body).map_err(bad)?;
            // The page index is not known from a last-id cursor: 0 is the first page, 1 any later.
            let page = u64::from(q.after);
            Ok((Target { store: q.store.clone(), stream: q.stream.clone(), page }, q))
        },
        |q, bad_first| {
            let body = render(reserve(q.limit), |buf| {
                buf.extend_from_slice(b"{\"data\":[");
                let data = r.app.data();
                let view = data.view(&q.store, &q.stream);
                let end = Cursor { day: q.to + 1, n: 0 };
                let (_, next) = if q.start.day <= q.to {
                    view.write_rows(buf, q.start, end, q.limit, |buf, ctx, row, first| {
                        view.write_record(buf, ctx, row, bad_first && first)
                    })
                } else {
                    (0, None)
                };
                buf.extend_from_slice(if next.is_some() { b"],\"has_more\":true}" } else { b"],\"has_more\":false}" });
            });
            json_page(body)
        },
    )
    .await
}

fn search_query(r: &Req<'_>, body: &[u8]) -> Result<SearchQ, String> {
    let b: SearchBody = serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))?;
    if !valid_store(&b.store) {
        return Err(format!("store {:?} is not a store code", b.store));
    }
    if !valid_stream(&b.stream) {
        return Err(format!("stream {:?} is not a stream ([a-z_]{{1,32}})", b.stream));
    }
    let date = |name: &str, v: &str| parse_date(v).ok_or_else(|| format!("{name} {v:?} is not a YYYY-MM-DD date"));
    let (from, to) = (date("from", &b.from)?, date("to", &b.to)?);
    if from > to {
        return Err("from is after to".into());
    }
    check_days(from as i64, to as i64)?;
    let max = r.app.settings.max_page_size;
    if !(1..=max as u64).contains(&b.limit) {
        return Err(format!("limit must be in 1..={max}"));
    }
    let mut start = Cursor { day: from, n: 0 };
    if let Some(id) = &b.starting_after {
        let data = r.app.data();
        let view = data.view(&b.store, &b.stream);
        let c = view.parse_any_id(id).ok_or_else(|| {
            format!("starting_after {id:?} is not an id of store {:?} stream {:?}", b.store, b.stream)
        })?;
        let after = Cursor { day: c.day, n: c.n.saturating_add(1) };
        if (after.day, after.n) > (start.day, start.n) {
            start = after;
        }
    }
    let after = b.starting_after.is_some();
    Ok(SearchQ { store: b.store, stream: b.stream, start, to, limit: b.limit as usize, after })
}

// ---- 7. none -------------------------------------------------------------------------------------------

/// `GET /none/{store}/{stream}?from&to` (inclusive): the whole window in one response.
pub(crate) async fn no_paging(r: &Req<'_>, raw_store: &str, raw_stream: &str) -> Resp {
    let hint = percent_decode(raw_store);
    serve(
        r,
        hint.as_deref(),
        b"{\"orders\":[",
        || {
            let (store, stream) = path_store_stream(raw_store, raw_stream)?;
            let params = get_query(r, parse_query(r.query), Auth::Bearer)?;
            let (from, to) = window(&params).map_err(bad)?;
            Ok((Target { store: store.clone(), stream: stream.clone(), page: 0 }, (store, stream, from, to)))
        },
        |(store, stream, from, to), bad_first| {
            let body = render(reserve(4096), |buf| {
                buf.extend_from_slice(b"{\"orders\":[");
                let data = r.app.data();
                let view = data.view(&store, &stream);
                let (start, end) = (Cursor { day: from, n: 0 }, Cursor { day: to + 1, n: 0 });
                view.write_rows(buf, start, end, usize::MAX, |buf, ctx, row, first| {
                    view.write_record(buf, ctx, row, bad_first && first)
                });
                buf.extend_from_slice(b"]}");
            });
            json_page(body)
        },
    )
    .await
}

// ---- OAuth2 client credentials ---------------------------------------------------------------------------

/// `POST /oauth/token` (form body `grant_type=client_credentials&client_id&client_secret&scope`,
/// or the client in a Basic header). Logged, never delayed, faulted or counted in flight.
pub(crate) async fn oauth_token(r: &Req<'_>, body: Incoming) -> Resp {
    let mut secret_in_body = false;
    let resp = token_response(r, body, &mut secret_in_body).await;
    // `authorization`: a client secret was sent, in the header or the form.
    let logged = Req { auth_present: r.auth_present || secret_in_body, ..*r };
    logged.log(resp.status());
    resp
}

async fn token_response(r: &Req<'_>, body: Incoming, secret_in_body: &mut bool) -> Resp {
    let oauth_error = |status: StatusCode, code: &str, description: &str| {
        let mut resp = json_response(status, &json!({"error": code, "error_description": description}));
        resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    };
    if *r.method != Method::POST {
        return method_not_allowed("use POST");
    }
    let form_ct = r.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form_ct {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let body = match Limited::new(body, MAX_SEARCH_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "cannot read body"),
    };
    let Some(form) = std::str::from_utf8(&body).ok().and_then(|s| parse_query(s).ok()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad form body");
    };
    *secret_in_body = form.contains_key("client_secret");
    let Some(grant) = form.get("grant_type") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required");
    };
    let header = r.headers.get(AUTHORIZATION);
    let (id, secret) = match basic_credentials(header) {
        Some(c) => (Some(c.0), Some(c.1)),
        None => (form.get("client_id").cloned(), form.get("client_secret").cloned()),
    };
    let secret_ok = match r.app.settings.token.as_deref() {
        Some(expected) => secret.as_deref() == Some(expected),
        None => true,
    };
    if id.as_deref() != Some(OAUTH_CLIENT_ID) || !secret_ok {
        let mut resp = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client or wrong secret");
        if header.is_some() {
            resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"orders_sync\""));
        }
        return resp;
    }
    if grant != "client_credentials" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "only client_credentials");
    }
    if let Some(scope) = form.get("scope") {
        if scope.split(' ').filter(|s| !s.is_empty()).any(|s| s != OAUTH_SCOPE) || scope.trim().is_empty() {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "the only scope is orders.read");
        }
    }
    let (token, ttl) = r.app.issue_token();
    let mut resp = json_response(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": OAUTH_SCOPE}),
    );
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_helpers() {
        assert_eq!(base64_decode("b3JkZXJzX3N5bmM6cw==").as_deref(), Some(&b"orders_sync:s"[..]));
        assert_eq!(base64_decode("b3JkZXJzX3N5bmM6cw").as_deref(), Some(&b"orders_sync:s"[..]));
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("Y").as_deref(), None);
        assert_eq!(base64_decode("a*b=").as_deref(), None);
        assert_eq!(div_ceil(1, 86_400), 1);
        assert_eq!(div_ceil(0, 86_400), 0);
        assert_eq!(div_ceil(-1, 86_400), 0);
        assert_eq!(div_ceil(-86_401, 86_400), -1);
        assert_eq!(query_without("a=1&cursor=x&b=2", "cursor"), "a=1&b=2&");
        assert_eq!(query_without("", "page"), "");
        assert_eq!(Shape::parse("link"), Some(Shape::Link));
        assert_eq!(Shape::parse("v2"), None);
    }
}
