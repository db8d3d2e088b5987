//! End-to-end tests: start the real binary on an ephemeral loopback port and speak HTTP to it.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::blocking::Response;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::Server;

impl Server {
    fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.base)).send().expect("GET")
    }

    fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().expect("JSON body")
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().expect("POST");
        assert_eq!(r.status(), StatusCode::OK, "{path} {body}");
        r.json().expect("JSON body")
    }

    /// Follow a chain like the extension's client does; returns every record.
    fn fetch_chain(&self, store: &str, stream: &str, from: &str, to: &str, page_size: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..100_000 {
            let mut path = format!("/v1/stores/{store}/{stream}?from={from}&to={to}&page_size={page_size}");
            if let Some(t) = &token {
                path.push_str(&format!("&page_token={t}"));
            }
            let page = self.get_json(&path);
            let data = page["data"].as_array().expect("data array");
            assert!(data.len() <= page_size);
            out.extend(data.iter().cloned());
            match page["next_page_token"].as_str() {
                Some(t) => {
                    assert_eq!(data.len(), page_size, "only the last page may be short");
                    token = Some(t.to_owned());
                }
                None => return out,
            }
        }
        panic!("chain never ended");
    }

    fn truth(&self, store: &str, stream: &str, from: &str, to: &str) -> Value {
        self.get_json(&format!("/_truth/stores/{store}/{stream}?from={from}&to={to}&ids=true"))
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "simulator did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn ids(records: &[Value]) -> Vec<Value> {
    records.iter().map(|r| r["id"].clone()).collect()
}

/// Sum of non-null amounts in exact cents, parsed from the JSON text form.
fn cents(records: &[Value]) -> i64 {
    records
        .iter()
        .filter_map(|r| r["amount"].as_number().map(|n| n.to_string()))
        .map(|s| {
            let (neg, s) = s.strip_prefix('-').map_or((false, s.as_str()), |r| (true, r));
            let (i, f) = s.split_once('.').unwrap_or((s, "0"));
            let v = i.parse::<i64>().expect("int") * 100 + format!("{f:0<2}").parse::<i64>().expect("frac");
            if neg {
                -v
            } else {
                v
            }
        })
        .sum()
}

fn truth_cents(t: &Value) -> i64 {
    let s = t["amount_sum"].as_str().expect("amount_sum string");
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (i, f) = s.split_once('.').expect("two decimals");
    assert_eq!(f.len(), 2);
    let v = i.parse::<i64>().expect("int") * 100 + f.parse::<i64>().expect("frac");
    if neg {
        -v
    } else {
        v
    }
}

