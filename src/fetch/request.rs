//! One page's request, built from a stream's profile: the window's dates in the API's format,
//! the templates filled in, and the cursor placed as the pagination style says. Pure: no
//! credential is added here (see `fetch::auth`), so a built request can be shown as it is.

use chrono::{DateTime, Duration as Days, NaiveDate, TimeZone};
use chrono_tz::Tz;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use reqwest::Url;
use serde_json::{Map, Number, Value};

use super::profile::{DateEnd, DateFormat, DateParams, Method, Pagination, StreamProfile};

/// Characters escaped in a placeholder put into a path: everything that could end or change
/// the segment (`/`, `?`, `#`, `%`). A whole `.` or `..` is refused before (`check_request`).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'|');

/// A placeholder's value: text, or a number where the API wants one (a JSON body keeps it a
/// number; a URL writes its digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    Text(String),
    Number(i64),
}

impl Filled {
    fn text(&self) -> String {
        match self {
            Filled::Text(text) => text.clone(),
            Filled::Number(n) => n.to_string(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Filled::Text(text) => Value::String(text.clone()),
            Filled::Number(n) => Value::Number(Number::from(*n)),
        }
    }
}

/// The values of the placeholders for one stream of one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    pub store_code: String,
    pub stream: String,
    pub from: Filled,
    pub to: Filled,
    pub page_size: u32,
}

impl Placeholders {
    pub fn new(
        store_code: &str,
        stream: &str,
        from: NaiveDate,
        to: NaiveDate,
        dates: &DateParams,
        timezone: Tz,
        page_size: u32,
    ) -> Self {
        let (from, to) = window_dates(from, to, dates, timezone);
        Placeholders { store_code: store_code.to_owned(), stream: stream.to_owned(), from, to, page_size }
    }

    fn get(&self, name: &str) -> Filled {
        match name {
            "store_code" => Filled::Text(self.store_code.clone()),
            "stream" => Filled::Text(self.stream.clone()),
            "from" => self.from.clone(),
            "to" => self.to.clone(),
            _ => Filled::Number(i64::from(self.page_size)),
        }
    }

    /// A template with each placeholder replaced by `encode(value)`. Templates were checked
    /// when the profile was written, so an unknown placeholder cannot occur.
    fn fill(&self, template: &str, encode: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            out.push_str(&encode(&self.get(&after[..close]).text()));
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A JSON body template: a string that is exactly one placeholder takes the value's own
    /// type; other strings are filled as text.
    fn fill_json(&self, template: &Value) -> Value {
        match template {
            Value::String(text) => {
                let whole = text.strip_prefix('{').and_then(|t| t.strip_suffix('}'));
                match whole.filter(|name| !name.contains(['{', '}'])) {
                    Some(name) => self.get(name).json(),
                    None => Value::String(self.fill(text, str::to_owned)),
                }
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), self.fill_json(v))).collect()),
            other => other.clone(),
        }
    }
}

/// The window's first and last day as the API writes them. An exclusive end is the day after
/// the window (its midnight, for timestamps); an inclusive end of a timestamp is the last
/// second (or millisecond) of the window's last day, in the pipeline's time zone.
pub fn window_dates(from: NaiveDate, to: NaiveDate, dates: &DateParams, timezone: Tz) -> (Filled, Filled) {
    let day_after = to.succ_opt().unwrap_or(to);
    let start = |day: NaiveDate| start_of_day(day, timezone);
    match (dates.format, dates.end) {
        (DateFormat::Date, DateEnd::Inclusive) => (Filled::Text(ymd(from)), Filled::Text(ymd(to))),
        (DateFormat::Date, DateEnd::Exclusive) => (Filled::Text(ymd(from)), Filled::Text(ymd(day_after))),
        (DateFormat::Rfc3339, DateEnd::Exclusive) => (rfc3339(start(from)), rfc3339(start(day_after))),
        (DateFormat::Rfc3339, DateEnd::Inclusive) => {
            (rfc3339(start(from)), rfc3339(start(day_after) - Days::seconds(1)))
        }
        (DateFormat::UnixSeconds, end) => {
            let last = start(day_after).timestamp() - i64::from(end == DateEnd::Inclusive);
            (Filled::Number(start(from).timestamp()), Filled::Number(last))
        }
        (DateFormat::UnixMillis, end) => {
            let last = start(day_after).timestamp_millis() - i64::from(end == DateEnd::Inclusive);
            (Filled::Number(start(from).timestamp_millis()), Filled::Number(last))
        }
    }
}

