//! `esi-reconciler run`: the reconciler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use esi_reconciler::kubernetes::mirror::{KubeMirror, MirrorConfig};
use esi_reconciler::reconcile::backoff::BackoffPolicy;
use esi_reconciler::reconcile::controller::{Controller, ControllerConfig};
use esi_reconciler::telemetry::Metrics;
use esi_reconciler::telemetry::server::{Health, serve};

use super::args::{CatalogArgs, EtcdArgs, LimitsArgs};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ESI_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MirrorArgs {
    /// Namespace of the EsiResource mirrors (default: the pod's namespace in a
    /// cluster, else `default`). The mirror is on when a kubeconfig or an
    /// in-cluster config is found.
    #[arg(long, env = "ESI_MIRROR_NAMESPACE")]
    pub mirror_namespace: Option<String>,
    /// Do not mirror resources into Kubernetes even if a config is found.
    #[arg(long, env = "ESI_NO_MIRROR")]
    pub no_mirror: bool,
    /// Kubernetes writes per second, at most.
    #[arg(long, env = "ESI_MIRROR_QPS", default_value_t = 50)]
    pub mirror_qps: u32,
}

const IN_CLUSTER_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The Kubernetes mirror, when Kubernetes is configured.
async fn prepare_mirror(
    args: &MirrorArgs,
    catalog: Arc<esi_reconciler::esi::Catalog>,
) -> anyhow::Result<Option<Arc<KubeMirror>>> {
    if args.no_mirror {
        return Ok(None);
    }
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "Kubernetes mirror off: no kubeconfig or in-cluster config");
            return Ok(None);
        }
    };
    let namespace = args
        .mirror_namespace
        .clone()
        .or_else(|| {
            std::fs::read_to_string(IN_CLUSTER_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    let cfg = MirrorConfig {
        namespace: namespace.clone(),
        qps: args.mirror_qps.max(1),
        ..MirrorConfig::default()
    };
    let mirror = KubeMirror::new(client, catalog, cfg);
    if let Err(e) = mirror.check().await {
        // Not fatal: reconciling goes on, and the mirror retries.
        tracing::warn!(error = %e, %namespace, "Kubernetes mirror cannot list EsiResources yet (is the CRD installed?)");
    }
    tracing::info!(%namespace, "mirroring resources into EsiResources");
    Ok(Some(mirror))
}

#[derive(Debug, Clone, Args)]
pub struct TuningArgs {
    /// Reconciles running at once.
    #[arg(long, env = "ESI_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Milliseconds to coalesce a burst of changes to one resource.
    #[arg(long, env = "ESI_DEBOUNCE_MS", default_value_t = 5)]
    pub debounce_ms: u64,
    /// Seconds between full resyncs of every resource.
    #[arg(long, env = "ESI_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,
    /// First retry delay after a failed job, in milliseconds.
    #[arg(long, env = "ESI_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub backoff_base_ms: u64,
    /// Growth factor of the retry delay.
    #[arg(long, env = "ESI_BACKOFF_FACTOR", default_value_t = 2.0)]
    pub backoff_factor: f32,
    /// Largest retry delay, in seconds.
    #[arg(long, env = "ESI_BACKOFF_CAP_SECS", default_value_t = 300)]
    pub backoff_cap_secs: u64,
    /// Disable random jitter on retry delays.
    #[arg(long, env = "ESI_BACKOFF_NO_JITTER")]
    pub backoff_no_jitter: bool,
    /// Keys per page when listing etcd.
    #[arg(long, env = "ESI_PAGE_SIZE", default_value_t = 1000)]
    pub page_size: i64,
    /// After DELETE_COMPLETED, delete the config and the heat stack record
    /// (what Gohan and the Job Manager do; for deployments without Gohan).
    #[arg(long, env = "ESI_PURGE_DELETED")]
    pub purge_deleted: bool,
    /// This replica's id among reconcilers sharing the work (default: the
    /// pod or host name and a random suffix).
    #[arg(long, env = "ESI_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// TTL, in seconds, of the lease behind this replica's membership: the
    /// others take over a dead replica's resources within it.
    #[arg(long, env = "ESI_MEMBER_TTL_SECS", default_value_t = 10)]
    pub member_ttl_secs: u64,
}

impl TuningArgs {
    pub fn config(&self) -> anyhow::Result<ControllerConfig> {
        anyhow::ensure!(
            self.backoff_factor >= 1.0,
            "--backoff-factor must be at least 1"
        );
        anyhow::ensure!(self.page_size > 0, "--page-size must be positive");
        anyhow::ensure!(
            Duration::from_secs(self.backoff_cap_secs)
                <= esi_reconciler::reconcile::backoff::MAX_CAP,
            "--backoff-cap-secs must be at most {} (a day)",
            esi_reconciler::reconcile::backoff::MAX_CAP.as_secs()
        );
        if let Some(id) = &self.replica_id {
            anyhow::ensure!(
                !id.is_empty() && !id.contains('/') && id.len() <= 128,
                "--replica-id must be 1-128 characters without '/'"
            );
        }
        Ok(ControllerConfig {
            concurrency: self.concurrency.max(1),
            debounce: Duration::from_millis(self.debounce_ms),
            resync: Duration::from_secs(self.resync_secs.max(1)),
            backoff: BackoffPolicy {
                base: Duration::from_millis(self.backoff_base_ms),
                factor: self.backoff_factor,
                cap: Duration::from_secs(self.backoff_cap_secs),
                jitter: !self.backoff_no_jitter,
            },
            page_size: self.page_size,
            purge_deleted: self.purge_deleted,
            replica_id: self.replica_id.clone(),
            member_ttl: Duration::from_secs(self.member_ttl_secs.max(2)),
        })
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("signal received");
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    args.limits.install()?;
    let catalog = args.catalog.load()?;
    let cfg = args.tuning.config()?;
    let client = args.etcd.connect_lazily().await?;
    let metrics = Arc::new(Metrics::new().with_store(client.stats()));
    let (controller, mirror_tasks) = match prepare_mirror(&args.mirror, catalog.clone()).await? {
        Some(mirror) => {
            let (controller, updates) =
                Controller::publishing(client, catalog, cfg, metrics.clone());
            let tasks = mirror.start(controller.clone(), updates);
            (controller, tasks)
        }
        None => (
            Controller::new(client, catalog, cfg, metrics.clone()),
            vec![],
        ),
    };
    let m = metrics.clone();
    let health = Health {
        encode: Arc::new(move || m.encode()),
        ready: controller.ready_flag(),
    };
    let server = serve(args.metrics_addr, health).await?;
    tracing::info!(addr = %server.addr, endpoints = ?args.etcd.etcd_endpoints, "reconciler starting; serving /metrics /healthz /readyz");
    controller.run(shutdown_signal()).await;
    for t in mirror_tasks {
        t.abort();
    }
    server.stop().await;
    tracing::info!("stopped");
    Ok(())
}
