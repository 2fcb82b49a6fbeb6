//! The heat worker (`esi-reconciler worker`): claims ready `heat_worker`
//! jobs as the ESI protocol does and drives an [`Engine`] to realise them.
//!
//! One lease per process backs every claim; `slots` jobs run at once. On
//! shutdown it stops claiming, lets running jobs finish within a grace
//! period, then gives the rest back to `ready/` and revokes its lease.

pub mod cache;
pub mod claim;
pub mod job;
pub mod params;
pub mod render;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::Etcd;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::engine::Engine;
use crate::esi::Catalog;
use crate::esi::keys::{JOBS_READY, JobId};
use crate::store::Change;
use crate::store::mirror::{self, MirrorOptions, Reflector, Step, View};
use crate::telemetry::metrics::WorkerMetrics;
use futures::StreamExt;

use job::{JobOutcome, JobRunner, JobSettings};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The handler whose jobs this worker takes (`heat_worker`).
    pub handler: String,
    /// Jobs at once.
    pub slots: usize,
    /// TTL of the lease behind every claim.
    pub lease_ttl: Duration,
    /// How long running jobs may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub job: JobSettings,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            handler: "heat_worker".into(),
            slots: 8,
            lease_ttl: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            job: JobSettings {
                timeout_cap: None,
                poll_min: Duration::from_millis(50),
                poll_max: Duration::from_secs(2),
                limits: crate::limits::Limits::current(),
            },
        }
    }
}

pub struct Worker<E> {
    client: Etcd,
    runner: Arc<JobRunner<E>>,
    cfg: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
    ready: Arc<AtomicBool>,
}

