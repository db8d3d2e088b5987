//! The API shapes over real HTTP: the real binary on an ephemeral loopback port, each shape
//! paged to the end like a client would and compared with the truth API's ids for that shape.

use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::Server;

const TOKEN: &str = "s3cret/Tok+en=42";

impl Server {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    fn json(&self, path: &str) -> Value {
        let r = self.get(path).send().expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().expect("JSON")
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = self.client.post(self.url(path)).json(&body).send().expect("POST");
        assert_eq!(r.status(), StatusCode::OK, "{path} {body}");
        r.json().expect("JSON")
    }

    fn truth(&self, shape: &str, store: &str, stream: &str, from: &str, to: &str) -> Value {
        self.json(&format!("/_truth/stores/{store}/{stream}?from={from}&to={to}&ids=true&shape={shape}"))
    }

    /// Irregular data: late rows, deletions (a whole day too), a change.
    fn edit(&self, store: &str, stream: &str) {
        let rows = |date: &str, extra: Value| {
            let mut b = json!({"store": store, "stream": stream, "date": date});
            if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            b
        };
        self.post("/_control/late_rows", rows("2024-06-02", json!({"count": 3})));
        self.post("/_control/delete_rows", rows("2024-06-01", json!({"count": 2})));
        self.post("/_control/delete_rows", rows("2024-06-03", json!({"count": 100})));
        self.post("/_control/change_rows", rows("2024-06-04", json!({"count": 1})));
    }

    fn oauth(&self, secret: &str) -> String {
        let r = self
            .client
            .post(self.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "orders_sync"),
                ("client_secret", secret),
                ("scope", "orders.read"),
            ])
            .send()
            .expect("POST token");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().expect("JSON");
        assert_eq!(v["token_type"], "Bearer");
        v["access_token"].as_str().expect("access_token").to_owned()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x.as_str().expect("string").to_owned()).collect()
}

/// Exact cents of a JSON number or numeric string.
fn cents_of(v: &Value) -> Option<i64> {
    let s = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.as_number().expect("number").to_string(),
    };
    let (neg, s) = s.strip_prefix('-').map_or((false, s.as_str()), |r| (true, r));
    let (i, f) = s.split_once('.').unwrap_or((s, "0"));
    let v = i.parse::<i64>().expect("int") * 100 + format!("{f:0<2}").parse::<i64>().expect("frac");
    Some(if neg { -v } else { v })
}

fn truth_cents(t: &Value) -> i64 {
    cents_of(&t["amount_sum"]).expect("amount_sum")
}

fn unix_day(date: &str) -> i64 {
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("date");
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp()
}

fn next_day(date: &str) -> String {
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("date");
    d.succ_opt().expect("next").format("%Y-%m-%d").to_string()
}

/// RFC 3339 at local midnight +07:00, query-encoded.
fn local_midnight(date: &str) -> String {
    format!("{date}T00:00:00%2B07:00")
}

const STORE: &str = "S%20001";
const FROM: &str = "2024-05-31";
const TO: &str = "2024-06-05";

// ---- the shapes' clients --------------------------------------------------------------------

/// Follow `links.next` to the end; (ids, cents, records).
fn nexturl_all(s: &Server, since: &str, until: &str, limit: usize) -> (Vec<String>, i64, Vec<Value>) {
    let mut url =
        Some(format!("/nexturl/v2/orders?store_code={STORE}&channel=orders&since={since}&until={until}&limit={limit}"));
    let (mut ids, mut cents, mut recs) = (Vec::new(), 0, Vec::new());
    let mut pages = 0;
    while let Some(u) = url {
        let r = s.get(&u).header("X-Api-Key", TOKEN).send().expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{u}");
        let v: Value = r.json().expect("JSON");
        let items = v["result"]["items"].as_array().expect("items");
        assert!(items.len() <= limit);
        for it in items {
            ids.push(it["order"]["number"].as_u64().expect("numeric id").to_string());
            assert!(it["total"].is_null() || it["total"].is_string(), "{it}");
            cents += cents_of(&it["total"]).unwrap_or(0);
            recs.push(it.clone());
        }
        url = v["links"]["next"].as_str().map(str::to_owned);
        if let Some(n) = &url {
            assert!(n.starts_with(&s.base), "absolute next URL on our host: {n}");
            assert_eq!(items.len(), limit);
        }
        pages += 1;
        assert!(pages < 10_000);
    }
    (ids, cents, recs)
}

