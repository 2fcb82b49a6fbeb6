//! The drills: each injects one fault into a converged cluster of real
//! processes; the runner then checks that everything converges and that the
//! invariants held throughout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde_json::{Value, json};

use super::cluster::{Cluster, Signal};
use super::ledger::{self, Entry, Ledger};
use super::scenario::{Item, Scenario};
use crate::converge;
use esi_reconciler::esi::Catalog;
use esi_reconciler::esi::keys::ResourceRef;
use esi_reconciler::esi::records::{Body, ConfigRecord};
use esi_reconciler::reconcile::plan::Phase;
use esi_reconciler::reconcile::report::Report;
use esi_reconciler::store::txn::{Cond, Fenced, Kv, Op};

/// Every drill, in the order they run. Named on the command line in
/// kebab case (`worker-kill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drill {
    WorkerKill,
    ReconcilerKill,
    JobKeysDeleted,
    StateDeleted,
    StackRecordDeleted,
    EtcdRestart,
    Compaction,
    WorkerHang,
    EngineFails,
    CorruptRecords,
    DoubleBump,
    TwoReconcilers,
    NetworkCut,
    EtcdLeaderKill,
    EtcdMemberFreeze,
    EtcdPartition,
    EtcdRestore,
    EtcdQuorumLoss,
    ReplicaKill,
    ReplicaFreeze,
}

impl Drill {
    pub const ALL: [Drill; 20] = [
        Drill::WorkerKill,
        Drill::ReconcilerKill,
        Drill::JobKeysDeleted,
        Drill::StateDeleted,
        Drill::StackRecordDeleted,
        Drill::EtcdRestart,
        Drill::Compaction,
        Drill::WorkerHang,
        Drill::EngineFails,
        Drill::CorruptRecords,
        Drill::DoubleBump,
        Drill::TwoReconcilers,
        Drill::NetworkCut,
        Drill::EtcdLeaderKill,
        Drill::EtcdMemberFreeze,
        Drill::EtcdPartition,
        Drill::EtcdRestore,
        Drill::EtcdQuorumLoss,
        Drill::ReplicaKill,
        Drill::ReplicaFreeze,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drill::WorkerKill => "worker-kill",
            Drill::ReconcilerKill => "reconciler-kill",
            Drill::JobKeysDeleted => "job-keys-deleted",
            Drill::StateDeleted => "state-deleted",
            Drill::StackRecordDeleted => "stack-record-deleted",
            Drill::EtcdRestart => "etcd-restart",
            Drill::Compaction => "compaction",
            Drill::WorkerHang => "worker-hang",
            Drill::EngineFails => "engine-fails",
            Drill::CorruptRecords => "corrupt-records",
            Drill::DoubleBump => "double-bump",
            Drill::TwoReconcilers => "two-reconcilers",
            Drill::NetworkCut => "network-cut",
            Drill::EtcdLeaderKill => "etcd-leader-kill",
            Drill::EtcdMemberFreeze => "etcd-member-freeze",
            Drill::EtcdPartition => "etcd-partition",
            Drill::EtcdRestore => "etcd-restore",
            Drill::EtcdQuorumLoss => "etcd-quorum-loss",
            Drill::ReplicaKill => "replica-kill",
            Drill::ReplicaFreeze => "replica-freeze",
        }
    }
}

impl std::fmt::Display for Drill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// What a drill's cluster looks like before its fault.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub etcd_members: usize,
    pub reconcilers: usize,
    /// The worker reaches etcd member 0 through the proxy.
    pub worker_via_proxy: bool,
    /// Every process reaches etcd member 0 through the proxy.
    pub all_via_proxy: bool,
}

pub fn setup(name: Drill) -> Setup {
    let mut s = Setup {
        etcd_members: 1,
        reconcilers: 1,
        worker_via_proxy: false,
        all_via_proxy: false,
    };
    match name {
        Drill::TwoReconcilers => s.reconcilers = 2,
        Drill::NetworkCut => s.worker_via_proxy = true,
        Drill::EtcdLeaderKill
        | Drill::EtcdMemberFreeze
        | Drill::EtcdRestore
        | Drill::EtcdQuorumLoss => s.etcd_members = 3,
        Drill::EtcdPartition => {
            s.etcd_members = 3;
            s.all_via_proxy = true;
        }
        Drill::ReplicaKill | Drill::ReplicaFreeze => s.reconcilers = 3,
        _ => {}
    }
    s
}

