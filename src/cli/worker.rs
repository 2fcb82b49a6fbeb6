//! `esi-reconciler worker`: the heat worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use esi_reconciler::engine::Engine;
use esi_reconciler::engine::heat::{HeatAuth, HeatEngine, HeatOptions, wire};
use esi_reconciler::esi::Catalog;
use esi_reconciler::store::Etcd;

use esi_reconciler::engine::sim::{SimEngine, SimOptions};
use esi_reconciler::telemetry::metrics::WorkerMetrics;
use esi_reconciler::telemetry::server::{Health, serve};
use esi_reconciler::worker::job::JobSettings;
use esi_reconciler::worker::{Worker, WorkerConfig};

use super::args::{CatalogArgs, EtcdArgs, LimitsArgs};
use super::run::shutdown_signal;
use esi_reconciler::limits::Limits;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineKind {
    /// The embedded simulated orchestrator (stacks kept in etcd).
    Sim,
    /// OpenStack Heat's orchestration API v1.
    Heat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeatAuthKind {
    /// Keystone v3: `OS_CLOUD` with a clouds.yaml entry, or the `OS_*`
    /// variables (password or application credential).
    Keystone,
    /// A Heat without Keystone (its no-auth pipeline): the project is sent
    /// as `X-Auth-Project`.
    None,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// The orchestration engine.
    #[arg(long, env = "ESI_ENGINE", value_enum, default_value_t = EngineKind::Sim)]
    pub engine: EngineKind,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub heat: HeatArgs,
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// The job handler this worker serves.
    #[arg(long, env = "ESI_HANDLER", default_value = "heat_worker")]
    pub handler: String,
    /// Jobs run at once.
    #[arg(long, env = "ESI_WORKER_SLOTS", default_value_t = 8)]
    pub slots: usize,
    /// TTL of the lease behind every claim, in seconds.
    #[arg(long, env = "ESI_LEASE_TTL_SECS", default_value_t = 60)]
    pub lease_ttl_secs: u64,
    /// Seconds running jobs may finish after SIGTERM before they are released.
    #[arg(long, env = "ESI_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Cap on every job's timeout in seconds (default: the job's heat_timeout).
    #[arg(long, env = "ESI_JOB_TIMEOUT_CAP_SECS")]
    pub job_timeout_cap_secs: Option<u64>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ESI_WORKER_METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Sim engine: milliseconds each stack operation stays in progress.
    #[arg(long, env = "ESI_SIM_LATENCY_MS", default_value_t = 200)]
    pub sim_latency_ms: u64,
    /// Sim engine: share of operations that fail (0.0-1.0).
    #[arg(long, env = "ESI_SIM_FAILURE_RATE", default_value_t = 0.0)]
    pub sim_failure_rate: f64,
    /// Sim engine: the first K operations of every stack fail.
    #[arg(long, env = "ESI_SIM_FAIL_FIRST", default_value_t = 0)]
    pub sim_fail_first: u32,
    /// Sim engine: fail stacks whose name (`{type}_{id}`) contains this, or
    /// that have a template resource of this name (repeatable).
    #[arg(long, env = "ESI_SIM_FAIL", value_delimiter = ',')]
    pub sim_fail: Vec<String>,
    /// Sim engine: never finish operations on matching stacks (repeatable).
    #[arg(long, env = "ESI_SIM_HANG", value_delimiter = ',')]
    pub sim_hang: Vec<String>,
    /// Sim engine: panic on operations on matching stacks (repeatable), as
    /// an engine bug would; the job fails and the worker goes on.
    #[arg(long, env = "ESI_SIM_PANIC", value_delimiter = ',')]
    pub sim_panic: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct HeatArgs {
    /// Heat engine: the orchestration endpoint (`http://heat:8004/v1/PROJECT`).
    /// With Keystone, taken from the catalog when absent.
    #[arg(long, env = "ESI_HEAT_URL")]
    pub heat_url: Option<String>,
    /// Heat engine: how to authenticate.
    #[arg(long, env = "ESI_HEAT_AUTH", value_enum, default_value_t = HeatAuthKind::Keystone)]
    pub heat_auth: HeatAuthKind,
    /// Heat engine, `--heat-auth none`: the project sent as `X-Auth-Project`.
    #[arg(long, env = "ESI_HEAT_PROJECT", default_value = "admin")]
    pub heat_project: String,
    /// Heat engine: an environment file (YAML or JSON) sent with every
    /// create and update, e.g. a `resource_registry` for resource types
    /// the cloud lacks. Template files it names are sent as `files`.
    #[arg(long, env = "ESI_HEAT_ENVIRONMENT")]
    pub heat_environment: Option<PathBuf>,
    /// Heat engine: seconds one request to Heat may take; a request that
    /// times out is retried (5 times, with backoff) before the call fails.
    #[arg(long, env = "ESI_HEAT_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heat_request_timeout_secs: u64,
}

impl HeatArgs {
    /// The same settings as `worker` flags (but `--heat-project`, which the
    /// caller chooses), for the workers a command starts (the chaos drills).
    pub fn worker_args(&self) -> Vec<String> {
        let mut a = vec!["--engine".to_string(), "heat".into(), "--heat-auth".into()];
        a.push(
            match self.heat_auth {
                HeatAuthKind::Keystone => "keystone",
                HeatAuthKind::None => "none",
            }
            .into(),
        );
        if let Some(u) = &self.heat_url {
            a.extend(["--heat-url".to_string(), u.clone()]);
        }
        if let Some(e) = &self.heat_environment {
            a.extend(["--heat-environment".to_string(), e.display().to_string()]);
        }
        a.extend([
            "--heat-request-timeout-secs".to_string(),
            self.heat_request_timeout_secs.to_string(),
        ]);
        a
    }

    pub fn options(&self, limits: Limits) -> anyhow::Result<HeatOptions> {
        let auth = match self.heat_auth {
            HeatAuthKind::None => HeatAuth::None {
                project: self.heat_project.clone(),
            },
            HeatAuthKind::Keystone => HeatAuth::keystone_from_environment().map_err(|e| {
                anyhow::anyhow!(
                    "Keystone credentials (OS_CLOUD and clouds.yaml, or OS_AUTH_URL and the other OS_* variables): {e} (or use --heat-auth none for a Heat without Keystone)"
                )
            })?,
        };
        let mut opts = HeatOptions::new(self.heat_url.clone(), auth);
        opts.request_timeout = Duration::from_secs(self.heat_request_timeout_secs);
        opts.max_answer_bytes = limits.record_bytes;
        if let Some(path) = &self.heat_environment {
            let (environment, files) = load_environment(path, &limits)?;
            opts.environment = environment;
            opts.files = files;
        }
        Ok(opts)
    }
}

/// Reads a Heat environment file and the template files it names, as
/// `python-heatclient` does for `-e`.
fn load_environment(
    path: &Path,
    limits: &Limits,
) -> anyhow::Result<(Map<String, Value>, Map<String, Value>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --heat-environment {}", path.display()))?;
    let doc = esi_reconciler::engine::yaml::load(&text, limits)
        .with_context(|| format!("--heat-environment {} is not YAML", path.display()))?;
    let environment = match doc {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => anyhow::bail!("--heat-environment {} is not a mapping", path.display()),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = Map::new();
    for name in wire::registry_files(&environment) {
        let file = dir.join(&name);
        let body = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "--heat-environment {} names template {name}, read as {}",
                path.display(),
                file.display()
            )
        })?;
        files.insert(name, Value::String(body));
    }
    Ok((environment, files))
}