fn link_all(s: &Server, from_ts: i64, to_ts: i64, per_page: usize) -> (Vec<String>, i64) {
    let mut url =
        Some(format!("/link/stores/{STORE}/orders/receipts?from_ts={from_ts}&to_ts={to_ts}&per_page={per_page}"));
    let (mut ids, mut cents) = (Vec::new(), 0);
    while let Some(u) = url {
        let r = s.get(&u).basic_auth("orders_sync", Some(TOKEN)).send().expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{u}");
        url = r.headers().get("link").map(|l| {
            let l = l.to_str().expect("ascii");
            let (u, rel) = l.split_once(">; ").expect("link format");
            assert_eq!(rel, "rel=\"next\"");
            u.trim_start_matches('<').to_owned()
        });
        let v: Vec<Value> = r.json().expect("top-level array");
        assert!(v.len() <= per_page);
        for rec in &v {
            ids.push(format!(
                "{}:{}",
                rec["register"].as_str().expect("register"),
                rec["receipt_no"].as_u64().expect("no")
            ));
            assert!(rec["amount_cents"].is_null() || rec["amount_cents"].is_i64());
            cents += rec["amount_cents"].as_i64().unwrap_or(0);
            assert!(rec["business_day"].is_string());
        }
    }
    (ids, cents)
}

fn offset_all(s: &Server, from: &str, to: &str, limit: usize) -> (Vec<String>, i64) {
    let (from_ms, to_ms) = (unix_day(from) * 1000, unix_day(&next_day(to)) * 1000 - 1);
    let (mut ids, mut cents, mut offset) = (Vec::new(), 0, 0);
    loop {
        let u = format!(
            "/offset/api/orders?store={STORE}&from_ms={from_ms}&to_ms={to_ms}&offset={offset}&limit={limit}&api_key={}",
            TOKEN.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D")
        );
        let v = s.json(&u);
        let orders = v["data"]["orders"].as_array().expect("orders");
        for o in orders {
            ids.push(o["id"].as_u64().expect("numeric id").to_string());
            cents += cents_of(&o["amount"]).unwrap_or(0);
        }
        offset += limit;
        if offset as u64 >= v["meta"]["total"].as_u64().expect("total") {
            assert!(orders.len() <= limit);
            return (ids, cents);
        }
        assert_eq!(orders.len(), limit);
    }
}

fn v1_ids(recs: &[Value]) -> Vec<String> {
    recs.iter().map(|r| r["id"].as_str().expect("id").to_owned()).collect()
}

fn v1_cents(recs: &[Value]) -> i64 {
    recs.iter().filter_map(|r| cents_of(&r["amount"])).sum()
}

fn page_all(s: &Server, base: u64, from: &str, to_excl: &str, size: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut page = base;
    loop {
        let u = format!("/page{base}/{STORE}/orders?date_from={from}&date_to={to_excl}&page={page}&size={size}");
        let r = s.get(&u).bearer_auth(TOKEN).send().expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{u}");
        let v: Value = r.json().expect("JSON");
        let items = v["items"].as_array().expect("items").clone();
        assert!(items.len() <= size);
        let done = if base == 0 { items.is_empty() } else { page >= v["total_pages"].as_u64().expect("total_pages") };
        out.extend(items);
        if done {
            return out;
        }
        page += 1;
    }
}

