//! The drills: each injects one fault into a converged cluster of real
//! processes; the runner then checks that everything converges and that the
//! invariants held throughout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde_json::{Value, json};

use super::cluster::{Cluster, SIGCONT, SIGSTOP};
use super::ledger::{Entry, Ledger};
use super::scenario::{Item, Scenario};
use crate::esi::Catalog;
use crate::esi::keys::{ResourceRef, TEMPLATES};
use crate::reconcile::controller::now_ms;
use crate::reconcile::plan::Phase;
use crate::reconcile::{report, snapshot};

/// Every drill, by name, in order.
pub const DRILLS: [&str; 13] = [
    "worker-kill",
    "reconciler-kill",
    "job-keys-deleted",
    "state-deleted",
    "stack-record-deleted",
    "etcd-restart",
    "compaction",
    "worker-hang",
    "engine-fails",
    "corrupt-records",
    "double-bump",
    "two-reconcilers",
    "network-cut",
];

/// A drill in progress.
pub struct Ctx {
    pub cluster: Cluster,
    pub ledger: Ledger,
    pub scenario: Scenario,
    pub catalog: Arc<Catalog>,
    /// Revisions of the driver's own `/config` writes.
    pub own: HashSet<i64>,
    /// Latest config version written, by config key.
    pub versions: HashMap<String, u64>,
    /// Records made invalid on purpose (key → value): left untouched.
    pub corrupt: HashMap<String, Vec<u8>>,
    /// Resources with a corrupt record: expected Invalid.
    pub invalid: HashSet<ResourceRef>,
    pub notes: Vec<String>,
    pub violations: Vec<String>,
    pub within: Duration,
    /// Retry delays measured (engine-fails).
    pub backoff_timeline: Vec<Value>,
}

impl Ctx {
    pub async fn put_config(&mut self, item: &Item, marked: bool) -> anyhow::Result<()> {
        let key = item.r.config_key();
        let version = self.versions.get(&key).copied().unwrap_or(0) + 1;
        let v = json!({"body": item.body, "version": version, "marked_for_deletion": marked});
        let resp = self
            .cluster
            .client
            .kv_client()
            .put(key.clone(), serde_json::to_vec(&v)?, None)
            .await?;
        self.own
            .insert(resp.header().map(|h| h.revision()).unwrap_or(0));
        self.versions.insert(key, version);
        Ok(())
    }

    /// Changes the first `n` generated ports (a new description).
    pub async fn bump(&mut self, n: usize) -> anyhow::Result<Vec<ResourceRef>> {
        let ports: Vec<Item> = self.scenario.ports().into_iter().take(n).cloned().collect();
        let mut changed = vec![];
        for mut p in ports {
            let v = self.versions.get(&p.r.config_key()).copied().unwrap_or(0) + 1;
            p.body
                .insert("description".into(), json!(format!("change {v}")));
            self.put_config(&p, false).await?;
            changed.push(p.r.clone());
        }
        Ok(changed)
    }

