//! Throughput client for `scripts/bench_simulator.sh`.
//!
//! `bench_client ADDR ROWS PAGE_SIZE [STORE] [STREAM] [SHAPE]` follows one page chain over a
//! single keep-alive connection until ROWS rows have arrived, then prints
//! `simulator: N rows in S s = R rows/s`. SHAPE is `v1` (default) or `nexturl` (the nested
//! shape with RFC 3339 timestamps and string amounts, whose next-page URL carries a cursor).
//!
//! Raw HTTP/1.1 over std's TcpStream (the simulator always sends Content-Length for pages) keeps
//! the client cheap: it only finds the next token at the tail of each body and sends the next
//! request at once, while a second thread fully parses the previous page with serde_json to
//! check and count its rows. The measured rate is therefore the server's, not a JSON parser's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Instant;

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Deserialize)]
struct Page {
    data: Vec<IgnoredAny>,
    #[allow(dead_code)]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct NextUrlPage {
    result: NextUrlItems,
}

#[derive(Deserialize)]
struct NextUrlItems {
    items: Vec<IgnoredAny>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: bench_client ADDR ROWS PAGE_SIZE [STORE] [STREAM] [v1|nexturl]".into());
    }
    let addr = &args[1];
    let want: u64 = args[2].parse().map_err(|_| "ROWS must be an integer")?;
    let page_size: u64 = args[3].parse().map_err(|_| "PAGE_SIZE must be an integer")?;
    let store = args.get(4).map_or("S001", String::as_str);
    let stream = args.get(5).map_or("orders", String::as_str);
    let nexturl = match args.get(6).map_or("v1", String::as_str) {
        "v1" => false,
        "nexturl" => true,
        other => return Err(format!("unknown shape {other:?}")),
    };

    let conn = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(1 << 20, conn);

    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let counter = std::thread::spawn(move || -> Result<(u64, u64), String> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        for body in rx {
            rows += if nexturl {
                let page: NextUrlPage = serde_json::from_slice(&body).map_err(|e| format!("bad page: {e}"))?;
                page.result.items.len() as u64
            } else {
                let page: Page = serde_json::from_slice(&body).map_err(|e| format!("bad page: {e}"))?;
                page.data.len() as u64
            };
            bytes += body.len() as u64;
        }
        Ok((rows, bytes))
    });

    let started = Instant::now();
    let mut token: Option<String> = None;
    let mut requested = 0u64;
    loop {
        let mut target = if nexturl {
            format!(
                "/nexturl/v2/orders?store_code={store}&channel={stream}&since=2000-01-01T00:00:00%2B07:00\
                 &until=2100-01-01T00:00:00%2B07:00&limit={page_size}"
            )
        } else {
            format!("/v1/stores/{store}/{stream}?from=2000-01-01&to=2099-12-31&page_size={page_size}")
        };
        if let Some(t) = &token {
            target.push_str(if nexturl { "&cursor=" } else { "&page_token=" });
            target.push_str(t);
        }
        let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        writer.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let body = read_response(&mut reader)?;
        requested += page_size;
        token = if nexturl { next_cursor(&body)? } else { next_token(&body)? };
        tx.send(body).map_err(|_| "counter thread died")?;
        if token.is_none() || requested >= want {
            break;
        }
    }
    drop(tx);
    let (rows, bytes) = counter.join().map_err(|_| "counter panicked")??;
    let secs = started.elapsed().as_secs_f64();
    println!("simulator: {rows} rows in {secs:.3} s = {:.0} rows/s", rows as f64 / secs);
    eprintln!(
        "({:.1} MB, {:.0} MB/s, {:.0} bytes/row)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        bytes as f64 / rows.max(1) as f64
    );
    if rows < want {
        return Err(format!("only {rows} rows available, wanted {want}"));
    }
    Ok(())
}

/// Status line and headers, then exactly Content-Length bytes.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected status line {line:?}"));
    }
    let mut len: Option<usize> = None;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    let len = len.ok_or("response without Content-Length")?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The token sits at the very end: `..."next_page_token":"p1.d..."}` or `...:null}`.
fn next_token(body: &[u8]) -> Result<Option<String>, String> {
    const KEY: &[u8] = b"\"next_page_token\":";
    let tail = &body[body.len().saturating_sub(256)..];
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY).ok_or("no next_page_token in body")?;
    let rest = &tail[at + KEY.len()..];
    if rest.starts_with(b"null") {
        return Ok(None);
    }
    let s = std::str::from_utf8(rest).map_err(|e| e.to_string())?;
    let s = s.strip_prefix('"').and_then(|s| s.split('"').next()).ok_or("bad token")?;
    Ok(Some(s.to_owned()))
}

/// The next URL sits at the very end: `..."next":"http://...&cursor=p1.d..."}}` or `...:null}}`.
fn next_cursor(body: &[u8]) -> Result<Option<String>, String> {
    const KEY: &[u8] = b"\"next\":";
    let tail = &body[body.len().saturating_sub(512)..];
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY).ok_or("no links.next in body")?;
    let rest = &tail[at + KEY.len()..];
    if rest.starts_with(b"null") {
        return Ok(None);
    }
    let s = std::str::from_utf8(rest).map_err(|e| e.to_string())?;
    let url = s.strip_prefix('"').and_then(|s| s.split('"').next()).ok_or("bad next URL")?;
    let cursor = url.rsplit_once("cursor=").map(|(_, c)| c).ok_or("next URL without cursor")?;
    Ok(Some(cursor.to_owned()))
}
