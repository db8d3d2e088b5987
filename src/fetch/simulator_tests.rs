//! The client against the real reference source (`simulator/`) over loopback, and against a
//! tiny hostile server. The simulator binary must be built first:
//! `cargo build -p orders_sync_simulator --release` (same `CARGO_TARGET_DIR`), or point
//! `ORDERS_SYNC_SIMULATOR` at it. A missing binary fails these tests; it never skips them.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use serde_json::{json, Value};

use super::leak_check::{base64, encodings, leaked_fragment, sample_tokens};
use super::{Credentials, FetchError, Page, PageRequest, SourceClient, SourceSettings};

fn simulator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ORDERS_SYNC_SIMULATOR") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("orders_sync_simulator")
}

/// A running simulator on an ephemeral loopback port; killed on drop.
struct Simulator {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    base_url: String,
    control: reqwest::blocking::Client,
}

impl Simulator {
    fn start(args: &[&str]) -> Simulator {
        let binary = simulator_binary();
        assert!(
            binary.is_file(),
            "simulator binary not found at {}: run `cargo build -p orders_sync_simulator --release` \
             with the same CARGO_TARGET_DIR, or set ORDERS_SYNC_SIMULATOR to its path",
            binary.display()
        );
        let mut child = Command::new(&binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let Some(address) = line.trim_end().strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.kill();
            panic!("simulator did not say where it listens: {read:?} {line:?}");
        };
        Simulator {
            child,
            _stdout: stdout,
            base_url: format!("http://{address}"),
            control: reqwest::blocking::Client::new(),
        }
    }

    fn get(&self, path: &str) -> Value {
        let response = self.control.get(format!("{}{path}", self.base_url)).send().expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        serde_json::from_slice(&response.bytes().expect("body")).expect("JSON")
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .control
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .expect("POST");
        assert!(response.status().is_success(), "POST {path} {body}: {}", response.status());
        serde_json::from_slice(&response.bytes().expect("body")).expect("JSON")
    }

    fn fault(&self, rule: Value) {
        self.post("/_control/faults", rule);
    }

    fn requests(&self) -> Value {
        self.get("/_control/requests")
    }

    fn settings(&self) -> SourceSettings {
        SourceSettings {
            base_url: self.base_url.clone(),
            pipeline_id: 1,
            profile: None,
            streams: Vec::new(),
            timezone: "UTC".to_owned(),
            credentials: Credentials::default(),
            page_size: 50,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(10),
            max_response_bytes: 8 << 20,
            allowed_hosts: Vec::new(),
        }
    }

    fn client(&self) -> SourceClient {
        SourceClient::new(self.settings()).expect("client")
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test date")
}

fn week<'a>(store_code: &'a str, stream: &'a str) -> PageRequest<'a> {
    PageRequest { store_code, stream, from: day("2024-01-01"), to: day("2024-01-07"), page_token: None }
}

fn never() -> bool {
    false
}

/// Exact cents of a two-decimal amount text such as "-12.05" (no float involved).
fn cents(amount: &str) -> i128 {
    let (sign, digits) = amount.strip_prefix('-').map_or((1, amount), |rest| (-1, rest));
    let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 2, "unexpected amount {amount}");
    let units: i128 = units.parse().expect("units");
    let fraction: i128 = format!("{fraction:0<2}").parse().expect("fraction");
    sign * (units * 100 + fraction)
}

/// The error of a fetch that must fail; a page is summarised, not dumped.
fn error_of(result: Result<Page, FetchError>) -> FetchError {
    match result {
        Ok(page) => panic!("expected an error, got a page of {} records", page.records.len()),
        Err(e) => e,
    }
}

/// Every page of a window, following next_page_token; panics on an error.
fn fetch_window(client: &SourceClient, request: PageRequest<'_>) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .fetch_page(&PageRequest { page_token: token.as_deref(), ..request }, &never)
            .unwrap_or_else(|e| panic!("page {}: {e}", pages.len()));
        token = page.next_page_token.clone();
        pages.push(page);
        if token.is_none() {
            return pages;
        }
        assert!(pages.len() < 1000, "runaway pagination");
    }
}

