//! `esi-reconciler chaos`: the fault drills.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use esi_harness::chaos::{self, ChaosEngine, ChaosOptions, drills::Drill};

use super::worker::{EngineKind, HeatArgs, HeatAuthKind};

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Generated ports (with their networks and subnets), beside the
    /// load-balancer story's resources.
    #[arg(long, default_value_t = 200)]
    pub ports: usize,
    /// Drills to run, comma-separated (default: all that the engine supports).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub drills: Vec<Drill>,
    /// Deadline, in seconds, for each convergence.
    #[arg(long, default_value_t = 120)]
    pub within_secs: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "chaos-report.json")]
    pub report: PathBuf,
    /// What the workers drive: the sim engine, or a real Heat reached with
    /// the --heat-* flags (every drill but engine-fails).
    #[arg(long, value_enum, default_value_t = EngineKind::Sim)]
    pub engine: EngineKind,
    #[command(flatten)]
    pub heat: HeatArgs,
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let engine = match args.engine {
        EngineKind::Sim => ChaosEngine::Sim,
        EngineKind::Heat => ChaosEngine::Heat {
            args: args.heat.worker_args(),
            project: args.heat.heat_project.clone(),
            per_drill_project: args.heat.heat_auth == HeatAuthKind::None,
        },
    };
    let drills: Vec<Drill> = if args.drills.is_empty() {
        Drill::ALL
            .into_iter()
            .filter(|d| engine.supports(*d))
            .collect()
    } else {
        args.drills.clone()
    };
    if let Some(d) = drills.iter().find(|d| !engine.supports(**d)) {
        anyhow::bail!(
            "drill {d} injects faults through the sim engine; it cannot run with --engine heat"
        );
    }
    let opts = ChaosOptions {
        ports: args.ports,
        drills: drills.clone(),
        within: Duration::from_secs(args.within_secs),
        binary: std::env::current_exe()?,
        engine,
    };
    let mut results = vec![];
    for d in &drills {
        eprint!("drill {d:<22} ");
        let r = chaos::run_drill(*d, &opts).await;
        eprintln!("{}", if r.passed { "pass" } else { "FAIL" });
        results.push(r);
    }
    print!("{}", chaos::table(&results));
    let report = serde_json::json!({"ports": args.ports, "drills": results});
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    eprintln!("report written to {}", args.report.display());
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.drill.name())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} drill(s) failed: {}",
        failed.len(),
        failed.join(", ")
    );
    Ok(())
}