/// How long a reconciler replica's membership lease lasts in the drills
/// (`--member-ttl-secs`).
const MEMBER_TTL: Duration = Duration::from_secs(3);

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
    /// Jobs issued in a history the drill ended (a restored store).
    pub earlier_actions: usize,
}

impl Ctx {
    pub async fn put_config(&mut self, item: &Item, marked: bool) -> anyhow::Result<()> {
        let key = item.r.config_key();
        let version = self.versions.get(&key).copied().unwrap_or(0) + 1;
        let record = ConfigRecord {
            body: Body::new(item.body.clone()),
            version,
            marked_for_deletion: marked,
            extra: Default::default(),
        };
        let value = serde_json::to_vec(&record)?;
        // Fenced like Gohan's writes, so a copy that an etcd member applies
        // late (after a retry elsewhere) cannot land twice.
        let client = &self.cluster.client;
        let read = client.read(&key).await?.map(|r| r.mod_rev).unwrap_or(0);
        let txn = Fenced::new(
            vec![Cond::ModRev(key.clone(), read)],
            vec![Op::put(key.clone(), value.clone())],
        );
        let resp = client.commit(&txn).await?;
        let rev = if resp.succeeded {
            resp.revision
        } else {
            let now = self.cluster.client.get(key.clone(), None).await?;
            match now.kvs().first() {
                Some(kv) if kv.value() == value.as_slice() => kv.mod_revision(),
                _ => anyhow::bail!("{key} changed under the drill's write"),
            }
        };
        self.own.insert(rev);
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
        self.cluster.client.delete(key, None).await?;
        Ok(())
    }

    /// Keys under `prefix` (at most `n`).
    async fn keys(&self, prefix: &str, n: i64) -> anyhow::Result<Vec<String>> {
        let resp = self
            .cluster
            .client
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
        let wanted = |r: &Report| {
            let plural = self.catalog.schemas.plural_of(&r.rtype).unwrap_or_default();
            let resource = ResourceRef::new(plural, r.id.clone());
            if self.invalid.contains(&resource) {
                r.phase == Phase::Invalid
            } else {
                converge::converged(r)
                    && r.desired_version == self.versions.get(&resource.config_key()).copied()
            }
        };
        let client = self.cluster.client.clone();
        match converge::wait_until(&client, &self.catalog, self.within, wanted).await {
            Ok(_) => Ok(start.elapsed()),
            Err(stuck) => {
                let dead = self.cluster.dead_members();
                if dead.is_empty() {
                    anyhow::bail!("{stuck}")
                }
                anyhow::bail!("{stuck}; {}", dead.join("; "))
            }
        }
    }
}

