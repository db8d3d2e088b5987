//! What can go wrong fetching a page, worded for the DBA reading `error_message`.
//!
//! Every message is built from values we produced and from [`SourceText`]: text from the
//! source reaches a message only through [`Secrets::quote`], because a hostile source may echo
//! the request back, token included.

use std::borrow::Cow;

use super::redact::{Secrets, SourceText, MESSAGE_CHARS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Our words about the client's settings; never the source's text.
    #[error("invalid source settings: {0}")]
    Settings(String),

    /// Our words about the caller's request; never the source's text.
    #[error("invalid page request: {0}")]
    Request(String),

    /// Any status other than 200 (redirects are not followed).
    #[error("source answered HTTP {status_text}{}{}", colon(.snippet), attempts_note(*.attempts))]
    Status { status: u16, status_text: String, snippet: SourceText, attempts: u32 },

    #[error("timed out {phase} after {limit_ms} ms{}", attempts_note(*.attempts))]
    Timeout { phase: &'static str, limit_ms: u64, attempts: u32 },

    #[error("cannot connect to the source: {detail}{}", attempts_note(*.attempts))]
    Connect { detail: SourceText, attempts: u32 },

    /// The connection broke while sending the request or reading the response.
    #[error("HTTP exchange with the source failed: {detail}{}", attempts_note(*.attempts))]
    Transport { detail: SourceText, attempts: u32 },

    #[error(
        "source response is larger than the limit of {limit} bytes{}{}",
        declared(*.content_length),
        attempts_note(*.attempts)
    )]
    TooLarge { limit: u64, content_length: Option<u64>, attempts: u32 },

    /// Not JSON at all, or cut short; `detail` is serde's message with line and column.
    #[error("malformed JSON in source response: {detail}{}", attempts_note(*.attempts))]
    MalformedJson { detail: SourceText, line: usize, column: usize, attempts: u32 },

    /// Valid JSON, wrong shape: no `data` array, a bad `next_page_token`, ...
    #[error("invalid source response: {reason}{}", attempts_note(*.attempts))]
    InvalidPage { reason: SourceText, attempts: u32 },

    /// One record broke the contract; the whole page is rejected. `index` counts from 0;
    /// `field` is the profile's path as written (`created_at`, `order.number`) or `record`.
    #[error(
        "invalid record at index {index}{} in source response: {field} {reason}{}",
        id_note(.id.as_ref()),
        attempts_note(*.attempts)
    )]
    InvalidRecord { index: usize, id: Option<SourceText>, field: String, reason: SourceText, attempts: u32 },

    /// The window's paging hit one of its bounds (a cycle, the page or time limit).
    #[error("{0}")]
    Bound(super::BoundHit),

    /// The OAuth2 token endpoint did not give an access token.
    #[error("could not get an OAuth2 access token: {detail}")]
    Token { detail: SourceText },

    /// `should_stop` returned true.
    #[error("fetch stopped on request{}", attempts_note(*.attempts))]
    Cancelled { attempts: u32 },
}

fn colon(snippet: &SourceText) -> String {
    if snippet.is_empty() {
        String::new()
    } else {
        format!(": {snippet}")
    }
}

fn attempts_note(attempts: u32) -> String {
    match attempts {
        0 => String::new(),
        1 => " (after 1 attempt)".to_owned(),
        n => format!(" (after {n} attempts)"),
    }
}

fn declared(content_length: Option<u64>) -> String {
    content_length.map_or_else(String::new, |n| format!(" (Content-Length {n})"))
}

fn id_note(id: Option<&SourceText>) -> String {
    // Not `{:?}`: escaping after the scrub could turn what is left into a secret's text.
    id.map_or_else(String::new, |id| format!(" (id \"{id}\")"))
}

/// 408, 429 and 5xx may succeed later; any other status will not.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

impl FetchError {
    /// `reason` is the status's canonical phrase, never the one the source sent.
    pub(crate) fn status(status: u16, reason: Option<&'static str>, snippet: SourceText) -> Self {
        FetchError::Status {
            status,
            status_text: match reason {
                Some(reason) => format!("{status} {reason}"),
                None => status.to_string(),
            },
            snippet,
            attempts: 0,
        }
    }

