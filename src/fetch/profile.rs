//! Source profiles: how a pipeline's API is asked for one window of one stream, and how its
//! answers are read (docs/design.md#source-profiles). A profile is the pipeline's `source`
//! jsonb; `{}` (or NULL) is the built-in contract, and every section left out keeps its
//! built-in value. Pure: [`Profile::parse`] checks a profile completely, so a profile that
//! cannot work is refused when it is written, with the JSON path of what is wrong.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Longest field path, in segments; real APIs nest a few levels.
const MAX_PATH_SEGMENTS: usize = 8;
/// Placeholders a request template may use.
pub const PLACEHOLDERS: [&str; 5] = ["store_code", "stream", "from", "to", "page_size"];
/// How the parts of a composite id are joined into the record's id.
pub const ID_SEPARATOR: &str = ":";

/// The built-in contract written out as a profile (`orders_sync.default_source_profile()`); a
/// test checks that it reads back as [`Profile::builtin`].
pub const DEFAULT_PROFILE: &str = r#"{
  "request": {"method": "GET", "path": "/v1/stores/{store_code}/{stream}",
              "query": {"from": "{from}", "to": "{to}", "page_size": "{page_size}"}, "headers": {}},
  "dates": {"format": "date", "end": "inclusive"},
  "pagination": {"style": "cursor", "token_path": "next_page_token", "param": "page_token"},
  "records": {"path": "data", "id": "id", "date": "date", "date_format": "date",
              "amount": "amount", "amount_format": "number"},
  "auth": {"type": "bearer"},
  "limits": {}
}"#;

/// Why a profile was refused: where (`$.records.date_format`) and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {expected}")]
pub struct ProfileError {
    pub path: String,
    pub expected: String,
}

impl ProfileError {
    fn at(path: impl Into<String>, expected: impl Into<String>) -> Self {
        ProfileError { path: path.into(), expected: expected.into() }
    }
}

/// A checked profile, with each stream's effective settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub auth: Auth,
    pub limits: Limits,
    /// Per stream of the pipeline: the profile with that stream's overrides applied.
    pub streams: BTreeMap<String, StreamProfile>,
}

/// How one stream is requested and read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamProfile {
    #[serde(default)]
    pub request: RequestSpec,
    #[serde(default)]
    pub dates: DateParams,
    #[serde(default)]
    pub pagination: Pagination,
    #[serde(default)]
    pub records: RecordSpec,
}

/// The whole document as written, before stream overrides are applied.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default, rename = "request")]
    _request: Option<de::IgnoredAny>,
    #[serde(default, rename = "dates")]
    _dates: Option<de::IgnoredAny>,
    #[serde(default, rename = "pagination")]
    _pagination: Option<de::IgnoredAny>,
    #[serde(default, rename = "records")]
    _records: Option<de::IgnoredAny>,
    #[serde(default)]
    auth: Auth,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    streams: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestSpec {
    pub method: Method,
    /// Appended to the pipeline's `base_url`; placeholders become single path segments.
    pub path: String,
    /// Query parameters in order; values are templates.
    pub query: Pairs,
    /// Extra request headers; values are templates. Credentials belong to `auth`.
    pub headers: Pairs,
    /// The JSON body of a POST; string values are templates (see `fetch::request`).
    pub body: Option<Value>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: Method::Get,
            path: "/v1/stores/{store_code}/{stream}".to_owned(),
            query: Pairs(vec![
                ("from".to_owned(), "{from}".to_owned()),
                ("to".to_owned(), "{to}".to_owned()),
                ("page_size".to_owned(), "{page_size}".to_owned()),
            ]),
            headers: Pairs::default(),
            body: None,
        }
    }
}

/// Name/value pairs kept in the order written (query parameters, headers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pairs(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    pairs.push((name, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// How the window's dates are written in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DateParams {
    pub format: DateFormat,
    pub end: DateEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateFormat {
    /// `YYYY-MM-DD`.
    #[default]
    Date,
    /// RFC 3339 at the day's start (or end) in the pipeline's time zone.
    Rfc3339,
    UnixSeconds,
    UnixMillis,
}

/// Whether `{to}` is the window's last day (or its last instant) or the day after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateEnd {
    #[default]
    Inclusive,
    Exclusive,
}

