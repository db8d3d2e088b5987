//! The one rule for quoting a source's text in a message: [`Secrets::quote`].
//!
//! A hostile (or merely chatty) source may echo the request back: the bearer token can come
//! back as an id, a date, an amount, inside an error body, JSON-escaped, percent-encoded,
//! HTML-escaped, base64-encoded, or cut short. Whatever of it reaches a [`FetchError`] ends up
//! in `error_message`, the NOTICE and the server log, which the monitor role reads. So every
//! piece of source text in an error is a [`SourceText`], and the only way to make one is
//! `quote`, which
//!
//! 1. removes every run of [`MIN_FRAGMENT_CHARS`] or more characters (the whole secret when it
//!    is shorter) that also occurs in a secret or its base64 form, comparing without ASCII
//!    case, with `+` and space alike, and looking through JSON, percent (`%2F`, `%2f`) and
//!    HTML escapes, and through two layers of them;
//! 2. flattens the text to one line (a value cannot forge log lines);
//! 3. cuts it to the caller's length, only after scrubbing, so a cut cannot keep a token's
//!    start; and
//! 4. checks the result once more: if anything of a secret is left, the whole quote becomes
//!    `[redacted]`. Quoting less of a hostile value is always preferred to quoting more.
//!
//! [`FetchError`]: super::FetchError

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// What replaces a secret wherever it shows up in source text.
pub(crate) const REDACTED: &str = "[redacted]";
/// A run of this many characters of a secret is treated as the secret; a shorter secret
/// counts only whole.
pub const MIN_FRAGMENT_CHARS: usize = 8;
/// Longest quote of a single value (an id, a date, an amount), in characters.
pub(crate) const VALUE_CHARS: usize = 40;
/// Longest quote of a message (an error body, a parser's or the network's message).
pub(crate) const MESSAGE_CHARS: usize = 200;

/// Text a source sent (or a message derived from it), scrubbed of every secret, on one line
/// and cut to length. Made only by [`Secrets::quote`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceText(String);

impl SourceText {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The credentials a client sends, kept as what [`Secrets::quote`] looks for: every window of
/// [`MIN_FRAGMENT_CHARS`] characters (canonical, see [`canonical`]) of each secret and of its
/// base64 forms. The secrets themselves are not kept.
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    /// Window length -> the canonical windows of that length.
    windows: HashMap<usize, HashSet<String>>,
}

// Never prints what it holds: the windows are the secret, piece by piece.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.windows.is_empty() { "Secrets(none)" } else { "Secrets([redacted])" })
    }
}