#[test]
fn listening_line_and_clean_exit_on_sigterm() {
    let mut s = Server::start(&[]);
    assert_eq!(s.get("/nope").status(), StatusCode::NOT_FOUND);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn refuses_non_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_orders_sync_simulator"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn token_required_and_bad_input_rejected() {
    let s = Server::start(&["--token", "s3cret-token", "--max-page-size", "100"]);
    let ok = "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=10";
    assert_eq!(s.get(ok).status(), StatusCode::UNAUTHORIZED);
    let wrong = s.client.get(format!("{}{ok}", s.base)).bearer_auth("nope").send().expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let auth = |path: &str| s.client.get(format!("{}{path}", s.base)).bearer_auth("s3cret-token").send().expect("GET");
    assert_eq!(auth(ok).status(), StatusCode::OK);
    for bad in [
        "/v1/stores/S001/orders?to=2024-01-02&page_size=10",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-1-2&page_size=10",
        "/v1/stores/S001/orders?from=2024-01-03&to=2024-01-02&page_size=10",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=0",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=101",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=x",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=10&page_token=garbage",
        "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=10&page_token=p1.d20240101.n0.c0",
    ] {
        let r = auth(bad);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let v: Value = r.json().expect("JSON error body");
        assert!(v["error"].is_string(), "{bad}");
    }
    for missing in ["/v1/stores/S001/Orders?from=2024-01-01&to=2024-01-02&page_size=10", "/v1/stores/S001", "/v2/x"] {
        assert_eq!(auth(missing).status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // A token issued for one store is refused for another.
    let page: Value = auth("/v1/stores/S001/orders?from=2024-01-01&to=2024-01-02&page_size=10").json().expect("json");
    let t = page["next_page_token"].as_str().expect("more pages").to_owned();
    let other = format!("/v1/stores/S002/orders?from=2024-01-01&to=2024-01-02&page_size=10&page_token={t}");
    assert_eq!(auth(&other).status(), StatusCode::BAD_REQUEST);

    // The log records whether a header was sent, never its value.
    let log = s.get_json("/_control/requests");
    assert!(!log.to_string().contains("s3cret"));
    assert!(!log.to_string().contains("nope"));
    assert_eq!(log["by_status"]["401"], 2);
    assert_eq!(log["recent"][0]["authorization"], false);
    assert_eq!(log["recent"][1]["authorization"], true);
    assert_eq!(log["recent"][0]["path"], "/v1/stores/S001/orders");
    assert_eq!(log["total"], 2 + 1 + 9 + 3 + 1 + 1);
}

#[test]
fn paging_over_http_matches_truth_and_is_deterministic() {
    let s = Server::start(&["--seed", "7", "--rows-per-day", "37"]);
    let truth = s.truth("S%20001", "sales", "2024-02-27", "2024-03-02");
    assert_eq!(truth["count"], 37 * 5);
    let days = truth["days"].as_array().expect("days");
    assert_eq!(days.len(), 5);
    assert_eq!(days[2]["date"], "2024-02-29");
    for ps in [1, 7, 37, 50, 1000] {
        let recs = s.fetch_chain("S%20001", "sales", "2024-02-27", "2024-03-02", ps);
        assert_eq!(Value::Array(ids(&recs)), truth["ids"], "page size {ps}");
        assert_eq!(cents(&recs), truth_cents(&truth));
    }
    let first = s.fetch_chain("S%20001", "sales", "2024-02-27", "2024-02-27", 1);
    assert_eq!(first[0]["id"], "sales-S 001-20240227-000000");

    // Same token, same bytes (clients resume from saved tokens).
    let p0 = s.get_json("/v1/stores/S1/orders?from=2024-01-01&to=2024-01-31&page_size=100");
    let t = p0["next_page_token"].as_str().expect("token").to_owned();
    let path = format!("/v1/stores/S1/orders?from=2024-01-01&to=2024-01-31&page_size=100&page_token={t}");
    let a = s.get(&path).bytes().expect("body");
    let b = s.get(&path).bytes().expect("body");
    assert_eq!(a, b);

    // Another process with the same seed serves identical bytes; another seed does not.
    let s2 = Server::start(&["--seed", "7", "--rows-per-day", "37"]);
    let s3 = Server::start(&["--seed", "8", "--rows-per-day", "37"]);
    assert_eq!(s2.get(&path).bytes().expect("body"), a);
    let p = "/v1/stores/S1/orders?from=2024-01-01&to=2024-01-31&page_size=100";
    assert_eq!(s.get(p).bytes().expect("body"), s2.get(p).bytes().expect("body"));
    assert_ne!(s.get(p).bytes().expect("body"), s3.get(p).bytes().expect("body"));

    // Empty window: exact shape.
    s.post("/_control/config", json!({"rows_per_day": 0}));
    let body = s.get("/v1/stores/S1/orders?from=2024-01-01&to=2024-01-31&page_size=100").text().expect("text");
    assert_eq!(body, r#"{"data":[],"next_page_token":null}"#);
}

#[test]
fn edits_show_in_data_and_truth() {
    let s = Server::start(&["--rows-per-day", "10"]);
    let (from, to) = ("2024-06-01", "2024-06-03");
    let before = s.fetch_chain("S001", "orders", from, to, 4);
    assert_eq!(before.len(), 30);

    s.post("/_control/late_rows", json!({"store": "S001", "stream": "orders", "date": "2024-06-02", "count": 3}));
    s.post("/_control/delete_rows", json!({"store": "S001", "stream": "orders", "date": "2024-06-01", "count": 2}));
    let r = s.post(
        "/_control/delete_rows",
        json!({"store": "S001", "stream": "orders", "date": "2024-06-03", "ids": ["orders-S001-20240603-000005"]}),
    );
    assert_eq!(r["deleted"], 1);
    s.post("/_control/change_rows", json!({"store": "S001", "stream": "orders", "date": "2024-06-03", "count": 1}));
    s.post("/_control/config", json!({"store_rows_per_day": {"S002": 500}}));

    let after = s.fetch_chain("S001", "orders", from, to, 4);
    let truth = s.truth("S001", "orders", from, to);
    assert_eq!(after.len(), 30 + 3 - 2 - 1);
    assert_eq!(truth["count"], after.len());
    assert_eq!(Value::Array(ids(&after)), truth["ids"]);
    assert_eq!(cents(&after), truth_cents(&truth));
    let idset: Vec<&str> = after.iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(idset.contains(&"orders-S001-20240602-000012"), "late rows get new ids");
    assert!(!idset.contains(&"orders-S001-20240601-000000"));
    assert!(!idset.contains(&"orders-S001-20240603-000005"));
    let changed = after.iter().find(|r| r["id"] == "orders-S001-20240603-000000").expect("row");
    let orig = before.iter().find(|r| r["id"] == "orders-S001-20240603-000000").expect("row");
    assert_eq!(changed["rev"], 1);
    assert_ne!(changed["amount"], orig["amount"]);
    assert_eq!(truth["days"][1]["count"], 13);

    assert_eq!(s.truth("S002", "orders", from, from)["count"], 500);
    assert_eq!(s.truth("S003", "orders", from, from)["count"], 10);

    s.post("/_control/reset", json!({}));
    let reset = s.fetch_chain("S001", "orders", from, to, 4);
    assert_eq!(reset, before);
}

#[test]
fn faults_over_http() {
    let s = Server::start(&["--rows-per-day", "10"]);
    let chain = "/v1/stores/S001/sales?from=2024-01-01&to=2024-01-03&page_size=10";

    // status + Retry-After, limited times, matching page 1 of the sales chain only.
    s.post(
        "/_control/faults",
        json!({"store": "S001", "stream": "sales", "page": 1, "kind": "status", "status": 503, "retry_after": 2, "times": 2}),
    );
    let p0 = s.get_json(chain);
    let t1 = p0["next_page_token"].as_str().expect("token").to_owned();
    let page1 = format!("{chain}&page_token={t1}");
    assert_eq!(s.get(&chain.replace("sales", "orders")).status(), StatusCode::OK);
    for _ in 0..2 {
        let r = s.get(&page1);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "2");
    }
    let p1 = s.get_json(&page1);
    assert_eq!(p1["data"][0]["date"], "2024-01-02");

    // malformed: 200 with invalid JSON.
    s.post("/_control/faults", json!({"kind": "malformed", "times": 1}));
    let r = s.get(chain);
    assert_eq!(r.status(), StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&r.bytes().expect("body")).is_err());

    // bad_record: valid JSON, first record has no date.
    s.post("/_control/faults", json!({"kind": "bad_record", "stream": "sales", "times": 1}));
    let v = s.get_json(chain);
    assert!(v["data"][0].get("date").is_none());
    assert!(v["data"][1]["date"].is_string());

    // huge: exactly size_bytes streamed.
    s.post("/_control/faults", json!({"kind": "huge", "size_bytes": 3_000_000, "times": 1}));
    let mut r = s.get(chain);
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("content-length").is_none());
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("read");
    assert_eq!(body.len(), 3_000_000);
    assert!(body.starts_with(b"{\"data\":["));

    // timeout: the delayed request does not block others; it ends in 504.
    s.post("/_control/faults", json!({"kind": "timeout", "store": "SLOW", "delay_ms": 1500, "times": 1}));
    let slow_path = format!("{}/v1/stores/SLOW/sales?from=2024-01-01&to=2024-01-01&page_size=5", s.base);
    let client = s.client.clone();
    let started = Instant::now();
    let slow = std::thread::spawn(move || client.get(slow_path).send().expect("GET").status());
    std::thread::sleep(Duration::from_millis(200));
    let quick = Instant::now();
    assert_eq!(s.get(chain).status(), StatusCode::OK);
    assert!(quick.elapsed() < Duration::from_millis(1000), "served while another request sleeps");
    assert_eq!(slow.join().expect("thread"), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // slow: delayed but a normal page.
    s.post("/_control/faults", json!({"kind": "slow", "delay_ms": 300, "times": 1}));
    let t = Instant::now();
    assert_eq!(s.get_json(chain), p0);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Forever rule until cleared; the log counts what was served.
    s.post("/_control/faults", json!({"kind": "status", "status": 429}));
    for _ in 0..3 {
        assert_eq!(s.get(chain).status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let r = s.client.delete(format!("{}/_control/faults", s.base)).send().expect("DELETE");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.get(chain).status(), StatusCode::OK);
    let log = s.get_json("/_control/requests");
    assert_eq!(log["by_status"]["429"], 3);
    assert_eq!(log["by_status"]["503"], 2);
    assert_eq!(log["by_status"]["504"], 1);

    // Bad fault bodies are a 400, not a crash.
    let r =
        s.client.post(format!("{}/_control/faults", s.base)).json(&json!({"kind": "explode"})).send().expect("POST");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn echo_token_sends_the_credential_back_where_asked() {
    let token = "s3cret/Tok+en=42";
    let s = Server::start(&["--token", token]);
    let chain = "/v1/stores/S001/orders?from=2024-01-01&to=2024-01-03&page_size=10";
    let get = |place: &str| {
        s.post("/_control/faults", json!({"kind": "echo_token", "place": place, "times": 1}));
        let r = s.client.get(format!("{}{chain}", s.base)).bearer_auth(token).send().expect("GET");
        let status = r.status();
        let headers = r.headers().clone();
        (status, headers, r.text().expect("body"))
    };
    let (status, _, body) = get("id");
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["data"][0]["id"], format!("{token}{}", "x".repeat(300)));
    assert_eq!(page["data"][0]["date"], "2024-01-01");
    let (_, _, body) = get("date");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["data"][0]["date"], token);
    let (_, _, body) = get("amount");
    assert!(body.contains(&format!("\"amount\":{token}}}")), "{body}");
    let (status, _, body) = get("body");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = serde_json::from_str::<Value>(&body).expect("JSON")["error"].as_str().expect("error").to_owned();
    for part in [&format!("Bearer {token}"), "s3cret%2FTok%2Ben%3D42", "s3cret%2fTok%2ben%3d42", "starting: s3cret/T"] {
        assert!(error.contains(part), "{part}: {error}");
    }
    let (status, headers, _) = get("headers");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-echo-authorization"], format!("Bearer {token}").as_str());
    assert_eq!(headers["www-authenticate"], format!("Bearer error_description=\"{token}\"").as_str());
    // place belongs to echo_token alone.
    for bad in [json!({"kind": "echo_token"}), json!({"kind": "status", "place": "id"})] {
        let r = s.client.post(format!("{}/_control/faults", s.base)).json(&bad).send().expect("POST");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}
