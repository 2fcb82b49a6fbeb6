//! `esi-reconciler bench`: scale, speed and memory against etcd's own limit.

use std::path::PathBuf;

use clap::Args;

use esi_harness::bench::{self, BenchOptions};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Generated ports (each with its share of networks and subnets).
    #[arg(long, default_value_t = 10_000)]
    pub scale: usize,
    /// Config changes in the steady-state phase.
    #[arg(long, default_value_t = 1000)]
    pub changes: usize,
    /// Config changes per second in the steady-state phase.
    #[arg(long, default_value_t = 50.0)]
    pub change_rate: f64,
    /// Seconds of idleness to measure CPU over.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Client concurrency for the etcd limit.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Reconciler replicas sharing the work.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The `esi-reconciler` binary whose reconciler and worker are measured
    /// (default: this one). With another commit's build, the same harness
    /// measures both side by side.
    #[arg(long)]
    pub product: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-report.json")]
    pub report: PathBuf,
    /// Where to write the plot of the cold start (PNG).
    #[arg(long, default_value = "bench-convergence.png")]
    pub plot: PathBuf,
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let opts = BenchOptions {
        scale: args.scale,
        changes: args.changes,
        change_rate: args.change_rate,
        idle_secs: args.idle_secs,
        concurrency: args.concurrency,
        binary: match args.product {
            Some(p) => p,
            None => std::env::current_exe()?,
        },
        replicas: args.replicas,
    };
    let report = bench::run(&opts).await?;
    print!("{}", bench::table(&report));
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    eprintln!("report written to {}", args.report.display());
    let png = bench::convergence_png(&report)?;
    std::fs::write(&args.plot, png)?;
    eprintln!("plot written to {}", args.plot.display());
    Ok(())
}