    /// Waits for the first key under `prefix`.
    pub async fn wait_key(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + self.within;
        loop {
            if let Some(k) = self.keys(prefix, 1).await?.pop() {
                return Ok(k);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "nothing appeared under {prefix} within {:?}",
                self.within
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.cluster.client.kv_client().delete(key, None).await?;
        Ok(())
    }

    /// Keys under `prefix` (at most `n`).
    async fn keys(&self, prefix: &str, n: i64) -> anyhow::Result<Vec<String>> {
        let resp = self
            .cluster
            .client
            .kv_client()
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(n),
                ),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_string))
            .collect())
    }

    /// Waits until every resource is converged at its latest config (the
    /// corrupt ones Invalid); returns how long that took.
    pub async fn converged(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + self.within;
        loop {
            let world = snapshot::load(&self.cluster.client, self.catalog.clone(), 1000).await;
            let mut stuck = vec![];
            if let Ok(world) = &world {
                for r in report::all(world, now_ms()) {
                    let plural = self.catalog.schemas.plural_of(&r.rtype).unwrap_or_default();
                    let key = ResourceRef::new(plural, r.id.clone()).config_key();
                    let corrupt = self
                        .invalid
                        .contains(&ResourceRef::new(plural, r.id.clone()));
                    let ok = if corrupt {
                        r.phase == Phase::Invalid
                    } else {
                        r.phase == Phase::Converged
                            && r.next.is_empty()
                            && r.desired_version == self.versions.get(&key).copied()
                    };
                    if !ok {
                        stuck.push(format!("{} {} {} ({})", r.rtype, r.id, r.phase, r.message));
                    }
                }
            } else {
                stuck.push("etcd unreachable".into());
            }
            if stuck.is_empty() {
                return Ok(start.elapsed());
            }
            if Instant::now() >= deadline {
                let dead = self.cluster.dead_members();
                anyhow::bail!(
                    "not converged within {:?}: {} stuck, e.g. {}{}",
                    self.within,
                    stuck.len(),
                    stuck[..stuck.len().min(3)].join("; "),
                    if dead.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", dead.join("; "))
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs the fault of drill `name`. The cluster is converged when it starts.
pub async fn inject(name: &str, c: &mut Ctx) -> anyhow::Result<()> {
    match name {
        "worker-kill" => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.workers[0].kill().await;
            c.notes.push("worker SIGKILLed holding a claim".into());
            c.cluster.start_worker(false).await?;
        }
        "reconciler-kill" => {
            c.bump(20).await?;
            c.wait_key("/jobs/all/").await?;
            c.cluster.reconcilers[0].kill().await;
            c.notes
                .push("reconciler SIGKILLed while issuing jobs".into());
            c.cluster.start_reconciler().await?;
        }
        "job-keys-deleted" => {
            // Slow the worker down so jobs sit in every slot, then delete by hand.
            c.cluster.workers[0].signal(SIGSTOP);
            c.bump(20).await?;
            c.wait_key("/jobs/ready/").await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ready = c.keys("/jobs/ready/", 6).await?;
            for (i, k) in ready.iter().enumerate() {
                let id = k.trim_start_matches("/jobs/ready/");
                if i % 2 == 0 {
                    c.delete(&format!("/jobs/all/{id}")).await?
                } else {
                    c.delete(k).await?
                }
            }
            c.cluster.workers[0].signal(SIGCONT);
            let working = c.wait_key("/jobs/working/").await?;
            c.delete(&working).await?;
            c.notes.push(format!(
                "deleted {} all/ or ready/ keys and 1 working/ key",
                ready.len()
            ));
        }
        "state-deleted" => {
            for p in c
                .scenario
                .ports()
                .into_iter()
                .take(10)
                .map(|p| p.r.state_key())
                .collect::<Vec<_>>()
            {
                c.delete(&p).await?;
            }
            c.notes.push("deleted /state of 10 ports".into());
        }
        "stack-record-deleted" => {
            for p in c
                .scenario
                .ports()
                .into_iter()
                .take(10)
                .map(|p| p.r.heat_stack_key())
                .collect::<Vec<_>>()
            {
                c.delete(&p).await?;
            }
            c.notes.push(
                "deleted the heat stack record of 10 ports (the engine keeps the stacks)".into(),
            );
        }
        "etcd-restart" => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.restart_etcd(Duration::from_secs(10)).await?;
            c.notes
                .push("etcd down for 10 s mid-jobs, restarted on its data dir".into());
        }
        "compaction" => {
            // Freeze the reconciler, change things, compact and defragment
            // past its watch revision, then let it go on.
            c.cluster.reconcilers[0].signal(SIGSTOP);
            c.bump(20).await?;
            let rev = crate::store::current_revision(&c.cluster.client).await?;
            c.cluster.client.kv_client().compact(rev, None).await?;
            c.cluster.client.maintenance_client().defragment().await?;
            c.cluster.reconcilers[0].signal(SIGCONT);
            c.notes.push(format!(
                "compacted at {rev} and defragmented while the reconciler was frozen"
            ));
        }
        "worker-hang" => {
            // One worker whose jobs time out after 3 s (its heat_timeout,
            // capped) holds the claims; it hangs for 5 s, past that timeout
            // and past its 2 s lease, while a second worker takes over.
            c.cluster.workers[0].kill().await;
            c.cluster.workers.clear();
            let plain = c.cluster.opts.worker_args.clone();
            c.cluster
                .opts
                .worker_args
                .extend(["--job-timeout-cap-secs".to_string(), "3".into()]);
            c.cluster.start_worker(false).await?;
            c.cluster.opts.worker_args = plain;
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.workers[0].signal(SIGSTOP);
            c.cluster.start_worker(false).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.cluster.workers[0].signal(SIGCONT);
            c.notes.push("a worker hung 5 s mid-job, past its 3 s job timeout and 2 s lease; a second worker took over".into());
        }
        "engine-fails" => {
            c.cluster.workers[0].kill().await;
            c.cluster
                .opts
                .worker_args
                .extend(["--sim-fail-first".to_string(), "4".into()]);
            c.cluster.start_worker(false).await?;
            c.bump(3).await?;
            c.notes
                .push("the engine fails 3 operations of every stack after its first".into());
        }
        "corrupt-records" => {
            c.bump(10).await?;
            let ports: Vec<ResourceRef> = c
                .scenario
                .ports()
                .into_iter()
                .rev()
                .take(3)
                .map(|p| p.r.clone())
                .collect();
            c.invalid.extend(ports.iter().cloned());
            let writes = [
                (ports[0].config_key(), b"{\"body\": {\"id\": ".to_vec()),
                (ports[1].state_key(), b"not json at all".to_vec()),
                (
                    format!("/jobs/all/modify:heat_worker:port:{}:9:zzzzz", ports[2].id),
                    b"[\"heat_worker\", {".to_vec(),
                ),
            ];
            for (k, v) in writes {
                let resp = c
                    .cluster
                    .client
                    .kv_client()
                    .put(k.clone(), v.clone(), None)
                    .await?;
                if k.starts_with("/config/") {
                    c.own
                        .insert(resp.header().map(|h| h.revision()).unwrap_or(0));
                }
                c.corrupt.insert(k, v);
            }
            c.notes
                .push("corrupt JSON under /config, /state and /jobs/all".into());
        }
        "double-bump" => {
            let r = c.bump(1).await?;
            let prefix = format!("/jobs/working/modify:heat_worker:port:{}:", r[0].id);
            c.wait_key(&prefix).await?;
            c.bump(1).await?;
            c.bump(1).await?;
            c.notes
                .push("one port bumped twice while its job was in flight".into());
        }
        "two-reconcilers" => {
            c.bump(30).await?;
            c.notes.push("a second reconciler ran throughout".into());
        }
        "network-cut" => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.proxy.cut();
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.cluster.proxy.restore();
            c.notes
                .push("the worker cut off from etcd for 5 s (past its lease) mid-job".into());
        }
        other => anyhow::bail!("unknown drill {other}"),
    }
    Ok(())
}

/// For each changed port: the delay from each failure to the next job.
pub fn timeline(entries: &[Entry], ports: &[ResourceRef]) -> Vec<Value> {
    let mut out = vec![];
    for r in ports {
        let mut failed_at: Option<Instant> = None;
        let mut delays = vec![];
        for e in entries {
            if e.put && e.key == r.state_key() {
                let v: Value = serde_json::from_slice(&e.value).unwrap_or_default();
                if v["state"]["worker_state"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("_FAILED"))
                {
                    failed_at = Some(e.at);
                }
            } else if e.put
                && e.created
                && e.key.starts_with("/jobs/all/")
                && e.key.contains(&format!(":{}:", r.id))
                && let Some(f) = failed_at.take()
            {
                delays.push(e.at.duration_since(f).as_millis() as u64);
            }
        }
        out.push(json!({"resource": r.to_string(), "retry_delays_ms": delays}));
    }
    out
}

/// Checks the retry delays grew about ×2 (jitter allows ×1 to ×4 between
/// consecutive delays) and that there were as many as failures.
pub fn check_timeline(timeline: &[Value], failures: usize) -> Vec<String> {
    let mut v = vec![];
    for t in timeline {
        let d: Vec<u64> = t["retry_delays_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if d.len() != failures {
            v.push(format!(
                "{}: {} retries, expected {failures}",
                t["resource"],
                d.len()
            ));
            continue;
        }
        for w in d.windows(2) {
            let ratio = w[1] as f64 / w[0].max(1) as f64;
            if !(0.9..=4.5).contains(&ratio) {
                v.push(format!(
                    "{}: delay {} ms then {} ms (×{ratio:.1})",
                    t["resource"], w[0], w[1]
                ));
            }
        }
    }
    v
}

/// Loads the templates the scenario uses.
pub async fn load_templates(c: &Cluster) -> anyhow::Result<()> {
    for t in crate::demo::templates() {
        let id = t
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        crate::gohan::apply(&c.client, &format!("{TEMPLATES}{id}"), t, false).await?;
    }
    Ok(())
}