#[test]
fn full_window_follows_page_tokens_and_matches_truth() {
    let sim = Simulator::start(&["--token", "sim-token-1"]);
    let client = SourceClient::new(SourceSettings {
        credentials: Credentials { api_token: Some("sim-token-1".into()), ..Credentials::default() },
        page_size: 37,
        ..sim.settings()
    })
    .expect("client");
    let request = PageRequest { to: day("2024-01-10"), ..week("S001", "orders") };
    let pages = fetch_window(&client, request);
    let records: Vec<_> = pages.iter().flat_map(|p| &p.records).collect();

    let truth = sim.get("/_truth/stores/S001/orders?from=2024-01-01&to=2024-01-10&ids=true");
    let truth_ids: Vec<&str> = truth["ids"].as_array().expect("ids").iter().filter_map(Value::as_str).collect();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, truth_ids);
    assert_eq!(records.len() as u64, truth["count"].as_u64().expect("count"));
    let sum: i128 = records.iter().filter_map(|r| r.amount.as_deref()).map(cents).sum();
    assert_eq!(sum, cents(truth["amount_sum"].as_str().expect("amount_sum")));
    assert!(records.iter().any(|r| r.amount.is_none()), "the simulator sends some null amounts");

    assert_eq!(pages.len(), records.len().div_ceil(37));
    assert!(pages.iter().all(|p| p.attempts == 1 && p.body_bytes > 0 && p.duplicate_ids == 0));
    for record in &records {
        let payload: Value = serde_json::from_str(&record.payload).expect("payload is JSON");
        assert_eq!(payload["id"], record.id.as_str());
        assert_eq!(payload["date"], record.date.format("%Y-%m-%d").to_string());
    }
    let log = sim.requests();
    assert_eq!(log["total"], pages.len());
    assert!(log["recent"].as_array().expect("recent").iter().all(|r| r["authorization"] == true));
}

#[test]
fn no_token_sends_no_authorization_header() {
    let sim = Simulator::start(&[]);
    let page = sim.client().fetch_page(&week("S001", "sales"), &never).expect("page");
    assert_eq!(page.records.len(), 50);
    assert_eq!(sim.requests()["recent"][0]["authorization"], false);
}

#[test]
fn saved_cursor_resumes_with_a_new_client() {
    let sim = Simulator::start(&[]);
    let first = sim.client().fetch_page(&week("S002", "gst"), &never).expect("page 0");
    let token = first.next_page_token.expect("more pages");
    let resumed = PageRequest { page_token: Some(&token), ..week("S002", "gst") };
    let again = sim.client().fetch_page(&resumed, &never).expect("page 1");
    let twice = sim.client().fetch_page(&resumed, &never).expect("page 1 again");
    assert_eq!(again.records, twice.records);
    assert!(again.records.iter().all(|r| !first.records.contains(r)));
}

#[test]
fn server_error_once_is_retried() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"store": "S001", "stream": "orders", "kind": "status", "status": 500, "times": 1}));
    let page = sim.client().fetch_page(&week("S001", "orders"), &never).expect("second attempt");
    assert_eq!(page.attempts, 2);
    assert_eq!(page.records.len(), 50);
    assert_eq!(sim.requests()["by_status"], json!({"200": 1, "500": 1}));
}

#[test]
fn server_errors_until_the_last_attempt_report_status_and_attempts() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "status", "status": 503}));
    let err = error_of(sim.client().fetch_page(&week("S001", "orders"), &never));
    assert_eq!(
        err.to_string(),
        "source answered HTTP 503 Service Unavailable: injected fault: status 503 (after 3 attempts)"
    );
    assert_eq!((err.http_status(), err.attempts()), (Some(503), 3));
}

