//! `esi-reconciler chaos`: fault drills against real processes. Each drill
//! starts a private etcd, a reconciler and a worker (sim engine, or a real
//! Heat with `--engine heat`) as separate
//! OS processes, loads a scenario, waits for convergence, injects one fault
//! and checks, with deadlines, that every resource converges to its latest
//! config and that the invariants held the whole time.

pub mod cluster;
pub mod drills;
pub mod ledger;
pub mod scenario;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use cluster::{Cluster, ClusterOptions};
use drills::{Ctx, Drill};
use esi_reconciler::esi::Catalog;
use ledger::Ledger;
use scenario::Scenario;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Generated ports (plus their networks and subnets).
    pub ports: usize,
    pub drills: Vec<Drill>,
    /// Deadline for each convergence.
    pub within: Duration,
    /// This binary, to run reconcilers and workers.
    pub binary: PathBuf,
    pub engine: ChaosEngine,
}

/// What the drills' workers drive.
#[derive(Debug, Clone, Default)]
pub enum ChaosEngine {
    /// The simulated engine, in the drill's own etcd.
    #[default]
    Sim,
    /// A real Heat: the worker flags that reach it (`--engine heat …`).
    /// With `per_drill_project`, each drill's stacks go in a project of
    /// their own (`{project}-chaos-{drill}-{ms}`, Heat's no-auth mode), so
    /// no drill meets another's (or an earlier run's) stacks.
    Heat {
        args: Vec<String>,
        project: String,
        per_drill_project: bool,
    },
}

impl ChaosEngine {
    /// Drills that need the sim engine's fault injection.
    /// `engine-fails` injects its faults through the sim engine.
    pub fn supports(&self, drill: Drill) -> bool {
        matches!(self, ChaosEngine::Sim) || drill != Drill::EngineFails
    }

