//! The `esi-reconciler` command line.

pub mod args;
pub mod bench;
pub mod chaos;
pub mod config;

pub mod etcd_roles;
pub mod inspect;
pub mod run;
pub mod worker;

use clap::{Parser, Subcommand};
use esi_harness::demo::story as demo;

use esi_reconciler::telemetry::logging::{self, LogFormat};

/// A level-triggered reconciler for ESI: it compares each resource's desired
/// config in etcd with what the heat worker observed, and issues fenced,
/// idempotent jobs until they match.
#[derive(Debug, Parser)]
#[command(name = "esi-reconciler", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "ESI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (or a tracing filter such as `esi_reconciler=debug`); RUST_LOG overrides it.
    #[arg(long, global = true, env = "ESI_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconciler until SIGTERM or SIGINT.
    Run(run::RunArgs),
    /// Run the heat worker: claim ready jobs and drive an engine.
    Worker(worker::WorkerArgs),
    /// Show every resource: desired and observed version, phase, last action, errors.
    Get(inspect::GetArgs),
    /// Show what the reconciler would do next, and why (writes nothing).
    Plan(inspect::PlanArgs),
    /// Write configs the way Gohan does.
    Config(config::ConfigArgs),
    /// Manage heat templates in etcd.
    #[command(subcommand)]
    Templates(config::TemplatesCommand),
    /// Run fault drills against real processes and check that everything converges.
    Chaos(chaos::ChaosArgs),
    /// Measure scale, speed and memory against the limit of a local etcd.
    Bench(bench::BenchArgs),
    /// Print the EsiResource CustomResourceDefinition (YAML).
    Crd,
    /// Print the etcdctl lines creating least-privilege etcd roles and users
    /// for the reconciler and the worker.
    EtcdRoles(etcd_roles::EtcdRolesArgs),
    /// Run the demo on a private etcd: the "Update Loadbalancer Interface" story.
    Demo(demo::DemoArgs),
}

pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let quiet_default = matches!(
        cli.command,
        Command::Get(_)
            | Command::Plan(_)
            | Command::Config(_)
            | Command::Templates(_)
            | Command::Crd
            | Command::EtcdRoles(_)
    );
    let level = if quiet_default && cli.log_level == "info" {
        "warn"
    } else {
        cli.log_level.as_str()
    };
    // The demo installs its own: logs to a file, its story on the terminal.
    if !matches!(cli.command, Command::Demo(_)) {
        logging::init(cli.log_format, level);
    }
    match cli.command {
        Command::Run(a) => run::run(a).await,
        Command::Worker(a) => worker::worker(a).await,
        Command::Get(a) => inspect::get(a).await,
        Command::Plan(a) => inspect::plan(a).await,
        Command::Config(a) => config::config(a).await,
        Command::Templates(c) => config::templates(c).await,
        Command::Demo(a) => demo::demo(a, cli.log_format, level).await,
        Command::Chaos(a) => chaos::chaos(a).await,
        Command::Bench(a) => bench::bench(a).await,
        Command::EtcdRoles(a) => etcd_roles::etcd_roles(a),
        Command::Crd => {
            print!("{}", esi_reconciler::kubernetes::crd::crd_yaml());
            Ok(())
        }
    }
}
