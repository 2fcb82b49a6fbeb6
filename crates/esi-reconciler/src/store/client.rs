//! Connecting to etcd: endpoints, timeouts, TLS and user/password auth.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::cluster::Etcd;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd request failed: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// The error an `etcd_client::Error` wraps: its own `source()` is always
/// `None`, so causes are only reachable through this.
pub(crate) fn wrapped(e: &etcd_client::Error) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    }
}

/// `err` and its sources, at most 32: a cyclic chain must not hang the
/// error path.
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = vec![err];
    let mut cur = err;
    while let Some(next) = cur.source() {
        if out.len() >= 32 {
            break;
        }
        out.push(next);
        cur = next;
    }
    out
}

/// `err` and each cause once, on one line: `a: b: c`. Layers that repeat
/// their source's text (hyper, reqwest) are said once.
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![];
    for e in causes(err) {
        let t = e.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    parts.join(": ")
}

/// A one-line description of an etcd error: the gRPC message or the
/// transport failure, then each cause once, root last (tonic repeats
/// "transport error" at every layer).
pub fn describe(e: &etcd_client::Error) -> String {
    let mut parts: Vec<String> = vec![match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        etcd_client::Error::TransportError(_) => "transport error".to_string(),
        other => other.to_string(),
    }];
    let start = wrapped(e).and_then(|w| match e {
        etcd_client::Error::GRpcStatus(_) => w.source(),
        _ => Some(w),
    });
    for err in start.map(causes).unwrap_or_default() {
        let t = err.to_string();
        // tonic's layers each say only "transport error": no news.
        let news = t != "transport error";
        if news && parts.len() < 16 && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    match parts.split_first() {
        Some((head, rest)) if !rest.is_empty() => format!("{head} ({})", rest.join(": ")),
        _ => parts.concat(),
    }
}

/// Connects and checks that etcd answers a read, so a command fails fast
/// with a clear message instead of on its first real request.
pub async fn connect_checked(opts: &EtcdOptions) -> Result<Etcd, StoreError> {
    let etcd = connect(opts).await?;
    etcd.check().await?;
    Ok(etcd)
}

/// Client-side TLS material, as PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub user: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    /// Also use the members etcd's `MemberList` names.
    pub discover: bool,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            user: None,
            tls: None,
            discover: false,
        }
    }
}

impl EtcdOptions {
    pub fn with_endpoints(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            ..Self::default()
        }
    }
}

pub(crate) fn read(path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

/// A handle on the etcd cluster `opts` names; connections are made on
/// first use, one per member.
pub async fn connect(opts: &EtcdOptions) -> Result<Etcd, StoreError> {
    Etcd::new(opts.clone())
}

/// A connection to one member.
pub(crate) async fn member_client(
    opts: &EtcdOptions,
    endpoint: &str,
) -> Result<Client, etcd_client::Error> {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(opts.connect_timeout)
        .with_timeout(opts.request_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        // A member cut off from the others refuses requests (and cancels
        // watches) instead of serving what it had: the caller moves on.
        .with_require_leader(true)
        // A simple token expires (etcd --auth-token-ttl) and is only valid
        // on the member that issued it, which forgets it on restart.
        .with_auto_token_refresh(true);
    if let Some((user, password)) = &opts.user {
        co = co.with_user(user, password);
    }
    if let Some(tls) = &opts.tls {
        co = co.with_tls(tls_options(tls)?);
    }
    Client::connect([endpoint], Some(co)).await
}

/// The client side of TLS from PEM files.
pub fn tls_options(tls: &TlsFiles) -> Result<TlsOptions, etcd_client::Error> {
    let mut t = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        t = t.ca_certificate(Certificate::from_pem(read_pem(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        t = t.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
    }
    Ok(t)
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, etcd_client::Error> {
    read(path).map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))
}

/// etcd's current revision.
///
/// A linearizable read of one key: its header holds the store's revision,
/// and counting a whole range would cost etcd O(keys).
pub async fn current_revision(etcd: &Etcd) -> Result<i64, etcd_client::Error> {
    let resp = etcd
        .get(
            super::roles::REVISION_PROBE,
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}