/// How the next page is asked for, and how the last one is recognised.
// Written `{"style": "offset", ...}`; read through [`retagged`], so that serde reports paths
// inside the section (an internally tagged enum would lose them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// An opaque token at `token_path`, sent back as `param`; null or absent ends.
    Cursor {
        #[serde(default = "default_token_path")]
        token_path: FieldPath,
        #[serde(default = "default_token_param")]
        param: String,
    },
    /// The next page's URL at `url_path`; null or absent ends.
    NextUrl { url_path: FieldPath },
    /// The next page's URL in the `Link` header (`rel="next"`); none ends.
    LinkHeader {},
    /// `offset_param` = records received so far; an empty page ends, or `total_path`'s count.
    Offset {
        offset_param: String,
        #[serde(default)]
        total_path: Option<FieldPath>,
    },
    /// `page_param` counts pages from `first_page`; an empty page ends, or
    /// `total_pages_path`'s count.
    PageNumber {
        page_param: String,
        #[serde(default)]
        first_page: FirstPage,
        #[serde(default)]
        total_pages_path: Option<FieldPath>,
    },
    /// `param` = the id of the last record received; `has_more_path` false ends.
    LastId { param: String, has_more_path: FieldPath },
    /// One request answers the whole window.
    None {},
}

impl Default for Pagination {
    fn default() -> Self {
        Pagination::Cursor { token_path: default_token_path(), param: default_token_param() }
    }
}

fn default_token_path() -> FieldPath {
    FieldPath(vec!["next_page_token".to_owned()])
}

fn default_token_param() -> String {
    "page_token".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirstPage(pub u32);

impl<'de> Deserialize<'de> for FirstPage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u32::deserialize(deserializer)? {
            n @ (0 | 1) => Ok(FirstPage(n)),
            n => Err(de::Error::invalid_value(de::Unexpected::Unsigned(n.into()), &"0 or 1")),
        }
    }
}

/// Where the records are in a body, and how one record is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSpec {
    /// The list of records; the empty path is the body itself.
    pub path: FieldPath,
    pub id: IdSpec,
    pub date: FieldPath,
    pub date_format: RecordDateFormat,
    /// `null`: records carry no amount.
    pub amount: Option<FieldPath>,
    pub amount_format: AmountFormat,
    /// Digits after the point of integer minor units (2: cents); only with `minor_units`.
    pub amount_scale: Option<u32>,
}

impl Default for RecordSpec {
    fn default() -> Self {
        RecordSpec {
            path: FieldPath(vec!["data".to_owned()]),
            id: IdSpec::One(FieldPath(vec!["id".to_owned()])),
            date: FieldPath(vec!["date".to_owned()]),
            date_format: RecordDateFormat::Date,
            amount: Some(FieldPath(vec!["amount".to_owned()])),
            amount_format: AmountFormat::Number,
            amount_scale: None,
        }
    }
}

/// A record's id: one field (a string or a number), or two joined by [`ID_SEPARATOR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSpec {
    One(FieldPath),
    Composite(Vec<FieldPath>),
}

impl IdSpec {
    pub fn paths(&self) -> &[FieldPath] {
        match self {
            IdSpec::One(path) => std::slice::from_ref(path),
            IdSpec::Composite(paths) => paths,
        }
    }
}

impl<'de> Deserialize<'de> for IdSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            Many(Vec<String>),
        }
        let parse = |text: String| FieldPath::parse(&text).map_err(de::Error::custom);
        match Written::deserialize(deserializer)
            .map_err(|_| de::Error::custom("expected a field path or a list of two field paths"))?
        {
            Written::One(text) => Ok(IdSpec::One(parse(text)?)),
            Written::Many(list) if list.len() == 2 => {
                Ok(IdSpec::Composite(list.into_iter().map(parse).collect::<Result<_, _>>()?))
            }
            Written::Many(list) => {
                Err(de::Error::custom(format!("expected a list of two field paths, found {}", list.len())))
            }
        }
    }
}

/// How a record's business date is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordDateFormat {
    /// `YYYY-MM-DD`, the business date itself.
    #[default]
    Date,
    /// An RFC 3339 timestamp with an offset; its date in the pipeline's time zone.
    Rfc3339,
    UnixSeconds,
    UnixMillis,
}

