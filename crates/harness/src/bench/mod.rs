//! `esi-reconciler bench`: scale, speed and memory measured against the
//! physical limit of the etcd it runs on, in the same run, so the figures
//! mean something on any machine.

pub mod plot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::{Launch, Launched};
use esi_reconciler::esi::records::{Body, ConfigRecord};
use esi_reconciler::store::Etcd;
use esi_reconciler::store::txn::{Cond, Fenced, Kv, Op};
use etcd_client::GetOptions;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::chaos::scenario::Scenario;
use crate::etcd::embedded::EtcdProcess;
use esi_reconciler::esi::Catalog;
use esi_reconciler::reconcile::snapshot;
use esi_reconciler::store::Change;
use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
use esi_reconciler::store::{EtcdOptions, connect_checked};
use futures::StreamExt;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Generated ports (with their networks and subnets).
    pub scale: usize,
    /// Config changes in the steady-state phase, and their rate per second.
    pub changes: usize,
    pub change_rate: f64,
    pub idle_secs: u64,
    /// Etcd concurrency for the limit, as the product uses.
    pub concurrency: usize,
    pub binary: PathBuf,
    /// Reconciler replicas sharing the work.
    pub replicas: usize,
}

/// Transactions one resource's creation needs: the reconciler's issue,
/// the worker's claim (which also sets `job_state` to `{}`), the sim
/// engine's stack record, the worker's results and cleanup, and the
/// reconciler's finish. A job that waits for its dependencies takes one
/// more (its release); the ratio does not count it, the measured writes do.
pub const WRITES_PER_RESOURCE: f64 = 6.0;

/// etcd's history compaction as production runs it.
const AUTO_COMPACTION: [&str; 4] = [
    "--auto-compaction-mode",
    "revision",
    "--auto-compaction-retention",
    "10000",
];

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Percentiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
        samples: v.len(),
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BenchReport {
    pub machine: String,
    pub scale: usize,
    /// Reconciler replicas (memory and CPU figures of the reconciler are
    /// per replica: the largest, and the sum for CPU).
    pub replicas: usize,
    pub resources: usize,
    /// The limit on an empty store, and on the store loaded with the
    /// scenario's configs (what the cold start runs against).
    pub txn_per_s: f64,
    pub txn_per_s_loaded: f64,
    pub writes_per_resource: f64,
    /// Transactions the reconciler(s) and worker sent in the cold start, per
    /// resource, by kind (from their metrics; failed compares included).
    pub transactions_per_resource: std::collections::BTreeMap<String, f64>,
    /// Reconciles per resource in the cold start, by result (applied,
    /// noop, deferred, conflict, error).
    pub reconciles_per_resource: std::collections::BTreeMap<String, f64>,
    /// Requests the reconciler(s) and the worker made in the cold start,
    /// per resource, by process and kind (from their metrics).
    pub requests_by_process:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    /// etcd revisions the cold start took, per resource: the writes the
    /// product actually made, the sim engine's stack records included.
    pub writes_per_resource_seen: f64,
    /// etcd requests the cold start took, per resource, by gRPC method
    /// (unary calls as etcd counted them; the bench's own polling included,
    /// about 0.02 per resource at 10k).
    pub requests_per_resource: std::collections::BTreeMap<String, f64>,
    /// CPU seconds the cold start took: reconciler, worker, etcd.
    pub cold_start_cpu_s: [f64; 3],
    /// etcd CPU per write (ms): in the limit, in the cold start (where
    /// reads, watchers and larger values come with each write), and in the
    /// limit on the loaded store.
    pub etcd_cpu_ms_per_write: [f64; 3],
    pub range_pages_per_s: f64,
    pub cold_start_s: f64,
    pub resources_per_s: f64,
    /// Against the loaded-store limit (the goal's), and the empty one.
    pub ratio_to_limit: f64,
    pub ratio_to_empty_limit: f64,
    pub ready_latency: Option<Percentiles>,
    pub converged_latency: Option<Percentiles>,
    /// Resident memory once converged and idle, and of empty processes.
    pub reconciler: Memory,
    pub worker: Memory,
    pub empty_reconciler: Memory,
    pub empty_worker: Memory,
    /// VmRSS above the empty process, per resource.
    pub reconciler_bytes_per_resource: f64,
    pub worker_bytes_per_resource: f64,
    /// The same for anonymous memory only (heap and stacks; not the
    /// binary's code pages, which a busy process faults in once).
    pub reconciler_anon_bytes_per_resource: f64,
    pub worker_anon_bytes_per_resource: f64,
    pub idle_secs: u64,
    pub idle_reconciler_cpu_pct: f64,
    pub idle_worker_cpu_pct: f64,
    pub resync_s: f64,
    /// The cold start, sampled: what the PNG plot shows.
    pub convergence: Vec<Sample>,
}

