//! A private etcd server in a temporary directory, on free loopback ports:
//! the demo's default backend and the test harness's etcd.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "cannot start etcd ({binary}): {source}; install it with `apt-get install etcd-server` or set ESI_ETCD_BINARY"
    )]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("etcd did not become healthy within {0:?}; its log is {1}")]
    NotReady(Duration, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running etcd. Killed when dropped; its data directory is removed
/// unless it was given by the caller.
pub struct EtcdProcess {
    child: Option<Child>,
    pub client_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    peer_url: String,
    /// TLS it serves with, and the client side that sees it ready.
    tls: Option<(ServerTls, esi_reconciler::store::client::TlsFiles)>,
    /// The extra flags it was started with (kept by a restart).
    flags: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start one member of a cluster.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// `name=peer-url,…` for every member.
    pub initial_cluster: String,
    /// Joining a cluster that exists (a restart) rather than forming one.
    pub existing: bool,
    /// Serve clients over TLS (peers stay on plain loopback).
    pub tls: Option<ServerTls>,
    /// More flags, e.g. `--auto-compaction-mode revision`.
    pub flags: Vec<String>,
}

/// TLS for etcd's client port.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that client certificates must chain to (`--trusted-ca-file`).
    pub trusted_ca: PathBuf,
    /// Require a client certificate (`--client-cert-auth`); with etcd
    /// authentication on, its common name is then the user.
    pub client_cert_auth: bool,
}

/// A free TCP port on 127.0.0.1 (the OS picks it; etcd binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary the harness starts: `ESI_ETCD_BINARY`, else `etcd` on
/// the PATH.
pub fn binary() -> String {
    std::env::var("ESI_ETCD_BINARY").unwrap_or_else(|_| "etcd".to_string())
}

