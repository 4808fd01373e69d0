//! Console sessions: a browser trades a token for a random session id once (`POST /api/v1/session`)
//! and then sends only the cookie. The daemon keeps the SHA-256 of each id (never the id, never the
//! token) with its holder, role and expiry, in memory and in `<state_dir>/console-sessions.json`
//! (0600), so that an open page survives a daemon restart. A session names its token's holder: when
//! that token is removed from the config, or its role changes, the session stops working.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::auth::{Principal, Role, Tokens};

/// The cookie's name.
pub const COOKIE: &str = "netguard_session";
/// The file, in the state directory, that keeps sessions across restarts.
pub const SESSIONS_FILE: &str = "console-sessions.json";
/// Sessions kept at once; the oldest is dropped beyond it (a login loop cannot grow memory).
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    name: String,
    role: Role,
    expires_at: DateTime<Utc>,
}

/// Failed logins allowed at once, and how fast that allowance comes back (per second), across all
/// clients: past it every login is answered 429 until it refills, so guessing tokens through the
/// console costs at least half a second a guess (tokens are 20+ characters anyway).
const FAILED_LOGIN_BURST: f64 = 20.0;
const FAILED_LOGINS_PER_SECOND: f64 = 2.0;

/// The live sessions.
pub struct Sessions {
    map: Mutex<HashMap<String, Stored>>,
    file: Mutex<Option<PathBuf>>,
    ttl: Duration,
    /// The API serves HTTPS: cookies get `Secure`.
    secure: AtomicBool,
    /// Failed-login allowance: (what is left, when it was last topped up).
    failures: Mutex<(f64, std::time::Instant)>,
}

/// A new session: the cookie's value and when it expires.
pub struct NewSession {
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

fn digest(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::default(),
            file: Mutex::default(),
            ttl,
            secure: AtomicBool::new(false),
            failures: Mutex::new((FAILED_LOGIN_BURST, std::time::Instant::now())),
        }
    }

    /// Whether a login may be tried now; when not, how long until it may.
    pub fn login_allowed(&self) -> Result<(), Duration> {
        let mut f = self.failures.lock().expect("failures lock");
        let now = std::time::Instant::now();
        f.0 = (f.0 + now.duration_since(f.1).as_secs_f64() * FAILED_LOGINS_PER_SECOND)
            .min(FAILED_LOGIN_BURST);
        f.1 = now;
        if f.0 >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - f.0) / FAILED_LOGINS_PER_SECOND,
            ))
        }
    }

    /// Counts a failed login against the allowance.
    pub fn login_failed(&self) {
        let mut f = self.failures.lock().expect("failures lock");
        f.0 = (f.0 - 1.0).max(0.0);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn set_secure(&self, secure: bool) {
        self.secure.store(secure, Ordering::Relaxed);
    }

    pub fn secure(&self) -> bool {
        self.secure.load(Ordering::Relaxed)
    }

    /// Keeps sessions in `path` from now on, loading the unexpired ones it holds. A missing file is
    /// an empty one; an unreadable one is logged and replaced (a lost session means logging in again).
    pub fn persist_in(&self, path: PathBuf) {
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, Stored>>(&bytes) {
                Ok(stored) => {
                    let now = Utc::now();
                    let mut map = self.map.lock().expect("sessions lock");
                    map.extend(stored.into_iter().filter(|(_, s)| s.expires_at > now));
                }
                Err(e) => log::warn!(
                    "{} is not a sessions file ({e}); console users will log in again",
                    path.display()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "could not read {} ({e}); console users will log in again",
                path.display()
            ),
        }
        *self.file.lock().expect("sessions file lock") = Some(path);
    }

    fn save(&self, map: &HashMap<String, Stored>) {
        let Some(path) = self.file.lock().expect("sessions file lock").clone() else {
            return;
        };
        let text = match serde_json::to_vec(map) {
            Ok(t) => t,
            Err(e) => return log::error!("console sessions not serialisable: {e}"),
        };
        if let Err(e) = crate::statedir::write_private(&path, &text) {
            log::warn!(
                "could not save console sessions to {} ({e}); they end when the daemon stops",
                path.display()
            );
        }
    }

    /// Opens a session for `who`.
    pub fn open(&self, who: &Principal) -> Result<NewSession, String> {
        let id = crate::api::auth::random_token().map_err(|e| e.to_string())?;
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(12));
        let expires_at = Utc::now() + ttl;
        let mut map = self.map.lock().expect("sessions lock");
        let now = Utc::now();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&id),
            Stored {
                name: who.name.clone(),
                role: who.role,
                expires_at,
            },
        );
        self.save(&map);
        Ok(NewSession { id, expires_at })
    }

    /// The holder of a session id, if it is live and its token still exists with the same role.
    pub fn principal(&self, id: &str, tokens: &Tokens) -> Option<(Principal, DateTime<Utc>)> {
        let key = digest(id);
        let mut map = self.map.lock().expect("sessions lock");
        let s = map.get(&key)?.clone();
        if s.expires_at <= Utc::now() {
            map.remove(&key);
            self.save(&map);
            return None;
        }
        let p = tokens.principal_named(&s.name)?;
        (p.role == s.role).then_some((p, s.expires_at))
    }

    /// Ends a session (logout); unknown ids are fine.
    pub fn close(&self, id: &str) {
        let mut map = self.map.lock().expect("sessions lock");
        if map.remove(&digest(id)).is_some() {
            self.save(&map);
        }
    }

    /// The `Set-Cookie` value for a new session.
    pub fn cookie(&self, s: &NewSession) -> String {
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            s.id,
            self.ttl.as_secs(),
            if self.secure() { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure() { "; Secure" } else { "" }
        )
    }
}