impl<E: Engine> Worker<E> {
    pub fn new(
        client: Etcd,
        catalog: Arc<Catalog>,
        engine: Arc<E>,
        cfg: WorkerConfig,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        let runner = Arc::new(JobRunner::new(
            client.clone(),
            catalog,
            engine,
            cfg.job.clone(),
        ));
        Self {
            client,
            runner,
            cfg,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True once the worker holds a lease and has listed the ready jobs.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (lease_tx, mut lease_rx) = watch::channel(0i64);
        let m = self.metrics.clone();
        let keeper = tokio::spawn(crate::store::lease::keep(
            self.client.clone(),
            self.cfg.lease_ttl,
            lease_tx,
            move || {
                m.lease_lost.inc();
            },
        ));
        let mut events = mirror::stream(self.client.clone(), MirrorOptions::prefix(JOBS_READY));
        let handler = self.cfg.handler.clone();
        let skipped = Skipped::default();
        let skip = skipped.clone();
        let mut reflector = Reflector::new(move || ReadyJobs::new(&handler, skip.clone()));
        let mut ready = ReadyJobs::new(&self.cfg.handler, skipped.clone());
        let slots = Arc::new(Semaphore::new(self.cfg.slots.max(1)));
        let freed = Arc::new(Notify::new());
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (retry_tx, mut retry_rx) = mpsc::channel::<Queued>(1024);
        tokio::pin!(shutdown);
        loop {
            // Start as many ready jobs as there are free slots.
            // Marks the lease seen, so `changed()` below waits for a new one.
            let lease = *lease_rx.borrow_and_update();
            while !ready.is_empty() && lease != 0 {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some((queued_rev, id)) = ready.pop_oldest() else {
                    break;
                };
                let Ok(job_id) = id.parse::<JobId>() else {
                    continue;
                };
                let runner = self.runner.clone();
                let client = self.client.clone();
                let metrics = self.metrics.clone();
                let cancel = cancel_rx.clone();
                let freed = freed.clone();
                let back = Back {
                    retry: retry_tx.clone(),
                    skipped: skipped.clone(),
                };
                tokio::spawn(async move {
                    let job = Queued {
                        id: job_id,
                        queued_rev,
                    };
                    run_one(&client, &runner, &metrics, &job, lease, cancel, back).await;
                    drop(permit);
                    freed.notify_one();
                });
            }
            tokio::select! {
                Some(job) = retry_rx.recv() => {
                    ready.requeue(job.id.to_string(), job.queued_rev);
                }
                ev = events.next() => {
                    let Some(ev) = ev else { break };
                    match reflector.update(&mut ready, ev) {
                        Step::Replace { .. } => self.ready.store(true, Ordering::Relaxed),
                        Step::Restart { reason } => tracing::warn!(%reason, "ready-job watch restarting"),
                        Step::Reset { reason } => tracing::info!(%reason, "listing ready jobs again"),
                        Step::Idle | Step::Apply { .. } | Step::Progress { .. } => {}
                    }
                    self.metrics.ready_jobs.set(ready.len() as i64);
                }
                _ = freed.notified() => {}
                _ = lease_rx.changed() => {}
                _ = &mut shutdown => break,
            }
        }
        drop(events);
        tracing::info!(grace = ?self.cfg.shutdown_grace, "stopped claiming; letting running jobs finish");
        let all = self.cfg.slots.max(1) as u32;
        if tokio::time::timeout(self.cfg.shutdown_grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::info!("grace period over: releasing the jobs still running");
            let _ = cancel_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
        }
        keeper.abort();
        let lease = *lease_rx.borrow();
        if lease != 0 {
            let _ = self.client.lease_revoke(lease).await;
        }
        tracing::info!("worker stopped");
    }
}

/// The ready jobs of our handler, oldest first, kept from the mirror of
/// `/jobs/ready/`.
struct ReadyJobs {
    handler: Vec<u8>,
    /// (revision, id), oldest first.
    queue: BTreeSet<(i64, String)>,
    revs: HashMap<String, i64>,
    skipped: Skipped,
}

/// Jobs whose record did not parse, given back as they were: not taken
/// again. Shared by the job tasks, which add
/// a job here *before* giving it back (the `ready/` key it rewrites comes
/// back through the watch, maybe before the task could tell the loop).
#[derive(Clone, Default)]
struct Skipped(Arc<std::sync::Mutex<HashSet<String>>>);

/// Jobs skipped at most: beyond, they are forgotten (and each tried once
/// more), so hostile records cannot grow the worker without bound.
const MAX_SKIPPED: usize = 10_000;

impl Skipped {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, id: &str) {
        let mut s = self.lock();
        if s.len() >= MAX_SKIPPED {
            s.clear();
        }
        s.insert(id.to_string());
    }
}