impl EtcdProcess {
    /// Starts etcd with a fresh data directory and these extra flags.
    pub async fn start_with_flags(flags: &[&str]) -> Result<Self, EmbeddedError> {
        let tmp = tempfile::Builder::new().prefix("esi-etcd-").tempdir()?;
        let dir = tmp.path().join("etcd");
        let peer_port = free_port()?;
        let mut p = Self::spawn(&MemberSpec {
            name: "esi".into(),
            data_dir: dir.join("member-data"),
            log_path: dir.with_extension("log"),
            client_port: free_port()?,
            peer_port,
            initial_cluster: format!("esi=http://127.0.0.1:{peer_port}"),
            existing: false,
            tls: None,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        })?;
        p._tmp = Some(tmp);
        p.wait_ready(Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Starts etcd with a fresh data directory (data and log both inside a
    /// temporary directory, so nothing is left behind).
    pub async fn start() -> Result<Self, EmbeddedError> {
        Self::start_with_flags(&[]).await
    }

    /// Starts etcd with a fresh data directory (removed on drop), appending
    /// its log to `log` (kept), e.g. the demo's log file.
    pub async fn start_logging_to(log: &Path) -> Result<Self, EmbeddedError> {
        let tmp = tempfile::Builder::new().prefix("esi-etcd-").tempdir()?;
        let peer_port = free_port()?;
        let mut p = Self::spawn(&MemberSpec {
            name: "esi".into(),
            data_dir: tmp.path().join("etcd").join("member-data"),
            log_path: log.to_path_buf(),
            client_port: free_port()?,
            peer_port,
            initial_cluster: format!("esi=http://127.0.0.1:{peer_port}"),
            existing: false,
            tls: None,
            flags: vec![],
        })?;
        p._tmp = Some(tmp);
        p.wait_ready(Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Starts etcd on `data_dir` (kept on drop), e.g. to restart on old data.
    pub async fn start_in(
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
    ) -> Result<Self, EmbeddedError> {
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let p = Self::spawn(&MemberSpec {
            name: "esi".into(),
            data_dir: data_dir.join("member-data"),
            log_path: data_dir.with_extension("log"),
            client_port,
            peer_port,
            initial_cluster: format!("esi={peer_url}"),
            existing: false,
            tls: None,
            flags: vec![],
        })?;
        p.wait_ready(Duration::from_secs(20)).await?;
        Ok(p)
    }

    /// Starts etcd with a fresh data directory, serving clients over `tls`;
    /// `ready_with` is the client side used to see it answer.
    pub async fn start_tls(
        tls: ServerTls,
        ready_with: &esi_reconciler::store::client::TlsFiles,
    ) -> Result<Self, EmbeddedError> {
        let tmp = tempfile::Builder::new().prefix("esi-etcd-").tempdir()?;
        let dir = tmp.path().join("etcd");
        let peer_port = free_port()?;
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut p = Self::spawn(&MemberSpec {
            name: "esi".into(),
            data_dir: dir.join("member-data"),
            log_path: dir.with_extension("log"),
            client_port: free_port()?,
            peer_port,
            initial_cluster: format!("esi={peer_url}"),
            existing: false,
            tls: Some(tls),
            flags: vec![],
        })?;
        p._tmp = Some(tmp);
        p.wait_ready_with(Duration::from_secs(20), Some(ready_with))
            .await?;
        p.tls = p.tls.take().map(|(s, _)| (s, ready_with.clone()));
        Ok(p)
    }

    /// Starts one etcd member as `spec` says, without waiting for it.
    pub fn spawn(spec: &MemberSpec) -> Result<Self, EmbeddedError> {
        if let Some(parent) = spec.data_dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", spec.client_port);
        let peer_url = format!("http://127.0.0.1:{}", spec.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)?;
        let bin = binary();
        let mut cmd = Command::new(&bin);
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes one async-signal-safe system call (prctl).
        unsafe {
            // Dies with its parent, even one that was SIGKILLed (a drill's
            // or test's etcd must never outlive it).
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        if let Some(tls) = &spec.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.trusted_ca);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        let child = cmd
            .arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&spec.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(if spec.existing { "existing" } else { "new" })
            .arg("--log-level")
            .arg("warn")
            .args(&spec.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| EmbeddedError::Spawn {
                binary: bin,
                source,
            })?;
        Ok(Self {
            child: Some(child),
            client_url,
            data_dir: spec.data_dir.clone(),
            log_path: spec.log_path.clone(),
            peer_url,
            tls: spec
                .tls
                .clone()
                .map(|s| (s, esi_reconciler::store::client::TlsFiles::default())),
            flags: spec.flags.clone(),
            _tmp: None,
        })
    }

    /// Polls etcd's status until it answers or the deadline passes.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), EmbeddedError> {
        self.wait_ready_with(within, None).await
    }

    async fn wait_ready_with(
        &self,
        within: Duration,
        tls: Option<&esi_reconciler::store::client::TlsFiles>,
    ) -> Result<(), EmbeddedError> {
        let deadline = esi_reconciler::clock::deadline_in(within).into_std();
        while Instant::now() < deadline {
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            if let Some(tls) = tls {
                opts = opts.with_tls(
                    esi_reconciler::store::client::tls_options(tls)
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                );
            }
            if let Ok(mut c) =
                etcd_client::Client::connect([self.client_url.as_str()], Some(opts)).await
                && c.status().await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(EmbeddedError::NotReady(
            within,
            self.log_path.display().to_string(),
        ))
    }

    /// The etcd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn client_port(&self) -> u16 {
        self.client_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Stops this single-member etcd and starts it again on the same data
    /// and ports: a fresh process, with none of the old one's in-memory
    /// state (etcd 3.4 keeps its read buffer at the size its largest write
    /// burst grew it to, and copies all of it on every read).
    pub async fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill().await;
        let spec = MemberSpec {
            name: "esi".into(),
            data_dir: self.data_dir.clone(),
            log_path: self.log_path.clone(),
            client_port: self.client_port(),
            peer_port: self.peer_port(),
            initial_cluster: format!("esi={}", self.peer_url),
            existing: false,
            tls: self.tls.as_ref().map(|(s, _)| s.clone()),
            flags: self.flags.clone(),
        };
        let tmp = self._tmp.take();
        let tls = self.tls.take();
        *self = Self::spawn(&spec)?;
        self._tmp = tmp;
        self.tls = tls;
        let ready_with = self.tls.as_ref().map(|(_, c)| c.clone());
        self.wait_ready_with(Duration::from_secs(20), ready_with.as_ref())
            .await
    }

    /// Stops etcd (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
