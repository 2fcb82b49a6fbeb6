//! A cluster of real processes for the drills: etcd, reconcilers and
//! workers (this binary, re-executed), and a loopback TCP proxy that can cut
//! a worker off from etcd.

use std::path::PathBuf;
use std::time::Duration;

use esi_reconciler::store::Etcd;
use tokio::sync::watch;

use crate::etcd::embedded::free_port;
use crate::etcd::local_cluster::LocalCluster;
use crate::process::{Launch, Launched, Stderr};
use esi_reconciler::store::{EtcdOptions, connect_checked};

/// Settings every process of a drill gets.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub binary: PathBuf,
    /// Extra `run` flags.
    pub reconciler_args: Vec<String>,
    /// Extra `worker` flags.
    pub worker_args: Vec<String>,
    /// etcd members (1, or 3 for the drills that take members down).
    pub etcd_members: usize,
}

/// One of our processes.
pub struct Member {
    pub process: Launched,
    pub metrics: String,
    pub role: String,
}

impl Member {
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }
    pub fn signal(&self, sig: Signal) {
        self.process.signal(sig);
    }
}

pub use crate::process::{Signal, signal};

pub struct Cluster {
    pub etcd: LocalCluster,
    pub client: Etcd,
    /// Our processes' logs.
    logs: tempfile::TempDir,
    pub opts: ClusterOptions,
    pub reconcilers: Vec<Member>,
    pub workers: Vec<Member>,
    /// In front of etcd member 0: cuts or partitions whoever uses it.
    pub proxy: Proxy,
    /// Members started so far (names their logs).
    spawned: usize,
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let logs = tempfile::Builder::new().prefix("esi-chaos-").tempdir()?;
        let etcd = LocalCluster::start(opts.etcd_members.max(1)).await?;
        let client = connect_checked(&EtcdOptions::with_endpoints(etcd.endpoints())).await?;
        let proxy = Proxy::start(etcd.members[0].client_port).await?;
        Ok(Cluster {
            etcd,
            client,
            logs,
            opts,
            reconcilers: vec![],
            workers: vec![],
            proxy,
            spawned: 0,
        })
    }

    /// The `--etcd-endpoints` our processes get: every member, member 0
    /// through the proxy when `through_proxy`.
    pub fn endpoints(&self, through_proxy: bool) -> String {
        let mut eps = self.etcd.endpoints();
        if through_proxy && let Some(first) = eps.first_mut() {
            *first = self.proxy.url();
        }
        eps.join(",")
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
                .logs
                .path()
                .join(format!("{role}-{}.log", self.spawned));
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let mut process = Launch::new(&self.opts.binary)
                .args(&args)
                .args(["--metrics-addr", addr.as_str()])
                .stderr(Stderr::File(log))
                .spawn()?;
            match process.wait_ready(&addr, Duration::from_secs(30)).await {
                Ok(()) => {
                    return Ok(Member {
                        process,
                        metrics: addr,
                        role: role.to_string(),
                    });
                }
                // Exited: maybe its port was taken; try another.
                Err(why) if process.exited().is_some() => last = format!("{role} {why}"),
                Err(why) => anyhow::bail!("{role} {why}"),
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
            .filter_map(|m| Some(format!("{} {}", m.role, m.process.exited()?)))
            .collect()
    }

    pub async fn start_reconciler(&mut self) -> anyhow::Result<()> {
        self.start_reconciler_via(false).await
    }

    /// A reconciler; `through_proxy` reaches member 0 via the proxy.
    pub async fn start_reconciler_via(&mut self, through_proxy: bool) -> anyhow::Result<()> {
        let mut args = vec![
            "run".to_string(),
            "--etcd-endpoints".into(),
            self.endpoints(through_proxy),
        ];
        args.extend(self.opts.reconciler_args.clone());
        let m = self.spawn("reconciler", args).await?;
        self.reconcilers.push(m);
        Ok(())
    }

    /// A worker; `through_proxy` reaches member 0 via the proxy (with one
    /// member: all of etcd).
    pub async fn start_worker(&mut self, through_proxy: bool) -> anyhow::Result<()> {
        let mut args = vec![
            "worker".to_string(),
            "--etcd-endpoints".into(),
            self.endpoints(through_proxy),
        ];
        args.extend(self.opts.worker_args.clone());
        let m = self.spawn("worker", args).await?;
        self.workers.push(m);
        Ok(())
    }

    /// Stops every etcd member and starts them again on the same data.
    pub async fn restart_etcd(&mut self, down_for: Duration) -> anyhow::Result<()> {
        let n = self.etcd.members.len();
        for i in 0..n {
            self.etcd.kill(i).await;
        }
        tokio::time::sleep(down_for).await;
        for i in 0..n {
            self.etcd.restart(i).await?;
        }
        Ok(())
    }
}

/// A TCP proxy in front of etcd (or any loopback server) that can cut every
/// connection.
pub struct Proxy {
    listen: std::net::IpAddr,
    port: u16,
    mode: watch::Sender<ProxyMode>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Up,
    /// Closes every connection and refuses new ones (a crashed host).
    Cut,
    /// Keeps connections open and accepts new ones, but nothing passes (a
    /// network partition: the other side just stops answering).
    Blackhole,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to `upstream_port` there.
    pub async fn start(upstream_port: u16) -> std::io::Result<Proxy> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), upstream_port).await
    }

    /// A proxy listening on `listen` (a free port) to `upstream_port` on
    /// 127.0.0.1: e.g. where a test's pods reach the host.
    pub async fn start_on(listen: std::net::IpAddr, upstream_port: u16) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind((listen, 0)).await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(ProxyMode::Up);
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = m.subscribe();
                let now = *rx.borrow_and_update();
                tokio::spawn(async move {
                    match now {
                        ProxyMode::Cut => return,
                        // Held open, silent, until the partition heals.
                        ProxyMode::Blackhole => {
                            let _ = rx.wait_for(|m| *m != ProxyMode::Blackhole).await;
                            return;
                        }
                        ProxyMode::Up => {}
                    }
                    let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let changed = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => None,
                        r = rx.wait_for(|m| *m != ProxyMode::Up) => r.map(|m| *m).ok(),
                    };
                    if changed == Some(ProxyMode::Blackhole) {
                        let _ = rx.wait_for(|m| *m != ProxyMode::Blackhole).await;
                    }
                });
            }
        });
        Ok(Proxy {
            listen,
            port,
            mode,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!(
            "http://{}",
            std::net::SocketAddr::new(self.listen, self.port)
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    pub fn blackhole(&self) {
        self.mode.send_replace(ProxyMode::Blackhole);
    }

    pub fn restore(&self) {
        self.mode.send_replace(ProxyMode::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
