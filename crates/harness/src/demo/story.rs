//! `esi-reconciler demo`: the "Update Loadbalancer Interface" story on a
//! private etcd, with the reconciler and the heat worker (sim engine) in one
//! process, told step by step with live progress from an etcd watch.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use esi_reconciler::store::Change;
use esi_reconciler::store::Etcd;
use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, watch};

use crate::converge;
use crate::demo::data as demo;
use crate::etcd::embedded::EtcdProcess;
use esi_reconciler::engine::sim::{SimEngine, SimOptions};
use esi_reconciler::esi::Catalog;
use esi_reconciler::esi::keys::{EsiKey, JobSlot, ResourceRef};
use esi_reconciler::gohan;
use esi_reconciler::reconcile::controller::{Controller, ControllerConfig};
use esi_reconciler::store::{EtcdOptions, connect_checked};
use esi_reconciler::telemetry::Metrics;
use esi_reconciler::telemetry::logging::{self, LogFormat};
use esi_reconciler::telemetry::metrics::WorkerMetrics;
use esi_reconciler::worker::{Worker, WorkerConfig};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this etcd instead of starting a private one (comma-separated endpoints).
    #[arg(long, env = "ESI_DEMO_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Milliseconds each simulated stack operation takes.
    #[arg(long, default_value_t = 300)]
    pub latency_ms: u64,
    /// Give up on a step after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Also show the reconciler's and the worker's logs on stderr. They
    /// always go to the log file the demo names (with etcd's).
    #[arg(short, long)]
    pub verbose: bool,
}

/// What the progress watcher keeps for the final printout.
#[derive(Default)]
struct Captured {
    /// The port's `logical_delete` job, as issued (point 2).
    delete_job: Option<Value>,
    /// The port's last job state with results (point 4).
    job_state: Option<Value>,
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

/// Prints job and state changes as they happen, and captures the records
/// the seed shows at points (2) and (4).
async fn progress(
    client: Etcd,
    from: i64,
    start: Instant,
    captured: Arc<Mutex<Captured>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The history after `from` of the jobs, worker records and `/state`.
    let span = MirrorOptions {
        start: "/esi-worker/".into(),
        end: "/state0".into(),
        ..MirrorOptions::prefix("/esi-worker/")
    };
    let mut stream = mirror::stream(client, span.after(from));
    let port = ResourceRef::new("ports", demo::PORT_ID);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stop.changed() => return Ok(()),
        };
        let Some(ev) = ev else { return Ok(()) };
        let MirrorEvent::Changes { changes, .. } = ev else {
            continue;
        };
        for change in changes {
            let (key, value, put) = match &change {
                Change::Put(kv) => (kv.key.as_str(), kv.value.as_slice(), true),
                Change::Delete { key, .. } => (key.as_str(), &[][..], false),
            };
            let t = start.elapsed().as_secs_f64();
            match EsiKey::parse(key) {
                Ok(Some(EsiKey::Job(slot, id))) => {
                    if slot == JobSlot::All
                        && put
                        && id.resource_id == demo::PORT_ID
                        && id.action.as_str() == "logical_delete"
                    {
                        captured.lock().await.delete_job = serde_json::from_slice(value).ok();
                    }
                    let what = match (slot, put) {
                        (JobSlot::All, true) => "issued",
                        (JobSlot::Waiting, true) => "waiting for its dependencies",
                        (JobSlot::Ready, true) => "ready",
                        (JobSlot::Working, true) => "claimed by the worker",
                        (JobSlot::Finished, true) => "finished",
                        (JobSlot::All, false) => "done (removed by the reconciler)",
                        _ => continue,
                    };
                    println!(
                        "  +{t:5.2}s  job    {:<14} {:<8} {:<8} v{}  {what}",
                        id.action,
                        id.resource_type,
                        short(&id.resource_id),
                        id.version
                    );
                }
                Ok(Some(EsiKey::State(r))) if put => {
                    let v: Value = serde_json::from_slice(value).unwrap_or_default();
                    let err = v["error"]
                        .as_str()
                        .filter(|e| !e.is_empty())
                        .map(|e| format!("  error: {e}"))
                        .unwrap_or_default();
                    println!(
                        "  +{t:5.2}s  state  {:<14} {:<8} {:<8} v{}  {}{err}",
                        "",
                        r.plural.trim_end_matches('s'),
                        short(&r.id),
                        v["version"],
                        v["state"]["worker_state"].as_str().unwrap_or("?")
                    );
                }
                Ok(Some(EsiKey::JobState(r))) if put && r == port => {
                    let v: Value = serde_json::from_slice(value).unwrap_or_default();
                    if v.get("orchestration_state").is_some() {
                        captured.lock().await.job_state = Some(v);
                    }
                }
                _ => {}
            }
        }
    }
}