#[test]
fn rate_limit_waits_for_retry_after() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "status", "status": 429, "retry_after": 1, "times": 1}));
    let client = SourceClient::new(SourceSettings { retry_base_delay: Duration::from_millis(1), ..sim.settings() })
        .expect("client");
    let start = Instant::now();
    let page = client.fetch_page(&week("S001", "orders"), &never).expect("after Retry-After");
    let waited = start.elapsed();
    assert_eq!(page.attempts, 2);
    assert!(waited >= Duration::from_millis(990), "retried after {waited:?}, before Retry-After: 1");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn not_found_and_bad_request_are_not_retried() {
    let sim = Simulator::start(&[]);
    let client = sim.client();
    let err = error_of(client.fetch_page(&week("S001", "Orders!"), &never));
    assert_eq!(err.to_string(), "source answered HTTP 404 Not Found: unknown store path or stream (after 1 attempt)");
    let garbage = PageRequest { page_token: Some("garbage"), ..week("S001", "orders") };
    let err = error_of(client.fetch_page(&garbage, &never));
    assert_eq!(err.to_string(), "source answered HTTP 400 Bad Request: bad page_token (after 1 attempt)");
    sim.fault(json!({"kind": "status", "status": 403, "times": 1}));
    let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
    assert_eq!((err.http_status(), err.attempts()), (Some(403), 1));
    assert_eq!(
        err.hint(),
        Some("check the pipeline's credentials in orders_sync.pipeline_credentials and its profile's auth")
    );
    assert_eq!(sim.requests()["total"], 3);
}

#[test]
fn timeout_is_retried_then_reported() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "timeout", "delay_ms": 5000}));
    let client = SourceClient::new(SourceSettings {
        read_timeout: Duration::from_millis(200),
        max_attempts: 2,
        ..sim.settings()
    })
    .expect("client");
    let start = Instant::now();
    let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
    assert_eq!(err.to_string(), "timed out waiting for the response after 200 ms (after 2 attempts)");
    assert!(err.is_retryable());
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(sim.requests()["total"], 2);
}

#[test]
fn slow_page_within_the_read_timeout_is_fine() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "slow", "delay_ms": 300, "times": 1}));
    let page = sim.client().fetch_page(&week("S001", "orders"), &never).expect("slow page");
    assert_eq!(page.attempts, 1);
}

#[test]
fn malformed_page_fails_with_line_and_column() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "malformed", "times": 1}));
    let err = error_of(sim.client().fetch_page(&week("S001", "orders"), &never));
    match &err {
        FetchError::MalformedJson { line, column, attempts, .. } => {
            assert_eq!((*line, *attempts), (1, 1));
            assert!(*column > 1000, "{column}");
        }
        other => panic!("expected malformed JSON, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.starts_with("malformed JSON in source response: EOF while parsing"), "{message}");
    assert!(message.contains("at line 1 column"), "{message}");
}

#[test]
fn bad_record_fails_naming_the_record() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "bad_record", "times": 1}));
    let err = error_of(sim.client().fetch_page(&week("S001", "orders"), &never));
    assert_eq!(
        err.to_string(),
        "invalid record at index 0 (id \"orders-S001-20240101-000000\") in source response: \
         date is missing or null (after 1 attempt)"
    );
}

#[test]
fn huge_body_fails_at_the_size_limit_without_reading_it_all() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "huge", "times": 1})); // 64 MiB, chunked, no Content-Length
    let client = SourceClient::new(SourceSettings { max_response_bytes: 1 << 20, ..sim.settings() }).expect("client");
    let start = Instant::now();
    let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
    assert_eq!(err, FetchError::TooLarge { limit: 1 << 20, content_length: None, attempts: 1 });
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[test]
fn declared_content_length_over_the_limit_is_refused_before_reading() {
    let sim = Simulator::start(&[]);
    let client = SourceClient::new(SourceSettings { page_size: 1000, max_response_bytes: 64 * 1024, ..sim.settings() })
        .expect("client");
    // 1000 records of about 166 bytes.
    let quarter = PageRequest { to: day("2024-03-31"), ..week("S001", "orders") };
    match error_of(client.fetch_page(&quarter, &never)) {
        FetchError::TooLarge { limit: 65_536, content_length: Some(n), attempts: 1 } => assert!(n > 65_536),
        other => panic!("expected a declared size error, got {other:?}"),
    }
}