/// The session id in a request's `Cookie` headers.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::TokenConfig;

    fn tokens(role: Role) -> Tokens {
        Tokens::new([TokenConfig {
            name: "ops".into(),
            role,
            token: "operator-token-0123456789".into(),
            vm_id: None,
        }])
        .unwrap()
    }

    #[test]
    fn sessions_survive_a_restart_and_end_on_logout_or_role_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SESSIONS_FILE);
        let t = tokens(Role::Operator);
        let who = t.authenticate("operator-token-0123456789").unwrap();
        let a = Sessions::new(Duration::from_secs(60));
        a.persist_in(path.clone());
        let s = a.open(&who).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&s.id) && !text.contains("operator-token"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = Sessions::new(Duration::from_secs(60));
        b.persist_in(path.clone());
        assert_eq!(b.principal(&s.id, &t).unwrap().0, who);
        assert!(b.principal(&s.id, &tokens(Role::Viewer)).is_none());
        assert!(b.principal("nope", &t).is_none());
        b.close(&s.id);
        assert!(b.principal(&s.id, &t).is_none());
        let c = Sessions::new(Duration::from_secs(60));
        c.persist_in(path);
        assert!(c.principal(&s.id, &t).is_none());
    }

    #[test]
    fn a_session_ends_at_its_expiry() {
        let t = tokens(Role::Operator);
        let who = t.authenticate("operator-token-0123456789").unwrap();
        let s = Sessions::new(Duration::from_secs(1));
        let n = s.open(&who).unwrap();
        assert!(s.principal(&n.id, &t).is_some());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(s.principal(&n.id, &t).is_none());
    }

    #[test]
    fn failed_logins_are_throttled() {
        let s = Sessions::new(Duration::from_secs(60));
        for _ in 0..FAILED_LOGIN_BURST as usize {
            assert!(s.login_allowed().is_ok());
            s.login_failed();
        }
        let wait = s.login_allowed().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(20));
        assert!(s.login_allowed().is_ok());
    }

    #[test]
    fn cookie_attributes() {
        let s = Sessions::new(Duration::from_secs(3600));
        let n = NewSession {
            id: "abc".into(),
            expires_at: Utc::now(),
        };
        assert_eq!(
            s.cookie(&n),
            "netguard_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=3600"
        );
        s.set_secure(true);
        assert!(s.cookie(&n).ends_with("; Secure"));
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", "a=1; netguard_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h), Some("xyz"));
    }
}