/// Runs the fault of drill `name`. The cluster is converged when it starts.
pub async fn inject(name: Drill, c: &mut Ctx) -> anyhow::Result<()> {
    match name {
        Drill::WorkerKill => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.workers[0].kill().await;
            c.notes.push("worker SIGKILLed holding a claim".into());
            c.cluster.start_worker(false).await?;
        }
        Drill::ReconcilerKill => {
            c.bump(20).await?;
            c.wait_key("/jobs/all/").await?;
            c.cluster.reconcilers[0].kill().await;
            c.notes
                .push("reconciler SIGKILLed while issuing jobs".into());
            c.cluster.start_reconciler().await?;
        }
        Drill::JobKeysDeleted => {
            // Slow the worker down so jobs sit in every slot, then delete by hand.
            c.cluster.workers[0].signal(Signal::STOP);
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
            c.cluster.workers[0].signal(Signal::CONT);
            let working = c.wait_key("/jobs/working/").await?;
            c.delete(&working).await?;
            c.notes.push(format!(
                "deleted {} all/ or ready/ keys and 1 working/ key",
                ready.len()
            ));
        }
        Drill::StateDeleted => {
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
        Drill::StackRecordDeleted => {
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
        Drill::EtcdRestart => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.restart_etcd(Duration::from_secs(10)).await?;
            c.notes
                .push("etcd down for 10 s mid-jobs, restarted on its data dir".into());
        }
        Drill::Compaction => {
            // Freeze the reconciler, change things, compact and defragment
            // past its watch revision, then let it go on.
            c.cluster.reconcilers[0].signal(Signal::STOP);
            c.bump(20).await?;
            let rev = esi_reconciler::store::current_revision(&c.cluster.client).await?;
            c.cluster.client.compact(rev).await?;
            c.cluster
                .client
                .client()
                .await?
                .maintenance_client()
                .defragment()
                .await?;
            c.cluster.reconcilers[0].signal(Signal::CONT);
            c.notes.push(format!(
                "compacted at {rev} and defragmented while the reconciler was frozen"
            ));
        }
        Drill::WorkerHang => {
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
            c.cluster.workers[0].signal(Signal::STOP);
            c.cluster.start_worker(false).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.cluster.workers[0].signal(Signal::CONT);
            c.notes.push("a worker hung 5 s mid-job, past its 3 s job timeout and 2 s lease; a second worker took over".into());
        }
        Drill::EngineFails => {
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
        Drill::CorruptRecords => {
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
                let resp = c.cluster.client.put(k.clone(), v.clone(), None).await?;
                if k.starts_with("/config/") {
                    c.own
                        .insert(resp.header().map(|h| h.revision()).unwrap_or(0));
                }
                c.corrupt.insert(k, v);
            }
            c.notes
                .push("corrupt JSON under /config, /state and /jobs/all".into());
        }
        Drill::DoubleBump => {
            let r = c.bump(1).await?;
            let prefix = format!("/jobs/working/modify:heat_worker:port:{}:", r[0].id);
            c.wait_key(&prefix).await?;
            c.bump(1).await?;
            c.bump(1).await?;
            c.notes
                .push("one port bumped twice while its job was in flight".into());
        }
        Drill::TwoReconcilers => {
            c.bump(30).await?;
            c.notes.push("a second reconciler ran throughout".into());
        }
        Drill::NetworkCut => {
            c.bump(20).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.proxy.cut();
            tokio::time::sleep(Duration::from_secs(5)).await;
            c.cluster.proxy.restore();
            c.notes
                .push("the worker cut off from etcd for 5 s (past its lease) mid-job".into());
        }
        Drill::EtcdLeaderKill => {
            c.bump(10).await?;
            c.wait_key("/jobs/working/").await?;
            let first = c.cluster.etcd.wait_leader(c.within).await?;
            c.cluster.etcd.kill(first).await;
            c.bump(10).await?;
            c.converged().await?;
            c.cluster.etcd.restart(first).await?;
            // Once the restarted member is one of the quorum again (caught
            // up, not merely listening: under load that takes a while),
            // take the leader down once more.
            c.cluster.etcd.wait_caught_up(first, c.within).await?;
            let second = c.cluster.etcd.wait_leader(c.within).await?;
            c.cluster.etcd.kill(second).await;
            c.bump(10).await?;
            c.notes.push(format!(
                "etcd leader m{first} SIGKILLed mid-jobs (restarted after convergence), then leader m{second}"
            ));
        }
        Drill::EtcdMemberFreeze => {
            c.bump(10).await?;
            c.wait_key("/jobs/working/").await?;
            let leader = c.cluster.etcd.wait_leader(c.within).await?;
            c.cluster.etcd.signal(leader, Signal::STOP);
            c.bump(10).await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            c.cluster.etcd.signal(leader, Signal::CONT);
            c.notes.push(format!(
                "etcd leader m{leader} frozen (SIGSTOP) for 10 s mid-jobs: it answers nothing and holds connections open"
            ));
        }
        Drill::EtcdPartition => {
            c.bump(10).await?;
            c.wait_key("/jobs/working/").await?;
            c.cluster.proxy.blackhole();
            c.bump(10).await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            c.cluster.proxy.restore();
            c.notes.push(
                "etcd member m0 partitioned from every process for 10 s (connections open, nothing passes)".into(),
            );
        }
        Drill::EtcdRestore => {
            let dir = tempfile::tempdir()?;
            let snap = dir.path().join("snapshot.db");
            c.cluster.etcd.snapshot(&snap).await?;
            let versions = c.versions.clone();
            let before = esi_reconciler::store::current_revision(&c.cluster.client).await?;
            // Work the restore will erase, some of it in flight.
            c.bump(10).await?;
            c.wait_key("/jobs/working/").await?;
            let lost_at = esi_reconciler::store::current_revision(&c.cluster.client).await?;
            // The old history ends here: judge it now, then follow the new one.
            let old = c.ledger.entries().await;
            let findings = ledger::check(&old, &c.own);
            c.earlier_actions += findings.actions;
            c.violations.extend(findings.violations);
            c.violations.extend(
                findings
                    .duplicates
                    .into_iter()
                    .map(|d| format!("before the restore: {d}")),
            );
            c.ledger.stop();
            c.cluster.etcd.restore(&snap).await?;
            c.versions = versions;
            let from = esi_reconciler::store::current_revision(&c.cluster.client).await?;
            c.ledger = Ledger::start(c.cluster.client.clone(), from);
            // New work on the restored store must converge within 30 s.
            let t = Instant::now();
            let changed: Vec<ResourceRef> = c.bump(10).await?;
            c.within = c.within.min(Duration::from_secs(30));
            c.converged()
                .await
                .map_err(|e| anyhow::anyhow!("new work after the restore: {e}"))?;
            c.notes.push(format!(
                "restored every member from a snapshot at revision {before} while at {lost_at} (now {from}); {} new changes converged {:.1} s after the restore",
                changed.len(),
                t.elapsed().as_secs_f64()
            ));
        }
        Drill::EtcdQuorumLoss => {
            c.bump(10).await?;
            c.wait_key("/jobs/working/").await?;
            // The leader and one more: the last member alone is no quorum,
            // so nothing can be read linearizably or written, and leases
            // neither renew nor expire, until they come back.
            let leader = c.cluster.etcd.wait_leader(c.within).await?;
            let other = (leader + 1) % 3;
            c.cluster.etcd.kill(leader).await;
            c.cluster.etcd.kill(other).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            c.cluster.etcd.restart(leader).await?;
            c.cluster.etcd.restart(other).await?;
            c.bump(10).await?;
            c.notes.push(format!(
                "etcd members m{leader} (the leader) and m{other} SIGKILLed mid-jobs: no quorum for 10 s, then both restarted"
            ));
        }
        Drill::ReplicaKill => {
            let split = owned_split(c).await;
            let mut victim = c.cluster.reconcilers.remove(0);
            victim.kill().await;
            c.bump(30).await?;
            let gone = members_after(c, 2, MEMBER_TTL * 4).await?;
            c.notes.push(format!(
                "3 replicas owned {split:?} resources; one SIGKILLed: its member key expired after {:.1} s (TTL {} s), the survivors took over",
                gone.as_secs_f64(),
                MEMBER_TTL.as_secs()
            ));
        }
        Drill::ReplicaFreeze => {
            c.cluster.reconcilers[0].signal(Signal::STOP);
            c.bump(30).await?;
            let gone = members_after(c, 2, MEMBER_TTL * 4).await?;
            // Converged by the other two while it is still frozen.
            c.converged().await?;
            c.cluster.reconcilers[0].signal(Signal::CONT);
            // Thawed, it registers again and acts on its share; whatever it
            // had in flight is fenced on the membership it lost.
            members_after(c, 3, MEMBER_TTL * 4).await?;
            c.bump(10).await?;
            c.notes.push(format!(
                "one of 3 replicas frozen (SIGSTOP) past its {} s lease: its key expired after {:.1} s, the other two converged its resources, then it thawed and rejoined",
                MEMBER_TTL.as_secs(),
                gone.as_secs_f64()
            ));
        }
    }
    Ok(())
}