#[test]
fn wrong_token_is_a_401_that_never_shows_the_token() {
    let sim = Simulator::start(&["--token", "the-right-one"]);
    let client = SourceClient::new(SourceSettings {
        credentials: Credentials { api_token: Some("wrong-s3cret-value".into()), ..Credentials::default() },
        ..sim.settings()
    })
    .expect("client");
    let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
    let message = err.to_string();
    assert_eq!(message, "source answered HTTP 401 Unauthorized: missing or wrong bearer token (after 1 attempt)");
    assert!(!message.contains("wrong-s3cret-value") && !format!("{err:?}").contains("wrong-s3cret-value"));
}

#[test]
fn stop_during_backoff_cancels_quickly() {
    let sim = Simulator::start(&[]);
    sim.fault(json!({"kind": "status", "status": 503, "retry_after": 30}));
    let client = sim.client();
    // Polled once before the first attempt, then every 50 ms of the 30 s Retry-After wait.
    let polls = Cell::new(0);
    let stopped_at = Cell::new(None);
    let stop_on_fifth_poll = || {
        polls.set(polls.get() + 1);
        if polls.get() >= 5 && stopped_at.get().is_none() {
            stopped_at.set(Some(Instant::now()));
        }
        stopped_at.get().is_some()
    };
    let start = Instant::now();
    let err = error_of(client.fetch_page(&week("S001", "orders"), &stop_on_fifth_poll));
    assert_eq!(err, FetchError::Cancelled { attempts: 1 });
    assert_eq!(err.to_string(), "fetch stopped on request (after 1 attempt)");
    let reaction = stopped_at.get().expect("stop was requested").elapsed();
    assert!(reaction < Duration::from_millis(250), "returned {reaction:?} after the stop request");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert_eq!(sim.requests()["total"], 1);
}

#[test]
fn stop_before_the_first_attempt_sends_nothing() {
    let sim = Simulator::start(&[]);
    let err = error_of(sim.client().fetch_page(&week("S001", "orders"), &|| true));
    assert_eq!(err, FetchError::Cancelled { attempts: 0 });
    assert_eq!(sim.requests()["total"], 0);
}

#[test]
fn hostile_store_code_is_one_path_segment_on_the_wire() {
    let sim = Simulator::start(&[]);
    let store = "../S001?x=1#y";
    let page = sim.client().fetch_page(&week(store, "orders"), &never).expect("page");
    assert!(page.records[0].id.starts_with("orders-../S001?x=1#y-"), "{}", page.records[0].id);
    let logged = &sim.requests()["recent"][0];
    assert_eq!(logged["path"], "/v1/stores/..%2FS001%3Fx=1%23y/orders");
    assert_eq!(logged["query"], "from=2024-01-01&to=2024-01-07&page_size=50");
}

#[test]
fn connection_refused_is_retried_then_reported() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let client = SourceClient::new(SourceSettings {
        base_url: format!("http://127.0.0.1:{port}/"),
        pipeline_id: 1,
        profile: None,
        streams: Vec::new(),
        timezone: "UTC".to_owned(),
        credentials: Credentials::default(),
        page_size: 10,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        max_attempts: 3,
        retry_base_delay: Duration::from_millis(1),
        max_response_bytes: 1 << 20,
        allowed_hosts: Vec::new(),
    })
    .expect("client");
    let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
    assert!(matches!(err, FetchError::Connect { attempts: 3, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("cannot connect to the source: "), "{message}");
    assert!(message.ends_with("(after 3 attempts)"), "{message}");
    assert!(!message.contains("127.0.0.1:"), "no URL in the message: {message}");
}

/// A source that echoes credentials: it answers each connection with the next response, a
/// `(head, body)` template filled by [`echo`] from the Authorization header it received. The
/// head is the status line and any headers; Content-Length and Connection are added.
fn echoing_source(responses: Vec<(String, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (head_template, body_template) in responses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head);
            let auth = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("authorization")))
                .map_or("", |(_, value)| value.trim())
                .to_owned();
            let body = echo(&body_template, &auth);
            let _ = write!(
                stream,
                "{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                echo(&head_template, &auth),
                body.len()
            );
        }
    });
    format!("http://{address}")
}