/// How a record's amount is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountFormat {
    /// A JSON number.
    #[default]
    Number,
    /// A decimal number as a JSON string (a JSON number is accepted too).
    String,
    /// An integer count of minor units (a number or a string), divided by 10^amount_scale.
    MinorUnits,
}

/// A dotted path of object keys inside a JSON document, `result.items`; empty = the document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(FieldPath(Vec::new()));
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("expected a dotted path of keys such as \"result.items\", found \"{text}\""));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!("expected at most {MAX_PATH_SEGMENTS} keys in a path, found {}", segments.len()));
        }
        if segments.iter().any(|s| s.chars().any(char::is_control) || s.len() > 128) {
            return Err("expected keys of at most 128 characters without control characters".to_owned());
        }
        Ok(FieldPath(segments))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` is `other` or lies inside it (`a.b` inside `a`).
    pub fn within(&self, other: &FieldPath) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FieldPath::parse(&text).map_err(de::Error::custom)
    }
}

/// How requests are authenticated. Secrets live in `pipeline_credentials`, never here.
// Written `{"type": "basic", ...}`; read through [`retagged`] like [`Pagination`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    None {},
    /// `Authorization: Bearer <api_token>`, when an api_token is stored (the built-in contract).
    Bearer {},
    /// `api_token` in the header or query parameter `name`.
    ApiKey {
        #[serde(rename = "in")]
        location: KeyLocation,
        name: String,
    },
    /// HTTP basic with `username` and `password`.
    Basic {},
    /// An access token from `token_url` for `client_id` / `client_secret`, kept until it
    /// expires and fetched again once on a 401.
    Oauth2ClientCredentials {
        token_url: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        client_auth: ClientAuth,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    Header,
    Query,
}

/// Where the client id and secret go in the token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` form fields.
    #[default]
    Body,
    /// HTTP basic.
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second to this source, across every worker of the cluster.
    pub requests_per_second: Option<f64>,
    /// Stores of this pipeline fetched at once, across the cluster.
    pub max_concurrent_stores: Option<u32>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::Bearer {}
    }
}

impl Profile {
    /// The built-in contract (a NULL `source`).
    pub fn builtin(streams: &[String]) -> Profile {
        Profile {
            auth: Auth::default(),
            limits: Limits::default(),
            streams: streams.iter().map(|s| (s.clone(), StreamProfile::default_contract())).collect(),
        }
    }

    /// Reads and checks a profile for a pipeline with `streams`. A stream's entry under
    /// `streams` is merged into the profile (objects key by key, anything else replaced;
    /// `pagination` and `auth` are replaced whole), then checked as the stream's profile.
    pub fn parse(source: &Value, streams: &[String]) -> Result<Profile, ProfileError> {
        let Value::Object(top) = source else {
            return Err(ProfileError::at("$", format!("expected a JSON object, found {}", kind(source))));
        };
        let document: Document = from_value(source, "$")?;
        let mut base = top.clone();
        for key in ["auth", "limits", "streams"] {
            base.remove(key);
        }
        let base = Value::Object(base);
        for name in document.streams.keys() {
            if !streams.contains(name) {
                return Err(ProfileError::at(
                    format!("$.streams.{name}"),
                    format!("expected one of the pipeline's streams ({}), found \"{name}\"", streams.join(", ")),
                ));
            }
        }
        let mut resolved = BTreeMap::new();
        for stream in streams {
            let (value, at) = match document.streams.get(stream) {
                None => (base.clone(), "$".to_owned()),
                Some(patch) => {
                    let at = format!("$.streams.{stream}");
                    if !patch.is_object() {
                        return Err(ProfileError::at(at, format!("expected a JSON object, found {}", kind(patch))));
                    }
                    (merged(&base, patch), at)
                }
            };
            let profile: StreamProfile = from_value(&value, &at)?;
            profile.check(&at, &document.auth)?;
            resolved.insert(stream.clone(), profile);
        }
        document.auth.check()?;
        check_limits(&document.limits)?;
        Ok(Profile { auth: document.auth, limits: document.limits, streams: resolved })
    }

    /// The profile a stream is fetched with.
    #[cfg(test)]
    pub fn stream(&self, stream: &str) -> Option<&StreamProfile> {
        self.streams.get(stream)
    }
}

impl StreamProfile {
    pub fn default_contract() -> StreamProfile {
        StreamProfile {
            request: RequestSpec::default(),
            dates: DateParams::default(),
            pagination: Pagination::default(),
            records: RecordSpec::default(),
        }
    }

