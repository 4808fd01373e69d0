//! The command-line client of the REST API: `netguard block add|del|list` and `netguard status`.
//!
//! It only speaks HTTP(S) to a running daemon, so it works without root and against a remote sensor
//! (`--api URL`; `https://` with the system's roots, or `--cacert FILE` for a private CA). Errors
//! carry the server's `{"error", "field"}` unchanged.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::{DateTime, Utc};
use netguard_store::ListEntry;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::api::{
    auth::ADMIN_TOKEN_FILE,
    health::Health,
    lists::{PutResponse, Removed},
};
use crate::control::EntryRequest;

pub const DEFAULT_API: &str = "http://127.0.0.1:9740";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netguard";
pub const TOKEN_ENV: &str = "NETGUARD_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the NetGuard API at {url}: is `netguard run` running? (--api URL) ({source})"
    )]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", api_message(.status, .error, .field.as_deref(), .items))]
    Api {
        status: u16,
        error: String,
        field: Option<String>,
        items: Vec<(String, String)>,
    },
    #[error(
        "the TLS connection to {url} failed: {detail}; if the daemon's certificate comes from a private CA, \
         pass that CA's certificate with --cacert FILE (PEM), and use the host name or address the \
         certificate names in --api"
    )]
    Tls { url: String, detail: String },
    #[error(
        "{url} does not speak TLS ({detail}): the daemon serves plain HTTP unless [api] tls_cert and \
         tls_key are set; use --api http://..."
    )]
    NotTls { url: String, detail: String },
    #[error("cannot use --cacert {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the API at {url} answered {status} with a body that is not NetGuard's: {detail}")]
    Unexpected {
        url: String,
        status: u16,
        detail: String,
    },
}

fn api_message(
    status: &u16,
    error: &str,
    field: Option<&str>,
    items: &[(String, String)],
) -> String {
    let mut s = format!("{status}: {error}");
    if let Some(f) = field {
        let _ = write!(s, " (field `{f}`)");
    }
    // A bulk refusal lists every item; the first is already in `error`.
    if items.len() > 1 {
        for (f, e) in items {
            let _ = write!(s, "\n  {f}: {e}");
        }
    }
    s
}

/// An entry as `GET /blocklist` lists it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ListedEntry {
    #[serde(flatten)]
    pub entry: ListEntry,
    pub enforced: bool,
    pub hits: u64,
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The token to use: `NETGUARD_TOKEN`, else the daemon's generated admin token when this user may
/// read it (`<state_dir>/admin.token`).
pub fn find_token(state_dir: Option<&Path>) -> Option<String> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_owned());
    }
    let dir = state_dir.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), Path::to_path_buf);
    std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

impl Client {
    /// A client trusting the system's roots for `https://`.
    pub fn new(api: &str, token: Option<String>) -> Self {
        Self::with_ca(api, token, None).expect("a client without a CA file builds")
    }