impl Secrets {
    /// Secrets of a client; empty ones are ignored.
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut windows: HashMap<usize, HashSet<String>> = HashMap::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            for form in std::iter::once(secret.to_owned()).chain(base64_forms(secret.as_bytes())) {
                let chars: Vec<char> = form.chars().map(canonical).collect();
                let width = chars.len().min(MIN_FRAGMENT_CHARS);
                if width == 0 {
                    continue;
                }
                let set = windows.entry(width).or_default();
                for window in chars.windows(width) {
                    set.insert(window.iter().collect());
                }
            }
        }
        Secrets { windows }
    }

    /// No secret: quoting only flattens and cuts.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Secrets::default()
    }

    /// `text` made safe to quote in a message: scrubbed of every secret in every form the
    /// module documentation lists, on one line, at most `max_chars` characters (plus `…`
    /// when cut). The one place where source text becomes message text.
    pub(crate) fn quote(&self, text: &str, max_chars: usize) -> SourceText {
        // Scrubbed before and after flattening, so that neither a secret's own whitespace
        // nor whitespace a source slipped into it can hide it.
        let flat = flatten(&self.scrub(text));
        let scrubbed = self.scrub(&flat);
        let quoted = cut(&scrubbed, max_chars);
        if self.leaks(&quoted).is_empty() {
            SourceText(quoted)
        } else {
            // Only a secret that shares characters with `[redacted]` or `…` gets here.
            SourceText(REDACTED.to_owned())
        }
    }

    /// `text` with every range that [`Secrets::leaks`] finds replaced by [`REDACTED`].
    fn scrub(&self, text: &str) -> String {
        let leaks = self.leaks(text);
        if leaks.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for range in leaks {
            out.push_str(&text[at..range.start]);
            out.push_str(REDACTED);
            at = range.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// The byte ranges of `text`, sorted and disjoint, that show a secret: every window that
    /// matches one of the secret's windows, read as is and through up to two layers of JSON,
    /// percent and HTML escapes.
    fn leaks(&self, text: &str) -> Vec<Range<usize>> {
        if self.windows.is_empty() || text.is_empty() {
            return Vec::new();
        }
        let raw: Vec<Unit> = text.char_indices().map(|(at, ch)| Unit { ch, span: at..at + ch.len_utf8() }).collect();
        let mut hits = Vec::new();
        self.mark(&raw, &mut hits);
        for first in DECODERS {
            let Some(once) = first(&raw) else { continue };
            self.mark(&once, &mut hits);
            for second in DECODERS {
                if let Some(twice) = second(&once) {
                    self.mark(&twice, &mut hits);
                }
            }
        }
        merge(hits)
    }

    fn mark(&self, units: &[Unit], hits: &mut Vec<Range<usize>>) {
        let canonical: Vec<char> = units.iter().map(|u| canonical(u.ch)).collect();
        let mut window = String::new();
        for (&width, set) in &self.windows {
            for (i, chars) in canonical.windows(width).enumerate() {
                window.clear();
                window.extend(chars);
                if set.contains(&window) {
                    hits.push(units[i].span.start..units[i + width - 1].span.end);
                }
            }
        }
    }
}

/// How characters are compared: without ASCII case (percent escapes come in both cases, and a
/// source may change a token's case) and with space and `+` alike (form encoding).
fn canonical(ch: char) -> char {
    if ch == ' ' {
        '+'
    } else {
        ch.to_ascii_lowercase()
    }
}

/// One character of a decoded view of a text, with the bytes of the original text it came
/// from, so that a match in the view redacts the original.
#[derive(Clone)]
struct Unit {
    ch: char,
    span: Range<usize>,
}

type Decoder = fn(&[Unit]) -> Option<Vec<Unit>>;

/// Each returns `None` when it would change nothing.
const DECODERS: [Decoder; 3] = [json_unescape, percent_decode, html_unescape];

fn hex_value(units: &[Unit]) -> Option<u32> {
    units.iter().try_fold(0u32, |value, u| Some(value * 16 + u.ch.to_digit(16)?))
}

fn joined(units: &[Unit], ch: char) -> Unit {
    Unit { ch, span: units[0].span.start..units[units.len() - 1].span.end }
}

/// `\"`, `\\`, `\/`, `\n` and the like, and `\uXXXX` (surrogate pairs joined).
fn json_unescape(units: &[Unit]) -> Option<Vec<Unit>> {
    let mut out = Vec::with_capacity(units.len());
    let mut changed = false;
    let mut i = 0;
    while i < units.len() {
        if units[i].ch != '\\' || i + 1 == units.len() {
            out.push(units[i].clone());
            i += 1;
            continue;
        }
        let simple = match units[i + 1].ch {
            '"' => Some('"'),
            '\\' => Some('\\'),
            '/' => Some('/'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            _ => None,
        };
        if let Some(ch) = simple {
            out.push(joined(&units[i..i + 2], ch));
            changed = true;
            i += 2;
            continue;
        }
        let code = |at: usize| -> Option<u32> {
            (units.get(at)?.ch == '\\' && units.get(at + 1)?.ch == 'u').then_some(())?;
            hex_value(units.get(at + 2..at + 6)?)
        };
        let Some(high) = code(i) else {
            out.push(units[i].clone());
            i += 1;
            continue;
        };
        let (ch, len) = match (high, code(i + 6)) {
            (0xD800..=0xDBFF, Some(low @ 0xDC00..=0xDFFF)) => {
                (char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)), 12)
            }
            _ => (char::from_u32(high), 6),
        };
        out.push(joined(&units[i..i + len], ch.unwrap_or('\u{fffd}')));
        changed = true;
        i += len;
    }
    changed.then_some(out)
}