/// One sample of the cold start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the reconciler and worker started.
    pub t_s: f64,
    /// Resources with a `/state` record.
    pub states: usize,
    /// Jobs in flight (`/jobs/all/`).
    pub jobs: usize,
}

/// Resident memory of a process, from `/proc/{pid}/status`.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
}

impl Memory {
    fn of(pid: Option<u32>) -> Memory {
        let status = pid.and_then(process).and_then(|p| p.status().ok());
        Memory {
            rss_kib: status.as_ref().and_then(|s| s.vmrss).unwrap_or(0),
            anon_kib: status.as_ref().and_then(|s| s.rssanon).unwrap_or(0),
        }
    }

    /// Bytes per resource above `empty`: (all of VmRSS, anonymous only).
    fn per_resource(&self, empty: &Memory, resources: usize) -> (f64, f64) {
        let per = |now: u64, base: u64| {
            (now.saturating_sub(base) * 1024) as f64 / resources.max(1) as f64
        };
        (
            per(self.rss_kib, empty.rss_kib),
            per(self.anon_kib, empty.anon_kib),
        )
    }
}

fn process(pid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid).ok()?).ok()
}

/// utime + stime of a process, in seconds (at the kernel's tick rate).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

async fn count(client: &Etcd, prefix: &str) -> anyhow::Result<usize> {
    Ok(client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count() as usize)
}

fn spawn(binary: &PathBuf, args: &[String]) -> anyhow::Result<Launched> {
    Ok(Launch::new(binary)
        .env("ESI_LOG_LEVEL", "error")
        .args(args)
        .spawn()?)
}

/// `replicas` reconcilers and a worker, and where each serves its metrics.
struct Processes {
    reconcilers: Vec<Launched>,
    worker: Launched,
    /// The reconcilers' addresses in order, then the worker's (last).
    metrics: Vec<String>,
}

/// `replicas` reconcilers (resyncing every `resync_secs`) and a worker.
fn processes(
    binary: &PathBuf,
    etcd: &str,
    replicas: usize,
    resync_secs: u64,
) -> anyhow::Result<Processes> {
    let mut metrics = vec![];
    let mut addr = || -> anyhow::Result<String> {
        let a = format!("127.0.0.1:{}", crate::etcd::embedded::free_port()?);
        metrics.push(a.clone());
        Ok(a)
    };
    let mut rs = vec![];
    for _ in 0..replicas.max(1) {
        rs.push(spawn(
            binary,
            &[
                "run".into(),
                "--etcd-endpoints".into(),
                etcd.into(),
                "--metrics-addr".into(),
                addr()?,
                "--resync-secs".into(),
                resync_secs.to_string(),
            ],
        )?);
    }
    let w = spawn(
        binary,
        &[
            "worker".into(),
            "--etcd-endpoints".into(),
            etcd.into(),
            "--metrics-addr".into(),
            addr()?,
            "--sim-latency-ms".into(),
            "0".into(),
            "--slots".into(),
            "32".into(),
        ],
    )?;
    Ok(Processes {
        reconcilers: rs,
        worker: w,
        metrics,
    })
}