/// Checks made after a drill converged; returns failures.
pub async fn after(name: Drill, c: &mut Ctx) -> Vec<String> {
    let mut failures = vec![];
    let worker_failed = async |c: &Ctx| {
        let mut sum = 0.0;
        for w in &c.cluster.workers {
            sum += crate::scrape::scrape(&w.metrics, "esi_worker_jobs_total{result=\"failed\"}")
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    let sum_over = async |c: &Ctx, metric: &str| {
        let mut sum = 0.0;
        for m in c.cluster.reconcilers.iter().chain(c.cluster.workers.iter()) {
            sum += crate::scrape::scrape(&m.metrics, metric)
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    match name {
        Drill::EtcdLeaderKill
        | Drill::EtcdMemberFreeze
        | Drill::EtcdPartition
        | Drill::EtcdQuorumLoss => {
            // A member down costs no job; with no quorum at all, jobs may
            // fail (and are retried): counted, not a failure.
            let failed = worker_failed(c).await;
            if failed > 0.0 && name != Drill::EtcdQuorumLoss {
                failures.push(format!(
                    "{failed} jobs failed while an etcd member was down"
                ));
            }
            let failovers = sum_over(c, "esi_reconciler_etcd_failovers_total").await
                + sum_over(c, "esi_worker_etcd_failovers_total").await;
            let errors = sum_over(c, "esi_reconciler_errors_total{reason=\"etcd\"}").await;
            let resets = sum_over(c, "esi_reconciler_etcd_store_resets_total").await
                + sum_over(c, "esi_worker_etcd_store_resets_total").await;
            if resets > 0.0 {
                failures.push(format!(
                    "{resets} store resets reported: a member failure was taken for a restore"
                ));
            }
            let retries = sum_over(c, "esi_reconciler_etcd_retries_total").await
                + sum_over(c, "esi_worker_etcd_retries_total").await;
            if name == Drill::EtcdQuorumLoss && retries == 0.0 {
                failures.push("no request was retried: the quorum was never lost".into());
            }
            c.notes.push(format!(
                "{failed} jobs failed; {failovers} failovers, {retries} requests retried, {errors} reconciles failed on etcd"
            ));
        }
        Drill::EtcdRestore => {
            for m in c.cluster.reconcilers.iter().chain(c.cluster.workers.iter()) {
                let metric = if m.role == "worker" {
                    "esi_worker_etcd_store_resets_total"
                } else {
                    "esi_reconciler_etcd_store_resets_total"
                };
                if crate::scrape::scrape(&m.metrics, metric)
                    .await
                    .unwrap_or(0.0)
                    < 1.0
                {
                    failures.push(format!(
                        "the {} did not report the restore ({metric})",
                        m.role
                    ));
                }
            }
        }
        Drill::ReplicaKill | Drill::ReplicaFreeze => {
            let handovers = sum_over(c, "esi_reconciler_handovers_total").await;
            if handovers < 1.0 {
                failures.push("no replica reports a hand-over".into());
            }
            c.notes.push(format!("{handovers} resources handed over"));
        }
        _ => {}
    }
    failures
}

/// The resources each reconciler replica owns, from its metrics (polled
/// until they add up to every resource: the gauges refresh every 2 s).
async fn owned_split(c: &Ctx) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut out = vec![];
        for r in &c.cluster.reconcilers {
            out.push(
                crate::scrape::scrape(&r.metrics, "esi_reconciler_owned_resources")
                    .await
                    .unwrap_or(0.0) as u64,
            );
        }
        if out.iter().sum::<u64>() as usize >= c.scenario.items.len() || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until exactly `n` replicas are registered; returns how long it took.
async fn members_after(c: &Ctx, n: usize, within: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let members =
            esi_reconciler::reconcile::membership::list_members(&c.cluster.client).await?;
        if members.len() == n {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < within,
            "{} replicas registered after {within:?}, expected {n}",
            members.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    crate::demo::load_templates(&c.client).await?;
    Ok(())
}
