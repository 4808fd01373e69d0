//! Redis URLs as they may be shown: with the password (and a lone user part, which some clients
//! read as a password) replaced by `***`, so that no log line, error or status output carries it.

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`;
/// `rediss://:secret@host` → `rediss://:***@host`; `redis://secret@host` → `redis://***@host`.
/// A `password=` (or `pass=`) query parameter is redacted too. A URL without credentials comes
/// back unchanged. Works on text that is not a valid URL as well: everything before the last `@`
/// of the authority is treated as credentials.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The last `@`: a password may itself contain `@`, `/`, `?` or `:` when it was not
    // percent-encoded, while the host, port and database number never do.
    let mut out = String::from(scheme);
    let host_part = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***@");
                }
                None => out.push_str("***@"),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    let (host_part, query) = match host_part.find('?') {
        Some(i) => (&host_part[..i], Some(&host_part[i + 1..])),
        None => (host_part, None),
    };
    out.push_str(host_part);
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("pass") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// `text` with every URL in it (`scheme://...` up to the next space or quote) passed through
/// [`redact_url`]: for messages that may embed a URL someone else formatted.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether the URL carries a password (or a lone user part): then it must not be on a command line.
pub fn has_credentials(url: &str) -> bool {
    redact_url(url) != url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_replaced_and_the_rest_kept() {
        assert_eq!(
            redact_url("redis://user:s3cret@10.0.0.1:6379/2"),
            "redis://user:***@10.0.0.1:6379/2"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@cache.example:6380"),
            "rediss://:***@cache.example:6380"
        );
        assert_eq!(redact_url("redis://s3cret@host"), "redis://***@host");
        assert_eq!(
            redact_url("redis://default:s3cret@[2001:db8::2]:7000/1"),
            "redis://default:***@[2001:db8::2]:7000/1"
        );
    }

    #[test]
    fn passwords_with_at_slash_and_colon_do_not_leak() {
        for (url, secret) in [
            ("redis://:p@ss@10.0.0.1", "p@ss"),
            ("redis://u:pa/ss@h:1/0", "pa/ss"),
            ("redis://u:a:b@h", "a:b"),
            ("redis://u:pa?ss@h", "pa?ss"),
            (
                "redis://h:6379/0?password=topsecret&protocol=resp3",
                "topsecret",
            ),
            ("no-scheme:hidden@host", "hidden"),
        ] {
            let r = redact_url(url);
            assert!(!r.contains(secret), "{url} -> {r}");
            assert!(r.contains("***"), "{url} -> {r}");
        }
        assert_eq!(
            redact_url("redis://h:6379/0?password=topsecret&protocol=resp3"),
            "redis://h:6379/0?password=***&protocol=resp3"
        );
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let t = "could not open the state store: \"redis://u:hunter2@h:1/0\" is bad (see rediss://:pw2@x)\nnext";
        let r = redact_text(t);
        assert!(!r.contains("hunter2") && !r.contains("pw2"), "{r}");
        assert_eq!(
            r,
            "could not open the state store: \"redis://u:***@h:1/0\" is bad (see rediss://:***@x)\nnext"
        );
        assert_eq!(redact_text("no url here"), "no url here");
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://h",
            "unix:///run/redis.sock",
            "",
        ] {
            assert_eq!(redact_url(url), url);
            assert!(!has_credentials(url));
        }
        assert!(has_credentials("redis://:x@h"));
    }
}