/// Samples `…{suffix}{label="x"} n` that the processes serving `metrics`
/// expose, summed by the label's value (e.g. the transactions they sent by
/// kind: `_etcd_transactions_total`, `kind`).
async fn scrape_by_label(
    metrics: &[String],
    suffix: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for addr in metrics {
        if let Some((200, body)) = crate::scrape::fetch(addr, "/metrics").await {
            for (value, n) in by_label(&body, suffix, label) {
                *out.entry(value).or_insert(0.0) += n;
            }
        }
    }
    out
}

/// The samples of metrics named `…{suffix}` in `body`, summed by the value
/// of `label`.
fn by_label(body: &str, suffix: &str, label: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let prefix = format!("{label}=\"");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if !name.ends_with(suffix) {
            continue;
        }
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let kind = labels
            .split(',')
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|k| k.strip_suffix('"'));
        if let (Some(k), Ok(v)) = (kind, value.trim().parse::<f64>()) {
            *out.entry(k.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// Per resource: each count divided by the resources.
fn per_resource(
    counts: std::collections::BTreeMap<String, f64>,
    resources: usize,
) -> std::collections::BTreeMap<String, f64> {
    counts
        .into_iter()
        .map(|(k, n)| (k, n / resources.max(1) as f64))
        .collect()
}

/// The replica with the most resident memory.
fn largest(rs: &[Launched]) -> Memory {
    rs.iter()
        .map(|c| Memory::of(c.child.id()))
        .max_by_key(|m| m.rss_kib)
        .unwrap_or(Memory::of(None))
}

/// CPU seconds of all replicas.
fn cpu_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p)).sum()
}

/// Transactions per second of job-sized writes (a compare and two puts of
/// ~1 KiB), at the given concurrency.
async fn txn_limit(client: &Etcd, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let value = vec![b'x'; 1024];
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (c, next, value) = (client.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, etcd_client::Error>(());
                }
                let k = format!("/bench/all/{i}");
                let txn = Fenced::new(
                    vec![Cond::Absent(k.clone())],
                    vec![
                        Op::put(k, value.clone()),
                        Op::put(format!("/bench/ready/{i}"), "heat_worker"),
                    ],
                );
                c.commit(&txn).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    client
        .delete(
            "/bench/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    Ok(rate)
}

/// Paginated range reads (1000 keys a page) of `/config/` per second.
async fn range_limit(client: &Etcd, seconds: f64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut pages = 0usize;
    let mut from = b"/config/".to_vec();
    while start.elapsed().as_secs_f64() < seconds {
        let resp = client
            .get(
                from.clone(),
                Some(GetOptions::new().with_range("/config0").with_limit(1000)),
            )
            .await?;
        pages += 1;
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => from = b"/config/".to_vec(),
        }
    }
    Ok(pages as f64 / start.elapsed().as_secs_f64())
}

/// A `/config` record of `body` at `version`, as Gohan writes it.
fn config(body: &serde_json::Map<String, serde_json::Value>, version: u64) -> Vec<u8> {
    let record = ConfigRecord {
        body: Body::new(body.clone()),
        version,
        marked_for_deletion: false,
        extra: Default::default(),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

pub async fn load(client: &Etcd, scenario: &Scenario) -> anyhow::Result<()> {
    crate::demo::load_templates(client).await?;
    // Into an empty store, 100 configs a transaction.
    for chunk in scenario.items.chunks(100) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|i| Op::put(i.r.config_key(), config(&i.body, 1)))
            .collect();
        client.commit(&Fenced::new(vec![], ops)).await?;
    }
    Ok(())
}