/// `%XX` in either case; a run of them is read as UTF-8.
fn percent_decode(units: &[Unit]) -> Option<Vec<Unit>> {
    let byte_at = |at: usize| -> Option<u8> {
        (units.get(at)?.ch == '%').then_some(())?;
        hex_value(units.get(at + 1..at + 3)?).and_then(|v| u8::try_from(v).ok())
    };
    let mut out = Vec::with_capacity(units.len());
    let mut changed = false;
    let mut i = 0;
    while i < units.len() {
        let Some(first) = byte_at(i) else {
            out.push(units[i].clone());
            i += 1;
            continue;
        };
        changed = true;
        let len = match first {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        let bytes: Option<Vec<u8>> = (0..len).map(|k| byte_at(i + 3 * k)).collect();
        let decoded = bytes.as_deref().and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.chars().next());
        match decoded {
            Some(ch) => {
                out.push(joined(&units[i..i + 3 * len], ch));
                i += 3 * len;
            }
            None => {
                let ch = if first.is_ascii() { char::from(first) } else { '\u{fffd}' };
                out.push(joined(&units[i..i + 3], ch));
                i += 3;
            }
        }
    }
    changed.then_some(out)
}

/// `&quot;`, `&amp;`, `&lt;`, `&gt;`, `&apos;`, `&#NN;` and `&#xHH;`.
fn html_unescape(units: &[Unit]) -> Option<Vec<Unit>> {
    let mut out = Vec::with_capacity(units.len());
    let mut changed = false;
    let mut i = 0;
    while i < units.len() {
        let entity = (units[i].ch == '&')
            .then(|| units[i + 1..].iter().take(10).position(|u| u.ch == ';'))
            .flatten()
            .and_then(|len| {
                let name: String = units[i + 1..i + 1 + len].iter().map(|u| u.ch).collect();
                let ch = match name.as_str() {
                    "quot" => Some('"'),
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "apos" => Some('\''),
                    _ => match name.strip_prefix('#') {
                        Some(hex) if hex.starts_with(['x', 'X']) => u32::from_str_radix(&hex[1..], 16).ok(),
                        Some(decimal) => decimal.parse().ok(),
                        None => None,
                    }
                    .and_then(char::from_u32),
                };
                ch.map(|ch| (ch, len + 2))
            });
        match entity {
            Some((ch, len)) => {
                out.push(joined(&units[i..i + len], ch));
                changed = true;
                i += len;
            }
            None => {
                out.push(units[i].clone());
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Base64 of `secret` as it appears inside a longer base64 text, at each of the three byte
/// alignments (a source may encode the whole `Authorization` header, or `user:secret`), in the
/// standard and the URL-safe alphabet. Characters that depend on the neighbours are dropped.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut forms = Vec::new();
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret);
        let whole = bytes.len() - bytes.len() % 3;
        let mut text = String::new();
        for chunk in bytes[..whole].chunks(3) {
            let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
            for shift in [18, 12, 6, 0] {
                text.push(char::from(STANDARD[((n >> shift) & 63) as usize]));
            }
        }
        // The first `offset` bytes were not the secret's: skip the characters that carry them.
        let text: String = text.chars().skip([0, 2, 3][offset]).collect();
        if text.chars().count() >= MIN_FRAGMENT_CHARS {
            forms.push(text.replace('+', "-").replace('/', "_"));
            forms.push(text);
        }
    }
    forms
}

/// Sorted, overlapping or touching ranges joined.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// One line: runs of whitespace and control characters become one space.
fn flatten(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max_chars` characters, then `…`; never cuts inside a `[redacted]`.
fn cut(text: &str, max_chars: usize) -> String {
    let Some((mut at, _)) = text.char_indices().nth(max_chars) else {
        return text.to_owned();
    };
    if let Some(start) = text[..at].rfind('[') {
        if text[start..].starts_with(REDACTED) && start + REDACTED.len() > at {
            at = start;
        }
    }
    format!("{}…", &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::leak_check::{assert_no_leak, base64, encodings, leaked_fragment, sample_tokens};
    use proptest::prelude::*;

    fn quoted(secret: &str, text: &str, max_chars: usize) -> String {
        Secrets::new([secret]).quote(text, max_chars).to_string()
    }

    #[test]
    fn an_echoed_token_is_removed_in_every_encoding_and_the_rest_is_kept() {
        for token in sample_tokens() {
            for (name, form) in encodings(&token) {
                let out = quoted(&token, &format!("before {form} after"), MESSAGE_CHARS);
                assert_no_leak(&out, &token);
                assert!(out.starts_with("before ") && out.contains(REDACTED), "{name} of {token:?}: {out}");
            }
        }
    }

    #[test]
    fn a_cut_never_keeps_the_start_of_a_long_token() {
        // The 0.1.1 leak: a 41+ character id or date was cut to 40, then scrubbed of the whole
        // token, which the cut had already broken.
        for token in sample_tokens() {
            for form in encodings(&token).into_iter().map(|(_, form)| form) {
                for max_chars in [1, 7, 8, 20, VALUE_CHARS, MESSAGE_CHARS] {
                    let out = quoted(&token, &format!("{form}{}", "x".repeat(300)), max_chars);
                    assert_no_leak(&out, &token);
                    assert!(out.chars().count() <= max_chars.max(REDACTED.len()) + 1, "{out}");
                }
            }
        }
    }

    #[test]
    fn a_part_of_eight_characters_is_the_token_and_seven_are_not() {
        let token = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        for part in [&token[..8], &token[10..18], &token[24..], &token[..20]] {
            assert_eq!(quoted(token, &format!("got {part}."), 100), "got [redacted].", "{part}");
        }
        // Percent-encoded and JSON-escaped parts too.
        let token = "ab/cd+ef gh\"ij";
        for part in ["ab%2Fcd%2Bef", "ab%2fcd%2bef", "cd+ef+gh", "cd%2Bef%20gh", "ef gh\\\"ij", "ab\\/cd+ef"] {
            // Not "got {part}": a space next to the token reads as its '+'.
            assert_eq!(quoted(token, &format!("got:{part}."), 100), "got:[redacted].", "{part}");
        }
        // Seven characters are not enough to matter, and are kept for the reader.
        assert_eq!(quoted("sk_live_4eC39HqLyjWD", "got sk_live.", 100), "got sk_live.");
    }

    #[test]
    fn a_short_token_is_removed_whole_in_any_case_and_encoding() {
        for text in ["id q7Z!", "id Q7z!", "id q7%5A!", "id q7%5a!", "id q7\\u005a!", "id q7&#90;!"] {
            assert_eq!(quoted("q7Z", text, 100), "id [redacted]!", "{text}");
        }
        assert_eq!(quoted("q7Z", "id q7!", 100), "id q7!");
    }

    #[test]
    fn base64_of_the_header_or_of_user_and_secret_is_removed() {
        let token = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        for text in [format!("Bearer {token}"), format!("user:{token}"), token.to_owned(), format!("ab{token}")] {
            let encoded = base64(text.as_bytes());
            let out = quoted(token, &format!("saw {encoded} here"), MESSAGE_CHARS);
            assert_no_leak(&out, token);
            assert!(out.starts_with("saw ") && out.ends_with(" here"), "{out}");
            let url_safe = encoded.replace('+', "-").replace('/', "_");
            assert_no_leak(&quoted(token, &url_safe, MESSAGE_CHARS), token);
        }
    }

    #[test]
    fn two_layers_of_escapes_are_seen_through() {
        let token = "ab/cd\"ef gh";
        for text in [
            "ab%252Fcd%2522ef%2520gh", // percent twice
            "ab%2Fcd%5C%22ef+gh",      // JSON inside a query string
            "ab\\\\/cd\\\\\\\"ef gh",  // JSON in JSON
            "ab/cd&amp;quot;ef gh",    // HTML twice
            "ab%2Fcd&quot;ef%20gh",    // HTML after percent
        ] {
            let out = quoted(token, text, MESSAGE_CHARS);
            assert_eq!(leaked_fragment(&out, token), None, "{text}: {out}");
            assert_eq!(out, REDACTED, "{text}");
        }
    }

    #[test]
    fn quotes_are_one_line_and_cut_after_scrubbing() {
        let none = Secrets::none();
        assert_eq!(none.quote("a\r\nb\t\u{0}c  d\n", 100).as_str(), "a b c d");
        assert_eq!(none.quote("abcdef", 3).as_str(), "abc…");
        assert_eq!(none.quote("abc", 3).as_str(), "abc");
        // A cut never splits the marker.
        let token = "sk_live_4eC39HqLyjWD";
        assert_eq!(quoted(token, &format!("abc {token} def"), 8), "abc …");
    }

    #[test]
    fn a_secret_sharing_text_with_the_marker_leaves_only_the_marker() {
        // Replacing the token's tail leaves "redacted" next to it, which is the token's head.
        let token = "redacted]12345678";
        assert_eq!(quoted(token, "value 12345678 seen", 100), REDACTED);
    }

    #[test]
    fn secrets_never_print_what_they_hold() {
        let secrets = Secrets::new(["sk_live_4eC39HqLyjWD"]);
        assert_eq!(format!("{secrets:?}"), "Secrets([redacted])");
        assert_eq!(format!("{:?}", Secrets::new([""])), "Secrets(none)");
        assert_eq!(Secrets::new([""]).quote("anything at all", 100).as_str(), "anything at all");
    }

    /// A token of 1 to 260 characters drawn from letters, digits, characters that JSON-escape,
    /// percent-encode or HTML-escape, and non-ASCII.
    fn token_strategy() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            2 => proptest::char::range('A', 'Z'),
            2 => proptest::char::range('0', '9'),
            3 => proptest::sample::select(vec!['"', '\\', '/', '+', '=', '%', ' ', '&', '<', '\'', '-', '_', '.', '~']),
            1 => proptest::sample::select(vec!['é', '€', '😀', 'ß', '中']),
        ];
        proptest::collection::vec(chars, 1..260).prop_map(|v| v.into_iter().collect())
    }

    /// The fixed text around a quote; tokens sharing a fragment with it are skipped, since
    /// then the check below could not tell our words from the token's.
    const AROUND: &str = "before  after [redacted]…";

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn no_encoding_or_fragment_of_any_token_survives_a_quote(
            token in token_strategy(),
            encoding in 0usize..64,
            start in 0usize..300,
            len in 8usize..300,
            max_chars in prop_oneof![Just(8usize), Just(VALUE_CHARS), Just(MESSAGE_CHARS), Just(10_000)],
        ) {
            prop_assume!(leaked_fragment(AROUND, &token).is_none());
            let forms = encodings(&token);
            let (_, form) = &forms[encoding % forms.len()];
            // The whole encoded token, and a piece of it (a source that cuts before echoing).
            let chars: Vec<char> = form.chars().collect();
            let start = start % chars.len();
            let piece: String = chars[start..(start + len).min(chars.len())].iter().collect();
            for echoed in [form.as_str(), piece.as_str()] {
                let out = quoted(&token, &format!("before {echoed} after"), max_chars);
                prop_assert_eq!(leaked_fragment(&out, &token), None, "{:?} -> {}", echoed, out);
            }
        }
    }
}