async fn apply(client: &Etcd, r: &ResourceRef, body: Map<String, Value>) -> anyhow::Result<()> {
    let w = gohan::apply(client, &r.config_key(), body, false).await?;
    println!("    Gohan: {}/{} {w}", r.plural, short(&r.id));
    Ok(())
}

fn print_record(label: &str, key: &str, value: Option<&Value>) -> anyhow::Result<()> {
    println!("\n({label}) {key}");
    match value {
        Some(v) => println!("{}", serde_json::to_string_pretty(v)?),
        None => println!("  (absent)"),
    }
    Ok(())
}

async fn get_json(client: &Etcd, key: &str) -> anyhow::Result<Option<Value>> {
    let resp = client.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// Runs the demo. Only the story goes to the terminal: the reconciler's,
/// the worker's and etcd's logs go to a file (`$TMPDIR/esi-demo-*.log`,
/// kept) named at the start, at the end and in the error if it fails;
/// `--verbose` also shows the first two on stderr.
pub async fn demo(args: DemoArgs, log_format: LogFormat, log_level: &str) -> anyhow::Result<()> {
    let (file, log) = tempfile::Builder::new()
        .prefix("esi-demo-")
        .suffix(".log")
        .append(true)
        .tempfile()
        .and_then(|f| f.keep().map_err(std::io::Error::from))
        .context("creating the demo's log file")?;
    logging::init_to_file(log_format, log_level, file, args.verbose);
    let whose = if args.etcd_endpoints.is_some() {
        "the reconciler and the worker"
    } else {
        "the reconciler, the worker and etcd"
    };
    println!("esi-reconciler demo: Update Loadbalancer Interface");
    println!("(logs of {whose}: {})", log.display());
    match story(args, &log).await {
        Ok(()) => {
            println!("\nLogs of {whose}: {}", log.display());
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "the demo failed");
            Err(e.context(format!(
                "the demo failed (logs of {whose}: {})",
                log.display()
            )))
        }
    }
}

