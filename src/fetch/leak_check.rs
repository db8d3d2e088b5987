//! Test support: the ways a source could echo a token, and a check that a message shows none
//! of them. Written apart from `redact` (plain encoders, plain substring search) so that the
//! tests do not grade the scrubber with its own code.

use super::redact::MIN_FRAGMENT_CHARS;

const UNRESERVED: &[u8] = b"-._~";

fn percent(text: &str, keep: impl Fn(u8) -> bool, lower: bool) -> String {
    let mut out = String::new();
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || keep(b) {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_ascii(text: &str, upper: bool) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&if upper { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") });
                }
            }
        }
    }
    out
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every encoding of `token` a source could plausibly send back, by name. Each encodes
/// character by character, so the encoding of a part of a token is a part of its encoding.
pub(crate) fn encodings(token: &str) -> Vec<(&'static str, String)> {
    let json = serde_json::to_string(token).expect("json");
    let json = json[1..json.len() - 1].to_owned();
    let html = token
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;");
    let pct = percent(token, |b| UNRESERVED.contains(&b), false);
    vec![
        ("raw", token.to_owned()),
        ("json", json.clone()),
        ("json with \\/", json.replace('/', "\\/")),
        ("json ascii", json_ascii(token, false)),
        ("json ascii upper", json_ascii(token, true)),
        ("percent", pct.clone()),
        ("percent lower", percent(token, |b| UNRESERVED.contains(&b), true)),
        ("form", percent(token, |b| UNRESERVED.contains(&b) || b == b' ', false).replace(' ', "+")),
        ("percent keeping /", percent(token, |b| UNRESERVED.contains(&b) || b == b'/', false)),
        ("percent twice", percent(&pct, |b| UNRESERVED.contains(&b), false)),
        ("html", html),
    ]
}

/// What must not appear in a message: every encoding of every run of [`MIN_FRAGMENT_CHARS`]
/// characters of `token` (of the whole token when it is shorter), and every such run of the
/// base64 of the token at any alignment.
pub(crate) fn fragments(token: &str) -> Vec<String> {
    let chars: Vec<char> = token.chars().collect();
    let width = chars.len().min(MIN_FRAGMENT_CHARS);
    let mut out: Vec<String> = chars
        .windows(width)
        .flat_map(|w| encodings(&w.iter().collect::<String>()).into_iter().map(|(_, form)| form))
        .collect();
    for prefix in ["", "x", "xy"] {
        let encoded: Vec<char> = base64(format!("{prefix}{token}").as_bytes()).chars().collect();
        // Skip what carries the prefix's bits, and the last group, which carries padding.
        let start = [0, 2, 3][prefix.len()];
        let end = encoded.len().saturating_sub(4);
        if end > start && end - start >= MIN_FRAGMENT_CHARS {
            out.extend(encoded[start..end].windows(MIN_FRAGMENT_CHARS).map(|w| w.iter().collect::<String>()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The first fragment of `token` that `message` shows, if any.
pub(crate) fn leaked_fragment(message: &str, token: &str) -> Option<String> {
    fragments(token).into_iter().find(|fragment| message.contains(fragment.as_str()))
}

#[track_caller]
pub(crate) fn assert_no_leak(message: &str, token: &str) {
    if let Some(fragment) = leaked_fragment(message, token) {
        panic!("token {token:?} leaked as {fragment:?} in: {message}");
    }
}

/// Tokens of many lengths and shapes: short, exactly the fragment length, a typical 40, and a
/// long one, with characters that JSON-escape, percent-encode or HTML-escape, and non-ASCII.
pub(crate) fn sample_tokens() -> Vec<String> {
    vec![
        "q7Z".to_owned(),
        "Ab9/+=%x".to_owned(),
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc+/=%AbCd".to_owned(),
        format!("tok/en \"s3cret\\x+y=z%41 é€😀 {}", "Kq8/Zx+Lm=Np%Rs".repeat(15)),
        "31415926535897932384626433832795028841971e99999".to_owned(),
    ]
}
