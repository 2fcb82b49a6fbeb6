//! Test certificates, made with `openssl` in a temporary directory: a CA,
//! server and client certificates, and the flawed ones operators make.

use std::path::{Path, PathBuf};
use std::process::Command;

use esi_reconciler::store::client::TlsFiles;

pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// What a client certificate is like.
pub enum ClientCert {
    /// X.509 v3 with `extendedKeyUsage = clientAuth`.
    Good,
    /// X.509 v1: what `openssl x509 -req` makes without an extension file.
    V1,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA (`ca`), a second unrelated CA (`other-ca`), and a server
    /// certificate for 127.0.0.1 / localhost signed by `ca`.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("esi-pki-")
            .tempdir()
            .unwrap();
        let pki = Pki { dir };
        for ca in ["ca", "other-ca"] {
            openssl(
                pki.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=esi-test-{ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        pki.sign(
            "server",
            "server",
            "ca",
            Some("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
        );
        pki
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// `name.key` and `name.crt` with common name `cn`, signed by `ca`, with
    /// the extensions `ext` (none: an X.509 v1 certificate).
    pub fn sign(&self, name: &str, cn: &str, ca: &str, ext: Option<&str>) {
        let dir = self.path();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args: Vec<String> = [
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(ext) = ext {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            args.extend(["-extfile".into(), format!("{name}.ext")]);
        }
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// A client certificate for user `cn`, signed by the CA.
    pub fn client(&self, cn: &str, kind: ClientCert) -> TlsFiles {
        let name = format!("client-{cn}");
        let ext = match kind {
            ClientCert::Good => Some("extendedKeyUsage=clientAuth\n"),
            ClientCert::V1 => None,
        };
        self.sign(&name, cn, "ca", ext);
        TlsFiles {
            ca: Some(self.file("ca.crt")),
            cert: Some(self.file(&format!("{name}.crt"))),
            key: Some(self.file(&format!("{name}.key"))),
        }
    }

    /// Whether the certificate at `path` is X.509 v1 (OpenSSL 3.2 and later
    /// make v3 even without an extension file).
    pub fn is_v1(&self, path: &Path) -> bool {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(path)
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&out.stdout).contains("Version: 1 (0x0)")
    }

    /// etcd's side: the server certificate, trusting the CA.
    pub fn server(&self, client_cert_auth: bool) -> esi_harness::etcd::embedded::ServerTls {
        esi_harness::etcd::embedded::ServerTls {
            cert: self.file("server.crt"),
            key: self.file("server.key"),
            trusted_ca: self.file("ca.crt"),
            client_cert_auth,
        }
    }
}
