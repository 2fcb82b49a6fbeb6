//! The reconciler's runtime: mirror etcd into the world, queue every
//! resource a change touches, and run plan → execute for each, at most once
//! per resource at a time and `concurrency` at once, with a periodic resync
//! as a safety net.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Etcd;
use tokio::sync::{RwLock, Semaphore, mpsc, watch};

use crate::esi::Catalog;
use crate::esi::keys::ResourceRef;
use crate::store::mirror::{self, Reflector, Step};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::PhaseLabel;
use futures::StreamExt;

use super::action::{Action, ActionKind};
use super::backoff::BackoffPolicy;
use super::decide::decide_for;
use super::execute::{ExecError, Executor, Outcome};
use super::membership::{self, Membership};
use super::observed::Observed;
use super::phase_book::PhaseBook;
use super::plan::{Hold, HoldCause, Phase, Plan};
use super::queue::{Priority, Queue};
use super::report::Report;
use super::snapshot::mirror_options;
use super::sparse::Sparse;
use super::world::{Touched, World};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Reconciles running at once.
    pub concurrency: usize,
    /// Delay that coalesces bursts of changes to one resource.
    pub debounce: Duration,
    /// Every resource is reconciled at least this often.
    pub resync: Duration,
    /// Retry policy for failed jobs (persisted) and for errors (in memory).
    pub backoff: BackoffPolicy,
    /// Keys per page when listing etcd.
    pub page_size: i64,
    /// Delete configs and stack records once their deletion completed, as
    /// Gohan does (for deployments without Gohan).
    pub purge_deleted: bool,
    /// This replica's id among the reconcilers sharing the work (default:
    /// host name and a random suffix).
    pub replica_id: Option<String>,
    /// TTL of the lease behind this replica's membership: a replica that
    /// dies hands its resources over within it.
    pub member_ttl: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            debounce: Duration::from_millis(5),
            resync: Duration::from_secs(300),
            backoff: BackoffPolicy::default(),
            page_size: 1000,
            purge_deleted: false,
            replica_id: None,
            member_ttl: Duration::from_secs(10),
        }
    }
}

use crate::clock::now_ms;

/// Most slices a resync period is cut into (one tick each).
const RESYNC_SLICES: u32 = 60;

/// The shortest tick between resync slices: each tick reads through the
/// whole world to find its slice, so a short period is cut into fewer
/// slices rather than read more often.
const RESYNC_MIN_TICK: Duration = Duration::from_secs(1);

/// How many slices a resync `period` is cut into: one per second of it,
/// between 1 and [`RESYNC_SLICES`] (60 for the 5 minute default).
fn resync_slices(period: Duration) -> u32 {
    let n = period
        .as_millis()
        .checked_div(RESYNC_MIN_TICK.as_millis())
        .unwrap_or(0);
    u32::try_from(n)
        .unwrap_or(RESYNC_SLICES)
        .clamp(1, RESYNC_SLICES)
}

/// The slice (in `0..slices`) a resource whose hash is `hash` is resynced
/// in. Multiply-shift rather than `%`: uniform without a division, and
/// with no bias toward low slices.
fn resync_slice(hash: u64, slices: u32) -> u32 {
    let wide = u128::from(hash).saturating_mul(u128::from(slices));
    u32::try_from(wide.checked_shr(64).unwrap_or(0)).unwrap_or(0)
}

/// The resources of the world resynced in `slice` of `slices`, read in
/// place (no copy of the whole world per tick). A resource's stable hash
/// is the same every tick, so it falls in the same slice of every period
/// and is resynced exactly once per period. `settled` ones (converged, and
/// unchanged since) are left out: planning them again would change
/// nothing, and at 100k they are nearly all of them.
fn resync_due<'a>(
    w: &'a World,
    slice: u32,
    slices: u32,
    settled: impl Fn(u64, i64) -> bool + 'a,
) -> impl Iterator<Item = &'a ResourceRef> {
    w.resources()
        .filter(move |(_, e)| resync_slice(e.hash, slices) == slice && !settled(e.hash, e.changed))
        .map(|(r, _)| r)
}