impl SimArgs {
    pub fn options(&self, limits: Limits) -> anyhow::Result<SimOptions> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sim_failure_rate),
            "--sim-failure-rate must be between 0 and 1"
        );
        Ok(SimOptions {
            limits,
            latency: Duration::from_millis(self.sim_latency_ms),
            failure_rate: self.sim_failure_rate,
            fail_first: self.sim_fail_first,
            fail_matching: self.sim_fail.clone(),
            hang_matching: self.sim_hang.clone(),
            panic_matching: self.sim_panic.clone(),
        })
    }
}

impl WorkerArgs {
    pub fn config(&self) -> anyhow::Result<WorkerConfig> {
        anyhow::ensure!(
            self.lease_ttl_secs >= 2,
            "--lease-ttl-secs must be at least 2"
        );
        Ok(WorkerConfig {
            handler: self.handler.clone(),
            slots: self.slots.max(1),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            job: JobSettings {
                timeout_cap: self.job_timeout_cap_secs.map(Duration::from_secs),
                poll_min: Duration::from_millis(50),
                poll_max: Duration::from_secs(2),
                limits: self.limits.install()?,
            },
        })
    }
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let catalog = args.catalog.load()?;
    let client = args.etcd.connect_lazily().await?;
    match args.engine {
        EngineKind::Sim => {
            let engine = SimEngine::new(client.clone(), args.sim.options(cfg.job.limits)?);
            serve_worker(&args, cfg, catalog, client, engine).await
        }
        EngineKind::Heat => {
            let engine = HeatEngine::new(args.heat.options(cfg.job.limits)?)
                .map_err(|e| anyhow::anyhow!("Heat engine: {e}"))?;
            serve_worker(&args, cfg, catalog, client, engine).await
        }
    }
}

async fn serve_worker<E: Engine>(
    args: &WorkerArgs,
    cfg: WorkerConfig,
    catalog: Arc<Catalog>,
    client: Etcd,
    engine: E,
) -> anyhow::Result<()> {
    let metrics = Arc::new(WorkerMetrics::new().with_store(client.stats()));
    let worker = Worker::new(client, catalog, Arc::new(engine), cfg, metrics.clone());
    let health = Health {
        encode: Arc::new(move || metrics.encode()),
        ready: worker.ready_flag(),
    };
    let server = serve(args.metrics_addr, health).await?;
    tracing::info!(addr = %server.addr, engine = ?args.engine, slots = args.slots, "worker starting; serving /metrics /healthz /readyz");
    worker.run(shutdown_signal()).await;
    server.stop().await;
    Ok(())
}
