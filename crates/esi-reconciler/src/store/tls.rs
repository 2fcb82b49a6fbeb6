//! Why TLS to etcd failed, in words an operator can act on.
//!
//! tonic reports every TLS failure as "transport error" (nested once per
//! layer); the reason is a `rustls::Error` several sources down, or only a
//! closed connection when etcd rejected the client's certificate after the
//! handshake. This module checks the PEM files before any connection, and
//! turns what a failed connection left into the cause and what to check.

use std::error::Error as StdError;
use std::path::Path;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::client::{TlsFiles, causes};

/// Reads and checks the TLS files before anything connects: each must hold
/// what its flag says, and the client certificate must be one rustls
/// accepts (X.509 v3).
pub fn check_files(tls: &TlsFiles) -> Result<(), String> {
    if let Some(ca) = &tls.ca {
        certs(ca, "--etcd-ca")?;
    }
    if let Some(cert) = &tls.cert {
        let chain = certs(cert, "--etcd-cert")?;
        if let Some(leaf) = chain.first() {
            webpki::EndEntityCert::try_from(leaf).map_err(|e| match e {
                webpki::Error::UnsupportedCertVersion => format!(
                    "--etcd-cert {}: an X.509 v1 certificate (as `openssl x509 -req` makes \
                     without -extfile); TLS here needs v3: sign it again with an extension \
                     file holding `extendedKeyUsage=clientAuth`",
                    cert.display()
                ),
                other => format!(
                    "--etcd-cert {}: not a usable certificate: {other}",
                    cert.display()
                ),
            })?;
        }
    }
    if let Some(key) = &tls.key {
        PrivateKeyDer::from_pem_file(key).map_err(|e| {
            format!(
                "--etcd-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
                key.display()
            )
        })?;
    }
    Ok(())
}

fn certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let all: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if all.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(all)
}