    /// A client that, with `cacert`, trusts only the CA certificate(s) in that PEM file (as curl's
    /// `--cacert`), else the system's roots (read from disk; nothing is fetched).
    pub fn with_ca(
        api: &str,
        token: Option<String>,
        cacert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5));
        if let Some(path) = cacert {
            let ca_error = |detail: String| ClientError::CaFile {
                path: path.to_owned(),
                detail,
            };
            // Parsed here first, so a wrong file is reported as such rather than as a TLS failure.
            let certs = crate::api::tls::load_certs(path, "--cacert")
                .map_err(|e| ca_error(e.to_string()))?;
            builder = builder.tls_built_in_root_certs(false);
            for der in certs {
                let cert =
                    reqwest::Certificate::from_der(&der).map_err(|e| ca_error(e.to_string()))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|source| ClientError::Http {
            url: api.to_owned(),
            source,
        })?;
        Ok(Self {
            base: api.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| {
            if let Some(e) = tls_error(&self.base, &source) {
                e
            } else if source.is_connect() || source.is_timeout() {
                ClientError::Connect {
                    url: self.base.clone(),
                    source,
                }
            } else {
                ClientError::Http {
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        // /health answers 503 with its normal body when degraded: that is a status, not a failure.
        if status.is_success()
            || (status == StatusCode::SERVICE_UNAVAILABLE && path.ends_with("/health"))
        {
            return serde_json::from_slice(&bytes)
                .map(|v| (v, headers))
                .map_err(|e| ClientError::Unexpected {
                    url,
                    status: status.as_u16(),
                    detail: e.to_string(),
                });
        }
        Err(api_error(&url, status, &bytes))
    }

    pub async fn block_add(&self, req: &EntryRequest) -> Result<PutResponse, ClientError> {
        self.call(Method::POST, "/api/v1/blocklist", &[], Some(req))
            .await
            .map(|(v, _)| v)
    }

    pub async fn block_del(&self, cidr: &str, scope: Option<&str>) -> Result<Removed, ClientError> {
        let mut q = vec![("cidr", cidr)];
        if let Some(s) = scope {
            q.push(("scope", s));
        }
        self.call(Method::DELETE, "/api/v1/blocklist", &q, None::<&()>)
            .await
            .map(|(v, _)| v)
    }

    /// Every entry, paging through the list.
    pub async fn block_list(&self) -> Result<Vec<ListedEntry>, ClientError> {
        const PAGE: usize = 100_000;
        let mut out: Vec<ListedEntry> = Vec::new();
        loop {
            let offset = out.len().to_string();
            let limit = PAGE.to_string();
            let (page, headers): (Vec<ListedEntry>, _) = self
                .call(
                    Method::GET,
                    "/api/v1/blocklist",
                    &[("offset", &offset), ("limit", &limit)],
                    None::<&()>,
                )
                .await?;
            let total = headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let n = page.len();
            out.extend(page);
            if n == 0 || out.len() >= total {
                return Ok(out);
            }
        }
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/api/v1/health", &[], None::<&()>)
            .await
            .map(|(v, _)| v)
    }
}

/// A certificate or TLS protocol failure, told apart from "nothing listens there" by the causes'
/// text (reqwest wraps rustls' error in hyper's and io's).
fn tls_error(url: &str, e: &reqwest::Error) -> Option<ClientError> {
    let mut causes = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        causes.push(c.to_string());
        cur = c.source();
    }
    let detail = causes.last().cloned().unwrap_or_default();
    let all = causes.join(": ").to_ascii_lowercase();
    if all.contains("certificate")
        || all.contains("unknownissuer")
        || all.contains("notvalidforname")
    {
        Some(ClientError::Tls {
            url: url.to_owned(),
            detail,
        })
    } else if all.contains("corrupt message")
        || all.contains("invalidcontenttype")
        || all.contains("wrong version number")
    {
        Some(ClientError::NotTls {
            url: url.to_owned(),
            detail,
        })
    } else {
        None
    }
}

fn api_error(url: &str, status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Item {
        field: String,
        error: String,
    }
    #[derive(Deserialize)]
    struct Body {
        error: String,
        field: Option<String>,
        #[serde(default)]
        items: Vec<Item>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            error: b.error,
            field: b.field,
            items: b.items.into_iter().map(|i| (i.field, i.error)).collect(),
        },
        Err(_) => ClientError::Unexpected {
            url: url.to_owned(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

/// Text from the daemon (reasons, scopes, error messages: anything an attacker may have shaped, for
/// example through a log line or an agent) made safe for a terminal. Control characters and
/// bidirectional overrides are written as `\u{..}` escapes, so they can neither move the cursor,
/// recolour or retitle the terminal, nor reorder what is shown. `keep_newlines` keeps `\n` for
/// multi-line text that this program composed itself.
pub fn terminal_safe(s: &str, keep_newlines: bool) -> String {
    let unsafe_char = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// "in 3h 59m", "expired", or "never".
fn expires(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match at {
        None => "never".into(),
        Some(t) if t <= now => "expired".into(),
        Some(t) => {
            let secs = (t - now).num_seconds().max(0) as u64;
            // Whole minutes are enough for a table once an entry lasts over an hour.
            let secs = if secs >= 3600 { secs - secs % 60 } else { secs };
            format!(
                "in {}",
                humantime::format_duration(Duration::from_secs(secs))
            )
        }
    }
}

/// The blocklist as an aligned table.
pub fn entries_table(entries: &[ListedEntry], now: DateTime<Utc>) -> String {
    let header = ["CIDR", "SCOPE", "SOURCE", "HITS", "EXPIRES", "REASON"].map(String::from);
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let scope = if e.enforced {
                e.entry.scope.to_string()
            } else {
                format!("{} (not here)", e.entry.scope)
            };
            [
                e.entry.cidr.to_string(),
                scope,
                serde_json::to_value(e.entry.source)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                e.hits.to_string(),
                expires(e.entry.expires_at, now),
                e.entry.reason.clone().unwrap_or_default(),
            ]
            .map(|cell| terminal_safe(&cell, false))
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let _ = write!(
        out,
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    out
}

/// `netguard status` output.
pub fn health_text(h: &Health) -> String {
    let mut s = format!(
        "netguard {} on sensor `{}`: {} (up {})\n",
        h.version,
        h.sensor_id,
        h.status,
        humantime::format_duration(Duration::from_secs(h.uptime_seconds))
    );
    let d = &h.datapath;
    match (&d.iface, &d.mode) {
        (Some(i), Some(m)) if d.attached => {
            let _ = writeln!(s, "datapath:  attached to {i} ({m} mode)");
        }
        _ => s.push_str("datapath:  NOT attached\n"),
    }
    let _ = writeln!(
        s,
        "kernel:    {} blocklist / {} allowlist CIDRs",
        d.blocklist_entries, d.allowlist_entries
    );
    let st = &h.store;
    match &st.error {
        None => {
            let _ = writeln!(s, "store:     {} (reachable)", st.backend);
        }
        Some(e) => {
            let _ = writeln!(s, "store:     {} UNREACHABLE: {e}", st.backend);
        }
    }
    let _ = write!(s, "websocket: {} client(s)", h.ws_clients);
    terminal_safe(&s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netguard_store::Scope;

    #[test]
    fn escapes_and_overrides_are_shown_not_obeyed() {
        let hostile = "ok\u{1b}]0;owned\u{7}\u{1b}[2J\rroot\u{202e}txt.exe\nfake row";
        let safe = terminal_safe(hostile, false);
        assert_eq!(
            safe,
            "ok\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{d}root\\u{202e}txt.exe\\u{a}fake row"
        );
        assert!(!safe.chars().any(char::is_control));
        assert_eq!(terminal_safe("a\nb\u{1b}", true), "a\nb\\u{1b}");
        assert_eq!(
            terminal_safe("plain 203.0.113.0/24 ünïcode", false),
            "plain 203.0.113.0/24 ünïcode"
        );
    }

    #[test]
    fn table_is_aligned_and_counts() {
        let now = Utc::now();
        let mut e = ListEntry::new("203.0.113.0/24".parse().unwrap(), Scope::Global);
        e.expires_at = Some(now + chrono::Duration::seconds(4 * 3600 + 30));
        e.reason = Some("scanner".into());
        let rows = [
            ListedEntry {
                entry: e,
                enforced: true,
                hits: 7,
            },
            ListedEntry {
                entry: ListEntry::new(
                    "2001:db8::/32".parse().unwrap(),
                    Scope::Sensor("vm-2".into()),
                ),
                enforced: false,
                hits: 0,
            },
        ];
        let t = entries_table(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CIDR"), "{t}");
        assert!(
            lines[1].contains("in 4h")
                && lines[1].contains("scanner")
                && lines[1].contains("manual"),
            "{t}"
        );
        assert!(
            lines[2].contains("vm-2 (not here)") && lines[2].contains("never"),
            "{t}"
        );
        assert_eq!(lines[0].find("SCOPE"), lines[1].find("global"));
        assert_eq!(lines[3], "2 entries");
    }

    #[test]
    fn api_errors_show_field_and_items() {
        let body = br#"{"error":"2 invalid item(s)","field":"items[0].cidr","items":[{"field":"items[0].cidr","error":"bad"},{"field":"items[1].ttl","error":"worse"}]}"#;
        let e = api_error("u", StatusCode::BAD_REQUEST, body).to_string();
        assert!(
            e.contains("field `items[0].cidr`") && e.contains("items[1].ttl: worse"),
            "{e}"
        );
        let e = api_error("u", StatusCode::BAD_GATEWAY, b"<html>").to_string();
        assert!(e.contains("502") && e.contains("<html>"), "{e}");
    }
}
