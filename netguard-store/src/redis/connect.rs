//! Connecting: the client for a URL (plain or TLS with a private CA), and errors that say what to
//! fix without ever showing the URL's password.

use redis::{Client, RedisError};

use super::{AUTH_HINT, BACKEND, HINT, RedisConfig, TLS_HINT};
use crate::error::{Result, StoreError};

pub(super) fn unavailable(location: &str, e: RedisError) -> StoreError {
    // A TLS failure is not an outage to wait out: say which setting fixes it.
    let text = e.to_string().to_ascii_lowercase();
    let hint = if text.contains("certificate") || text.contains("tls") || text.contains("handshake")
    {
        TLS_HINT
    } else if text.contains("wrongpass") || text.contains("noauth") || text.contains("auth") {
        AUTH_HINT
    } else {
        HINT
    };
    StoreError::Unavailable {
        backend: BACKEND,
        location: location.to_owned(),
        hint,
        source: Box::new(e),
    }
}

/// The redis client for `config`: plain, or TLS with the system's roots or `config.ca`. Errors never
/// contain the URL's password.
pub(super) fn client(config: &RedisConfig) -> Result<Client> {
    let shown = crate::redact_url(&config.url);
    let bad_url = |e: RedisError| StoreError::Invalid {
        field: "redis url",
        detail: format!(
            "{shown:?} is not a redis URL ({e}): use redis://HOST:PORT or rediss://HOST:PORT (TLS)"
        ),
    };
    let tls = config.url.starts_with("rediss://");
    let Some(ca) = &config.ca else {
        return Client::open(config.url.as_str()).map_err(bad_url);
    };
    if !tls {
        return Err(StoreError::Invalid {
            field: "redis_ca",
            detail: format!(
                "a CA ({}) is set but {shown:?} is not a TLS URL: use rediss://HOST:PORT, or drop redis_ca",
                ca.display()
            ),
        });
    }
    let pem = std::fs::read(ca).map_err(|e| StoreError::Invalid {
        field: "redis_ca",
        detail: format!("cannot read the Redis CA file {}: {e}; point [store] redis_ca (--redis-ca) at a PEM file", ca.display()),
    })?;
    check_ca_pem(&pem).map_err(|problem| StoreError::Invalid {
        field: "redis_ca",
        detail: format!("{}: {problem}; it must hold the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)", ca.display()),
    })?;
    Client::build_with_tls(
        config.url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map_err(bad_url)
}

/// At least one certificate, and nothing unreadable, so a wrong file is named at start.
fn check_ca_pem(pem: &[u8]) -> std::result::Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if bad > 0 {
        return Err(format!("{bad} certificate(s) could not be parsed"));
    }
    Ok(())
}

#[cfg(test)]
mod client_tests {
    use super::*;

    fn config(url: &str, ca: Option<std::path::PathBuf>) -> RedisConfig {
        let mut c = RedisConfig::new(url, "s1");
        c.ca = ca;
        c
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let e = client(&config("redis://admin:hunter2@host:notaport/0", None))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("redis://admin:***@host:notaport/0") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn the_ca_file_is_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client(&config("rediss://:hunter2@h:6380", Some(missing.clone())))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&missing.display().to_string())
                && e.contains("redis_ca")
                && !e.contains("hunter2"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = client(&config("rediss://h:6380", Some(junk.clone())))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = client(&config("redis://:hunter2@h:6379", Some(junk)))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("rediss://") && !e.contains("hunter2"), "{e}");
    }
}