pub struct Controller {
    client: Etcd,
    world: Arc<RwLock<World>>,
    queue: Queue<ResourceRef>,
    executor: Executor,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    revision: watch::Sender<i64>,
    cfg: ControllerConfig,
    /// Consecutive errors per resource, for in-memory retry delays.
    errors: Mutex<HashMap<ResourceRef, u32>>,
    /// Resources whose job waits for another resource, by that resource.
    deferred: Mutex<HashMap<ResourceRef, HashSet<ResourceRef>>>,
    /// Where each reconcile's report goes (the Kubernetes mirror), if anywhere.
    updates: Option<mpsc::UnboundedSender<Update>>,
    /// Resources an operator paused: planned, but not acted on.
    paused: Mutex<HashSet<ResourceRef>>,
    /// The phase each resource's last plan found, for the gauges.
    phases: Mutex<PhaseBook>,
    /// The store epoch the world was listed in: a reconcile acts only while
    /// it is the store's current one (never from the view of a store that
    /// was since restored).
    listed_epoch: std::sync::atomic::AtomicU64,
    membership: Arc<Membership>,
    /// The schemas' reference graph orders what is queued at once.
    catalog: Arc<Catalog>,
}

/// What a reconcile tells whoever follows the controller (the Kubernetes
/// mirror): the resource as an operator sees it now, and what happened.
#[derive(Debug, Clone)]
pub enum Update {
    Reconciled {
        resource: ResourceRef,
        report: Box<Report>,
        happened: Option<Happened>,
    },
    /// Every record of the resource is gone from etcd.
    Gone(ResourceRef),
}

/// What a reconcile did that is worth an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    /// Actions landed; `note` lists them with why.
    Applied {
        actions: Vec<ActionKind>,
        note: String,
    },
    /// The due job waits (for a referenced resource).
    Held(String),
    /// The reconcile failed, or the job cannot be built.
    Failed(String),
}

impl Controller {
    pub fn new(
        client: Etcd,
        catalog: Arc<Catalog>,
        cfg: ControllerConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::build(client, catalog, cfg, metrics, None)
    }