async fn story(args: DemoArgs, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let _etcd;
    let endpoints = match args.etcd_endpoints {
        Some(e) => e,
        None => {
            step(1, "starting a private etcd");
            let p = EtcdProcess::start_logging_to(log)
                .await
                .context("starting etcd for the demo")?;
            println!(
                "    etcd at {} (data in {})",
                p.client_url,
                p.data_dir.display()
            );
            let url = p.client_url.clone();
            _etcd = p;
            vec![url]
        }
    };
    let client = connect_checked(&EtcdOptions::with_endpoints(endpoints)).await?;
    let catalog = Arc::new(Catalog::load(None, None)?);
    let within = Duration::from_secs(args.timeout_secs);

    step(2, "Gohan loads the heat templates");
    for (id, w) in demo::load_templates(&client).await? {
        println!("    heat_templates/{id}: {w}");
    }

    step(
        3,
        "starting the reconciler and the heat worker (simulated engine)",
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let controller = Controller::new(
        client.clone(),
        catalog.clone(),
        ControllerConfig::default(),
        Arc::new(Metrics::new()),
    );
    let reconciler = tokio::spawn(controller.run(stopped(stop_rx.clone())));
    let engine = Arc::new(SimEngine::new(
        client.clone(),
        SimOptions {
            latency: Duration::from_millis(args.latency_ms),
            ..SimOptions::default()
        },
    ));
    let cfg = WorkerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    };
    let worker = tokio::spawn(
        Worker::new(
            client.clone(),
            catalog.clone(),
            engine,
            cfg,
            Arc::new(WorkerMetrics::new()),
        )
        .run(stopped(stop_rx.clone())),
    );
    let from = esi_reconciler::store::current_revision(&client).await?;
    let captured = Arc::new(Mutex::new(Captured::default()));
    let watcher = tokio::spawn(progress(
        client.clone(),
        from,
        start,
        captured.clone(),
        stop_rx.clone(),
    ));
    println!("    reconciler and worker running; progress follows as etcd changes");

    let net = ResourceRef::new("networks", demo::NETWORK_ID);
    let sub = ResourceRef::new("subnets", demo::SUBNET_ID);
    let port = ResourceRef::new("ports", demo::PORT_ID);
    let port_b = ResourceRef::new("ports", demo::PORT_B_ID);

    step(
        4,
        "Gohan creates the load balancer's network, its subnet and two user ports at once",
    );
    println!("    (the subnet's job waits for the network's, the ports' for both)");
    apply(&client, &net, demo::network()).await?;
    apply(&client, &sub, demo::subnet()).await?;
    apply(&client, &port, demo::port(1)).await?;
    apply(&client, &port_b, demo::port_b(1)).await?;
    converge::wait_until(&client, &catalog, within, converge::converged).await?;

    step(
        5,
        "Update Loadbalancer Interface: the ports are attached, then port db3bff62 is taken down",
    );
    apply(&client, &port, demo::port(2)).await?;
    apply(&client, &port_b, demo::port_b(2)).await?;
    converge::wait_until(&client, &catalog, within, converge::converged).await?;
    apply(&client, &port, demo::port(3)).await?;
    converge::wait_until(&client, &catalog, within, converge::converged).await?;

    step(6, "Gohan marks port db3bff62 for deletion");
    let w = gohan::apply(&client, &port.config_key(), demo::port(4), true).await?;
    println!("    Gohan: ports/{} {w}", short(demo::PORT_ID));
    let reports = converge::wait_until(&client, &catalog, within, converge::converged).await?;

    let _ = stop_tx.send(true);
    let _ = tokio::join!(reconciler, worker, watcher);

    println!(
        "\nEverything converged in {:.1}s:",
        start.elapsed().as_secs_f64()
    );
    for r in &reports {
        println!(
            "    {:<8} {}  {:<7} v{}  {}",
            r.rtype,
            r.id,
            r.desired,
            r.desired_version.unwrap_or(0),
            r.worker_state.as_deref().unwrap_or("-")
        );
    }
    println!("\nPort {}'s records at the seed's points:", demo::PORT_ID);
    let c = captured.lock().await;
    print_record(
        "1",
        &port.config_key(),
        get_json(&client, &port.config_key()).await?.as_ref(),
    )?;
    let job_key = c
        .delete_job
        .as_ref()
        .and_then(|j| j[1]["id"].as_str())
        .map(|id| format!("/jobs/all/{id}"))
        .unwrap_or_default();
    print_record("2", &job_key, c.delete_job.as_ref())?;
    print_record(
        "3",
        &port.heat_stack_key(),
        get_json(&client, &port.heat_stack_key()).await?.as_ref(),
    )?;
    print_record("4", &port.job_state_key(), c.job_state.as_ref())?;
    print_record(
        "5",
        &port.state_key(),
        get_json(&client, &port.state_key()).await?.as_ref(),
    )?;
    Ok(())
}