    /// Whether another attempt may succeed: 408/429/5xx, timeouts, connect and transport
    /// errors. Parse and validation errors are deterministic and never retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => is_retryable_status(*status),
            FetchError::Timeout { .. } | FetchError::Connect { .. } | FetchError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Requests made before this error (0 when none was sent).
    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.clone().attempts_slot().map_or(0, |attempts| *attempts)
    }

    /// Where the error counts its requests; none for errors made before any request.
    fn attempts_slot(&mut self) -> Option<&mut u32> {
        match self {
            FetchError::Settings(_) | FetchError::Request(_) | FetchError::Bound(_) | FetchError::Token { .. } => None,
            FetchError::Status { attempts, .. }
            | FetchError::Timeout { attempts, .. }
            | FetchError::Connect { attempts, .. }
            | FetchError::Transport { attempts, .. }
            | FetchError::TooLarge { attempts, .. }
            | FetchError::MalformedJson { attempts, .. }
            | FetchError::InvalidPage { attempts, .. }
            | FetchError::InvalidRecord { attempts, .. }
            | FetchError::Cancelled { attempts } => Some(attempts),
        }
    }

    /// The HTTP status, when the source answered with one other than 200.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What the DBA can do about it, for the `HINT` of a report. Only the tests ask yet:
    /// the worker's failure report does not carry it.
    #[cfg(test)]
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            FetchError::Settings(_) => "check the pipeline's base_url and token and the orders_sync.http_* settings",
            FetchError::Request(_) | FetchError::Cancelled { .. } => return None,
            FetchError::Bound(super::BoundHit::Cycle { .. }) => {
                "the source's page tokens repeat; its pages so far are kept, ask the source's owner to fix its paging"
            }
            FetchError::Bound(_) => {
                "raise orders_sync.max_pages_per_window / orders_sync.max_window_seconds (or the pipeline's own), or shorten the window"
            }
            FetchError::Status { status: 401 | 403, .. } | FetchError::Token { .. } => {
                "check the pipeline's credentials in orders_sync.pipeline_credentials and its profile's auth"
            }
            FetchError::Status { status: 404, .. } => {
                "check the pipeline's base_url, the store code and the stream name"
            }
            FetchError::Status { status, .. } if is_retryable_status(*status) => {
                "the source kept failing; try again later or raise orders_sync.http_max_attempts"
            }
            FetchError::Status { .. } => "the source refused the request; its message says why",
            FetchError::Timeout { .. } => {
                "raise orders_sync.http_read_timeout or orders_sync.http_connect_timeout, or lower the pipeline's page size"
            }
            FetchError::Connect { .. } => {
                "check the pipeline's base_url and that the source is reachable from the database server"
            }
            FetchError::Transport { .. } => "the connection to the source broke; try again",
            FetchError::TooLarge { .. } => {
                "lower the pipeline's page size or raise orders_sync.http_max_response_size"
            }
            FetchError::MalformedJson { .. }
            | FetchError::InvalidPage { .. }
            | FetchError::InvalidRecord { .. } => {
                "the source answered what its profile does not describe; nothing from this page was written. Try orders_sync.test_source"
            }
        })
    }

    pub(crate) fn with_attempts(mut self, n: u32) -> Self {
        if let Some(attempts) = self.attempts_slot() {
            *attempts = n;
        }
        self
    }
}