fn ymd(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn rfc3339(instant: DateTime<Tz>) -> Filled {
    Filled::Text(instant.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

/// The first instant of `day` in `timezone`: midnight, or the first valid time after a gap
/// (zones that skip midnight for daylight saving time).
pub fn start_of_day(day: NaiveDate, timezone: Tz) -> DateTime<Tz> {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    (0..=180)
        .find_map(|minutes| timezone.from_local_datetime(&(midnight + Days::minutes(minutes))).earliest())
        .unwrap_or_else(|| timezone.from_utc_datetime(&midnight))
}

/// A page's request, without credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct PageCall {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    /// The JSON body of a POST.
    pub body: Option<Value>,
}

/// Builds the request of a page. `cursor` is what the previous page left (see
/// `pagination::next_cursor`): a token, an offset, a page number, a last id, or the next
/// page's URL. `None` asks for the first page.
pub fn page_call(
    profile: &StreamProfile,
    base_url: &Url,
    values: &Placeholders,
    cursor: Option<&str>,
) -> Result<PageCall, String> {
    let spec = &profile.request;
    let headers: Vec<(String, String)> =
        spec.headers.0.iter().map(|(name, value)| (name.clone(), values.fill(value, str::to_owned))).collect();
    if let (Pagination::NextUrl { .. } | Pagination::LinkHeader {}, Some(next)) = (&profile.pagination, cursor) {
        return Ok(PageCall { method: Method::Get, url: next_page_url(base_url, next)?, headers, body: None });
    }
    let path = values.fill(&spec.path, |value| utf8_percent_encode(value, SEGMENT).to_string());
    let mut url = base_url.clone();
    let joined = format!("{}{}", url.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    let cursor_param = cursor_param(&profile.pagination, cursor);
    let body = match spec.method {
        Method::Get => {
            let mut query = url.query_pairs_mut();
            for (name, value) in &spec.query.0 {
                query.append_pair(name, &values.fill(value, str::to_owned));
            }
            if let Some((name, value)) = &cursor_param {
                query.append_pair(name, &value.text());
            }
            drop(query);
            None
        }
        Method::Post => {
            if !spec.query.0.is_empty() {
                let mut query = url.query_pairs_mut();
                for (name, value) in &spec.query.0 {
                    query.append_pair(name, &values.fill(value, str::to_owned));
                }
            }
            let mut body = match spec.body.as_ref().map(|b| values.fill_json(b)) {
                Some(Value::Object(map)) => map,
                _ => Map::new(),
            };
            if let Some((name, value)) = cursor_param {
                body.insert(name, value.json());
            }
            Some(Value::Object(body))
        }
    };
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(PageCall { method: spec.method, url, headers, body })
}

/// The parameter that asks for the page after `cursor`.
fn cursor_param(pagination: &Pagination, cursor: Option<&str>) -> Option<(String, Filled)> {
    let number = |text: &str| text.parse::<i64>().map_or_else(|_| Filled::Text(text.to_owned()), Filled::Number);
    match pagination {
        Pagination::Cursor { param, .. } | Pagination::LastId { param, .. } => {
            cursor.map(|c| (param.clone(), Filled::Text(c.to_owned())))
        }
        Pagination::Offset { offset_param, .. } => {
            Some((offset_param.clone(), cursor.map_or(Filled::Number(0), number)))
        }
        Pagination::PageNumber { page_param, first_page, .. } => {
            Some((page_param.clone(), cursor.map_or(Filled::Number(i64::from(first_page.0)), number)))
        }
        Pagination::NextUrl { .. } | Pagination::LinkHeader {} | Pagination::None {} => None,
    }
}

/// A next page's URL, as the source gave it (absolute, or relative to `base_url`). It must
/// stay on the source's scheme, host and port: credentials are sent with it.
pub fn next_page_url(base_url: &Url, next: &str) -> Result<Url, String> {
    let url = base_url.join(next).map_err(|e| format!("the next page's URL is not a valid URL ({e})"))?;
    let same_origin = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default();
    if !same_origin || !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "the next page's URL leaves the source {}://{}: credentials are only sent to the pipeline's base_url host",
            base_url.scheme(),
            base_url.host_str().unwrap_or("")
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::profile::Profile;
    use serde_json::json;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn profile(source: Value) -> StreamProfile {
        Profile::parse(&source, &["orders".to_owned()]).unwrap().stream("orders").unwrap().clone()
    }

    fn call(source: Value, cursor: Option<&str>, tz: Tz) -> PageCall {
        let profile = profile(source);
        let values =
            Placeholders::new("S 1/..", "orders", day("2026-01-01"), day("2026-01-02"), &profile.dates, tz, 500);
        page_call(&profile, &Url::parse("http://127.0.0.1:8080/api").unwrap(), &values, cursor).unwrap()
    }

    #[test]
    fn the_builtin_contract_asks_as_before() {
        let c = call(json!({}), Some("T 1"), chrono_tz::UTC);
        assert_eq!(
            c.url.as_str(),
            "http://127.0.0.1:8080/api/v1/stores/S%201%2F../orders?from=2026-01-01&to=2026-01-02&page_size=500&page_token=T+1"
        );
        assert_eq!(c.method, Method::Get);
        assert!(c.body.is_none());
    }

    #[test]
    fn window_dates_in_each_format() {
        let hcm: Tz = "Asia/Ho_Chi_Minh".parse().unwrap();
        let (from, to) = (day("2026-01-01"), day("2026-01-02"));
        let params = |format, end| DateParams { format, end };
        assert_eq!(
            window_dates(from, to, &params(DateFormat::Rfc3339, DateEnd::Exclusive), hcm),
            (Filled::Text("2026-01-01T00:00:00+07:00".into()), Filled::Text("2026-01-03T00:00:00+07:00".into()))
        );
        assert_eq!(
            window_dates(from, to, &params(DateFormat::Rfc3339, DateEnd::Inclusive), hcm).1,
            Filled::Text("2026-01-02T23:59:59+07:00".into())
        );
        assert_eq!(
            window_dates(from, to, &params(DateFormat::UnixSeconds, DateEnd::Exclusive), chrono_tz::UTC),
            (Filled::Number(1_767_225_600), Filled::Number(1_767_398_400))
        );
        assert_eq!(
            window_dates(from, to, &params(DateFormat::UnixMillis, DateEnd::Inclusive), chrono_tz::UTC).1,
            Filled::Number(1_767_398_399_999)
        );
        assert_eq!(
            window_dates(from, to, &params(DateFormat::Date, DateEnd::Exclusive), chrono_tz::UTC).1,
            Filled::Text("2026-01-03".into())
        );
    }

    #[test]
    fn a_day_that_skips_midnight_starts_at_its_first_valid_time() {
        // Santiago moved clocks from 00:00 to 01:00 on 2023-09-03.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        assert_eq!(start_of_day(day("2023-09-03"), santiago).to_rfc3339(), "2023-09-03T01:00:00-03:00");
    }

    #[test]
    fn paging_parameters_follow_the_style() {
        let offset = json!({"pagination": {"style": "offset", "offset_param": "offset"}});
        assert!(call(offset.clone(), None, chrono_tz::UTC).url.as_str().ends_with("&offset=0"));
        assert!(call(offset, Some("2000"), chrono_tz::UTC).url.as_str().ends_with("&offset=2000"));
        let pages = json!({"pagination": {"style": "page_number", "page_param": "page", "first_page": 1}});
        assert!(call(pages, None, chrono_tz::UTC).url.as_str().ends_with("&page=1"));
        let last_id =
            json!({"pagination": {"style": "last_id", "param": "starting_after", "has_more_path": "has_more"}});
        assert!(!call(last_id.clone(), None, chrono_tz::UTC).url.as_str().contains("starting_after"));
        assert!(call(last_id, Some("o-9"), chrono_tz::UTC).url.as_str().ends_with("&starting_after=o-9"));
    }

    #[test]
    fn a_next_url_is_followed_only_on_the_same_origin() {
        let next = json!({"pagination": {"style": "next_url", "url_path": "links.next"}});
        let c = call(next.clone(), Some("/api/orders?cursor=abc"), chrono_tz::UTC);
        assert_eq!(c.url.as_str(), "http://127.0.0.1:8080/api/orders?cursor=abc");
        let base = Url::parse("http://127.0.0.1:8080/api").unwrap();
        assert!(next_page_url(&base, "http://evil.example/steal").unwrap_err().contains("leaves the source"));
        assert!(next_page_url(&base, "http://127.0.0.1:9999/x").is_err());
        assert!(next_page_url(&base, "https://127.0.0.1:8080/x").is_err());
    }

    #[test]
    fn a_post_body_is_filled_with_typed_values() {
        let search = json!({
            "request": {"method": "POST", "path": "/search",
                        "query": {}, "body": {"filter": {"from": "{from}", "to": "{to}", "store": "{store_code}"},
                                              "limit": "{page_size}", "note": "store {store_code}"}},
            "dates": {"format": "unix_seconds", "end": "exclusive"},
            "pagination": {"style": "last_id", "param": "starting_after", "has_more_path": "has_more"}
        });
        let c = call(search, Some("o-9"), chrono_tz::UTC);
        assert_eq!(c.method, Method::Post);
        assert_eq!(c.url.as_str(), "http://127.0.0.1:8080/api/search");
        assert_eq!(
            c.body.unwrap(),
            json!({"filter": {"from": 1_767_225_600, "to": 1_767_398_400, "store": "S 1/.."},
                   "limit": 500, "note": "store S 1/..", "starting_after": "o-9"})
        );
    }

    #[test]
    fn headers_are_filled() {
        let c = call(json!({"request": {"headers": {"X-Store": "{store_code}"}}}), None, chrono_tz::UTC);
        assert_eq!(c.headers, vec![("X-Store".to_owned(), "S 1/..".to_owned())]);
    }
}