/// The cause of a failed connection to `endpoint`, when TLS (or its
/// absence) explains it; `None` for failures TLS has nothing to do with.
/// `first_contact`: the member never answered yet, so a connection it
/// closes is read as a TLS rejection (later, it is a restart or a fault).
pub fn explain(
    err: &etcd_client::Error,
    tls: Option<&TlsFiles>,
    endpoint: &str,
    first_contact: bool,
) -> Option<String> {
    let chain = match super::client::wrapped(err) {
        Some(inner) => causes(inner),
        None => causes(err),
    };
    if let Some(e) = chain.iter().find_map(|e| rustls_error(*e)) {
        return Some(from_rustls(e, tls, endpoint));
    }
    let text: String = chain
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    // An alert that reached us through h2 keeps only its text.
    if let Some(alert) = text
        .split("fatal alert: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .and_then(alert_named)
    {
        return Some(from_rustls(
            &rustls::Error::AlertReceived(alert),
            tls,
            endpoint,
        ));
    }
    if text.contains("TLS options are only supported with HTTPS") {
        return Some(format!(
            "TLS is configured (--etcd-ca/--etcd-cert) but {endpoint} is not https://: \
             use https:// endpoints"
        ));
    }
    let closed = first_contact
        && [
            "connection closed",
            "broken pipe",
            "connection reset",
            "early eof",
        ]
        .iter()
        .any(|s| text.to_ascii_lowercase().contains(s));
    match tls {
        Some(t) if closed && endpoint.starts_with("https://") => Some(match &t.cert {
            None => format!(
                "{endpoint} closed the connection right after the TLS handshake: etcd \
                 probably requires a client certificate (it runs with --client-cert-auth) \
                 and none was sent; pass --etcd-cert and --etcd-key"
            ),
            Some(cert) => format!(
                "{endpoint} closed the connection right after the TLS handshake: etcd \
                 probably rejected the client certificate {}: check that it is signed by \
                 the CA etcd trusts (--trusted-ca-file) and allows client authentication \
                 (extendedKeyUsage clientAuth); etcd's log names the reason",
                cert.display()
            ),
        }),
        None if closed || text.contains("frame with invalid size") => Some(format!(
            "{endpoint} closed the connection: if etcd serves TLS on this port, use an \
             https:// endpoint and --etcd-ca"
        )),
        _ => None,
    }
}

fn alert_named(name: &str) -> Option<AlertDescription> {
    use AlertDescription::*;
    [
        BadCertificate,
        UnsupportedCertificate,
        CertificateRevoked,
        CertificateExpired,
        CertificateUnknown,
        UnknownCA,
        AccessDenied,
        CertificateRequired,
        HandshakeFailure,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
}

fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

fn from_rustls(e: &rustls::Error, tls: Option<&TlsFiles>, endpoint: &str) -> String {
    let ca = tls
        .and_then(|t| t.ca.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the system's roots".into());
    let server = format!("the server certificate of {endpoint}");
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "{server} is not signed by the CA in --etcd-ca ({ca}): pass the CA that \
                 signed etcd's --cert-file"
            ),
            CertificateError::NotValidForName => format!(
                "{server} is not valid for this host name: connect with a name or IP its \
                 subjectAltName lists, or reissue it with this one"
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "{server} is not valid for {expected:?} (it names {}): connect with one of \
                 those, or reissue it with this name",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("{server} has expired: renew it (or check this machine's clock)")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("{server} is not valid yet: check this machine's clock")
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "{server} is not for server authentication (extendedKeyUsage lacks serverAuth)"
                )
            }
            CertificateError::Other(o) if o.to_string().contains("UnsupportedCertVersion") => {
                format!("{server} is X.509 v1; TLS here needs v3: reissue it with extensions")
            }
            other => format!("{server} was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            let cert = tls
                .and_then(|t| t.cert.as_ref())
                .map(|p| p.display().to_string());
            match (alert, cert) {
                (AlertDescription::CertificateRequired, _) | (_, None) => format!(
                    "etcd at {endpoint} requires a client certificate ({alert:?}): pass \
                     --etcd-cert and --etcd-key"
                ),
                (_, Some(cert)) => format!(
                    "etcd at {endpoint} rejected the client certificate {cert} ({alert:?}): \
                     check that it is signed by the CA etcd trusts (--trusted-ca-file), is \
                     still valid and allows client authentication (extendedKeyUsage clientAuth)"
                ),
            }
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{endpoint} does not answer TLS: if etcd serves plain HTTP there, use http://")
        }
        other => format!("TLS with {endpoint} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic's shape: an outer error whose source is an `io::Error` around
    /// the rustls error.
    #[derive(Debug)]
    struct Transport(std::io::Error);
    impl std::fmt::Display for Transport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl StdError for Transport {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    fn wrapped(e: rustls::Error) -> etcd_client::Error {
        etcd_client::Error::IoError(std::io::Error::other(Transport(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        ))))
    }

    fn files(cert: bool) -> TlsFiles {
        TlsFiles {
            ca: Some("/etc/etcd/ca.pem".into()),
            cert: cert.then(|| "/etc/esi/client.pem".into()),
            key: cert.then(|| "/etc/esi/client-key.pem".into()),
        }
    }

    #[test]
    fn causes_deep_in_the_chain_are_named_with_what_to_check() {
        let url = "https://10.0.0.5:2379";
        let cases: Vec<(rustls::Error, bool, &str)> = vec![
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                true,
                "not signed by the CA in --etcd-ca (/etc/etcd/ca.pem)",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                true,
                "not valid for this host name",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                true,
                "has expired",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                true,
                "rejected the client certificate /etc/esi/client.pem",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                false,
                "requires a client certificate",
            ),
        ];
        for (e, cert, expect) in cases {
            let text = explain(&wrapped(e), Some(&files(cert)), url, true).unwrap();
            assert!(text.contains(expect), "{text}");
        }
        // A closed connection means a rejected or missing certificate only
        // when TLS is on; other failures are not TLS's to explain.
        let closed = etcd_client::Error::IoError(std::io::Error::other("connection closed"));
        assert!(
            explain(&closed, Some(&files(false)), url, true)
                .unwrap()
                .contains("--etcd-cert")
        );
        assert!(
            explain(&closed, Some(&files(true)), url, true)
                .unwrap()
                .contains("rejected")
        );
        let refused = etcd_client::Error::IoError(std::io::Error::other("connection refused"));
        assert_eq!(explain(&refused, Some(&files(true)), url, true), None);
        // ... nor a closed connection from a member that answered before
        // (a restart, not a rejection).
        assert_eq!(explain(&closed, Some(&files(true)), url, false), None);
        // An alert that reached us only as text (through h2).
        let alert = etcd_client::Error::IoError(std::io::Error::other(
            "connection error: received fatal alert: BadCertificate",
        ));
        let text = explain(&alert, Some(&files(true)), url, true).unwrap();
        assert!(text.contains("rejected the client certificate"), "{text}");
    }

    #[test]
    fn files_are_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = check_files(&TlsFiles {
            ca: Some(empty.clone()),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(
            e.contains("--etcd-ca") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = check_files(&TlsFiles {
            key: Some(empty),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(e.contains("--etcd-key"), "{e}");
        let e = check_files(&TlsFiles {
            ca: Some(dir.path().join("missing.pem")),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