/// A short, single-line, secret-free excerpt of an error response for the message: the
/// `error` (or `message`) string of a JSON object body, else the body text itself.
pub(crate) fn body_snippet(body: &[u8], secrets: &Secrets) -> SourceText {
    let raw = String::from_utf8_lossy(body);
    let text: Cow<'_, str> = match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(object)) => ["error", "message"]
            .iter()
            .find_map(|key| object.get(*key).and_then(serde_json::Value::as_str))
            .map_or(raw.clone(), |s| Cow::Owned(s.to_owned())),
        _ => raw.clone(),
    };
    secrets.quote(&text, MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::redact::REDACTED;

    const TOKEN: &str = "tok/en-\"s3cret\"-42";

    fn ours(text: &str) -> SourceText {
        Secrets::none().quote(text, MESSAGE_CHARS)
    }

    #[test]
    fn messages_say_what_failed_and_how_often() {
        let e = FetchError::status(500, Some("Internal Server Error"), ours("injected fault"));
        assert_eq!(
            e.with_attempts(4).to_string(),
            "source answered HTTP 500 Internal Server Error: injected fault (after 4 attempts)"
        );
        let e = FetchError::status(404, Some("Not Found"), SourceText::default()).with_attempts(1);
        assert_eq!(e.to_string(), "source answered HTTP 404 Not Found (after 1 attempt)");
        let e = FetchError::TooLarge { limit: 1024, content_length: Some(5000), attempts: 1 };
        assert_eq!(
            e.to_string(),
            "source response is larger than the limit of 1024 bytes (Content-Length 5000) (after 1 attempt)"
        );
        let e = FetchError::InvalidRecord {
            index: 3,
            id: Some(ours("orders-1")),
            field: "date".to_owned(),
            reason: ours("is missing"),
            attempts: 2,
        };
        assert_eq!(
            e.to_string(),
            "invalid record at index 3 (id \"orders-1\") in source response: date is missing (after 2 attempts)"
        );
        assert_eq!(FetchError::Cancelled { attempts: 0 }.to_string(), "fetch stopped on request");
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [200, 204, 301, 400, 401, 403, 404, 410, 422] {
            assert!(!is_retryable_status(status), "{status}");
        }
        let retryable = [
            FetchError::Timeout { phase: "x", limit_ms: 1, attempts: 0 },
            FetchError::Connect { detail: ours("refused"), attempts: 0 },
            FetchError::Transport { detail: ours("reset"), attempts: 0 },
        ];
        assert!(retryable.iter().all(FetchError::is_retryable));
        let final_ = [
            FetchError::TooLarge { limit: 1, content_length: None, attempts: 0 },
            FetchError::MalformedJson { detail: ours("x"), line: 1, column: 1, attempts: 0 },
            FetchError::InvalidPage { reason: ours("x"), attempts: 0 },
            FetchError::Cancelled { attempts: 0 },
        ];
        assert!(!final_.iter().any(FetchError::is_retryable));
    }

    #[test]
    fn snippet_prefers_the_error_field_and_stays_short() {
        let none = Secrets::none();
        let body = br#"{"error": "missing or\nwrong bearer token"}"#;
        assert_eq!(body_snippet(body, &none).as_str(), "missing or wrong bearer token");
        let long = "x".repeat(10_000);
        let snippet = body_snippet(long.as_bytes(), &none);
        assert_eq!(snippet.as_str().chars().count(), MESSAGE_CHARS + 1);
        assert!(snippet.as_str().ends_with('…'));
        assert_eq!(
            body_snippet(b"<html>\r\n<b>Bad\tGateway</b>\x00</html>", &none).as_str(),
            "<html> <b>Bad Gateway</b> </html>"
        );
        assert_eq!(body_snippet(b"\xff\xfe oops", &none).as_str(), "\u{fffd}\u{fffd} oops");
    }

    #[test]
    fn snippet_never_shows_an_echoed_token() {
        let secrets = Secrets::new([TOKEN]);
        // Long enough that a cut after the first 200 characters would split the token.
        let padding = "p".repeat(MESSAGE_CHARS - 10);
        let bodies = [
            format!("{padding}Bearer {TOKEN}"),
            format!("{{\"error\": {}}}", serde_json::to_string(&format!("you sent {TOKEN}")).expect("json")),
            format!("{padding} Bearer {TOKEN}"),
        ];
        for body in bodies {
            let snippet = body_snippet(body.as_bytes(), &secrets);
            assert!(!snippet.as_str().contains("s3cret") && !snippet.as_str().contains("Bearer tok"), "{snippet}");
        }
        let snippet = body_snippet(format!("you sent Bearer {TOKEN}").as_bytes(), &secrets);
        assert_eq!(snippet.as_str(), format!("you sent Bearer {REDACTED}"));
        // A token with whitespace in it, echoed with its whitespace changed.
        let spaced = Secrets::new(["a b-secret-token"]);
        let snippet = body_snippet(b"got a \n b-secret-token", &spaced);
        assert!(!snippet.as_str().contains("b-secret-token"), "{snippet}");
    }
}