    fn check(&self, at: &str, auth: &Auth) -> Result<(), ProfileError> {
        let r = &self.request;
        check_path_template(&r.path).map_err(|e| ProfileError::at(format!("{at}.request.path"), e))?;
        for (name, value) in &r.query.0 {
            if name.is_empty() {
                return Err(ProfileError::at(format!("{at}.request.query"), "expected non-empty parameter names"));
            }
            check_template(value).map_err(|e| ProfileError::at(format!("{at}.request.query.{name}"), e))?;
        }
        for (name, value) in &r.headers.0 {
            let here = format!("{at}.request.headers.{name}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                return Err(ProfileError::at(here, "expected an HTTP header name (letters, digits, - and _)"));
            }
            if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("cookie") {
                return Err(ProfileError::at(
                    here,
                    "expected no credential header here: set auth and keep the secret in pipeline_credentials",
                ));
            }
            check_template(value).map_err(|e| ProfileError::at(here.clone(), e))?;
            if value.chars().any(char::is_control) {
                return Err(ProfileError::at(here, "expected a header value without control characters"));
            }
        }
        match (r.method, &r.body) {
            (Method::Get, Some(_)) => {
                return Err(ProfileError::at(format!("{at}.request.body"), "expected no body with method GET"));
            }
            (Method::Post, Some(body)) => {
                if !body.is_object() {
                    return Err(ProfileError::at(
                        format!("{at}.request.body"),
                        format!("expected a JSON object, found {}", kind(body)),
                    ));
                }
                check_body_templates(body, &format!("{at}.request.body"))?;
            }
            _ => {}
        }
        let used: Vec<(&str, &str)> = r
            .query
            .0
            .iter()
            .map(|(name, _)| (name.as_str(), "request.query"))
            .chain(body_keys(r.body.as_ref()).map(|name| (name, "request.body")))
            .collect();
        self.check_pagination(at, &used)?;
        self.check_records(at)?;
        if let Auth::ApiKey { location: KeyLocation::Query, name } = auth {
            if used.iter().any(|(used_name, _)| used_name == name) {
                return Err(ProfileError::at(
                    "$.auth.name",
                    format!("expected a parameter the request does not already send, found \"{name}\""),
                ));
            }
        }
        Ok(())
    }

