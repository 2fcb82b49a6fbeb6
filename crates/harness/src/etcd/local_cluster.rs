//! A local etcd cluster of several members on loopback ports, for the
//! drills and tests that take members down: kill and restart a member,
//! freeze one, find the leader, and restore the whole cluster from a
//! snapshot as an operator would (`etcdctl snapshot restore` per member,
//! then every member started on its restored data).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::embedded::{EmbeddedError, EtcdProcess, MemberSpec, free_port};

/// One member: how to start it, and the process while it runs.
pub struct LocalMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<EtcdProcess>,
}

impl LocalMember {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.pid())
    }
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

pub struct LocalCluster {
    pub members: Vec<LocalMember>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Restores so far (names fresh data directories).
    restores: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("etcdctl snapshot restore failed for {member}: {detail}")]
    Restore { member: String, detail: String },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("the cluster has no leader after {0:?}")]
    NoLeader(Duration),
    #[error("member m{0} did not catch up with the leader within {1:?}")]
    NotCaughtUp(usize, Duration),
}

impl LocalCluster {
    /// Starts `n` members in a temporary directory and waits for a leader.
    pub async fn start(n: usize) -> Result<LocalCluster, ClusterError> {
        let tmp = tempfile::Builder::new()
            .prefix("esi-etcd-cluster-")
            .tempdir()
            .map_err(EmbeddedError::from)?;
        let dir = tmp.path().to_path_buf();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("m{i}");
            members.push(LocalMember {
                data_dir: dir.join(&name).join("data"),
                log_path: dir.join(format!("{name}.log")),
                name,
                client_port: free_port().map_err(EmbeddedError::from)?,
                peer_port: free_port().map_err(EmbeddedError::from)?,
                process: None,
            });
        }
        let mut c = LocalCluster {
            members,
            dir,
            _tmp: Some(tmp),
            restores: 0,
        };
        for i in 0..n {
            c.spawn(i, false)?;
        }
        c.wait_leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, existing: bool) -> Result<(), ClusterError> {
        let initial_cluster = self.initial_cluster();
        let Some(m) = self.members.get_mut(i) else {
            return Ok(());
        };
        let spec = MemberSpec {
            name: m.name.clone(),
            data_dir: m.data_dir.clone(),
            log_path: m.log_path.clone(),
            client_port: m.client_port,
            peer_port: m.peer_port,
            initial_cluster,
            existing,
            tls: None,
            flags: vec![],
        };
        m.process = Some(EtcdProcess::spawn(&spec)?);
        Ok(())
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(LocalMember::client_url).collect()
    }

    /// The index of the member that leads now, asking the running ones.
    pub async fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.is_running()) {
            let Ok(s) = status(&m.client_url()).await else {
                continue;
            };
            if s.leader() == 0 {
                continue;
            }
            for (j, other) in self.members.iter().enumerate() {
                if !other.is_running() {
                    continue;
                }
                if let Ok(o) = status(&other.client_url()).await
                    && o.header().map(|h| h.member_id()) == Some(s.leader())
                {
                    return Some(j);
                }
            }
        }
        None
    }

    /// Waits until the running members agree on a leader.
    pub async fn wait_leader(&self, within: Duration) -> Result<usize, ClusterError> {
        let deadline = esi_reconciler::clock::deadline_in(within).into_std();
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NoLeader(within));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until member `i` answers, follows a leader, and has applied
    /// everything the leader had when this was first asked: a restarted
    /// member that merely listens is not yet one of the quorum.
    pub async fn wait_caught_up(&self, i: usize, within: Duration) -> Result<(), ClusterError> {
        let deadline = esi_reconciler::clock::deadline_in(within).into_std();
        let url = self
            .members
            .get(i)
            .map(LocalMember::client_url)
            .unwrap_or_default();
        let mut target: Option<u64> = None;
        loop {
            if target.is_none()
                && let Some(l) = self.leader().await
                && let Some(m) = self.members.get(l)
                && let Ok(s) = status(&m.client_url()).await
            {
                target = Some(s.raft_index());
            }
            if let Some(t) = target
                && let Ok(s) = status(&url).await
                && s.leader() != 0
                && s.raft_applied_index() >= t
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotCaughtUp(i, within));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs member `i`.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members.get_mut(i).and_then(|m| m.process.take()) {
            p.kill().await;
        }
    }

    /// Starts member `i` again on its data.
    pub async fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i).await;
        self.spawn(i, true)?;
        if let Some(p) = self.members.get(i).and_then(|m| m.process.as_ref()) {
            p.wait_ready(Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to member `i`.
    pub fn signal(&self, i: usize, signal: rustix::process::Signal) {
        if let Some(pid) = self.members.get(i).and_then(LocalMember::pid)
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Saves a snapshot of the store (from a running member) to `path`.
    pub async fn snapshot(&self, path: &Path) -> Result<(), ClusterError> {
        use tokio::io::AsyncWriteExt;
        let m = self
            .members
            .iter()
            .find(|m| m.is_running())
            .ok_or_else(|| ClusterError::Snapshot("no member runs".into()))?;
        let mut client = etcd_client::Client::connect([m.client_url()], None)
            .await
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        let mut stream = client
            .snapshot()
            .await
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        while let Some(part) = stream
            .message()
            .await
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?
        {
            file.write_all(part.blob())
                .await
                .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        }
        file.flush()
            .await
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        Ok(())
    }

    /// Restores every member from `snapshot` as an operator does: stop them
    /// all, `etcdctl snapshot restore` a fresh data directory for each
    /// (same names, peer URLs and cluster token), start them all.
    pub async fn restore(&mut self, snapshot: &Path) -> Result<(), ClusterError> {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
        self.restores = self.restores.wrapping_add(1);
        let initial_cluster = self.initial_cluster();
        let etcdctl = std::env::var("ESI_ETCDCTL_BINARY").unwrap_or_else(|_| "etcdctl".into());
        for m in &mut self.members {
            let data = self
                .dir
                .join(&m.name)
                .join(format!("restored-{}", self.restores));
            let out = tokio::process::Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .arg("snapshot")
                .arg("restore")
                .arg(snapshot)
                .arg("--name")
                .arg(&m.name)
                .arg("--data-dir")
                .arg(&data)
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-advertise-peer-urls")
                .arg(m.peer_url())
                .output()
                .await
                .map_err(|e| ClusterError::Restore {
                    member: m.name.clone(),
                    detail: format!(
                        "cannot run {etcdctl}: {e} (apt-get install etcd-client, or set ESI_ETCDCTL_BINARY)"
                    ),
                })?;
            if !out.status.success() {
                return Err(ClusterError::Restore {
                    member: m.name.clone(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            m.data_dir = data;
        }
        for i in 0..self.members.len() {
            self.spawn(i, false)?;
        }
        self.wait_leader(Duration::from_secs(30)).await?;
        Ok(())
    }
}

async fn status(url: &str) -> Result<etcd_client::StatusResponse, etcd_client::Error> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut c = etcd_client::Client::connect([url], Some(opts)).await?;
    c.status().await
}
