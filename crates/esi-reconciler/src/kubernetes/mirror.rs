//! Mirrors every ESI resource into an `EsiResource` in one namespace, with
//! server-side apply (field manager `esi-reconciler`), only when something
//! changed, in batches and rate-limited. Mirrors of resources gone from etcd
//! are deleted. Annotations pause a resource or clear its backoff, and
//! actions and failures become Kubernetes Events.
//!
//! The mirror never plans: the controller sends each reconcile's report
//! through a channel ([`Update`]), and the mirror writes the latest one per
//! resource. Nothing here can hold up reconciling: the channel never blocks
//! its sender, and every Kubernetes call happens in the mirror's own tasks,
//! retried on the next round if it fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::crd::*;
use crate::clock::now_ms;
use crate::esi::Catalog;
use crate::esi::keys::ResourceRef;
use crate::reconcile::action::ActionKind;
use crate::reconcile::controller::{Controller, Happened, Update};
use crate::reconcile::plan::Phase;
use crate::reconcile::report::{self, Report};

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub namespace: String,
    /// How often changed resources are written.
    pub interval: Duration,
    /// Kubernetes writes per second, at most.
    pub qps: u32,
    /// Name of this reconciler in Events.
    pub reporter: String,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            interval: Duration::from_millis(500),
            qps: 50,
            reporter: "esi-reconciler".into(),
        }
    }
}

/// A valid object name for a resource: DNS-1123, lower case, ≤ 253.
pub fn object_name(rtype: &str, id: &str) -> String {
    let raw = format!("{rtype}-{id}").to_lowercase();
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    let lossless = clean == raw.replace('_', "-");
    if lossless && clean.len() <= 253 && !clean.is_empty() {
        return clean;
    }
    let hash = crate::engine::hot::stable_id(rtype, id);
    // Both are ASCII, so these cuts fall on character boundaries.
    let head = clean.get(..clean.len().min(230)).unwrap_or_default();
    format!("{head}-{}", hash.get(..8).unwrap_or(&hash))
}

fn rfc3339(ms: u64) -> Option<String> {
    (ms > 0)
        .then(|| {
            jiff::Timestamp::from_millisecond(ms as i64)
                .map(|t| t.to_string())
                .ok()
        })
        .flatten()
}

/// The object and status a report mirrors to.
pub fn mirror_of(r: &Report, previous: &[Condition], now: u64) -> (EsiResource, EsiResourceStatus) {
    let mut obj = EsiResource::new(
        &object_name(&r.rtype, &r.id),
        EsiResourceSpec {
            resource_type: r.rtype.clone(),
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            desired: if r.desired == report::Desired::Absent {
                Desired::Absent
            } else {
                Desired::Present
            },
            desired_version: r.desired_version.unwrap_or(0) as i64,
        },
    );
    obj.metadata.labels = Some(
        [
            (TYPE_LABEL.to_string(), r.rtype.clone()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ]
        .into(),
    );
    let ready = r.phase == Phase::Converged;
    let synced = !matches!(r.phase, Phase::Invalid | Phase::Failed);
    let condition = |type_: &str, ok: bool, reason: &str| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .or_else(|| rfc3339(now))
            .unwrap_or_default();
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: r.message.clone(),
            last_transition_time: since,
        }
    };
    let status = EsiResourceStatus {
        observed_version: r.observed_version.map(|v| v as i64),
        stack_status: r.stack_status.clone(),
        worker_state: r.worker_state.clone(),
        phase: r.phase.as_str().to_string(),
        message: r.message.clone(),
        attempts: r.attempts as i32,
        next_retry: rfc3339(r.next_retry_ms),
        last_action: r.last_action.clone(),
        last_action_time: rfc3339(r.last_action_ms),
        last_error: r.last_error.clone(),
        conditions: vec![
            condition("Ready", ready, r.phase.as_str()),
            condition("Synced", synced, r.phase.as_str()),
        ],
    };
    (obj, status)
}

