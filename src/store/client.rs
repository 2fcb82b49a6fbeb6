//! Connecting to etcd: endpoints, timeouts, TLS and user/password auth.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

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
}

/// A one-line description of an etcd error: the gRPC message and its root
/// cause, without tonic's repeated nesting.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let mut root: Option<&dyn std::error::Error> = std::error::Error::source(s);
            while let Some(next) = root.and_then(|r| r.source()) {
                root = Some(next);
            }
            match root {
                Some(r) if !s.message().contains(&r.to_string()) => {
                    format!("{} ({r})", s.message())
                }
                _ => s.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Connects and checks that etcd answers a read, so a command fails fast
/// with a clear message instead of on its first real request.
pub async fn connect_checked(opts: &EtcdOptions) -> Result<Client, StoreError> {
    let client = connect(opts).await?;
    let probe = etcd_client::GetOptions::new().with_count_only();
    client
        .kv_client()
        .get(crate::esi::keys::CONFIG, Some(probe))
        .await
        .map_err(|e| StoreError::Unreachable {
            endpoints: opts.endpoints.join(","),
            reason: describe(&e),
        })?;
    Ok(client)
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
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            user: None,
            tls: None,
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

fn read(path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

pub async fn connect(opts: &EtcdOptions) -> Result<Client, StoreError> {
    if opts.endpoints.is_empty() {
        return Err(StoreError::NoEndpoints);
    }
    let mut co = ConnectOptions::new()
        .with_connect_timeout(opts.connect_timeout)
        .with_timeout(opts.request_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some((user, password)) = &opts.user {
        co = co.with_user(user, password);
    }
    if let Some(tls) = &opts.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        co = co.with_tls(t);
    }
    // A request timeout must not cut a watch stream: the mirror has its own
    // liveness checks, so the timeout applies to unary calls in practice.
    Client::connect(opts.endpoints.clone(), Some(co))
        .await
        .map_err(|source| StoreError::Connect {
            endpoints: opts.endpoints.join(","),
            source,
        })
}

/// etcd's current revision.
pub async fn current_revision(client: &Client) -> Result<i64, etcd_client::Error> {
    let resp = client
        .kv_client()
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}
