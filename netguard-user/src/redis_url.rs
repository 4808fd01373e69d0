//! Where the daemon's Redis URL comes from, so that a password never has to be on a command line
//! (where every local user reads it in `ps`): first `--redis URL`, then `--redis-url-file FILE`,
//! then the environment (`NETGUARD_REDIS_URL`), then `[store] redis_url_file`, then `[store] redis`.
//! Only [`netguard_store::redact_url`] of a URL is ever shown.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use netguard_store::redact_url;

use crate::config::StoreConfig;

/// The environment variable with the Redis URL.
pub const REDIS_URL_ENV: &str = "NETGUARD_REDIS_URL";

/// Where the URL in use was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    FlagFile(PathBuf),
    Env,
    ConfigFile(PathBuf),
    Config,
}

impl Origin {
    /// On the command line, hence visible to every local user in `ps`.
    pub fn on_command_line(&self) -> bool {
        matches!(self, Origin::Flag)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("--redis"),
            Origin::FlagFile(p) => write!(f, "--redis-url-file {}", p.display()),
            Origin::Env => f.write_str(REDIS_URL_ENV),
            Origin::ConfigFile(p) => write!(f, "[store] redis_url_file {}", p.display()),
            Origin::Config => f.write_str("[store] redis"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("cannot read the Redis URL file {} ({origin}): {source}; put the URL on its first line (chmod 600)", path.display())]
    Read {
        path: PathBuf,
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Redis URL file {} ({origin}) is empty: put the URL (redis://... or rediss://...) on its first line", path.display())]
    Empty { path: PathBuf, origin: String },
}

/// The first non-empty line of `path`, trimmed.
pub fn read_url_file(path: &Path, origin: &Origin) -> Result<String, RedisUrlError> {
    let text = std::fs::read_to_string(path).map_err(|source| RedisUrlError::Read {
        path: path.to_owned(),
        origin: origin.to_string(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| RedisUrlError::Empty {
            path: path.to_owned(),
            origin: origin.to_string(),
        })
}

/// The URL to use and where it came from; `None` for the embedded store.
pub fn resolve(
    flag: Option<&str>,
    flag_file: Option<&Path>,
    env: Option<String>,
    store: &StoreConfig,
) -> Result<Option<(String, Origin)>, RedisUrlError> {
    if let Some(url) = flag {
        return Ok(Some((url.to_owned(), Origin::Flag)));
    }
    if let Some(path) = flag_file {
        let origin = Origin::FlagFile(path.to_owned());
        return Ok(Some((read_url_file(path, &origin)?, origin)));
    }
    if let Some(url) = env.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) {
        return Ok(Some((url, Origin::Env)));
    }
    if let Some(path) = &store.redis_url_file {
        let origin = Origin::ConfigFile(path.clone());
        return Ok(Some((read_url_file(path, &origin)?, origin)));
    }
    Ok(store.redis.clone().map(|u| (u, Origin::Config)))
}

/// The log line for the URL in use, and a warning when a password sits on the command line or in a
/// file that others may read.
pub fn announce(url: &str, origin: &Origin) {
    if origin.on_command_line() && netguard_store::url::has_credentials(url) {
        log::warn!(
            "the Redis URL given with --redis carries a password, which every local user can read in `ps`: \
             pass it in {REDIS_URL_ENV} or a file (--redis-url-file, [store] redis_url_file) instead"
        );
    }
    if let Origin::FlagFile(path) | Origin::ConfigFile(path) = origin {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
            && netguard_store::url::has_credentials(url)
        {
            log::warn!(
                "{} holds a Redis password and others may read it: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    log::info!("Redis store at {} (from {origin})", redact_url(url));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_file_env_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis.url");
        std::fs::write(&file, "\n  rediss://:pw@h:6380/0  \n# ignored\n").unwrap();
        let mut store = StoreConfig {
            redis: Some("redis://cfg:1".into()),
            ..StoreConfig::default()
        };
        let env = || Some("redis://env:1".to_owned());
        let r = |flag, flag_file, env, store: &StoreConfig| {
            resolve(flag, flag_file, env, store).unwrap()
        };
        assert_eq!(
            r(Some("redis://flag:1"), Some(&file), env(), &store),
            Some(("redis://flag:1".into(), Origin::Flag))
        );
        assert_eq!(
            r(None, Some(&file), env(), &store),
            Some((
                "rediss://:pw@h:6380/0".into(),
                Origin::FlagFile(file.clone())
            ))
        );
        assert_eq!(
            r(None, None, env(), &store),
            Some(("redis://env:1".into(), Origin::Env))
        );
        assert_eq!(
            r(None, None, Some("  ".into()), &store),
            Some(("redis://cfg:1".into(), Origin::Config)),
            "blank env is unset"
        );
        store.redis_url_file = Some(file.clone());
        assert_eq!(
            r(None, None, None, &store).unwrap().1,
            Origin::ConfigFile(file.clone())
        );
        assert_eq!(r(None, None, None, &StoreConfig::default()), None);
    }

    #[test]
    fn file_errors_name_the_file_and_never_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.url");
        let e = resolve(None, Some(&missing), None, &StoreConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.url") && e.contains("--redis-url-file"),
            "{e}"
        );
        let empty = dir.path().join("empty.url");
        std::fs::write(&empty, "\n\n").unwrap();
        let e = resolve(None, Some(&empty), None, &StoreConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.url") && e.contains("empty"), "{e}");
    }
}