    fn check_pagination(&self, at: &str, used: &[(&str, &str)]) -> Result<(), ProfileError> {
        let here = format!("{at}.pagination");
        let param = |name: &str, key: &str| -> Result<(), ProfileError> {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(ProfileError::at(format!("{here}.{key}"), "expected a non-empty parameter name"));
            }
            if let Some((_, place)) = used.iter().find(|(used_name, _)| *used_name == name) {
                return Err(ProfileError::at(
                    format!("{here}.{key}"),
                    format!("expected a parameter {place} does not already set, found \"{name}\""),
                ));
            }
            Ok(())
        };
        let body_path = |path: &FieldPath, key: &str| -> Result<(), ProfileError> {
            if path.is_empty() {
                return Err(ProfileError::at(format!("{here}.{key}"), "expected a non-empty field path"));
            }
            if self.records.path.is_empty() {
                return Err(ProfileError::at(
                    format!("{here}.{key}"),
                    "expected no body field: records.path \"\" makes the whole body the list of records",
                ));
            }
            if path.within(&self.records.path) || self.records.path.within(path) {
                return Err(ProfileError::at(
                    format!("{here}.{key}"),
                    format!("expected a field outside the records at \"{}\", found \"{path}\"", self.records.path),
                ));
            }
            Ok(())
        };
        let get_only = |style: &str| -> Result<(), ProfileError> {
            if self.request.method == Method::Post {
                return Err(ProfileError::at(
                    format!("{here}.style"),
                    format!("expected a style that works with POST: {style} pages are fetched with GET"),
                ));
            }
            Ok(())
        };
        match &self.pagination {
            Pagination::Cursor { token_path, param: name } => {
                body_path(token_path, "token_path")?;
                param(name, "param")
            }
            Pagination::NextUrl { url_path } => {
                get_only("next_url")?;
                body_path(url_path, "url_path")
            }
            Pagination::LinkHeader {} => get_only("link_header"),
            Pagination::Offset { offset_param, total_path } => {
                param(offset_param, "offset_param")?;
                total_path.as_ref().map_or(Ok(()), |p| body_path(p, "total_path"))
            }
            Pagination::PageNumber { page_param, total_pages_path, .. } => {
                param(page_param, "page_param")?;
                total_pages_path.as_ref().map_or(Ok(()), |p| body_path(p, "total_pages_path"))
            }
            Pagination::LastId { param: name, has_more_path } => {
                param(name, "param")?;
                body_path(has_more_path, "has_more_path")?;
                if matches!(self.records.id, IdSpec::Composite(_)) {
                    return Err(ProfileError::at(
                        format!("{here}.style"),
                        "expected records.id to be one field with last_id: a composite id cannot be sent back",
                    ));
                }
                Ok(())
            }
            Pagination::None {} => Ok(()),
        }
    }

    fn check_records(&self, at: &str) -> Result<(), ProfileError> {
        let r = &self.records;
        let here = |key: &str| format!("{at}.records.{key}");
        let mut fields: Vec<(&FieldPath, String)> = Vec::new();
        for (i, path) in r.id.paths().iter().enumerate() {
            let key = if r.id.paths().len() == 1 { "id".to_owned() } else { format!("id[{i}]") };
            fields.push((path, key));
        }
        fields.push((&r.date, "date".to_owned()));
        if let Some(amount) = &r.amount {
            fields.push((amount, "amount".to_owned()));
        }
        for (i, (path, key)) in fields.iter().enumerate() {
            if path.is_empty() {
                return Err(ProfileError::at(here(key), "expected a non-empty field path"));
            }
            if let Some((other, other_key)) = fields[..i].iter().find(|(o, _)| path.within(o) || o.within(path)) {
                return Err(ProfileError::at(
                    here(key),
                    format!("expected a field apart from {other_key} (\"{other}\"), found \"{path}\""),
                ));
            }
        }
        match (r.amount_format, r.amount_scale) {
            (AmountFormat::MinorUnits, None) => Err(ProfileError::at(
                here("amount_scale"),
                "expected digits after the point (0 to 18) with minor_units",
            )),
            (AmountFormat::MinorUnits, Some(scale)) if scale > 18 => {
                Err(ProfileError::at(here("amount_scale"), format!("expected 0 to 18, found {scale}")))
            }
            (AmountFormat::Number | AmountFormat::String, Some(_)) => Err(ProfileError::at(
                here("amount_scale"),
                "expected no amount_scale unless amount_format is minor_units",
            )),
            _ => Ok(()),
        }
    }
}

impl Auth {
    fn check(&self) -> Result<(), ProfileError> {
        match self {
            Auth::ApiKey { location, name } => {
                let header_name = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if name.is_empty() || (*location == KeyLocation::Header && !header_name) {
                    return Err(ProfileError::at("$.auth.name", "expected a header or parameter name"));
                }
                if *location == KeyLocation::Header && name.eq_ignore_ascii_case("authorization") {
                    return Err(ProfileError::at("$.auth.name", "expected type bearer or basic for Authorization"));
                }
                Ok(())
            }
            Auth::Oauth2ClientCredentials { token_url, scope, .. } => {
                let url = reqwest::Url::parse(token_url).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.username().is_empty()
                });
                if url.is_none() {
                    return Err(ProfileError::at(
                        "$.auth.token_url",
                        "expected an absolute http(s) URL without credentials, such as \"https://auth.example.com/oauth/token\"",
                    ));
                }
                if scope.as_deref().is_some_and(|s| s.chars().any(char::is_control)) {
                    return Err(ProfileError::at("$.auth.scope", "expected a scope without control characters"));
                }
                Ok(())
            }
            Auth::None {} | Auth::Bearer {} | Auth::Basic {} => Ok(()),
        }
    }
}

fn check_limits(limits: &Limits) -> Result<(), ProfileError> {
    if let Some(rate) = limits.requests_per_second {
        if !(rate.is_finite() && (0.001..=100_000.0).contains(&rate)) {
            return Err(ProfileError::at(
                "$.limits.requests_per_second",
                format!("expected 0.001 to 100000, found {rate}"),
            ));
        }
    }
    if let Some(stores) = limits.max_concurrent_stores {
        if !(1..=10_000).contains(&stores) {
            return Err(ProfileError::at(
                "$.limits.max_concurrent_stores",
                format!("expected 1 to 10000, found {stores}"),
            ));
        }
    }
    Ok(())
}

