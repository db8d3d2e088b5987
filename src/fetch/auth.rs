//! Credentials on each request, as the profile's `auth` says: none, a bearer token, an API key
//! in a header or query parameter, HTTP basic, or an OAuth2 client-credentials access token
//! that is kept until it expires and fetched again once when the source answers 401.
//!
//! The secrets come from `pipeline_credentials`. Every secret, the access tokens included,
//! is handed to [`Secrets`], so no quote of the source's text can show one.

use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::profile::{Auth, ClientAuth, KeyLocation};
use super::redact::{Secrets, MESSAGE_CHARS};
use super::FetchError;

/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 64 * 1024;
/// An access token is fetched again this long before the source says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// The secrets of a pipeline, from `pipeline_credentials`. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub api_token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.as_deref().is_some_and(|s| !s.is_empty()) { "[set]" } else { "[none]" };
        f.debug_struct("Credentials")
            .field("api_token", &set(&self.api_token))
            .field("username", &set(&self.username))
            .field("password", &set(&self.password))
            .field("client_id", &set(&self.client_id))
            .field("client_secret", &set(&self.client_secret))
            .finish()
    }
}

impl Credentials {
    fn all(&self) -> impl Iterator<Item = &str> {
        [&self.api_token, &self.username, &self.password, &self.client_id, &self.client_secret]
            .into_iter()
            .filter_map(|s| s.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// Adds the credentials to each request.
pub(crate) struct Authenticator {
    how: How,
    credentials: Credentials,
    /// The secrets to scrub, access token included; replaced when a new token arrives.
    secrets: Mutex<Arc<Secrets>>,
}

enum How {
    Nothing,
    Header(HeaderName, HeaderValue),
    Query(String, String),
    Basic(String, String),
    OAuth2(OAuth2),
}

struct OAuth2 {
    token_url: Url,
    scope: Option<String>,
    client_auth: ClientAuth,
    client_id: String,
    client_secret: String,
    token: Mutex<Option<AccessToken>>,
}

#[derive(Clone)]
struct AccessToken {
    header: HeaderValue,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Authenticator {
    pub(crate) fn new(auth: &Auth, credentials: Credentials, allowed_hosts: &[String]) -> Result<Self, FetchError> {
        let secret = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
        let missing = |what: &str| {
            FetchError::Settings(format!("auth {} needs {what} in orders_sync.pipeline_credentials", auth_name(auth)))
        };
        let header_value = |text: String| {
            // The message must not quote the secret, not even the offending character.
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                FetchError::Settings("a credential contains characters not allowed in an HTTP header".into())
            })?;
            value.set_sensitive(true);
            Ok::<_, FetchError>(value)
        };
        let how = match auth {
            Auth::None {} => How::Nothing,
            Auth::Bearer {} => match secret(&credentials.api_token) {
                None => How::Nothing,
                Some(token) => How::Header(AUTHORIZATION, header_value(format!("Bearer {token}"))?),
            },
            Auth::ApiKey { location, name } => {
                let key = secret(&credentials.api_token).ok_or_else(|| missing("api_token"))?;
                match location {
                    KeyLocation::Header => How::Header(
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| FetchError::Settings(format!("auth name {name:?} is not a header name")))?,
                        header_value(key)?,
                    ),
                    KeyLocation::Query => How::Query(name.clone(), key),
                }
            }
            Auth::Basic {} => {
                let username = secret(&credentials.username).ok_or_else(|| missing("username and password"))?;
                let password = secret(&credentials.password).ok_or_else(|| missing("username and password"))?;
                How::Basic(username, password)
            }
            Auth::Oauth2ClientCredentials { token_url, scope, client_auth } => {
                let client_id = secret(&credentials.client_id).ok_or_else(|| missing("client_id and client_secret"))?;
                let client_secret =
                    secret(&credentials.client_secret).ok_or_else(|| missing("client_id and client_secret"))?;
                let token_url = Url::parse(token_url)
                    .map_err(|e| FetchError::Settings(format!("auth token_url is not a valid URL ({e})")))?;
                if !super::host_allowed(&token_url, allowed_hosts) {
                    return Err(FetchError::Settings(format!(
                        "auth token_url host {} is not in orders_sync.allowed_source_hosts",
                        token_url.host_str().unwrap_or("")
                    )));
                }
                How::OAuth2(OAuth2 {
                    token_url,
                    scope: scope.clone(),
                    client_auth: *client_auth,
                    client_id,
                    client_secret,
                    token: Mutex::new(None),
                })
            }
        };
        let secrets = Mutex::new(Arc::new(Secrets::new(credentials.all())));
        Ok(Authenticator { how, credentials, secrets })
    }

    /// What every quote of the source's text is scrubbed of.
    pub(crate) fn secrets(&self) -> Arc<Secrets> {
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether a 401 may be answered by fetching a new access token.
    pub(crate) fn renews_on_401(&self) -> bool {
        matches!(self.how, How::OAuth2(_))
    }

    /// Forgets the access token, so the next request fetches a new one.
    pub(crate) fn forget_token(&self) {
        if let How::OAuth2(oauth) = &self.how {
            *oauth.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The query parameter holding the key, when the key goes in the query (for masking it).
    pub(crate) fn query_key_name(&self) -> Option<&str> {
        match &self.how {
            How::Query(name, _) => Some(name),
            _ => None,
        }
    }

    /// `call` with the credentials added (an access token fetched first when none is kept).
    pub(crate) fn apply(
        &self,
        http: &Client,
        call: RequestBuilder,
        timeout: Duration,
    ) -> Result<RequestBuilder, FetchError> {
        Ok(match &self.how {
            How::Nothing => call,
            How::Header(name, value) => call.header(name, value.clone()),
            How::Query(name, key) => call.query(&[(name, key)]),
            How::Basic(username, password) => call.basic_auth(username, Some(password)),
            How::OAuth2(oauth) => call.header(AUTHORIZATION, self.access_token(http, oauth, timeout)?),
        })
    }

    fn access_token(&self, http: &Client, oauth: &OAuth2, timeout: Duration) -> Result<HeaderValue, FetchError> {
        let mut kept = oauth.token.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = kept.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.header.clone());
        }
        let secrets = self.secrets();
        let failed = |detail: String| FetchError::Token { detail: secrets.quote(&detail, MESSAGE_CHARS) };
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = oauth.scope.as_deref() {
            form.push(("scope", scope));
        }
        let mut request = http.post(oauth.token_url.clone()).header(ACCEPT, "application/json").timeout(timeout);
        match oauth.client_auth {
            ClientAuth::Body => {
                form.push(("client_id", &oauth.client_id));
                form.push(("client_secret", &oauth.client_secret));
            }
            ClientAuth::Basic => request = request.basic_auth(&oauth.client_id, Some(&oauth.client_secret)),
        }
        let response = request.form(&form).send().map_err(|e| {
            failed(format!("cannot reach the token endpoint: {}", super::error_chain(&e.without_url())))
        })?;
        let status = response.status();
        let mut body = Vec::new();
        let read = response.take(MAX_TOKEN_RESPONSE_BYTES).read_to_end(&mut body);
        if status != StatusCode::OK {
            let snippet = String::from_utf8_lossy(&body);
            return Err(failed(format!("the token endpoint answered HTTP {status}: {snippet}")));
        }
        read.map_err(|e| failed(format!("reading the token response: {e}")))?;
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| failed("the token response is not JSON with an access_token".to_owned()))?;
        if answer.access_token.is_empty() {
            return Err(failed("the token response has an empty access_token".to_owned()));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| failed("the access token has characters not allowed in an HTTP header".to_owned()))?;
        header.set_sensitive(true);
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 2));
        // The new token is a secret too.
        let secrets = Secrets::new(self.credentials.all().chain(std::iter::once(answer.access_token.as_str())));
        *self.secrets.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(secrets);
        *kept = Some(AccessToken { header: header.clone(), renew_at });
        Ok(header)
    }
}

fn auth_name(auth: &Auth) -> &'static str {
    match auth {
        Auth::None {} => "none",
        Auth::Bearer {} => "bearer",
        Auth::ApiKey { .. } => "api_key",
        Auth::Basic {} => "basic",
        Auth::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
    }
}