    fn worker_args(&self, drill: Drill) -> Vec<String> {
        match self {
            ChaosEngine::Sim => vec!["--sim-latency-ms".into(), "100".into()],
            ChaosEngine::Heat {
                args,
                project,
                per_drill_project,
            } => {
                let mut a = args.clone();
                a.push("--heat-project".into());
                a.push(if *per_drill_project {
                    format!(
                        "{project}-chaos-{drill}-{}",
                        esi_reconciler::clock::now_ms()
                    )
                } else {
                    project.clone()
                });
                a
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillResult {
    pub drill: Drill,
    pub passed: bool,
    /// From the end of the fault to every resource converged.
    pub converge_ms: Option<u64>,
    /// Jobs issued during the drill (baseline included).
    pub actions: usize,
    pub duplicates: Vec<String>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backoff_timeline: Vec<Value>,
}

fn reconciler_args() -> Vec<String> {
    [
        "--backoff-base-ms",
        "300",
        "--backoff-cap-secs",
        "5",
        "--resync-secs",
        "30",
        "--debounce-ms",
        "5",
        "--member-ttl-secs",
        "3",
    ]
    .map(String::from)
    .to_vec()
}

fn worker_args() -> Vec<String> {
    ["--lease-ttl-secs", "2", "--shutdown-grace-secs", "1"]
        .map(String::from)
        .to_vec()
}

/// Runs one drill from a fresh cluster.
pub async fn run_drill(name: Drill, opts: &ChaosOptions) -> DrillResult {
    let mut result = DrillResult {
        drill: name,
        passed: false,
        converge_ms: None,
        actions: 0,
        duplicates: vec![],
        failures: vec![],
        notes: vec![],
        backoff_timeline: vec![],
    };
    if let Err(e) = drill(name, opts, &mut result).await {
        result.failures.push(format!("{e:#}"));
    }
    result.passed = result.failures.is_empty() && result.duplicates.is_empty();
    result
}

async fn drill(name: Drill, opts: &ChaosOptions, out: &mut DrillResult) -> anyhow::Result<()> {
    let catalog = Arc::new(Catalog::load(None, None)?);
    let setup = drills::setup(name);
    let cluster = Cluster::start(ClusterOptions {
        binary: opts.binary.clone(),
        reconciler_args: reconciler_args(),
        worker_args: worker_args()
            .into_iter()
            .chain(opts.engine.worker_args(name))
            .collect(),
        etcd_members: setup.etcd_members,
    })
    .await?;
    drills::load_templates(&cluster).await?;
    let from = esi_reconciler::store::current_revision(&cluster.client).await?;
    let ledger = Ledger::start(cluster.client.clone(), from);
    let mut c = Ctx {
        cluster,
        ledger,
        scenario: Scenario::generate(opts.ports),
        catalog,
        own: HashSet::new(),
        versions: HashMap::new(),
        corrupt: HashMap::new(),
        invalid: HashSet::new(),
        notes: vec![],
        violations: vec![],
        within: opts.within,
        backoff_timeline: vec![],
        earlier_actions: 0,
    };
    for item in c.scenario.items.clone() {
        c.put_config(&item, false).await?;
    }
    for _ in 0..setup.reconcilers {
        c.cluster.start_reconciler_via(setup.all_via_proxy).await?;
    }
    c.cluster
        .start_worker(setup.all_via_proxy || setup.worker_via_proxy)
        .await?;
    let baseline = c
        .converged()
        .await
        .map_err(|e| anyhow::anyhow!("baseline: {e}"))?;
    c.notes.push(format!(
        "{} resources converged from cold in {} ms",
        c.scenario.items.len(),
        baseline.as_millis()
    ));
    let t0 = Instant::now();
    drills::inject(name, &mut c).await?;
    let injected = t0.elapsed();
    c.converged().await?;
    out.converge_ms = Some((t0.elapsed() - injected.min(t0.elapsed())).as_millis() as u64);
    // Let the ledger catch up with the last writes before judging (a drill
    // may have replaced it: a restored store starts a new history).
    let ledger = c.ledger.clone();
    let now = esi_reconciler::store::current_revision(&c.cluster.client).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.entries().await.last().map(|e| e.rev).unwrap_or(0) < now
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let findings = ledger::check(&ledger.entries().await, &c.own);
    ledger.stop();
    out.failures.extend(drills::after(name, &mut c).await);
    out.actions = findings.actions + c.earlier_actions;
    out.duplicates = findings.duplicates;
    out.failures.extend(findings.violations);
    out.failures.extend(c.violations.clone());
    out.notes.extend(ledger.gaps().await);
    // Corrupt records: reported and untouched.
    for (k, v) in &c.corrupt {
        let now = c.cluster.client.get(k.as_str(), None).await?;
        if now.kvs().first().map(|kv| kv.value()) != Some(v.as_slice()) {
            out.failures.push(format!("corrupt record {k} was changed"));
        }
    }
    if !c.corrupt.is_empty() {
        let reported = reported_invalid(&c.cluster.reconcilers[0].metrics).await;
        if reported < c.corrupt.len() as f64 {
            out.failures.push(format!(
                "only {reported} invalid records reported in the metrics, {} written",
                c.corrupt.len()
            ));
        }
    }
    if name == Drill::EngineFails {
        let changed: Vec<_> = c
            .scenario
            .ports()
            .into_iter()
            .take(3)
            .map(|p| p.r.clone())
            .collect();
        c.backoff_timeline = drills::timeline(&ledger.entries().await, &changed);
        out.failures
            .extend(drills::check_timeline(&c.backoff_timeline, 3));
        out.backoff_timeline = c.backoff_timeline.clone();
    }
    out.notes.extend(c.notes.clone());
    Ok(())
}

/// `esi_reconciler_invalid_records` from a reconciler's metrics (polled:
/// the gauge refreshes every 2 s).
async fn reported_invalid(addr: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut best = 0.0;
    while Instant::now() < deadline {
        best = crate::scrape::scrape(addr, "esi_reconciler_invalid_records")
            .await
            .unwrap_or(0.0);
        if best >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    best
}

/// The table the command prints.
pub fn table(results: &[DrillResult]) -> String {
    let mut out = format!(
        "{:<22} {:<6} {:>11} {:>8} {:>10}  {}\n",
        "DRILL", "RESULT", "CONVERGE", "ACTIONS", "DUPLICATES", "NOTES"
    );
    for r in results {
        let converge = r
            .converge_ms
            .map(|m| format!("{:.2}s", m as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let notes = if r.failures.is_empty() {
            r.notes.join("; ")
        } else {
            r.failures.join("; ")
        };
        out.push_str(&format!(
            "{:<22} {:<6} {:>11} {:>8} {:>10}  {}\n",
            r.drill,
            if r.passed { "pass" } else { "FAIL" },
            converge,
            r.actions,
            r.duplicates.len(),
            notes
        ));
    }
    out
}