/// Runs every measurement, printing progress to stderr.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let mut rep = BenchReport {
        scale: opts.scale,
        writes_per_resource: WRITES_PER_RESOURCE,
        idle_secs: opts.idle_secs,
        ..Default::default()
    };
    rep.machine = format!(
        "{} cores, {} MiB, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_total_kib().unwrap_or(0) / 1024,
        std::process::Command::new(crate::etcd::embedded::binary())
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string())
            .unwrap_or_default()
    );
    // As production runs etcd: history compacted as it grows (every five
    // minutes, keeping the last 10,000 revisions), not kept forever.
    let mut etcd = EtcdProcess::start_with_flags(&AUTO_COMPACTION).await?;
    let client =
        connect_checked(&EtcdOptions::with_endpoints(vec![etcd.client_url.clone()])).await?;
    eprintln!(
        "limit: job-sized transactions at concurrency {}",
        opts.concurrency
    );
    let etcd_cpu0 = etcd.pid().and_then(cpu_secs).unwrap_or(0.0);
    rep.txn_per_s = txn_limit(&client, 20_000, opts.concurrency).await?;
    rep.etcd_cpu_ms_per_write[0] =
        (etcd.pid().and_then(cpu_secs).unwrap_or(0.0) - etcd_cpu0) * 1000.0 / 20_000.0;

    eprintln!("memory: empty processes");
    let Processes {
        reconcilers: mut r,
        worker: mut w,
        ..
    } = processes(&opts.binary, &etcd.client_url, 1, opts.idle_secs)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rep.empty_reconciler = largest(&r);
    rep.empty_worker = Memory::of(w.child.id());
    // Stopped as an operator would (SIGTERM): the reconciler leaves its
    // replica membership, so the cold start's reconciler owns everything at
    // once instead of sharing with a dead member until its lease expires.
    for c in r.iter_mut().chain(std::iter::once(&mut w)) {
        c.stop(Duration::from_secs(10)).await;
    }

    let scenario = Scenario::generate(opts.scale);
    rep.resources = scenario.items.len();
    eprintln!("loading {} resources", rep.resources);
    load(&client, &scenario).await?;
    rep.range_pages_per_s = range_limit(&client, 3.0).await?;

    // The limit test deletes its 40,000 keys in one request and the load
    // writes 11 keys per resource in bulk. etcd 3.4 keeps its read buffer at
    // the capacity such a burst grew it to, and copies all of it on every
    // read, until a commit interval passes with no write to the key bucket
    // (etcd 3.6 copies only what is used). Measured, that made the cold start
    // up to 7 times slower (etcd CPU per write 3.7 ms instead of 0.4 ms),
    // depending on how the bursts fell across commit intervals. A fresh etcd
    // process on the same data measures the product, not that.
    etcd.restart().await?;
    eprintln!("limit: the same on the loaded store");
    let etcd_cpu0 = etcd.pid().and_then(cpu_secs).unwrap_or(0.0);
    rep.txn_per_s_loaded = txn_limit(&client, 20_000, opts.concurrency).await?;
    rep.etcd_cpu_ms_per_write[2] =
        (etcd.pid().and_then(cpu_secs).unwrap_or(0.0) - etcd_cpu0) * 1000.0 / 20_000.0;
    // The limit's own burst of writes and deletes, as the load's: a fresh
    // process again.
    etcd.restart().await?;
    rep.replicas = opts.replicas.max(1);
    eprintln!(
        "cold start: {} reconciler replica(s) and a worker (sim engine, no latency)",
        rep.replicas
    );
    let rev0 = esi_reconciler::store::current_revision(&client).await?;
    let requests0 = etcd_requests(&etcd).await;
    let start = Instant::now();
    let Processes {
        reconcilers: r,
        worker: w,
        metrics,
    } = processes(&opts.binary, &etcd.client_url, rep.replicas, opts.idle_secs)?;
    let rpids: Vec<u32> = r.iter().filter_map(|p| p.child.id()).collect();
    let cpu = |pid: Option<u32>| pid.and_then(cpu_secs).unwrap_or(0.0);
    let etcd_cpu0 = cpu(etcd.pid());
    let mut told = Instant::now();
    loop {
        let states = count(&client, "/state/").await?;
        let jobs = count(&client, "/jobs/all/").await?;
        let t_s = start.elapsed().as_secs_f64();
        rep.convergence.push(Sample { t_s, states, jobs });
        if states >= rep.resources && jobs == 0 {
            break;
        }
        if told.elapsed() >= Duration::from_secs(5) {
            told = Instant::now();
            eprintln!(
                "  {t_s:.0} s: {states} of {} resources with /state, {jobs} jobs in flight",
                rep.resources
            );
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "not converged in 30 minutes ({states}/{})",
            rep.resources
        );
        // Counting scans the keys: poll less often at scale, so the
        // measurement does not load the etcd it measures.
        tokio::time::sleep(Duration::from_millis(if rep.resources > 20_000 {
            1000
        } else {
            250
        }))
        .await;
    }
    rep.cold_start_s = start.elapsed().as_secs_f64();
    rep.cold_start_cpu_s = [
        cpu_all(&rpids),
        cpu(w.child.id()),
        cpu(etcd.pid()) - etcd_cpu0,
    ];
    let requests = etcd_requests(&etcd).await;
    let transactions = scrape_by_label(&metrics, "_etcd_transactions_total", "kind").await;
    rep.transactions_per_resource = per_resource(transactions, rep.resources);
    let (reconcilers, worker) = metrics.split_at(metrics.len().saturating_sub(1));
    let reconciles = scrape_by_label(reconcilers, "_reconciles_total", "result").await;
    rep.reconciles_per_resource = per_resource(reconciles, rep.resources);
    for (process, addrs) in [("reconciler", reconcilers), ("worker", worker)] {
        let requests = scrape_by_label(addrs, "_etcd_requests_total", "request").await;
        rep.requests_by_process
            .insert(process.into(), per_resource(requests, rep.resources));
    }
    rep.requests_per_resource = requests
        .iter()
        .map(|(method, n)| {
            let before = requests0.get(method).copied().unwrap_or(0.0);
            (method.clone(), (n - before) / rep.resources.max(1) as f64)
        })
        .filter(|(_, per)| *per > 0.0)
        .collect();
    rep.writes_per_resource_seen = (esi_reconciler::store::current_revision(&client).await? - rev0)
        as f64
        / rep.resources as f64;
    rep.etcd_cpu_ms_per_write[1] = rep.cold_start_cpu_s[2] * 1000.0
        / (rep.writes_per_resource_seen * rep.resources as f64).max(1.0);
    rep.resources_per_s = rep.resources as f64 / rep.cold_start_s;
    rep.ratio_to_limit = rep.resources_per_s / (rep.txn_per_s_loaded / WRITES_PER_RESOURCE);
    rep.ratio_to_empty_limit = rep.resources_per_s / (rep.txn_per_s / WRITES_PER_RESOURCE);
    eprintln!("converged in {:.1}s", rep.cold_start_s);

    eprintln!(
        "steady state: {} changes at {}/s",
        opts.changes, opts.change_rate
    );
    let (ready, converged) = steady(&client, &scenario, opts).await?;
    rep.ready_latency = Some(percentiles(ready));
    rep.converged_latency = Some(percentiles(converged));

    let wp = w.child.id().unwrap_or(0);
    eprintln!("idle: {} s with everything converged", opts.idle_secs);
    let (r0, w0) = (cpu_all(&rpids), cpu_secs(wp).unwrap_or(0.0));
    tokio::time::sleep(Duration::from_secs(opts.idle_secs)).await;
    rep.idle_reconciler_cpu_pct = (cpu_all(&rpids) - r0) / opts.idle_secs as f64 * 100.0;
    rep.idle_worker_cpu_pct = (cpu_secs(wp).unwrap_or(0.0) - w0) / opts.idle_secs as f64 * 100.0;

    // Memory after the idle period: what the processes hold once converged.
    rep.reconciler = largest(&r);
    rep.worker = Memory::of(Some(wp));
    (
        rep.reconciler_bytes_per_resource,
        rep.reconciler_anon_bytes_per_resource,
    ) = rep
        .reconciler
        .per_resource(&rep.empty_reconciler, rep.resources);
    (
        rep.worker_bytes_per_resource,
        rep.worker_anon_bytes_per_resource,
    ) = rep.worker.per_resource(&rep.empty_worker, rep.resources);

    eprintln!("resync: a full list at this scale");
    let t = Instant::now();
    let world = snapshot::load(&client, Arc::new(Catalog::load(None, None)?), 1000).await?;
    rep.resync_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        world.resource_count() >= rep.resources,
        "relist saw {} resources",
        world.resource_count()
    );
    drop((r, w));
    Ok(rep)
}