/// `template` with `{auth}` replaced by the whole Authorization value, `{b64}` by its base64,
/// `{NAME}` by the credential in the encoding NAME of [`encodings`] (`{raw}`, `{json}`,
/// `{percent}`, `{form}`, `{html}`, ...) and `{NAME head}` by its first half so encoded.
fn echo(template: &str, auth: &str) -> String {
    let credential = auth.strip_prefix("Bearer ").unwrap_or(auth);
    let head: String = credential.chars().take(credential.chars().count().div_ceil(2)).collect();
    let mut out = template.replace("{auth}", auth).replace("{b64}", &base64(auth.as_bytes()));
    for ((name, whole), (_, half)) in encodings(credential).into_iter().zip(encodings(&head)) {
        out = out.replace(&format!("{{{name} head}}"), &half).replace(&format!("{{{name}}}"), &whole);
    }
    out
}

/// The old-style canned answer: JSON, with only `{auth}` and friends filled in.
fn echo_server(responses: Vec<(&'static str, String)>) -> String {
    echoing_source(
        responses
            .into_iter()
            .map(|(status, body)| (format!("HTTP/1.1 {status}\r\nContent-Type: application/json"), body))
            .collect(),
    )
}

#[test]
fn hostile_server_echoing_the_token_never_leaks_it() {
    const TOKEN: &str = "echo/me-\"s3cret\"-token";
    let escaped = serde_json::to_string(TOKEN).expect("json");
    let escaped = &escaped[1..escaped.len() - 1];
    let base_url = echo_server(vec![
        ("503 Service Unavailable", "plain echo: {auth}".to_owned()),
        // The header as a JSON string: a snippet is the decoded `error` text.
        ("400 Bad Request", format!(r#"{{"error": "you sent Bearer {escaped}"}}"#)),
        ("200 OK", format!(r#"{{"data":[{{"id":"{escaped}","date":"1999-01-01"}}],"next_page_token":null}}"#)),
        ("200 OK", format!(r#"{{"data":[],"next_page_token":17,"{escaped}":1}}"#)),
        ("200 OK", format!(r#"{{"data":[{{"id":"a","date":"2024-01-02","amount":"Bearer {escaped}"}}]}}"#)),
        ("200 OK", format!(r#"{{"data":[], "x": "{escaped}" oops"#)),
    ]);
    let client = SourceClient::new(SourceSettings {
        base_url,
        pipeline_id: 1,
        profile: None,
        streams: Vec::new(),
        timezone: "UTC".to_owned(),
        credentials: Credentials { api_token: Some(TOKEN.into()), ..Credentials::default() },
        page_size: 10,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        max_attempts: 2,
        retry_base_delay: Duration::from_millis(1),
        max_response_bytes: 1 << 20,
        allowed_hosts: Vec::new(),
    })
    .expect("client");
    let request = week("S001", "orders");
    let mut messages = Vec::new();
    for _ in 0..5 {
        let err = error_of(client.fetch_page(&request, &never));
        messages.push(format!("{err} | {err:?}"));
    }
    assert!(
        messages[0].starts_with("source answered HTTP 400 Bad Request: you sent Bearer [redacted] (after 2 attempts)"),
        "{}",
        messages[0]
    );
    for message in &messages {
        assert!(!message.contains("s3cret"), "token leaked: {message}");
    }
}

/// Every place a source can put what it was sent, each as one response.
fn echo_everywhere() -> Vec<(&'static str, String, String)> {
    let json = |status: &str| format!("HTTP/1.1 {status}\r\nContent-Type: application/json");
    let ok = json("200 OK");
    let padding = "p".repeat(190);
    let mut cases = vec![
        // Ids: over-long (cut for the message), plain, encoded, and a part of the token.
        ("long id", ok.clone(), format!(r#"{{"data":[{{"id":"{{json}}{}","date":"2024-01-02"}}]}}"#, "x".repeat(300))),
        ("id", ok.clone(), r#"{"data":[{"id":"{json}"}]}"#.to_owned()),
        ("percent id", ok.clone(), r#"{"data":[{"id":"{percent}"}]}"#.to_owned()),
        ("half id", ok.clone(), r#"{"data":[{"id":"{json head}"}]}"#.to_owned()),
        // Dates.
        ("date", ok.clone(), r#"{"data":[{"id":"a","date":"{json}"}]}"#.to_owned()),
        ("long date", ok.clone(), format!(r#"{{"data":[{{"id":"a","date":"{{json}}{padding}"}}]}}"#)),
        ("percent date", ok.clone(), r#"{"data":[{"id":"a","date":"{percent lower}"}]}"#.to_owned()),
        ("half date", ok.clone(), r#"{"data":[{"id":"a","date":"{json head}"}]}"#.to_owned()),
        // Amounts: a number when the token is one, else malformed JSON around it.
        ("amount", ok.clone(), r#"{"data":[{"id":"a","date":"2024-01-02","amount":{raw}}]}"#.to_owned()),
        (
            "half amount",
            ok.clone(),
            r#"{"data":[{"id":"a","date":"2024-01-02","amount":{raw head}e99999}]}"#.to_owned(),
        ),
        ("amount string", ok.clone(), r#"{"data":[{"id":"a","date":"2024-01-02","amount":"{json}"}]}"#.to_owned()),
        // The page's shape and JSON.
        ("data string", ok.clone(), r#"{"data":"{json}"}"#.to_owned()),
        ("percent data string", ok.clone(), r#"{"data":"{percent}"}"#.to_owned()),
        ("raw in JSON", ok.clone(), r#"{"data":[{raw}]}"#.to_owned()),
        ("token type", ok.clone(), r#"{"data":[],"next_page_token":{raw}}"#.to_owned()),
        // Error bodies, in every encoding, whole and in part.
        (
            "html body",
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html".to_owned(),
            "<p>Authorization: {auth}</p><p>{html}</p>".to_owned(),
        ),
        ("cut body", json("400 Bad Request"), format!("{padding}{{raw}}")),
        ("base64 body", json("403 Forbidden"), r#"{"error":"credentials {b64}"}"#.to_owned()),
        ("header body", json("401 Unauthorized"), r#"{"message":"you sent {auth}"}"#.to_owned()),
    ];
    for (name, _) in encodings("x") {
        let status = json("400 Bad Request");
        cases.push(("encoded body", status.clone(), format!("{{\"error\":\"got {{json}}\",\"echo\":\"{{{name}}}\"}}")));
        cases.push(("encoded text body", status.clone(), format!("got {{{name}}} and {{{name} head}}")));
    }
    // Headers: the reason phrase and header values are never quoted; a broken header line
    // fails the exchange.
    cases.push((
        "headers",
        "HTTP/1.1 401 {raw}\r\nContent-Type: text/plain\r\nX-Echo: {auth}\r\nWWW-Authenticate: Bearer error_description=\"{json}\"".to_owned(),
        "nope".to_owned(),
    ));
    cases.push(("broken header", "HTTP/1.1 400 Bad Request\r\nX-{raw}: 1".to_owned(), "nope".to_owned()));
    cases.push(("broken status", "HTTP/1.1 4{raw} Bad".to_owned(), "nope".to_owned()));
    cases
}

/// A client for a source that echoes `token`: one attempt, short timeouts.
fn echo_source_settings(base_url: String, token: &str) -> SourceSettings {
    SourceSettings {
        base_url,
        pipeline_id: 1,
        profile: None,
        streams: Vec::new(),
        timezone: "UTC".to_owned(),
        credentials: Credentials { api_token: Some(token.to_owned()), ..Credentials::default() },
        page_size: 10,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        max_attempts: 1,
        retry_base_delay: Duration::from_millis(1),
        max_response_bytes: 1 << 20,
        allowed_hosts: Vec::new(),
    }
}

#[test]
fn a_source_echoing_the_token_in_every_place_and_form_never_gets_it_into_a_message() {
    for token in sample_tokens() {
        let cases = echo_everywhere();
        let base_url = echoing_source(cases.iter().map(|(_, head, body)| (head.clone(), body.clone())).collect());
        let client = SourceClient::new(echo_source_settings(base_url, &token)).expect("client");
        for (name, _, _) in &cases {
            let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
            let message = format!("{err} | {err:?} | {:?}", err.hint());
            if let Some(fragment) = leaked_fragment(&message, &token) {
                panic!("{name}: token {token:?} leaked as {fragment:?} in: {message}");
            }
        }
    }
}

#[test]
fn a_long_token_echoed_as_an_id_or_date_is_not_quoted_in_part() {
    // 0.1.1 cut the value to 40 characters, then looked for the whole token in the cut.
    let token = "sk_live_51HdE7nKq8ZxLmNpRsTuVwXyZ0123456789abcdefGHIJ";
    let base_url = echo_server(vec![
        ("200 OK", format!(r#"{{"data":[{{"id":"{{raw}}{}","date":"2024-01-02"}}]}}"#, "x".repeat(300))),
        ("200 OK", r#"{"data":[{"id":"a","date":"{raw}"}]}"#.to_owned()),
        ("400 Bad Request", r#"{"error":"bad token {percent}"}"#.to_owned()),
    ]);
    let client = SourceClient::new(echo_source_settings(base_url, token)).expect("client");
    let mut messages = Vec::new();
    for _ in 0..3 {
        messages.push(error_of(client.fetch_page(&week("S001", "orders"), &never)).to_string());
    }
    assert_eq!(
        messages,
        [
            format!(
                "invalid record at index 0 (id \"[redacted]{}…\") in source response: \
                 id is {} bytes long, more than 256 (after 1 attempt)",
                "x".repeat(30),
                token.len() + 300
            ),
            "invalid record at index 0 (id \"a\") in source response: date \"[redacted]\" is not a YYYY-MM-DD date \
             (after 1 attempt)"
                .to_owned(),
            "source answered HTTP 400 Bad Request: bad token [redacted] (after 1 attempt)".to_owned(),
        ]
    );
}

#[test]
fn the_simulator_echoing_the_token_in_each_place_never_gets_it_into_a_message() {
    // No --token: the simulator then takes any credential, including non-ASCII ones.
    let sim = Simulator::start(&[]);
    for token in sample_tokens() {
        let client = SourceClient::new(SourceSettings {
            credentials: Credentials { api_token: Some(token.clone()), ..Credentials::default() },
            ..sim.settings()
        })
        .expect("client");
        let mut messages = Vec::new();
        for place in ["id", "date", "amount", "body", "headers"] {
            sim.fault(json!({"kind": "echo_token", "place": place, "times": 1}));
            let err = error_of(client.fetch_page(&week("S001", "orders"), &never));
            let message = err.to_string();
            if let Some(fragment) = leaked_fragment(&format!("{message} | {err:?}"), &token) {
                panic!("{place}: token {token:?} leaked as {fragment:?} in: {message}");
            }
            messages.push(message);
        }
        if token.starts_with("sk_live_") {
            let id_bytes = token.len() + 300;
            assert_eq!(
                messages,
                [
                    format!(
                        "invalid record at index 0 (id \"[redacted]{}…\") in source response: \
                         id is {id_bytes} bytes long, more than 256 (after 1 attempt)",
                        "x".repeat(30)
                    ),
                    "invalid record at index 0 (id \"echo-1\") in source response: \
                     date \"[redacted]\" is not a YYYY-MM-DD date (after 1 attempt)"
                        .to_owned(),
                    "malformed JSON in source response: expected value at line 1 column 54 (after 1 attempt)"
                        .to_owned(),
                    "source answered HTTP 400 Bad Request: you sent Bearer [redacted]; as a URL: [redacted]; \
                     lower: [redacted]; starting: [redacted] (after 1 attempt)"
                        .to_owned(),
                    "source answered HTTP 401 Unauthorized: credential echoed in the headers (after 1 attempt)"
                        .to_owned(),
                ]
            );
        }
    }
}
