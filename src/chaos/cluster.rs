//! A cluster of real processes for the drills: etcd, reconcilers and
//! workers (this binary, re-executed), and a loopback TCP proxy that can cut
//! a worker off from etcd.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::store::embedded::{EtcdProcess, free_port};
use crate::store::{EtcdOptions, connect_checked};

/// Settings every process of a drill gets.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub binary: PathBuf,
    /// Extra `run` flags.
    pub reconciler_args: Vec<String>,
    /// Extra `worker` flags.
    pub worker_args: Vec<String>,
}

/// One of our processes.
pub struct Member {
    pub child: Child,
    pub metrics: String,
    /// Its stderr.
    pub log: PathBuf,
    pub role: String,
}

impl Member {
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe { kill(pid as i32, sig) };
        }
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

pub struct Cluster {
    pub etcd: EtcdProcess,
    pub client: Client,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    pub opts: ClusterOptions,
    pub reconcilers: Vec<Member>,
    pub workers: Vec<Member>,
    pub proxy: Proxy,
    /// Members started so far (names their logs).
    spawned: usize,
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let data_dir = tempfile::Builder::new().prefix("esi-chaos-").tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd =
            EtcdProcess::start_in(&data_dir.path().join("etcd"), client_port, peer_port).await?;
        let client =
            connect_checked(&EtcdOptions::with_endpoints(vec![etcd.client_url.clone()])).await?;
        let proxy = Proxy::start(client_port).await?;
        Ok(Cluster {
            etcd,
            client,
            data_dir,
            client_port,
            peer_port,
            opts,
            reconcilers: vec![],
            workers: vec![],
            proxy,
            spawned: 0,
        })
    }

    /// Starts one of our processes and waits until it is ready (`/readyz`).
    /// Its stderr goes to a log in the cluster's directory, so a member
    /// that dies is reported with its last words. The metrics port is
    /// picked free here and bound by the child a moment later; another
    /// socket can take it in between, so a child that exits before it
    /// serves is started again on another port (three tries).
    async fn spawn(&mut self, role: &str, args: Vec<String>) -> anyhow::Result<Member> {
        let mut last = String::new();
        for _ in 0..3 {
            self.spawned += 1;
            let log = self
                .data_dir
                .path()
                .join(format!("{role}-{}.log", self.spawned));
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new(&self.opts.binary)
                .args(&args)
                .arg("--metrics-addr")
                .arg(&addr)
                .env("ESI_LOG_LEVEL", "warn")
                .env("ESI_NO_MIRROR", "true")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .kill_on_drop(true)
                .spawn()?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait()? {
                    last = format!("{role} exited ({status}): {}", tail(&log));
                    break;
                }
                let ready = crate::telemetry::server::fetch(&addr, "/readyz").await;
                if matches!(ready, Some((200, _))) {
                    return Ok(Member {
                        child,
                        metrics: addr,
                        log,
                        role: role.to_string(),
                    });
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{role} was not ready on {addr} within 30 s: {}",
                    tail(&log)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::bail!("{last}")
    }

    /// Members that have exited, with the end of their logs (for a
    /// failure message: a drill that waits on a dead process says so).
    pub fn dead_members(&mut self) -> Vec<String> {
        self.reconcilers
            .iter_mut()
            .chain(self.workers.iter_mut())
            .filter_map(|m| {
                let status = m.child.try_wait().ok().flatten()?;
                Some(format!("{} exited ({status}): {}", m.role, tail(&m.log)))
            })
            .collect()
    }

    pub async fn start_reconciler(&mut self) -> anyhow::Result<()> {
        let mut args = vec![
            "run".to_string(),
            "--etcd-endpoints".into(),
            self.etcd.client_url.clone(),
        ];
        args.extend(self.opts.reconciler_args.clone());
        let m = self.spawn("reconciler", args).await?;
        self.reconcilers.push(m);
        Ok(())
    }

    /// A worker; `through_proxy` connects it via the cuttable proxy.
    pub async fn start_worker(&mut self, through_proxy: bool) -> anyhow::Result<()> {
        let url = if through_proxy {
            self.proxy.url()
        } else {
            self.etcd.client_url.clone()
        };
        let mut args = vec!["worker".to_string(), "--etcd-endpoints".into(), url];
        args.extend(self.opts.worker_args.clone());
        let m = self.spawn("worker", args).await?;
        self.workers.push(m);
        Ok(())
    }

    /// Stops etcd and starts it again on the same data and ports.
    pub async fn restart_etcd(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.etcd.kill().await;
        tokio::time::sleep(down_for).await;
        self.etcd = EtcdProcess::start_in(
            &self.data_dir.path().join("etcd"),
            self.client_port,
            self.peer_port,
        )
        .await?;
        Ok(())
    }
}

/// The last lines of a member's log, on one line.
fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return "(no output)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A loopback TCP proxy in front of etcd that can cut every connection.
pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (u, g) = (up.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            up,
            generation,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