    /// A controller that sends an [`Update`] after every reconcile of a
    /// resource it owns, and when a resource is gone.
    pub fn publishing(
        client: Etcd,
        catalog: Arc<Catalog>,
        cfg: ControllerConfig,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Update>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self::build(client, catalog, cfg, metrics, Some(tx)), rx)
    }

    fn build(
        client: Etcd,
        catalog: Arc<Catalog>,
        cfg: ControllerConfig,
        metrics: Arc<Metrics>,
        updates: Option<mpsc::UnboundedSender<Update>>,
    ) -> Arc<Self> {
        let world = Arc::new(RwLock::new(World::new(catalog.clone())));
        let membership = Membership::new(
            client.clone(),
            cfg.replica_id
                .clone()
                .unwrap_or_else(membership::default_id),
            cfg.member_ttl,
        );
        let executor = Executor::new(client.clone()).with_membership(membership.clone());
        Arc::new(Self {
            client,
            world,
            queue: Queue::new(cfg.debounce),
            executor,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            revision: watch::channel(0).0,
            cfg,
            errors: Mutex::new(HashMap::new()),
            deferred: Mutex::new(HashMap::new()),
            updates,
            paused: Mutex::new(HashSet::new()),
            phases: Mutex::new(PhaseBook::default()),
            listed_epoch: std::sync::atomic::AtomicU64::new(0),
            membership,
            catalog,
        })
    }

    /// Pauses `r` (an operator's annotation) or lets it go on, and plans
    /// it again.
    pub fn set_paused(&self, r: &ResourceRef, paused: bool) {
        let changed = {
            let mut set = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            if paused {
                set.insert(r.clone())
            } else {
                set.remove(r)
            }
        };
        if changed {
            self.queue.schedule(r.clone());
        }
    }

    fn is_paused(&self, r: &ResourceRef) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(r)
    }

    fn publish(&self, u: Update) {
        if let Some(tx) = &self.updates {
            // Closed only when the follower stopped: nothing to tell then.
            let _ = tx.send(u);
        }
    }

    /// Queues `r` for a reconcile.
    pub fn enqueue(&self, r: ResourceRef) {
        self.queue.schedule(r);
    }

    /// Clears `r`'s backoff (an operator asked to retry now) and reconciles it.
    pub async fn retry_now(&self, r: &ResourceRef) -> Result<(), ExecError> {
        let o = Observed::from_world(&*self.world.read().await, r, now_ms());
        if let Some(o) = o {
            let p = Plan::only(&o, Action::ClearBackoff, "retry requested");
            if let Outcome::Applied { revision, .. } = self.executor.execute(&p).await? {
                self.caught_up(revision).await;
            }
        }
        self.queue.schedule(r.clone());
        Ok(())
    }

    /// Whether this replica acts on `r` now (it owns it).
    pub fn owns(&self, r: &ResourceRef) -> bool {
        self.membership.view().owns(r)
    }

    /// The store epoch the world was last listed in (see `Etcd::epoch`).
    pub fn listed_epoch(&self) -> u64 {
        self.listed_epoch.load(Ordering::Relaxed)
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn world(&self) -> Arc<RwLock<World>> {
        self.world.clone()
    }

    /// True once the first list of etcd is loaded.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown` resolves, then lets reconciles in flight finish.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let events = mirror::stream(self.client.clone(), mirror_options(self.cfg.page_size));
        let ingest = tokio::spawn(self.clone().ingest(events));
        let members = tokio::spawn(self.membership.clone().run());
        let handover = tokio::spawn(self.clone().follow_membership());
        let resync = tokio::spawn(self.clone().resync());
        let stats = tokio::spawn(self.clone().stats());
        let slots = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        tokio::pin!(shutdown);
        loop {
            let r = tokio::select! {
                r = self.queue.next() => r,
                _ = &mut shutdown => break,
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            tokio::spawn(async move {
                // The slot is held until the world has seen the reconcile's
                // own write: freeing it earlier was measured to double
                // etcd's work (plans from views that lag, failing fences).
                match crate::panic_guard::catch(me.reconcile(&r)).await {
                    Ok(Some(revision)) => me.caught_up(revision).await,
                    Ok(None) => {}
                    Err(panic) => {
                        me.metrics.reconcile_panics.inc();
                        tracing::error!(resource = %r, %panic, "reconcile panicked; retrying with backoff");
                        me.queue.schedule_after(r.clone(), me.error_delay(&r));
                    }
                }
                me.queue.done(&r);
                drop(permit);
            });
        }
        tracing::info!("shutting down: waiting for reconciles in flight");
        let all = self.cfg.concurrency.max(1) as u32;
        let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await;
        self.membership.leave().await;
        for t in [ingest, resync, stats, members, handover] {
            t.abort();
        }
    }

    fn lock_deferred(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ResourceRef, HashSet<ResourceRef>>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what a change touched, each at the priority the change gave
    /// it; resources held for one of them are released ahead of new work.
    fn schedule(&self, touched: Touched, world: &World) {
        for (r, priority) in touched.resources {
            // Whatever waited for this resource may go on now.
            let waiting = {
                let mut deferred = self.lock_deferred();
                let waiting = deferred.remove(&r);
                if waiting.is_some() {
                    deferred.shrink_if_sparse();
                }
                waiting
            };
            for w in waiting.into_iter().flatten() {
                self.queue.schedule_as(w, Priority::Release);
            }
            self.queue.schedule_as(r, priority);
        }
        if let Some(t) = touched.template {
            for r in world.resources_using_template(&t) {
                self.queue.schedule(r);
            }
        }
    }

    /// Applies mirror events to the world. A relist is built aside and
    /// swapped in whole, so no reconcile ever sees a half-loaded world.
    async fn ingest(self: Arc<Self>, mut events: mirror::MirrorStream) {
        let catalog = self.world.read().await.catalog().clone();
        let mut reflector = Reflector::new(move || World::new(catalog.clone()));
        while let Some(ev) = events.next().await {
            match reflector.step(ev) {
                Step::Idle => {}
                Step::Replace {
                    view: mut fresh,
                    revision,
                    epoch,
                } => {
                    self.metrics.relists.inc();
                    fresh.revision = revision;
                    let mut all: HashSet<ResourceRef> =
                        fresh.resources().map(|(r, _)| r.clone()).collect();
                    tracing::info!(revision, resources = all.len(), "loaded etcd");
                    let old = std::mem::replace(&mut *self.world.write().await, fresh);
                    // What the store no longer holds (restored from an older
                    // snapshot) is reconciled too, so it is seen to be gone.
                    all.extend(old.resources().map(|(r, _)| r.clone()));
                    self.listed_epoch.store(epoch, Ordering::Relaxed);
                    self.phases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    self.schedule_all(all.into_iter().collect());
                    self.advance(revision);
                    self.ready.store(true, Ordering::Relaxed);
                }
                Step::Apply { revision, changes } => {
                    let mut w = self.world.write().await;
                    for c in &changes {
                        let t = w.apply(c);
                        self.schedule(t, &w);
                    }
                    w.revision = revision;
                    drop(w);
                    self.advance(revision);
                }
                Step::Progress { revision } => {
                    self.world.write().await.revision = revision;
                    self.advance(revision);
                }
                Step::Restart { reason } => {
                    self.metrics.watch_restarts.inc();
                    tracing::warn!(%reason, "etcd watch restarting");
                }
                Step::Reset { reason } => {
                    // Logged at WARN by the store layer, once per reset.
                    tracing::info!(%reason, "relisting etcd from scratch");
                }
            }
        }
    }

    /// Queues the resources this replica gains whenever the membership
    /// changes (a member joined or left, or we registered again).
    async fn follow_membership(self: Arc<Self>) {
        let mut rx = self.membership.subscribe();
        let mut before = rx.borrow_and_update().clone();
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            self.metrics.replica_members.set(now.members.len() as i64);
            if now.members != before.members {
                tracing::info!(members = ?now.members, replica = %now.me, "reconciler membership changed");
            }
            // Our own (re-)registration or a new list: everything we own
            // may have been skipped meanwhile, so all of it is queued.
            let all = now.registration != before.registration || now.listed != before.listed;
            let mut gained = 0u64;
            let queue: Vec<ResourceRef> = self
                .world
                .read()
                .await
                .resources()
                .map(|(r, _)| r)
                .filter(|r| now.owns(r))
                .filter(|r| {
                    let new = !before.owns(r);
                    gained = gained.saturating_add(u64::from(new));
                    all || new
                })
                .cloned()
                .collect();
            if before.registration.is_some() && before.listed && now.registration.is_some() {
                // Taken over from a member that left (not our own start).
                self.metrics.handovers.inc_by(gained);
            }
            self.schedule_all(queue);
            before = now;
        }
    }

    /// Queues many resources at once (after a list, or when this replica
    /// gains them), referenced types first: a cold start then issues a
    /// network's job before its ports are drafted, instead of drafting each
    /// port twice (held while the network has no job, then again).
    fn schedule_all(&self, mut all: Vec<ResourceRef>) {
        all.sort_by_cached_key(|r| self.catalog.schemas.depth(&r.plural));
        for r in all {
            self.queue.schedule(r);
        }
    }

    fn advance(&self, revision: i64) {
        self.revision.send_replace(revision);
        self.metrics.revision.set(revision);
    }

    /// Waits until the world has caught up with `revision` (our own write),
    /// so the next plan for the resource sees it.
    async fn caught_up(&self, revision: i64) {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Reconciles every resource once per `cfg.resync`, a slice of them
    /// at a time (see [`resync_slices`]): all at once was a burst of 100k
    /// reconciles every period at 100k resources, in front of real work.
    async fn resync(self: Arc<Self>) {
        let slices = resync_slices(self.cfg.resync);
        let every = self
            .cfg
            .resync
            .checked_div(slices)
            .unwrap_or(self.cfg.resync)
            .max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(every);
        // The first tick is at once: the first list has just queued all.
        tick.tick().await;
        let mut slice = 0u32;
        loop {
            tick.tick().await;
            // The queue is synchronous: scheduling under the read lock
            // spares collecting the slice, and no await happens under it.
            let w = self.world.read().await;
            let phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
            let mut n = 0usize;
            for r in resync_due(&w, slice, slices, |h, c| phases.settled(h, c)) {
                self.queue.schedule(r.clone());
                n = n.saturating_add(1);
            }
            drop(phases);
            drop(w);
            tracing::debug!(slice, slices, resources = n, "periodic resync");
            slice = slice.saturating_add(1);
            if slice >= slices {
                slice = 0;
            }
        }
    }

    /// Refreshes the gauges that summarise the world.
    async fn stats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let view = self.membership.view();
            let w = self.world.read().await;
            let mut counts: HashMap<Phase, i64> = HashMap::new();
            let mut owned: i64 = 0;
            {
                let phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
                for (r, e) in w.resources() {
                    if view.owns(r) {
                        owned = owned.saturating_add(1);
                        let phase = phases.by_hash(e.hash);
                        let n = counts.entry(phase).or_default();
                        *n = n.saturating_add(1);
                    }
                }
            }
            self.metrics.owned_resources.set(owned);
            let invalid = counts
                .get(&Phase::Invalid)
                .copied()
                .unwrap_or(0)
                .saturating_add(i64::try_from(w.unparsed().len()).unwrap_or(i64::MAX));
            drop(w);
            for p in Phase::ALL {
                self.metrics
                    .resources
                    .get_or_create(&PhaseLabel { phase: p.as_str() })
                    .set(counts.get(&p).copied().unwrap_or(0));
            }
            self.metrics.invalid_records.set(invalid);
            self.metrics.queue_depth.set(self.queue.len() as i64);
        }
    }

    fn error_delay(&self, r: &ResourceRef) -> Duration {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let n = errors.entry(r.clone()).or_insert(0);
        *n = n.saturating_add(1);
        self.cfg.backoff.delay(*n)
    }

    /// Plans and acts for one resource; returns the revision of its own
    /// last write, which the world must reach before it is planned again.
    async fn reconcile(&self, r: &ResourceRef) -> Option<i64> {
        if !self.owns(r) {
            // Another replica's (or none's, while we are not registered):
            // a membership change queues it again if it becomes ours.
            return None;
        }
        if self.listed_epoch.load(Ordering::Relaxed) != self.client.epoch() {
            // The store was restored since the world was listed: the relist
            // under way schedules every resource again.
            return None;
        }
        // The world's stamp before planning: if it moves meanwhile, the
        // plan is not taken as settled.
        let changed = self.world.read().await.entry(r).map_or(0, |e| e.changed);
        let decided = decide_for(&self.client, &self.world, r, now_ms(), |o| {
            o.purge_deleted = self.cfg.purge_deleted;
            o.paused = self.is_paused(r);
            o.backoff = self.cfg.backoff;
        })
        .await;
        let (o, p) = match decided {
            Ok(Some(d)) => d,
            Ok(None) => {
                // Nothing of it is left in etcd.
                self.forget(r);
                self.publish(Update::Gone(r.clone()));
                return None;
            }
            Err(e) => {
                let e = ExecError::from(e);
                self.failed(r, &e);
                return None;
            }
        };
        self.phases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(r, p.phase, changed);
        if let Some(ms) = p.requeue_after_ms {
            self.queue
                .schedule_after(r.clone(), Duration::from_millis(ms));
        }
        let (revision, happened) = self.act(r, &p).await;
        if self.updates.is_some() {
            self.publish(Update::Reconciled {
                resource: r.clone(),
                report: Box::new(Report::new(&o, &p)),
                happened,
            });
        }
        revision
    }

    /// Carries out what the plan decided: its actions, then its hold.
    async fn act(&self, r: &ResourceRef, p: &Plan) -> (Option<i64>, Option<Happened>) {
        if p.actions.is_empty() {
            if let Some(hold) = &p.hold {
                return (None, Some(self.held(r, p, hold).await));
            }
            if p.needs_draft {
                // Drafted from a config that changed meanwhile: the world
                // will show the change; plan again then.
                self.metrics.reconciled("conflict");
                self.queue.schedule(r.clone());
            } else {
                self.metrics.reconciled("noop");
            }
            return (None, None);
        }
        match self.executor.execute(p).await {
            Ok(Outcome::Applied { revision, actions }) => {
                for a in &actions {
                    self.metrics.action(a.as_str());
                    if *a == ActionKind::RecordFailure {
                        self.metrics.backoffs.inc();
                    }
                }
                tracing::info!(resource = %r, phase = %p.phase, actions = ?actions, "applied");
                self.metrics.reconciled("applied");
                if p.hold.is_some() || p.needs_draft {
                    // Jobs in flight were tidied ahead of a job that has to
                    // wait: plan again once the world has these writes
                    // (the hold is handled then, on the fresh status record).
                    self.queue.schedule(r.clone());
                } else {
                    let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
                    if errors.remove(r).is_some() {
                        errors.shrink_if_sparse();
                    }
                }
                // The event's text, for the Kubernetes mirror if it listens.
                let happened = self.updates.as_ref().map(|_| {
                    let note = p
                        .actions
                        .iter()
                        .map(|a| format!("{} ({})", a.action, a.why))
                        .collect::<Vec<_>>()
                        .join("; ");
                    Happened::Applied { actions, note }
                });
                (Some(revision), happened)
            }
            Ok(Outcome::Conflict {
                revision,
                action,
                applied,
            }) => {
                applied.iter().for_each(|a| self.metrics.action(a.as_str()));
                tracing::debug!(resource = %r, %action, "fence failed: view was stale; planning again");
                self.metrics.reconciled("conflict");
                // Planned again once the world has caught up.
                self.queue.schedule(r.clone());
                (Some(revision), None)
            }
            Err(e) => {
                self.executor.note_error(p, &e.to_string()).await;
                self.failed(r, &e);
                (None, Some(Happened::Failed(e.to_string())))
            }
        }
    }

    /// A due job that is not issued now: say why, and plan again later
    /// (at once when what it waits for changes).
    async fn held(&self, r: &ResourceRef, p: &Plan, hold: &Hold) -> Happened {
        if let Some(b) = &hold.blocked_on {
            self.lock_deferred()
                .entry(b.clone())
                .or_default()
                .insert(r.clone());
        }
        // Waiting is expected and passes: `get` plans it live, so it costs
        // no write (at a cold start it would cost one per port). Why a job
        // cannot be built or read is kept in our status record.
        if hold.cause != HoldCause::Waiting {
            self.executor.note_error(p, &hold.reason).await;
        } else if !p.status.last_error.is_empty() {
            // An error noted earlier no longer holds it up.
            self.executor.note_error(p, "").await;
        }
        self.queue.schedule_after(r.clone(), self.error_delay(r));
        match hold.cause {
            HoldCause::Waiting => {
                tracing::info!(resource = %r, reason = %hold.reason, "deferred");
                self.metrics.reconciled("deferred");
                Happened::Held(hold.reason.clone())
            }
            HoldCause::Unbuildable | HoldCause::Unreadable => {
                let label = if hold.cause == HoldCause::Unbuildable {
                    "build_job"
                } else {
                    "etcd"
                };
                tracing::warn!(resource = %r, error = %hold.reason, "reconcile failed");
                self.metrics.error(label);
                self.metrics.reconciled("error");
                Happened::Failed(hold.reason.clone())
            }
        }
    }

    fn failed(&self, r: &ResourceRef, e: &ExecError) {
        tracing::warn!(resource = %r, error = %e, "reconcile failed");
        self.metrics.error(e.reason());
        self.metrics.reconciled("error");
        self.queue.schedule_after(r.clone(), self.error_delay(r));
    }

    /// Drops what is kept in memory for a resource gone from etcd.
    fn forget(&self, r: &ResourceRef) {
        self.phases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kv;

    #[test]
    fn every_hash_falls_in_exactly_one_slice_and_the_slices_are_even() {
        for slices in [1u32, 7, 60] {
            let n = 60_000u64;
            let mut per_slice = vec![0usize; slices as usize];
            for i in 0..n {
                let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
                let hits: Vec<u32> = (0..slices)
                    .filter(|s| resync_slice(h, slices) == *s)
                    .collect();
                assert_eq!(hits.len(), 1, "hash {h:#x} in slices {hits:?} of {slices}");
                per_slice[hits[0] as usize] += 1;
            }
            let mean = n as usize / slices as usize;
            for (s, c) in per_slice.iter().enumerate() {
                assert!(
                    *c > mean * 8 / 10 && *c < mean * 12 / 10,
                    "slice {s} of {slices} holds {c} (mean {mean})"
                );
            }
        }
        assert_eq!(resync_slice(0, 60), 0);
        assert_eq!(resync_slice(u64::MAX, 60), 59);
    }

    #[test]
    fn over_a_period_the_resync_picks_every_resource_exactly_once() {
        let mut w = World::new(Arc::new(Catalog::load(None, None).unwrap()));
        let total = 600;
        for i in 0..total {
            w.put(&Kv {
                key: format!("/config/v2.0/ports/p{i}"),
                value: serde_json::to_vec(&serde_json::json!({
                    "body": {"id": format!("p{i}")}, "version": 1
                }))
                .unwrap(),
                mod_revision: 2,
                create_revision: 2,
                lease: 0,
            });
        }
        assert_eq!(w.resource_count(), total);
        let slices = resync_slices(Duration::from_secs(300));
        let mut seen: HashMap<ResourceRef, u32> = HashMap::new();
        let mut largest = 0;
        for s in 0..slices {
            let mut n = 0;
            for r in resync_due(&w, s, slices, |_, _| false) {
                *seen.entry(r.clone()).or_default() += 1;
                n += 1;
            }
            largest = largest.max(n);
        }
        assert_eq!(seen.len(), total);
        assert!(seen.values().all(|n| *n == 1), "{seen:?}");
        // Settled resources (converged, unchanged since) are left out.
        let due: usize = (0..slices)
            .map(|s| resync_due(&w, s, slices, |h, _| h % 2 == 0).count())
            .sum();
        let unsettled = w.resources().filter(|(_, e)| e.hash % 2 != 0).count();
        assert_eq!(due, unsettled);
        // Spread over the period, not one burst (10 a slice on average).
        assert!(largest < 30, "a slice held {largest} of {total}");
    }

    #[test]
    fn the_resync_period_is_cut_into_ticks_of_at_least_a_second() {
        assert_eq!(resync_slices(Duration::from_secs(300)), 60);
        assert_eq!(resync_slices(Duration::from_secs(3600)), 60);
        assert_eq!(resync_slices(Duration::from_secs(30)), 30);
        assert_eq!(resync_slices(Duration::from_millis(1500)), 1);
        assert_eq!(resync_slices(Duration::ZERO), 1);
    }
}