/// The machine's memory, in KiB.
fn mem_total_kib() -> Option<u64> {
    use procfs::Current;
    Some(procfs::Meminfo::current().ok()?.mem_total / 1024)
}

/// When a change was seen in `ready/` and in `/state`.
type Seen = (Option<Instant>, Option<Instant>);

/// Config changes at a fixed rate; latency from each `/config` write to its
/// job in `ready/` and to its `/state` at the new version.
async fn steady(
    client: &Etcd,
    scenario: &Scenario,
    opts: &BenchOptions,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let from = esi_reconciler::store::current_revision(client).await?;
    let span = MirrorOptions {
        start: "/jobs/ready/".into(),
        end: "/state0".into(),
        ..MirrorOptions::prefix("/jobs/ready/")
    };
    let mut stream = mirror::stream(client.clone(), span.after(from));
    let s = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            let MirrorEvent::Changes { changes, .. } = ev else {
                continue;
            };
            let now = Instant::now();
            let mut seen = s.lock().await;
            for c in changes {
                let Change::Put(kv) = c else { continue };
                let key = kv.key.as_str();
                if let Some(id) = key.strip_prefix("/jobs/ready/") {
                    // modify:heat_worker:port:{id}:{version}:{suffix}
                    let parts: Vec<&str> = id.split(':').collect();
                    if parts.len() >= 6 {
                        seen.entry(format!("{}:{}", parts[3], parts[4]))
                            .or_default()
                            .0
                            .get_or_insert(now);
                    }
                } else if let Some(rest) = key.strip_prefix("/state/v2.0/ports/") {
                    let v: serde_json::Value =
                        serde_json::from_slice(&kv.value).unwrap_or_default();
                    if let Some(ver) = v["version"].as_u64() {
                        seen.entry(format!("{rest}:{ver}"))
                            .or_default()
                            .1
                            .get_or_insert(now);
                    }
                }
            }
        }
    });
    let ports = scenario.ports();
    let mut written: Vec<(String, Instant)> = vec![];
    let period = Duration::from_secs_f64(1.0 / opts.change_rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    for i in 0..opts.changes {
        tick.tick().await;
        let p = ports[i % ports.len()];
        let version = 2 + (i / ports.len()) as u64;
        let mut body = p.body.clone();
        body.insert("description".into(), json!(format!("change {i}")));
        let value = config(&body, version);
        let t0 = Instant::now();
        client.put(p.r.config_key(), value, None).await?;
        written.push((format!("{}:{version}", p.r.id), t0));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let seen = seen.lock().await;
            written
                .iter()
                .all(|(k, _)| seen.get(k).is_some_and(|(r, s)| r.is_some() && s.is_some()))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.abort();
    let seen = seen.lock().await;
    let mut ready = vec![];
    let mut converged = vec![];
    for (k, t0) in &written {
        if let Some((r, s)) = seen.get(k) {
            if let Some(r) = r {
                ready.push(r.duration_since(*t0).as_secs_f64() * 1000.0);
            }
            if let Some(s) = s {
                converged.push(s.duration_since(*t0).as_secs_f64() * 1000.0);
            }
        }
    }
    Ok((ready, converged))
}

/// The cold start as a PNG line chart: resources converged and jobs in
/// flight over time, against the total.
pub fn convergence_png(r: &BenchReport) -> Result<Vec<u8>, plot::PlotError> {
    let over_time = |y: fn(&Sample) -> usize| -> Vec<(f64, f64)> {
        r.convergence.iter().map(|s| (s.t_s, y(s) as f64)).collect()
    };
    let (states, jobs) = (over_time(|s| s.states), over_time(|s| s.jobs));
    let title = format!(
        "Cold start of {} resources: {:.0} s, {:.0} per second",
        r.resources, r.cold_start_s, r.resources_per_s
    );
    let total = format!("all {} resources", r.resources);
    plot::render_png(&plot::Chart {
        title: &title,
        x_label: "seconds since reconciler and worker started",
        y_label: "resources",
        series: vec![
            plot::Series {
                label: "with /state (converged)",
                points: &states,
            },
            plot::Series {
                label: "jobs in flight",
                points: &jobs,
            },
        ],
        target: Some((r.resources as f64, &total)),
    })
}

/// The table the command prints.
/// The unary requests etcd has served so far, by gRPC method, from its own
/// `/metrics` (`grpc_server_handled_total`, every result code).
async fn etcd_requests(etcd: &EtcdProcess) -> std::collections::BTreeMap<String, f64> {
    let addr = format!("127.0.0.1:{}", etcd.client_port());
    match crate::scrape::fetch(&addr, "/metrics").await {
        Some((200, body)) => handled_by_method(&body),
        _ => Default::default(),
    }
}

/// Sums `grpc_server_handled_total` samples of unary calls by `grpc_method`.
fn handled_by_method(body: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.contains("grpc_type=\"unary\"") {
            continue;
        }
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .and_then(|m| m.strip_suffix('"'));
        if let (Some(m), Ok(v)) = (method, value.trim().parse::<f64>()) {
            *out.entry(m.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// `Range 2.1, Txn 7.0, …`, most first; `missing` when there are none.
fn requests_line(per: &std::collections::BTreeMap<String, f64>, missing: &str) -> String {
    if per.is_empty() {
        return format!("- ({missing})");
    }
    let mut v: Vec<(&String, &f64)> = per.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let total: f64 = per.values().sum();
    let parts: Vec<String> = v.iter().map(|(m, n)| format!("{m} {n:.2}")).collect();
    format!("{total:.1}: {}", parts.join(", "))
}

pub fn table(r: &BenchReport) -> String {
    let p = |x: &Option<Percentiles>| {
        x.as_ref()
            .map(|p| {
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
                    p.p50_ms, p.p99_ms, p.max_ms, p.samples
                )
            })
            .unwrap_or_default()
    };
    [
        format!("machine                       {}", r.machine),
        format!("resources                     {} ({} generated ports + networks, subnets, story)", r.resources, r.scale),
        format!("reconciler replicas           {} (reconciler RSS: the largest replica; CPU: all)", r.replicas),
        format!("etcd limit                    {:.0} txn/s (job-sized) on the empty store, {:.0} txn/s loaded, {:.0} range pages/s (1000 keys)", r.txn_per_s, r.txn_per_s_loaded, r.range_pages_per_s),
        format!("writes per resource           {:.0} transactions needed (issue, claim, engine record, results, cleanup, finish)", r.writes_per_resource),
        format!("cold start                    {:.1} s, {:.0} resources/s, {:.1} etcd writes per resource", r.cold_start_s, r.resources_per_s, r.writes_per_resource_seen),
        format!("etcd requests per resource    {}", requests_line(&r.requests_per_resource, "etcd's /metrics not readable")),
        format!("transactions per resource     {}", requests_line(&r.transactions_per_resource, "the product's metrics do not count them")),
        format!("reconciles per resource       {}", requests_line(&r.reconciles_per_resource, "not counted")),
        format!("reconciler requests/resource  {}", requests_line(r.requests_by_process.get("reconciler").unwrap_or(&Default::default()), "not counted")),
        format!("worker requests/resource      {}", requests_line(r.requests_by_process.get("worker").unwrap_or(&Default::default()), "not counted")),
        format!("cold start CPU                reconciler {:.1} s, worker {:.1} s, etcd {:.1} s", r.cold_start_cpu_s[0], r.cold_start_cpu_s[1], r.cold_start_cpu_s[2]),
        format!("etcd CPU per write            {:.3} ms in the limit ({:.3} ms loaded), {:.3} ms in the cold start", r.etcd_cpu_ms_per_write[0], r.etcd_cpu_ms_per_write[2], r.etcd_cpu_ms_per_write[1]),
        format!("ratio to the limit            {:.2} to the loaded store's (goal >= 0.8), {:.2} to the empty store's", r.ratio_to_limit, r.ratio_to_empty_limit),
        format!("config -> ready               {}", p(&r.ready_latency)),
        format!("config -> /state converged    {}", p(&r.converged_latency)),
        format!("RSS reconciler / worker       {} KiB / {} KiB (empty: {} / {} KiB), anonymous {} / {} KiB (empty: {} / {} KiB)", r.reconciler.rss_kib, r.worker.rss_kib, r.empty_reconciler.rss_kib, r.empty_worker.rss_kib, r.reconciler.anon_kib, r.worker.anon_kib, r.empty_reconciler.anon_kib, r.empty_worker.anon_kib),
        format!("RSS per resource              reconciler {:.0} B, worker {:.0} B (goal < 1024); anonymous only: {:.0} B, {:.0} B", r.reconciler_bytes_per_resource, r.worker_bytes_per_resource, r.reconciler_anon_bytes_per_resource, r.worker_anon_bytes_per_resource),
        format!("idle CPU over {} s            reconciler {:.2}%, worker {:.2}% (goal < 1%; the window is one full resync period)", r.idle_secs, r.idle_reconciler_cpu_pct, r.idle_worker_cpu_pct),
        format!("full relist                   {:.2} s", r.resync_s),
    ]
    .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_of_the_sorted_samples() {
        let p = percentiles((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (p.p50_ms, p.p99_ms, p.max_ms, p.samples),
            (51.0, 99.0, 100.0, 100)
        );
        assert!(percentiles(vec![]).p99_ms.is_nan());
    }

    #[test]
    fn counts_transactions_by_kind_over_processes() {
        let body = "# HELP esi_worker_etcd_transactions x\n\
esi_worker_etcd_transactions_total{kind=\"claim\"} 10\n\
esi_reconciler_etcd_transactions_total{kind=\"issue_job\"} 4\n\
esi_reconciler_etcd_transactions_total{kind=\"claim\"} 1\n\
esi_reconciler_etcd_retries_total 3\n";
        let m = by_label(body, "_etcd_transactions_total", "kind");
        assert_eq!(m.get("claim"), Some(&11.0));
        assert_eq!(m.get("issue_job"), Some(&4.0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn counts_etcds_unary_requests_by_method() {
        let body = "# HELP grpc_server_handled_total x\n\
grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 40\n\
grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n\
grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 3\n";
        let m = handled_by_method(body);
        assert_eq!(m.get("Range"), Some(&42.0));
        assert_eq!(m.get("Txn"), Some(&7.0));
        assert_eq!(m.get("Watch"), None, "streams are not requests");
        assert_eq!(requests_line(&m, "-"), "49.0: Range 42.00, Txn 7.00");
    }

    #[test]
    fn the_cold_start_plots_as_a_png() {
        let mut r = BenchReport {
            resources: 10,
            cold_start_s: 2.0,
            resources_per_s: 5.0,
            ..Default::default()
        };
        for i in 0..=4 {
            r.convergence.push(Sample {
                t_s: f64::from(i) * 0.5,
                states: (i * 5).min(10) as usize,
                jobs: (4 - i) as usize,
            });
        }
        let png = convergence_png(&r).unwrap();
        // The signature, then the IHDR chunk: its length (13), its type,
        // then width and height as big-endian u32s.
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[8..16], b"\0\0\0\x0dIHDR");
        let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((be(16), be(20)), (900, 540));
        // No samples is an error, not a panic or an empty image.
        r.convergence.clear();
        assert!(matches!(
            convergence_png(&r),
            Err(plot::PlotError::NoPoints)
        ));
    }
}