/// The placeholders of a template, in order, or why it is not one.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("expected '}}' only to close a placeholder, in \"{template}\""));
        }
        let after = &rest[open + 1..];
        let close =
            after.find('}').ok_or_else(|| format!("expected '}}' to close the placeholder in \"{template}\""))?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!("expected placeholders among {{{}}}, found {{{name}}}", PLACEHOLDERS.join("}, {")));
        }
        found.push(name);
        rest = &after[close + 1..];
    }
    Ok(found)
}

fn check_template(template: &str) -> Result<(), String> {
    placeholders(template).map(|_| ())
}

fn check_path_template(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("expected a path starting with '/', found \"{path}\""));
    }
    // Literal text is used as written: only characters that need no encoding in a path.
    let literal_ok = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@{}".contains(c);
    if let Some(bad) = path.chars().find(|&c| !literal_ok(c)) {
        return Err(format!("expected a URL path without '?', '#', '%' or spaces, found {bad:?}"));
    }
    check_template(path)
}

fn check_body_templates(value: &Value, at: &str) -> Result<(), ProfileError> {
    match value {
        Value::String(text) => check_template(text).map_err(|e| ProfileError::at(at, e)),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| check_body_templates(item, &format!("{at}[{i}]")))
        }
        Value::Object(map) => map.iter().try_for_each(|(k, v)| check_body_templates(v, &format!("{at}.{k}"))),
        _ => Ok(()),
    }
}

fn body_keys(body: Option<&Value>) -> impl Iterator<Item = &str> {
    body.and_then(Value::as_object).into_iter().flat_map(|map| map.keys().map(String::as_str))
}

/// JSON merge patch (RFC 7386), except that `pagination` is replaced whole: its keys depend
/// on its style.
fn merged(base: &Value, patch: &Value) -> Value {
    fn merge(base: &Value, patch: &Value, whole: bool) -> Value {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) if !whole => {
                let mut out = b.clone();
                for (key, value) in p {
                    if value.is_null() {
                        out.remove(key);
                    } else {
                        let merged_value = match b.get(key) {
                            Some(existing) => merge(existing, value, key == "pagination"),
                            None => value.clone(),
                        };
                        out.insert(key.clone(), merged_value);
                    }
                }
                Value::Object(out)
            }
            _ => patch.clone(),
        }
    }
    merge(base, patch, false)
}

/// The tagged sections: their key, their tag's key, and the tag's values.
const TAGGED: [(&str, &str, &str); 2] = [
    ("pagination", "style", "cursor, next_url, link_header, offset, page_number, last_id, none"),
    ("auth", "type", "none, bearer, api_key, basic, oauth2_client_credentials"),
];

/// `{"style": "offset", "offset_param": "o"}` becomes `{"offset": {"offset_param": "o"}}`,
/// serde's own enum form, in which it reports the path of a bad key inside the section.
fn retagged(value: &Value, at: &str) -> Result<Value, ProfileError> {
    let Value::Object(map) = value else { return Ok(value.clone()) };
    let mut out = map.clone();
    for (section, tag, values) in TAGGED {
        let Some(written) = map.get(section) else { continue };
        let here = format!("{at}.{section}");
        let Value::Object(fields) = written else {
            return Err(ProfileError::at(here, format!("expected a JSON object, found {}", kind(written))));
        };
        let mut fields = fields.clone();
        let name = match fields.remove(tag) {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(ProfileError::at(
                    format!("{here}.{tag}"),
                    format!("expected one of {values}; found {}", kind(&other)),
                ))
            }
            None => {
                return Err(ProfileError::at(
                    format!("{here}.{tag}"),
                    format!("expected one of {values}; found nothing"),
                ))
            }
        };
        if !values.split(", ").any(|v| v == name) {
            return Err(ProfileError::at(
                format!("{here}.{tag}"),
                format!("expected one of {values}; found \"{name}\""),
            ));
        }
        out.insert(section.to_owned(), serde_json::json!({ name: fields }));
    }
    Ok(Value::Object(out))
}