fn search(s: &Server, token: &str, body: Value) -> Response {
    s.client.post(s.url("/lastid/search")).bearer_auth(token).json(&body).send().expect("POST")
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn nexturl_pages_to_truth_and_converts_time() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "100"]);
    s.edit("S 001", "orders");
    let truth = s.truth("nexturl", STORE, "orders", FROM, TO);
    assert!(truth["count"].as_u64().expect("count") > 20);
    for limit in [1, 4, 7, 100] {
        let (ids, cents, recs) = nexturl_all(&s, &local_midnight(FROM), &local_midnight(&next_day(TO)), limit);
        assert_eq!(ids, strings(&truth["ids"]), "limit {limit}");
        assert_eq!(cents, truth_cents(&truth));
        if limit == 100 {
            // created_at is UTC with Z; in +07:00 it falls on the row's day (its id's YYYYMMDD).
            let tz = FixedOffset::east_opt(7 * 3600).expect("offset");
            for (id, r) in ids.iter().zip(&recs) {
                let at = r["created_at"].as_str().expect("created_at");
                assert!(at.ends_with('Z') && at.len() == 20, "{at}");
                let local = DateTime::parse_from_rfc3339(at).expect("rfc3339").with_timezone(&tz);
                assert_eq!(local.format("%Y%m%d").to_string(), id[..8], "{at}");
                assert!(r["customer"].is_string() && r["qty"].is_u64() && r["order"]["channel"].is_string());
            }
            // The first row of a day is at 00:00 local = 17:00 UTC the day before.
            assert_eq!(recs[0]["created_at"], "2024-05-30T17:00:00Z");
        }
    }
    // The same range in UTC; the `+` unencoded is a space and refused.
    let (ids, _, _) = nexturl_all(&s, "2024-05-30T17:00:00Z", "2024-06-05T17:00:00Z", 50);
    assert_eq!(ids, strings(&truth["ids"]));

    // A partial range serves exactly the rows whose instant is in [since, until).
    let (_, _, day) = nexturl_all(&s, &local_midnight("2024-06-02"), &local_midnight("2024-06-03"), 100);
    let since = Utc.with_ymd_and_hms(2024, 6, 2, 5, 0, 0).single().expect("since"); // 12:00 +07
    let until = Utc.with_ymd_and_hms(2024, 6, 2, 11, 0, 1).single().expect("until");
    let want: Vec<&Value> = day
        .iter()
        .filter(|r| {
            let t = DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap_or("")).expect("t");
            t >= since && t < until
        })
        .collect();
    assert!(!want.is_empty() && want.len() < day.len());
    let (_, _, got) = nexturl_all(&s, "2024-06-02T12:00:00%2B07:00", "2024-06-02T11:00:00.5Z", 3);
    assert_eq!(got.iter().collect::<Vec<_>>(), want);

    // Auth: header only, nothing echoed.
    let first = format!(
        "/nexturl/v2/orders?store_code={STORE}&channel=orders&since={}&until={}&limit=5",
        local_midnight(FROM),
        local_midnight(TO)
    );
    assert_eq!(s.get(&first).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    let wrong = s.get(&first).header("X-Api-Key", "wrong-key-x").send().expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body = wrong.text().expect("body");
    assert!(!body.contains("wrong-key-x") && !body.contains(TOKEN), "{body}");
    assert_eq!(s.get(&first).bearer_auth(TOKEN).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    // Params.
    for bad in [
        first.replace("limit=5", "limit=0"),
        first.replace("limit=5", "limit=101"),
        first.replace("&limit=5", ""),
        first.replace("since=", "sinc="),
        first.replace("%2B07:00", "+07:00"),
        first.replace(&local_midnight(FROM), "2024-05-31"),
        first.replace("channel=orders", "channel=Orders"),
        first.replace(&local_midnight(FROM), &local_midnight("2024-06-06")),
        format!("{first}&cursor=p1.d20240601.n0.c0"),
    ] {
        let r = s.get(&bad).header("X-Api-Key", TOKEN).send().expect("GET");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.json::<Value>().expect("JSON")["error"].is_string());
    }
    // A cursor from another range is refused.
    let p0 = s.get(&first).header("X-Api-Key", TOKEN).send().expect("GET").json::<Value>().expect("JSON");
    let next = p0["links"]["next"].as_str().expect("next").to_owned();
    let cursor = next.split("cursor=").nth(1).expect("cursor").to_owned();
    let other = format!("{}&cursor={cursor}", first.replace("limit=5", "limit=6"));
    assert_eq!(s.get(&other).header("X-Api-Key", TOKEN).send().expect("GET").status(), StatusCode::OK);
    let other = format!("{}&cursor={cursor}", first.replace("channel=orders", "channel=sales"));
    assert_eq!(s.get(&other).header("X-Api-Key", TOKEN).send().expect("GET").status(), StatusCode::BAD_REQUEST);
}