impl ReadyJobs {
    fn new(handler: &str, skipped: Skipped) -> Self {
        Self {
            handler: handler.as_bytes().to_vec(),
            queue: BTreeSet::new(),
            revs: HashMap::new(),
            skipped,
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    /// The oldest job and the revision it was queued at.
    fn pop_oldest(&mut self) -> Option<(i64, String)> {
        let (rev, id) = self.queue.pop_first()?;
        self.revs.remove(&id);
        Some((rev, id))
    }

    /// Back in line (where it was), unless it left `ready/` meanwhile.
    fn requeue(&mut self, id: String, rev: i64) {
        if !self.revs.contains_key(&id) {
            self.revs.insert(id.clone(), rev);
            self.queue.insert((rev, id));
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.revs.remove(id) {
            self.queue.remove(&(old, id.to_string()));
        }
    }
}

impl View for ReadyJobs {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(kv) => {
                let id = ready_id(&kv.key);
                self.remove(&id);
                // Another handler's job: not ours to take.
                if kv.value == self.handler && !self.skipped.lock().contains(&id) {
                    self.revs.insert(id.clone(), kv.mod_revision);
                    self.queue.insert((kv.mod_revision, id));
                }
            }
            // A skipped job stays skipped: the claim's own delete of its
            // `ready/` key comes back here too, maybe after the skip.
            // (Job ids are unique, so a job issued anew is not skipped.)
            Change::Delete { key, .. } => self.remove(&ready_id(key)),
        }
    }
}

/// The job id of a `/jobs/ready/` key (the watch is on that prefix).
fn ready_id(key: &str) -> String {
    key.strip_prefix(JOBS_READY).unwrap_or(key).to_string()
}

/// Claim attempts (0.5 s apart, each bounded by the request timeout) with
/// one reservation before a job goes back in line.
const CLAIM_ATTEMPTS: u32 = 20;

/// A ready job as popped from the queue.
struct Queued {
    id: JobId,
    /// Its `ready/` key's mod revision: its place in line if it goes back.
    queued_rev: i64,
}

/// Where a job task hands back a job it could not run.
struct Back {
    /// Back in line (etcd was unreachable).
    retry: mpsc::Sender<Queued>,
    /// Never again (its record does not parse).
    skipped: Skipped,
}

async fn run_one<E: Engine>(
    client: &Etcd,
    runner: &JobRunner<E>,
    metrics: &WorkerMetrics,
    job: &Queued,
    lease: i64,
    cancel: watch::Receiver<bool>,
    back: Back,
) {
    let id = &job.id;
    let again = || Queued {
        id: id.clone(),
        queued_rev: job.queued_rev,
    };
    // One reservation for every attempt at this job: a claim whose answer
    // was lost may still land, and only its reservation shows it is ours.
    let reservation = claim::new_reservation();
    let mut attempts = 0;
    let c = loop {
        match claim::claim(client, id, lease, runner.resource_keys(id), &reservation).await {
            Ok(Some(claim::Claimed::Job(c))) => break *c,
            Ok(Some(claim::Claimed::Unreadable(u))) => {
                tracing::warn!(job = %id, reason = %u.reason, "job record does not parse; left as found");
                metrics.finished("invalid");
                back.skipped.add(&id.to_string());
                // Ours (under the lease this process keeps renewing) until
                // it is given back: keep trying while etcd is away.
                let mut tries = 0u32;
                while let Err(e) = u.give_back(client).await {
                    tries = tries.saturating_add(1);
                    if tries >= CLAIM_ATTEMPTS {
                        tracing::error!(job = %id, error = %crate::store::client::describe(&e), "cannot give the job back; it stays claimed until this worker stops");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                return;
            }
            Ok(None) => {
                metrics.claim_conflicts.inc();
                return;
            }
            Err(e) if attempts < CLAIM_ATTEMPTS => {
                attempts = attempts.saturating_add(1);
                tracing::warn!(job = %id, error = %crate::store::client::describe(&e), "cannot claim yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                // etcd unreachable for long: the job is still ready; it goes
                // back in line.
                tracing::warn!(job = %id, error = %crate::store::client::describe(&e), "cannot claim yet");
                let _ = back.retry.send(again()).await;
                return;
            }
        }
    };
    metrics.claimed.inc();
    metrics.in_flight.inc();
    tracing::info!(job = %id, "claimed");
    let outcome = match crate::panic_guard::catch(runner.run(&c, cancel)).await {
        Ok(outcome) => outcome,
        Err(panic) => {
            metrics.job_panics.inc();
            tracing::error!(job = %id, %panic, "job task panicked; failing the job");
            runner
                .fail(&c, format!("heat worker bug: the job panicked: {panic}"))
                .await
        }
    };
    metrics.in_flight.dec();
    match &outcome {
        JobOutcome::Completed => metrics.finished("completed"),
        JobOutcome::Failed(_) => metrics.finished("failed"),
        JobOutcome::ClaimLost => metrics.finished("claim_lost"),
        JobOutcome::Released => metrics.finished("released"),
    }
    match outcome {
        JobOutcome::Failed(reason) => tracing::warn!(job = %id, %reason, "job failed"),
        other => tracing::info!(job = %id, outcome = ?other, "job ended"),
    }
}