/// What was last written for one mirror.
struct Written {
    fingerprint: String,
    conditions: Vec<Condition>,
}

/// An Event to publish.
struct PendingEvent {
    name: String,
    type_: EventType,
    reason: String,
    note: String,
}

pub struct KubeMirror {
    client: Client,
    api: Api<EsiResource>,
    cfg: MirrorConfig,
    catalog: Arc<Catalog>,
    store: Store<EsiResource>,
    writer: Mutex<Option<reflector::store::Writer<EsiResource>>>,
    events: Mutex<Vec<PendingEvent>>,
    /// The latest report per resource not yet written (`None`: gone).
    pending: Mutex<HashMap<ResourceRef, Option<Box<Report>>>>,
}

impl KubeMirror {
    pub fn new(client: Client, catalog: Arc<Catalog>, cfg: MirrorConfig) -> Arc<Self> {
        let api = Api::namespaced(client.clone(), &cfg.namespace);
        let (store, writer) = reflector::store();
        Arc::new(Self {
            client,
            api,
            cfg,
            catalog,
            store,
            writer: Mutex::new(Some(writer)),
            events: Mutex::new(vec![]),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts mirroring what `controller` reports on `updates` (see
    /// [`Controller::publishing`]).
    pub fn start(
        self: &Arc<Self>,
        controller: Arc<Controller>,
        updates: UnboundedReceiver<Update>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let watch = tokio::spawn(self.clone().watch_annotations(controller.clone()));
        let receive = tokio::spawn(self.clone().receive(updates));
        let sync = tokio::spawn(self.clone().sync_loop(controller));
        vec![watch, receive, sync]
    }

    fn resource_of(&self, obj: &EsiResource) -> Option<ResourceRef> {
        let plural = self.catalog.schemas.plural_of(&obj.spec.resource_type)?;
        Some(ResourceRef::new(plural, obj.spec.id.clone()))
    }

    /// Keeps a local copy of the mirrors (for pause lookups) and acts on
    /// annotation changes: pause and unpause reconcile the resource again,
    /// retry-now clears its backoff.
    async fn watch_annotations(self: Arc<Self>, controller: Arc<Controller>) {
        let Some(writer) = Self::lock(&self.writer).take() else {
            return;
        };
        let stream = watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        futures::pin_mut!(stream);
        // The paused mirrors, by name: the controller holds the same set. A
        // mirror deleted, or found gone by a relist, is paused no more.
        let mut paused: HashMap<String, ResourceRef> = HashMap::new();
        let mut listed: Option<HashSet<String>> = None;
        while let Some(ev) = stream.next().await {
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(r) = paused.remove(&o.name_any()) {
                        controller.set_paused(&r, false);
                    }
                    continue;
                }
                Ok(watcher::Event::Init) => {
                    listed = Some(HashSet::new());
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let seen = listed.take().unwrap_or_default();
                    paused.retain(|name, r| {
                        let keep = seen.contains(name);
                        if !keep {
                            controller.set_paused(r, false);
                        }
                        keep
                    });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching EsiResources");
                    continue;
                }
            };
            let name = obj.name_any();
            // Only the resource's own mirror speaks for it (not another
            // object whose spec names it).
            let Some(r) = self
                .resource_of(&obj)
                .filter(|r| self.name_of(r).as_deref() == Some(name.as_str()))
            else {
                continue;
            };
            if let Some(l) = listed.as_mut() {
                l.insert(name.clone());
            }
            let is_paused = obj
                .annotations()
                .get(PAUSED_ANNOTATION)
                .is_some_and(|v| v == "true");
            let changed = if is_paused {
                paused.insert(name.clone(), r.clone()).is_none()
            } else {
                paused.remove(&name).is_some()
            };
            if changed {
                controller.set_paused(&r, is_paused);
            }
            if obj.annotations().contains_key(RETRY_NOW_ANNOTATION) {
                if let Err(e) = controller.retry_now(&r).await {
                    tracing::warn!(resource = %r, error = %e, "retry-now failed");
                    continue;
                }
                let patch = json!({"metadata": {"annotations": {RETRY_NOW_ANNOTATION: null}}});
                if let Err(e) = self
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(%name, error = %e, "could not remove the retry-now annotation");
                }
                self.queue_event(
                    &name,
                    EventType::Normal,
                    "RetryRequested",
                    "backoff cleared on request".into(),
                );
            }
        }
    }

    fn queue_event(&self, name: &str, type_: EventType, reason: &str, note: String) {
        let mut e = Self::lock(&self.events);
        if e.len() < 10_000 {
            e.push(PendingEvent {
                name: name.to_string(),
                type_,
                reason: reason.to_string(),
                note,
            });
        }
    }

    /// Turns what a reconcile did into an Event of the resource's mirror.
    fn event_for(&self, r: &ResourceRef, happened: Happened) {
        let Some(name) = self.name_of(r) else { return };
        match happened {
            Happened::Applied { actions, note } if !actions.is_empty() => {
                let (t, reason) = if actions.contains(&ActionKind::RecordFailure) {
                    (EventType::Warning, "JobFailed")
                } else {
                    (EventType::Normal, "Reconciled")
                };
                self.queue_event(&name, t, reason, note);
            }
            Happened::Applied { .. } => {}
            Happened::Held(reason) => {
                self.queue_event(&name, EventType::Normal, "Deferred", reason)
            }
            Happened::Failed(e) => {
                self.queue_event(&name, EventType::Warning, "ReconcileFailed", e)
            }
        }
    }

    /// Takes the controller's updates as they come, keeping the latest
    /// report per resource: however slow the writes, what waits is at most
    /// one report per resource.
    async fn receive(self: Arc<Self>, mut updates: UnboundedReceiver<Update>) {
        while let Some(u) = updates.recv().await {
            match u {
                Update::Reconciled {
                    resource,
                    report,
                    happened,
                } => {
                    if let Some(h) = happened {
                        self.event_for(&resource, h);
                    }
                    Self::lock(&self.pending).insert(resource, Some(report));
                }
                Update::Gone(r) => {
                    Self::lock(&self.pending).insert(r, None);
                }
            }
        }
    }

    /// Writes the latest report of every resource the controller reported
    /// since the last round; deletes mirrors of resources gone from etcd
    /// (checked in full after a relist, after a failure and every
    /// 600 rounds).
    async fn sync_loop(self: Arc<Self>, controller: Arc<Controller>) {
        let mut written: HashMap<String, Written> = HashMap::new();
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: self.cfg.reporter.clone(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let mut tick = tokio::time::interval(self.cfg.interval);
        let mut round: u64 = 0;
        let mut full = true;
        let mut seen_epoch = 0;
        loop {
            tick.tick().await;
            if !controller
                .ready_flag()
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            round = round.wrapping_add(1);
            // A store restored from a snapshot: what it no longer holds must
            // lose its mirror too, so go over everything.
            let epoch = controller.listed_epoch();
            if epoch != seen_epoch {
                seen_epoch = epoch;
                full = true;
            }
            let mut failed = false;
            let pause = Duration::from_millis(
                1000_u64
                    .checked_div(u64::from(self.cfg.qps))
                    .unwrap_or(1000),
            );
            let batch: Vec<(ResourceRef, Option<Box<Report>>)> =
                std::mem::take(&mut *Self::lock(&self.pending))
                    .into_iter()
                    .collect();
            for (r, report) in batch {
                // Each resource is mirrored by the replica that owns it.
                let owned = controller.owns(&r);
                let Some(report) = report else {
                    // Gone from etcd: its owner deletes its mirror.
                    if let Some(name) = self.name_of(&r).filter(|_| owned) {
                        written.remove(&name);
                        if let Err(e) = self.api.delete(&name, &DeleteParams::default()).await
                            && !is_not_found(&e)
                        {
                            Self::lock(&self.pending).entry(r).or_insert(None);
                            failed = true;
                        }
                    }
                    continue;
                };
                let name = object_name(&report.rtype, &report.id);
                if !owned {
                    written.remove(&name);
                    continue;
                }
                let previous = written
                    .get(&name)
                    .map(|w| w.conditions.clone())
                    .unwrap_or_default();
                let (obj, status) = mirror_of(&report, &previous, now_ms());
                let fingerprint =
                    serde_json::to_string(&(&obj.spec, &obj.metadata.labels, &status))
                        .unwrap_or_default();
                if written
                    .get(&name)
                    .is_some_and(|w| w.fingerprint == fingerprint)
                {
                    continue;
                }
                match self.apply(&name, &obj, &status).await {
                    Ok(()) => {
                        written.insert(
                            name,
                            Written {
                                fingerprint,
                                conditions: status.conditions,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::debug!(%name, error = %e, "mirror write failed; retrying next round");
                        // A newer report that arrived meanwhile wins.
                        Self::lock(&self.pending).entry(r).or_insert(Some(report));
                        failed = true;
                    }
                }
                tokio::time::sleep(pause).await;
            }
            if full && !failed {
                let live: HashSet<String> = controller
                    .world()
                    .read()
                    .await
                    .resources()
                    .filter_map(|(r, _)| self.name_of(r))
                    .collect();
                failed = self.collect_garbage(&live, &mut written).await.is_err();
            }
            self.publish_events(&recorder).await;
            // After a failure (e.g. the apiserver restarted), or now and then,
            // go over everything again.
            full = failed || round.is_multiple_of(600);
        }
    }

    fn name_of(&self, r: &ResourceRef) -> Option<String> {
        let t = self.catalog.schemas.singular_of(&r.plural)?;
        Some(object_name(t, &r.id))
    }

    async fn apply(
        &self,
        name: &str,
        obj: &EsiResource,
        status: &EsiResourceStatus,
    ) -> Result<(), kube::Error> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let mut body = serde_json::to_value(obj).unwrap_or_default();
        if let Some(m) = body.as_object_mut() {
            m.remove("status");
        }
        self.api.patch(name, &pp, &Patch::Apply(&body)).await?;
        let status_patch = json!({
            "apiVersion": EsiResource::api_version(&()),
            "kind": EsiResource::kind(&()),
            "status": status,
        });
        self.api
            .patch_status(name, &pp, &Patch::Apply(&status_patch))
            .await?;
        Ok(())
    }

    /// Deletes managed mirrors whose resource is gone.
    async fn collect_garbage(
        &self,
        live: &HashSet<String>,
        written: &mut HashMap<String, Written>,
    ) -> Result<(), kube::Error> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        for obj in self.api.list(&lp).await? {
            let name = obj.name_any();
            if !live.contains(&name) {
                written.remove(&name);
                match self.api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn publish_events(&self, recorder: &Recorder) {
        let pending: Vec<PendingEvent> = std::mem::take(&mut *Self::lock(&self.events));
        for ev in pending {
            let Some(obj) = self
                .store
                .get(&ObjectRef::new(&ev.name).within(&self.cfg.namespace))
            else {
                continue;
            };
            let reference = obj.object_ref(&());
            let event = Event {
                type_: ev.type_,
                reason: ev.reason.clone(),
                note: Some(ev.note.chars().take(1000).collect()),
                action: ev.reason,
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an event");
            }
        }
    }

    /// Creates the namespace-scoped objects the mirror needs to exist (none
    /// besides the CRD) and checks the API answers, so a misconfiguration
    /// is reported at start.
    pub async fn check(&self) -> Result<(), kube::Error> {
        self.api
            .list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