fn from_value<T: serde::de::DeserializeOwned>(value: &Value, at: &str) -> Result<T, ProfileError> {
    let value = retagged(value, at)?;
    serde_path_to_error::deserialize(&value).map_err(|error| {
        let mut segments: Vec<String> = error.path().iter().map(|s| s.to_string()).collect();
        // Drop the variant's own segment (`pagination.offset.first_page`).
        if segments.len() >= 2 && TAGGED.iter().any(|(section, ..)| segments[0] == *section) {
            segments.remove(1);
        }
        let inner = segments.join(".");
        let path = if inner.is_empty() || inner == "." { at.to_owned() } else { format!("{at}.{inner}") };
        ProfileError::at(path, expected_text(&error.inner().to_string()))
    })
}

/// serde's wording, turned into "expected ...": `unknown field `x`, expected one of ...`.
fn expected_text(message: &str) -> String {
    let message = message.replace('`', "\"");
    match message.split_once(", expected ") {
        Some((found, expected)) => format!("expected {expected}; found {found}"),
        None => message,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn streams() -> Vec<String> {
        vec!["orders".to_owned(), "sales".to_owned()]
    }

    fn refused(source: Value) -> ProfileError {
        Profile::parse(&source, &streams()).expect_err("should be refused")
    }

    #[test]
    fn an_empty_profile_is_the_builtin_contract() {
        assert_eq!(Profile::parse(&json!({}), &streams()).unwrap(), Profile::builtin(&streams()));
    }

    #[test]
    fn the_written_out_default_is_the_builtin_contract() {
        // jsonb keeps no key order, and neither does a parsed profile: compare the query as a set.
        let sorted = |mut profile: Profile| {
            for stream in profile.streams.values_mut() {
                stream.request.query.0.sort();
            }
            profile
        };
        let written: Value = serde_json::from_str(DEFAULT_PROFILE).unwrap();
        assert_eq!(sorted(Profile::parse(&written, &streams()).unwrap()), sorted(Profile::builtin(&streams())));
    }

    #[test]
    fn sections_left_out_keep_their_builtin_values() {
        let profile = Profile::parse(&json!({"records": {"path": "result.items"}}), &streams()).unwrap();
        let orders = profile.stream("orders").unwrap();
        assert_eq!(orders.records.path.to_string(), "result.items");
        assert_eq!(orders.records.date, FieldPath(vec!["date".into()]));
        assert_eq!(orders.request, RequestSpec::default());
    }

    #[test]
    fn a_stream_override_is_merged_key_by_key() {
        let profile = Profile::parse(
            &json!({
                "request": {"path": "/orders", "query": {"day_from": "{from}", "day_to": "{to}"}},
                "streams": {"sales": {"request": {"path": "/sales"}, "records": {"amount": "net"}}}
            }),
            &streams(),
        )
        .unwrap();
        let sales = profile.stream("sales").unwrap();
        assert_eq!(sales.request.path, "/sales");
        assert_eq!(sales.request.query.0.len(), 2, "the query is kept from the profile");
        assert_eq!(sales.records.amount, Some(FieldPath(vec!["net".into()])));
        assert_eq!(profile.stream("orders").unwrap().request.path, "/orders");
    }

    #[test]
    fn pagination_in_a_stream_override_replaces_the_whole_section() {
        let profile = Profile::parse(
            &json!({
                "pagination": {"style": "cursor", "token_path": "meta.next"},
                "streams": {"sales": {"pagination": {"style": "offset", "offset_param": "offset"}}}
            }),
            &streams(),
        )
        .unwrap();
        assert!(matches!(profile.stream("sales").unwrap().pagination, Pagination::Offset { .. }));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = refused(json!({"records": {"pth": "data"}}));
        assert_eq!(e.path, "$.records.pth");
        assert!(e.expected.starts_with("expected one of \"path\", \"id\""), "{e}");
        assert_eq!(refused(json!({"colour": 1})).path, "$.colour");
    }

    #[test]
    fn wrong_types_and_values_name_the_path_and_what_is_expected() {
        let e = refused(json!({"records": {"date_format": "iso"}}));
        assert_eq!(e.path, "$.records.date_format");
        assert!(e.expected.contains("\"rfc3339\""), "{e}");
        let e = refused(json!({"pagination": {"style": "page_number", "page_param": "p", "first_page": 2}}));
        assert_eq!(e.path, "$.pagination.first_page");
        assert!(e.expected.contains("0 or 1"), "{e}");
        let e = refused(json!({"request": {"query": {"from": 5}}}));
        assert_eq!(e.path, "$.request.query.from");
        let e = refused(json!({"pagination": {"style": "offset"}}));
        assert_eq!(e.path, "$.pagination");
        assert!(e.expected.contains("offset_param"), "{e}");
        let e = refused(json!({"pagination": {"style": "scroll"}}));
        assert_eq!(e.path, "$.pagination.style");
        assert!(e.expected.starts_with("expected one of cursor, next_url"), "{e}");
    }

    #[test]
    fn bad_paths_and_templates_are_refused() {
        assert_eq!(refused(json!({"records": {"date": "a..b"}})).path, "$.records.date");
        let e = refused(json!({"request": {"path": "/v1/{shop}"}}));
        assert_eq!(e.path, "$.request.path");
        assert!(e.expected.contains("{store_code}"), "{e}");
        assert_eq!(refused(json!({"request": {"path": "v1/orders"}})).path, "$.request.path");
        assert_eq!(refused(json!({"request": {"path": "/v1/orders?x=1"}})).path, "$.request.path");
        assert_eq!(refused(json!({"request": {"query": {"q": "{from"}}})).path, "$.request.query.q");
        assert_eq!(refused(json!({"records": {"id": ["a", "b", "c"]}})).path, "$.records.id");
    }

    #[test]
    fn parts_that_cannot_work_together_are_refused() {
        let e = refused(json!({"request": {"body": {"q": 1}}}));
        assert_eq!(e.path, "$.request.body");
        let e = refused(json!({"request": {"method": "POST", "body": {}}, "pagination": {"style": "link_header"}}));
        assert_eq!(e.path, "$.pagination.style");
        let e = refused(json!({"records": {"amount_format": "minor_units"}}));
        assert_eq!(e.path, "$.records.amount_scale");
        let e = refused(json!({"records": {"path": ""}}));
        assert_eq!(e.path, "$.pagination.token_path", "a whole-body list leaves no place for a token");
        let e = refused(json!({"records": {"id": "order", "date": "order.date"}}));
        assert_eq!(e.path, "$.records.date");
        let e = refused(json!({"pagination": {"style": "offset", "offset_param": "from"}}));
        assert_eq!(e.path, "$.pagination.offset_param");
        let e = refused(json!({"pagination": {"style": "last_id", "param": "after", "has_more_path": "more"},
                               "records": {"id": ["a", "b"]}}));
        assert_eq!(e.path, "$.pagination.style");
        let e = refused(json!({"request": {"headers": {"Authorization": "Bearer x"}}}));
        assert_eq!(e.path, "$.request.headers.Authorization");
    }

    #[test]
    fn streams_must_be_the_pipelines_own() {
        let e = refused(json!({"streams": {"refunds": {}}}));
        assert_eq!(e.path, "$.streams.refunds");
        let e = refused(json!({"streams": {"sales": {"records": {"date_format": "when"}}}}));
        assert_eq!(e.path, "$.streams.sales.records.date_format");
    }

    #[test]
    fn auth_and_limits_are_checked() {
        assert_eq!(
            refused(json!({"auth": {"type": "oauth2_client_credentials", "token_url": "/token"}})).path,
            "$.auth.token_url"
        );
        assert_eq!(refused(json!({"auth": {"type": "api_key", "in": "cookie", "name": "k"}})).path, "$.auth.in");
        assert_eq!(refused(json!({"auth": {"type": "basic", "password": "x"}})).path, "$.auth.password");
        assert_eq!(refused(json!({"limits": {"requests_per_second": 0}})).path, "$.limits.requests_per_second");
        assert_eq!(refused(json!({"limits": {"max_concurrent_stores": 0}})).path, "$.limits.max_concurrent_stores");
        let ok = Profile::parse(
            &json!({"auth": {"type": "api_key", "in": "query", "name": "api_key"}, "limits": {"requests_per_second": 2.5}}),
            &streams(),
        )
        .unwrap();
        assert_eq!(ok.auth, Auth::ApiKey { location: KeyLocation::Query, name: "api_key".into() });
    }

    #[test]
    fn placeholders_are_found_in_order() {
        assert_eq!(placeholders("/s/{store_code}/{stream}").unwrap(), vec!["store_code", "stream"]);
        assert!(placeholders("{to}}").is_err());
    }
}