#[test]
fn link_header_pages_to_truth() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "100"]);
    s.edit("S 001", "orders");
    let truth = s.truth("link", STORE, "orders", FROM, TO);
    let (f, t) = (unix_day(FROM), unix_day(&next_day(TO)));
    for per_page in [1, 5, 7, 100] {
        let (ids, cents) = link_all(&s, f, t, per_page);
        assert_eq!(ids, strings(&truth["ids"]), "per_page {per_page}");
        assert_eq!(cents, truth_cents(&truth));
    }
    assert!(strings(&truth["ids"])[0].starts_with("R1:20240531000000"));
    // Partial ranges: days whose 00:00Z lies in [from_ts, to_ts).
    let one = s.truth("link", STORE, "orders", "2024-06-01", "2024-06-01");
    assert_eq!(link_all(&s, f + 1, unix_day("2024-06-02") - 5, 100).0, strings(&one["ids"]));
    assert!(link_all(&s, f + 1, f + 100, 100).0.is_empty());
    // Explicit page, past the end: empty array, no Link.
    let base = format!("/link/stores/{STORE}/orders/receipts?from_ts={f}&to_ts={t}&per_page=10");
    let r = s.get(&format!("{base}&page=99")).basic_auth("orders_sync", Some(TOKEN)).send().expect("GET");
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.text().expect("body"), "[]");
    // Auth.
    assert_eq!(s.get(&base).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    let wrong = s.get(&base).basic_auth("orders_sync", Some("nope-nope")).send().expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers()["www-authenticate"].to_str().expect("ascii").starts_with("Basic"));
    assert_eq!(s.get(&base).basic_auth("someone", Some(TOKEN)).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get(&base).bearer_auth(TOKEN).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    for bad in [
        base.replace("per_page=10", "per_page=0"),
        base.replace("&per_page=10", ""),
        format!("{base}&page=0"),
        format!("{base}&page=x"),
        base.replace(&format!("from_ts={f}"), "from_ts=2024-05-31"),
        base.replace(&format!("from_ts={f}"), &format!("from_ts={}", t + 1)),
    ] {
        let r = s.get(&bad).basic_auth("orders_sync", Some(TOKEN)).send().expect("GET");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = s.get(&base.replace("/orders/", "/Orders/")).basic_auth("orders_sync", Some(TOKEN)).send().expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[test]
fn offset_pages_to_truth_and_masks_api_key() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "100"]);
    s.edit("S 001", "orders");
    let truth = s.truth("offset", STORE, "orders", FROM, TO);
    for limit in [1, 3, 7, 100] {
        let (ids, cents) = offset_all(&s, FROM, TO, limit);
        assert_eq!(ids, strings(&truth["ids"]), "limit {limit}");
        assert_eq!(cents, truth_cents(&truth));
    }
    let (f, t) = (unix_day(FROM) * 1000, unix_day(&next_day(TO)) * 1000 - 1);
    let base = format!("/offset/api/orders?store={STORE}&from_ms={f}&to_ms={t}&offset=0&limit=10");
    let v = s.json(&format!("{base}&api_key=s3cret%2FTok%2Ben%3D42"));
    assert_eq!(v["meta"]["total"], truth["count"]);
    assert!(v["data"]["orders"][0]["amount"].is_number() || v["data"]["orders"][0]["amount"].is_null());
    assert_eq!(v["data"]["orders"][0]["date"], FROM);
    assert_eq!(s.get(&base).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    let wrong = s.get(&format!("{base}&api_key=guess-guess")).send().expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(!wrong.text().expect("body").contains("guess-guess"));
    for bad in [
        base.replace("offset=0&", ""),
        base.replace("offset=0", "offset=-1"),
        base.replace("limit=10", "limit=101"),
        base.replace(&format!("store={STORE}&"), ""),
        base.replace(&format!("to_ms={t}"), &format!("to_ms={}", f - 1)),
    ] {
        let r = s.get(&format!("{bad}&api_key=s3cret%2FTok%2Ben%3D42")).send().expect("GET");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // The log never holds the key.
    let log = s.json("/_control/requests");
    let text = log.to_string();
    assert!(!text.contains("s3cret") && !text.contains("guess-guess"), "{text}");
    let last = log["recent"].as_array().expect("recent").last().expect("entry").clone();
    assert!(last["query"].as_str().expect("query").ends_with("api_key=***"), "{last}");
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/offset/api/orders");
    assert_eq!(last["authorization"], true);
}

#[test]
fn page_number_shapes_page_to_truth() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "100"]);
    s.edit("S 001", "orders");
    let truth = s.truth("page0", STORE, "orders", FROM, TO);
    assert_eq!(truth["ids"], s.truth("page1", STORE, "orders", FROM, TO)["ids"]);
    assert_eq!(truth["ids"], s.truth("v1", STORE, "orders", FROM, TO)["ids"]);
    let to_excl = next_day(TO);
    for size in [1, 4, 7, 100] {
        for base in [0, 1] {
            let recs = page_all(&s, base, FROM, &to_excl, size);
            assert_eq!(v1_ids(&recs), strings(&truth["ids"]), "page{base} size {size}");
            assert_eq!(v1_cents(&recs), truth_cents(&truth));
        }
    }
    // Records are exactly v1's.
    let v1 = s
        .get(&format!("/v1/stores/{STORE}/orders?from={FROM}&to={TO}&page_size=5"))
        .bearer_auth(TOKEN)
        .send()
        .expect("GET")
        .json::<Value>()
        .expect("JSON");
    let p0 = s
        .get(&format!("/page0/{STORE}/orders?date_from={FROM}&date_to={to_excl}&page=0&size=5"))
        .bearer_auth(TOKEN)
        .send()
        .expect("GET")
        .json::<Value>()
        .expect("JSON");
    assert_eq!(p0["items"], v1["data"]);
    let p1 = format!("/page1/{STORE}/orders?date_from={FROM}&date_to={to_excl}&page=1&size=5");
    let v = s.get(&p1).bearer_auth(TOKEN).send().expect("GET").json::<Value>().expect("JSON");
    assert_eq!(v["items"], v1["data"]);
    assert_eq!(v["total_pages"], truth["count"].as_u64().expect("count").div_ceil(5));
    // Empty window: no pages.
    let empty = format!("/page1/{STORE}/orders?date_from={FROM}&date_to={FROM}&page=1&size=5");
    let body = s.get(&empty).bearer_auth(TOKEN).send().expect("GET").text().expect("body");
    assert_eq!(body, r#"{"items":[],"total_pages":0}"#);
    let empty0 = format!("/page0/{STORE}/orders?date_from={FROM}&date_to={to_excl}&page=999&size=5");
    let body = s.get(&empty0).bearer_auth(TOKEN).send().expect("GET").text().expect("body");
    assert_eq!(body, r#"{"items":[]}"#);
    // Auth and params.
    assert_eq!(s.get(&p1).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get(&p1).bearer_auth("nope").send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    for bad in [
        p1.replace("page=1", "page=0"),
        p1.replace("size=5", "size=0"),
        p1.replace("&size=5", ""),
        p1.replace(&format!("date_to={to_excl}"), "date_to=2024-05-30"),
        p1.replace(&format!("date_from={FROM}"), "date_from=2024-5-31"),
        p1.replace("page1", "page0").replace("page=1", "page=-1"),
    ] {
        assert_eq!(s.get(&bad).bearer_auth(TOKEN).send().expect("GET").status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[test]
fn lastid_with_oauth_pages_to_truth_and_refreshes_after_revoke() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "100"]);
    s.edit("S 001", "orders");
    let truth = s.truth("lastid", "S%20001", "orders", FROM, TO);
    let mut token = s.oauth(TOKEN);
    for limit in [1, 6, 100] {
        let mut ids = Vec::new();
        let mut cents = 0;
        let mut after: Option<String> = None;
        let mut refreshed = false;
        loop {
            let mut body = json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": limit});
            if let Some(a) = &after {
                body["starting_after"] = json!(a);
            }
            let r = search(&s, &token, body.clone());
            if r.status() == StatusCode::UNAUTHORIZED {
                // Refresh once on a 401, as the extension does.
                assert!(!refreshed);
                token = s.oauth(TOKEN);
                refreshed = true;
                continue;
            }
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().expect("JSON");
            let data = v["data"].as_array().expect("data").clone();
            ids.extend(v1_ids(&data));
            cents += v1_cents(&data);
            if ids.len() == 3 && limit == 1 {
                // Mid-chain revocation: the next request is a 401, a new token continues.
                s.post("/_control/revoke_tokens", json!({}));
            }
            if v["has_more"] == false {
                break;
            }
            assert_eq!(data.len(), limit);
            after = Some(ids.last().expect("an id").clone());
        }
        assert_eq!(ids, strings(&truth["ids"]), "limit {limit}");
        assert_eq!(cents, truth_cents(&truth));
        assert_eq!(refreshed, limit == 1);
    }
    // Token endpoint: wrong client, wrong scope, bad grant, Basic header instead of the form.
    let form = |pairs: &[(&str, &str)]| s.client.post(s.url("/oauth/token")).form(pairs).send().expect("POST");
    let r = form(&[("grant_type", "client_credentials"), ("client_id", "orders_sync"), ("client_secret", "nope")]);
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().expect("JSON")["error"], "invalid_client");
    let r = form(&[("grant_type", "client_credentials"), ("client_id", "other"), ("client_secret", TOKEN)]);
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", "orders_sync"),
        ("client_secret", TOKEN),
        ("scope", "orders.write"),
    ]);
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().expect("JSON")["error"], "invalid_scope");
    let r = form(&[("grant_type", "password"), ("client_id", "orders_sync"), ("client_secret", TOKEN)]);
    assert_eq!(r.json::<Value>().expect("JSON")["error"], "unsupported_grant_type");
    let r = s
        .client
        .post(s.url("/oauth/token"))
        .basic_auth("orders_sync", Some(TOKEN))
        .form(&[("grant_type", "client_credentials"), ("scope", "orders.read")])
        .send()
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().expect("JSON");
    assert_eq!(v["expires_in"], 3600);
    let basic_token = v["access_token"].as_str().expect("token").to_owned();
    assert_ne!(basic_token, token);
    let ok = json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": 5});
    assert_eq!(search(&s, &basic_token, ok.clone()).status(), StatusCode::OK);
    // The static token is not an access token; no token is a 401.
    assert_eq!(search(&s, TOKEN, ok.clone()).status(), StatusCode::UNAUTHORIZED);
    let r = s.client.post(s.url("/lastid/search")).json(&ok).send().expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Expiry: ttl 0 issues tokens that are already expired.
    s.post("/_control/config", json!({"token_ttl_s": 0}));
    let expired = s.oauth(TOKEN);
    assert_eq!(search(&s, &expired, ok.clone()).status(), StatusCode::UNAUTHORIZED);
    // Bad bodies.
    for bad in [
        json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO}),
        json!({"store": "S 001", "stream": "orders", "from": TO, "to": FROM, "limit": 5}),
        json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": 0}),
        json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": 5, "extra": 1}),
        json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": 5, "starting_after": "orders-S 002-20240601-000001"}),
        json!({"store": "S 001", "stream": "orders", "from": FROM, "to": TO, "limit": 5, "starting_after": 7}),
    ] {
        assert_eq!(search(&s, &basic_token, bad.clone()).status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = s.client.post(s.url("/lastid/search")).bearer_auth(&basic_token).body(ok.to_string()).send().expect("POST");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = s.get("/lastid/search").bearer_auth(&basic_token).send().expect("GET");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Token requests are logged without their secret.
    let log = s.json("/_control/requests");
    assert!(!log.to_string().contains("s3cret"));
    let recent = log["recent"].as_array().expect("recent");
    assert!(recent.iter().any(|e| e["path"] == "/oauth/token"
        && e["method"] == "POST"
        && e["status"] == 200
        && e["authorization"] == true
        && e["query"] == ""));
    assert!(recent.iter().any(|e| e["path"] == "/lastid/search" && e["status"] == 401));
}

#[test]
fn none_serves_the_window_in_one_response() {
    let s = Server::start(&["--token", TOKEN, "--rows-per-day", "7", "--max-page-size", "5"]);
    s.edit("S 001", "orders");
    let truth = s.truth("none", STORE, "orders", FROM, TO);
    let u = format!("/none/{STORE}/orders?from={FROM}&to={TO}");
    let v = s.get(&u).bearer_auth(TOKEN).send().expect("GET").json::<Value>().expect("JSON");
    let recs = v["orders"].as_array().expect("orders").clone();
    assert_eq!(v1_ids(&recs), strings(&truth["ids"]));
    assert_eq!(v1_cents(&recs), truth_cents(&truth));
    assert_eq!(s.get(&u).send().expect("GET").status(), StatusCode::UNAUTHORIZED);
    for bad in [format!("/none/{STORE}/orders?from={FROM}"), format!("/none/{STORE}/orders?from={TO}&to={FROM}")] {
        assert_eq!(s.get(&bad).bearer_auth(TOKEN).send().expect("GET").status(), StatusCode::BAD_REQUEST);
    }
    let r = s.client.post(s.url(&u)).bearer_auth(TOKEN).send().expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn without_token_no_auth_is_needed() {
    let s = Server::start(&["--rows-per-day", "3"]);
    let (f, t) = (unix_day(FROM), unix_day(&next_day(FROM)));
    for u in [
        format!(
            "/nexturl/v2/orders?store_code=S1&channel=sales&since={}&until={}&limit=10",
            local_midnight(FROM),
            local_midnight(TO)
        ),
        format!("/link/stores/S1/sales/receipts?from_ts={f}&to_ts={t}&per_page=10"),
        format!("/offset/api/sales?store=S1&from_ms={}&to_ms={}&offset=0&limit=10", f * 1000, t * 1000 - 1),
        format!("/page0/S1/sales?date_from={FROM}&date_to={TO}&page=0&size=10"),
        format!("/page1/S1/sales?date_from={FROM}&date_to={TO}&page=1&size=10"),
        format!("/none/S1/sales?from={FROM}&to={TO}"),
    ] {
        assert_eq!(s.get(&u).send().expect("GET").status(), StatusCode::OK, "{u}");
    }
    let body = json!({"store": "S1", "stream": "sales", "from": FROM, "to": TO, "limit": 10});
    let r = s.client.post(s.url("/lastid/search")).json(&body).send().expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    // The token endpoint still works (any secret for the known client).
    let tok = s.oauth("anything");
    assert!(tok.len() >= 32);
    // Shape truth ids.
    let t = s.json(&format!("/_truth/stores/S1/sales?from={FROM}&to={FROM}&ids=true&shape=link"));
    assert_eq!(strings(&t["ids"]), ["R1:20240531000000", "R2:20240531000001", "R3:20240531000002"]);
    let t = s.json(&format!("/_truth/stores/S1/sales?from={FROM}&to={FROM}&ids=true&shape=offset"));
    assert_eq!(strings(&t["ids"])[1], "20240531000001");
    let t = s.json(&format!("/_truth/stores/S1/sales?from={FROM}&to={FROM}&ids=true"));
    assert_eq!(strings(&t["ids"])[1], "sales-S1-20240531-000001");
    let r = s.get(&format!("/_truth/stores/S1/sales?from={FROM}&to={FROM}&shape=v3")).send().expect("GET");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn concurrency_delay_and_request_times() {
    let s = Server::start(&["--rows-per-day", "3", "--threads", "2"]);
    s.post("/_control/config", json!({"response_delay_ms": 400}));
    assert_eq!(s.json("/_control/config")["response_delay_ms"], 400);
    let urls: Vec<String> = vec![
        format!("{}/v1/stores/A/orders?from={FROM}&to={TO}&page_size=10", s.base),
        format!("{}/page0/A/orders?date_from={FROM}&date_to={TO}&page=0&size=10", s.base),
        format!("{}/none/B/orders?from={FROM}&to={TO}", s.base),
        format!(
            "{}/nexturl/v2/orders?store_code=C&channel=orders&since={}&until={}&limit=5",
            s.base,
            local_midnight(FROM),
            local_midnight(TO)
        ),
    ];
    let started = Instant::now();
    let handles: Vec<_> = urls
        .into_iter()
        .map(|u| {
            let c = s.client.clone();
            std::thread::spawn(move || c.get(&u).send().expect("GET").status())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), StatusCode::OK);
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_millis(1500), "delays overlap: {:?}", started.elapsed());
    let c = s.json("/_control/concurrency");
    assert_eq!(c["max_in_flight"], 4, "{c}");
    assert_eq!(c["max_stores_in_flight"], 3, "{c}");
    // Every entry has method and at_ms; the four arrived close together.
    let log = s.json("/_control/requests");
    let at: Vec<u64> =
        log["recent"].as_array().expect("recent").iter().map(|e| e["at_ms"].as_u64().expect("at_ms")).collect();
    assert_eq!(at.len(), 4);
    assert!(at.iter().max().unwrap_or(&0) - at.iter().min().unwrap_or(&0) < 350, "{at:?}");
    assert!(log["recent"].as_array().expect("recent").iter().all(|e| e["method"] == "GET"));
    s.post("/_control/reset", json!({}));
    let c = s.json("/_control/concurrency");
    assert_eq!((c["max_in_flight"].clone(), c["max_stores_in_flight"].clone()), (json!(0), json!(0)));
    assert_eq!(s.json("/_control/config")["response_delay_ms"], 0);
    let t = Instant::now();
    s.json(&format!("/v1/stores/A/orders?from={FROM}&to={TO}&page_size=10"));
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn faults_apply_to_shapes() {
    let s = Server::start(&["--rows-per-day", "7"]);
    let to_excl = next_day(TO);
    let p = |page: u64| format!("/page0/S1/orders?date_from={FROM}&date_to={to_excl}&page={page}&size=5");
    s.post(
        "/_control/faults",
        json!({"store": "S1", "page": 1, "kind": "status", "status": 429, "retry_after": 1, "times": 1}),
    );
    assert_eq!(s.get(&p(0)).send().expect("GET").status(), StatusCode::OK);
    let r = s.get(&p(1)).send().expect("GET");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(s.get(&p(1)).send().expect("GET").status(), StatusCode::OK);
    s.post("/_control/faults", json!({"kind": "malformed", "times": 1}));
    let body = s.get(&p(0)).send().expect("GET").bytes().expect("body");
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    s.post("/_control/faults", json!({"kind": "bad_record", "times": 1}));
    let link = format!("/link/stores/S1/orders/receipts?from_ts={}&to_ts={}&per_page=5", unix_day(FROM), unix_day(TO));
    let v: Value = s.get(&link).send().expect("GET").json().expect("JSON");
    assert!(v[0].get("business_day").is_none() && v[1]["business_day"].is_string());
    let log = s.json("/_control/requests");
    assert_eq!(log["by_status"]["429"], 1);
}
