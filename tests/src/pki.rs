//! A throwaway private CA and a server certificate signed by it, made with the `openssl` command
//! (no network, a few milliseconds): for the HTTPS API and `rediss://` tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM): what `--cacert` and `redis_ca` point at.
    pub ca: PathBuf,
    /// The server's certificate and its unencrypted PKCS#8 key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl not found: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA and a server certificate for `names` (subjectAltName entries such as "IP:127.0.0.1",
    /// "DNS:localhost"). P-256 keys; valid for two days.
    pub fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=netguard test CA",
        ]);
        ca.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=netguard test server",
        ]);
        openssl(d, &csr);
        let ext = format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            names.join(",")
        );
        std::fs::write(d.join("server.ext"), ext).expect("write ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
            ]
            .into_iter()
            .chain(["-out", "server.pem", "-days", "2", "-extfile", "server.ext"])
            .collect::<Vec<_>>(),
        );
        Pki {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            dir,
        }
    }

    /// `[api] tls_cert` and `tls_key` for this certificate, as a config file in the PKI's dir.
    pub fn api_config(&self) -> PathBuf {
        let path = self.dir.path().join("netguard.toml");
        std::fs::write(
            &path,
            format!(
                "[api]\ntls_cert = {:?}\ntls_key = {:?}\n",
                self.cert.display().to_string(),
                self.key.display().to_string()
            ),
        )
        .expect("write config");
        path
    }
}
