//! The reconciler's in-memory mirror of etcd: a compact summary of every
//! resource's records and every job in flight, at one revision.
//!
//! Only what planning needs is kept (versions, statuses, revisions), not the
//! config bodies: a draft reads a body when a job is due (keeping those that
//! other jobs reference, in [`ConfigBodies`]). That keeps memory per
//! resource small at 100k resources.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::esi::Catalog;
use crate::esi::job::CompiledTemplate;
use crate::esi::keys::{EsiKey, JobId, JobSlot, ResourceRef};
use crate::esi::mapping::eval::referenced;
use crate::esi::mapping::select::TemplateChoice;
use crate::esi::records::{
    self, ConfigRecord, HeatStack, HeatTemplate, JobEnvelope, JobState, StateRecord,
};
use crate::store::{Change, Kv};

use super::bodies::ConfigBodies;
use super::sparse::Sparse;

use super::status::ResourceStatus;

use super::queue::Priority;

/// A record as read: its mod revision and its summary, or why it did not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub mod_rev: i64,
    pub value: Result<T, String>,
}

impl<T> Parsed<T> {
    pub fn ok(&self) -> Option<&T> {
        self.value.as_ref().ok()
    }
    pub fn error(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }
}

/// Which template a resource uses, interned: many resources share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateUse {
    pub handler: String,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSummary {
    pub version: u64,
    pub marked: bool,
    /// The body's `tenant_id`, interned.
    pub tenant: Option<Arc<str>>,
    /// `None`: the mappings say this resource has no template (no job).
    pub template: Option<Arc<TemplateUse>>,
}

// The summaries below hold the few fields planning needs, with repeated
// strings (states, statuses) interned and rare ones boxed: the world holds
// one entry per resource, and is benchmarked at 100k of them.

#[derive(Debug, Clone, PartialEq)]
pub struct StateSummary {
    pub version: u64,
    /// Interned: a handful of values repeat across every resource.
    pub worker_state: Arc<str>,
    pub error: Box<str>,
}

impl StateSummary {
    pub fn is_failed(&self) -> bool {
        !self.error.is_empty() || self.worker_state.ends_with("_FAILED")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StackSummary {
    /// Interned.
    pub status: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobStateSummary {
    /// Interned.
    pub orchestration_state: Option<Arc<str>>,
}

/// What the world keeps of our own status record: inline, with its one
/// repeated string interned, so a converged resource costs no allocation
/// here. Fields of the record this version does not know are not kept
/// (the record is ours; the next write drops them).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSummary {
    pub attempts: u32,
    pub version: u64,
    pub next_retry_ms: u64,
    pub failure_revision: i64,
    pub last_action: Arc<str>,
    pub last_action_ms: u64,
    /// `None`: no error (the common case, no allocation).
    pub last_error: Option<Box<str>>,
}

impl StatusSummary {
    /// The record form, for planning and writing.
    pub fn to_status(&self) -> ResourceStatus {
        ResourceStatus {
            attempts: self.attempts,
            version: self.version,
            next_retry_ms: self.next_retry_ms,
            failure_revision: self.failure_revision,
            last_action: self.last_action.to_string(),
            last_action_ms: self.last_action_ms,
            last_error: self.last_error.as_deref().unwrap_or_default().to_string(),
            extra: Default::default(),
        }
    }
}

/// Everything recorded for one resource.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub rtype: Arc<str>,
    /// The resource's [`stable_hash`](ResourceRef::stable_hash), computed
    /// once: the resync slices and the phase gauges go over every resource
    /// every few seconds, and hashing the names each time was most of an
    /// idle reconciler's CPU.
    pub hash: u64,
    /// The revision of the last change that touched the resource: a plan
    /// made since then, and settled, would be made again the same.
    pub changed: i64,
    pub config: Option<Parsed<ConfigSummary>>,
    pub state: Option<Parsed<StateSummary>>,
    pub stack: Option<Parsed<StackSummary>>,
    pub job_state: Option<Parsed<JobStateSummary>>,
    pub status: Option<Parsed<StatusSummary>>,
    /// Ids of this resource's jobs that have any key under `/jobs/`.
    pub jobs: Vec<String>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.config.is_none()
            && self.state.is_none()
            && self.stack.is_none()
            && self.job_state.is_none()
            && self.status.is_none()
            && self.jobs.is_empty()
    }
}

/// What the reconciler keeps of a job document.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDoc {
    /// Ids of the jobs it waits for.
    pub dependency: Vec<String>,
    /// Resources its params reference, as (singular type, id).
    pub references: Vec<(String, String)>,
}

/// The keys of one job across `/jobs/{all,waiting,ready,working,finished}`.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub id: JobId,
    /// `all/`: mod revision and the job document's summary, or a parse error.
    pub all: Option<Parsed<JobDoc>>,
    pub waiting: Option<i64>,
    pub ready: Option<i64>,
    /// `working/`: mod revision and lease id (0: no lease).
    pub working: Option<(i64, i64)>,
    pub finished: Option<i64>,
}

impl JobEntry {
    fn new(id: JobId) -> Self {
        Self {
            id,
            all: None,
            waiting: None,
            ready: None,
            working: None,
            finished: None,
        }
    }
    fn is_empty(&self) -> bool {
        self.all.is_none()
            && self.waiting.is_none()
            && self.ready.is_none()
            && self.working.is_none()
            && self.finished.is_none()
    }
    /// Still to be done: its `all/` entry exists and it is not finished.
    pub fn is_unfinished(&self) -> bool {
        self.all.is_some() && self.finished.is_none()
    }
}

/// A template as loaded from etcd.
#[derive(Debug, Clone)]
pub struct TemplateEntry {
    pub mod_rev: i64,
    pub compiled: Result<Arc<CompiledTemplate>, String>,
}

/// What a change touched: resources to reconcile again.
#[derive(Debug, Default)]
pub struct Touched {
    /// Each with how urgently, which only the change itself can tell (a
    /// finished job and a new config touch the same resource): a job's end
    /// is [`Priority::Finish`] for its own resource and
    /// [`Priority::Release`] for those waiting on it, anything else
    /// [`Priority::Issue`].
    pub resources: Vec<(ResourceRef, Priority)>,
    /// A template changed: resources using it may move on.
    pub template: Option<String>,
}

impl Touched {
    fn one(r: ResourceRef, p: Priority) -> Self {
        Self {
            resources: vec![(r, p)],
            template: None,
        }
    }
}

pub struct World {
    catalog: Arc<Catalog>,
    pub revision: i64,
    resources: HashMap<ResourceRef, Entry>,
    jobs: HashMap<String, JobEntry>,
    templates: HashMap<String, TemplateEntry>,
    /// Keys inside our prefixes that do not parse, with the reason.
    unparsed: BTreeMap<String, String>,
    /// (type, id) → jobs whose params reference that resource.
    referenced_by: HashMap<(String, String), HashSet<String>>,
    /// Job id → jobs whose `dependency` names it: who may move on when it
    /// ends, found without scanning every waiting job.
    dependents: HashMap<String, HashSet<String>>,
    interned: HashSet<Arc<TemplateUse>>,
    interned_strs: HashSet<Arc<str>>,
    /// Bodies of referenced configs, checked against `resources`' revisions.
    bodies: ConfigBodies,
}

impl World {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            revision: 0,
            resources: HashMap::new(),
            jobs: HashMap::new(),
            templates: HashMap::new(),
            unparsed: BTreeMap::new(),
            referenced_by: HashMap::new(),
            dependents: HashMap::new(),
            interned: HashSet::new(),
            interned_strs: HashSet::new(),
            bodies: ConfigBodies::default(),
        }
    }

    /// The config bodies drafts keep (see [`ConfigBodies`]).
    pub fn bodies(&self) -> &ConfigBodies {
        &self.bodies
    }

    /// The mod revision of `r`'s config as the world has it.
    pub fn config_rev(&self, r: &ResourceRef) -> Option<i64> {
        self.resources.get(r)?.config.as_ref().map(|c| c.mod_rev)
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Forgets everything: a fresh list follows.
    pub fn clear(&mut self) {
        let catalog = self.catalog.clone();
        *self = World::new(catalog);
    }

    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    pub fn resources(&self) -> impl Iterator<Item = (&ResourceRef, &Entry)> {
        self.resources.iter()
    }

    pub fn entry(&self, r: &ResourceRef) -> Option<&Entry> {
        self.resources.get(r)
    }

    pub fn job(&self, id: &str) -> Option<&JobEntry> {
        self.jobs.get(id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs.values()
    }

    pub fn template(&self, id: &str) -> Option<&TemplateEntry> {
        self.templates.get(id)
    }

    pub fn templates(&self) -> impl Iterator<Item = (&String, &TemplateEntry)> {
        self.templates.iter()
    }

    pub fn unparsed(&self) -> &BTreeMap<String, String> {
        &self.unparsed
    }

    /// Resources with a job that waits for job `id`: queued as
    /// [`Priority::Release`] when it ends.
    fn resources_waiting_for(&self, id: &str) -> Vec<(ResourceRef, Priority)> {
        self.dependents
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|j| self.jobs.get(j))
            .filter_map(|j| self.resource_of_job(&j.id))
            .map(|r| (r, Priority::Release))
            .collect()
    }

    /// Resources whose config chose template `id`.
    pub fn resources_using_template(&self, id: &str) -> Vec<ResourceRef> {
        self.resources
            .iter()
            .filter(|(_, e)| {
                e.config
                    .as_ref()
                    .and_then(Parsed::ok)
                    .and_then(|c| c.template.as_ref())
                    .is_some_and(|t| t.template == id)
            })
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Unfinished jobs of a resource (by singular type and id).
    pub fn unfinished_jobs_of(&self, rtype: &str, id: &str) -> Vec<&JobEntry> {
        let Some(r) = self.resource_of_job_type(rtype, id) else {
            return vec![];
        };
        self.resources
            .get(&r)
            .map(|e| {
                e.jobs
                    .iter()
                    .filter_map(|j| self.jobs.get(j))
                    .filter(|j| j.is_unfinished())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Unfinished jobs of other resources whose params reference this one.
    pub fn unfinished_jobs_referencing(&self, rtype: &str, id: &str) -> Vec<&JobEntry> {
        let Some(ids) = self.referenced_by.get(&(rtype.to_string(), id.to_string())) else {
            return vec![];
        };
        let mut jobs: Vec<&JobEntry> = ids
            .iter()
            .filter_map(|j| self.jobs.get(j))
            .filter(|j| {
                j.is_unfinished() && !(j.id.resource_type == rtype && j.id.resource_id == id)
            })
            .collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        jobs
    }

    /// Adds or removes a job document's entries in the reverse indexes
    /// (what it references, what it waits for).
    fn index_job(&mut self, job: &str, doc: Option<&JobDoc>, add: bool) {
        let Some(doc) = doc else { return };
        for r in &doc.references {
            index(&mut self.referenced_by, r, job, add);
        }
        for d in &doc.dependency {
            index(&mut self.dependents, d, job, add);
        }
    }

    pub fn resource_of_job(&self, id: &JobId) -> Option<ResourceRef> {
        self.resource_of_job_type(&id.resource_type, &id.resource_id)
    }

    /// The key form of a resource named by singular type and id.
    pub fn resource_of_job_type(&self, rtype: &str, id: &str) -> Option<ResourceRef> {
        let plural = self.catalog.schemas.plural_of(rtype)?;
        Some(ResourceRef::new(plural, id))
    }

    /// Interns a short, often repeated string (type names, tenants,
    /// states). Bounded, so odd values written by hand cannot grow it
    /// without end: past the bound a value is simply allocated.
    fn intern(&mut self, s: &str) -> Arc<str> {
        const MAX_INTERNED: usize = 4096;
        if let Some(t) = self.interned_strs.get(s) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(s);
        if self.interned_strs.len() < MAX_INTERNED {
            self.interned_strs.insert(t.clone());
        }
        t
    }

    fn intern_template(&mut self, handler: String, template: String) -> Arc<TemplateUse> {
        let u = TemplateUse { handler, template };
        if let Some(t) = self.interned.get(&u) {
            return t.clone();
        }
        let t = Arc::new(u);
        self.interned.insert(t.clone());
        t
    }

    /// The singular type of a plural the reconciler manages, or `None` for
    /// resources it leaves alone (unknown or without a template mapping).
    fn managed_type(&mut self, plural: &str) -> Option<Arc<str>> {
        let singular = self.catalog.schemas.singular_of(plural)?.to_string();
        self.catalog
            .mappings
            .is_mapped(&singular)
            .then(|| self.intern(&singular))
    }

    fn entry_mut(&mut self, r: &ResourceRef, rtype: Arc<str>) -> &mut Entry {
        self.resources.entry(r.clone()).or_insert_with(|| Entry {
            rtype,
            hash: r.stable_hash(),
            ..Entry::default()
        })
    }

    fn prune(&mut self, r: &ResourceRef) {
        if self.resources.get(r).is_some_and(Entry::is_empty) {
            self.resources.remove(r);
            self.resources.shrink_if_sparse();
        }
    }

    /// Applies one change from the mirror; says which resources (and
    /// which template) it touched.
    pub fn apply(&mut self, change: &Change) -> Touched {
        let (touched, revision) = match change {
            Change::Put(kv) => (self.put(kv), kv.mod_revision),
            Change::Delete { key, revision } => (self.delete(key), *revision),
        };
        for (r, _) in &touched.resources {
            if let Some(e) = self.resources.get_mut(r) {
                e.changed = e.changed.max(revision);
            }
        }
        touched
    }

    /// Applies a put.
    pub fn put(&mut self, kv: &Kv) -> Touched {
        self.unparsed.remove(&kv.key);
        let key = match EsiKey::parse(&kv.key) {
            Ok(Some(k)) => k,
            Ok(None) => return Touched::default(),
            Err(e) => {
                self.unparsed.insert(kv.key.clone(), e.to_string());
                return Touched::default();
            }
        };
        let rev = kv.mod_revision;
        let mut touched = Touched::default();
        match key {
            EsiKey::Template(id) => {
                let compiled = records::parse::<ConfigRecord>("heat template", &kv.value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| HeatTemplate::from_config(&r).map_err(|e| e.to_string()))
                    .and_then(|t| {
                        CompiledTemplate::compile(&t)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    });
                self.templates.insert(
                    id.clone(),
                    TemplateEntry {
                        mod_rev: rev,
                        compiled,
                    },
                );
                touched.template = Some(id);
            }
            EsiKey::Config(r) => {
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let value = self.summarize_config(&rtype, &kv.value);
                self.entry_mut(&r, rtype).config = Some(Parsed {
                    mod_rev: rev,
                    value,
                });
                touched.resources.push((r, Priority::Issue));
            }
            EsiKey::State(r) => {
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let value = records::parse::<StateRecord>("state", &kv.value)
                    .map(|s| StateSummary {
                        version: s.version,
                        worker_state: self.intern(&s.state.worker_state),
                        error: s.error.into(),
                    })
                    .map_err(|e| e.to_string());
                self.entry_mut(&r, rtype).state = Some(Parsed {
                    mod_rev: rev,
                    value,
                });
                touched.resources.push((r, Priority::Issue));
            }
            EsiKey::HeatStack(r) => {
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let value = records::parse::<HeatStack>("heat stack", &kv.value)
                    .map(|s| StackSummary {
                        status: self.intern(&s.stack_status),
                    })
                    .map_err(|e| e.to_string());
                self.entry_mut(&r, rtype).stack = Some(Parsed {
                    mod_rev: rev,
                    value,
                });
                touched.resources.push((r, Priority::Issue));
            }
            EsiKey::JobState(r) => {
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let value = records::parse::<JobState>("job state", &kv.value)
                    .map(|s| JobStateSummary {
                        orchestration_state: s.orchestration_state.map(|o| self.intern(&o)),
                    })
                    .map_err(|e| e.to_string());
                self.entry_mut(&r, rtype).job_state = Some(Parsed {
                    mod_rev: rev,
                    value,
                });
                touched.resources.push((r, Priority::Issue));
            }
            EsiKey::Reconciler(r) => {
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let value = records::parse::<ResourceStatus>("reconciler status", &kv.value)
                    .map(|s| StatusSummary {
                        attempts: s.attempts,
                        version: s.version,
                        next_retry_ms: s.next_retry_ms,
                        failure_revision: s.failure_revision,
                        last_action: self.intern(&s.last_action),
                        last_action_ms: s.last_action_ms,
                        last_error: (!s.last_error.is_empty()).then(|| s.last_error.into()),
                    })
                    .map_err(|e| e.to_string());
                self.entry_mut(&r, rtype).status = Some(Parsed {
                    mod_rev: rev,
                    value,
                });
                touched.resources.push((r, Priority::Issue));
            }
            EsiKey::Job(slot, id) => {
                let Some(r) = self.resource_of_job(&id) else {
                    self.unparsed.insert(
                        kv.key.clone(),
                        format!("job for unknown resource type {}", id.resource_type),
                    );
                    return touched;
                };
                let Some(rtype) = self.managed_type(&r.plural) else {
                    return touched;
                };
                let id_str = id.to_string();
                let job = self
                    .jobs
                    .entry(id_str.clone())
                    .or_insert_with(|| JobEntry::new(id));
                let mut reindex = None;
                // The worker's result is in: collecting it comes first.
                let own = if slot == JobSlot::Finished {
                    Priority::Finish
                } else {
                    Priority::Issue
                };
                match slot {
                    JobSlot::All => {
                        let value = records::parse::<JobEnvelope>("job", &kv.value)
                            .map(|env| JobDoc {
                                references: referenced(&env.1.params)
                                    .into_iter()
                                    .map(|r| (r.resource_type, r.resource_id))
                                    .collect(),
                                dependency: env.1.dependency,
                            })
                            .map_err(|e| e.to_string());
                        let new = value.as_ref().ok().cloned();
                        let old = job.all.replace(Parsed {
                            mod_rev: rev,
                            value,
                        });
                        reindex = Some((old.and_then(|o| o.value.ok()), new));
                    }
                    JobSlot::Waiting => job.waiting = Some(rev),
                    JobSlot::Ready => job.ready = Some(rev),
                    JobSlot::Working => job.working = Some((rev, kv.lease)),
                    JobSlot::Finished => {
                        job.finished = Some(rev);
                        // Whatever waits for this job may move on.
                        touched
                            .resources
                            .extend(self.resources_waiting_for(&id_str));
                    }
                }
                if let Some((old, new)) = reindex {
                    self.index_job(&id_str, old.as_ref(), false);
                    self.index_job(&id_str, new.as_ref(), true);
                }
                let e = self.entry_mut(&r, rtype);
                if !e.jobs.contains(&id_str) {
                    e.jobs.push(id_str);
                }
                touched.resources.push((r, own));
            }
        }
        touched
    }

    fn summarize_config(&mut self, rtype: &str, bytes: &[u8]) -> Result<ConfigSummary, String> {
        let rec: ConfigRecord = records::parse("config", bytes).map_err(|e| e.to_string())?;
        let choice = self
            .catalog
            .mappings
            .choose(rtype, &rec.body.fields, rec.version, &self.catalog.schemas)
            .map_err(|e| format!("cannot choose a template: {e}"))?;
        let template = match choice {
            TemplateChoice::Template { handler, template } => {
                Some(self.intern_template(handler, template))
            }
            TemplateChoice::None | TemplateChoice::Unmapped => None,
        };
        let tenant = rec
            .body
            .fields
            .get("tenant_id")
            .and_then(serde_json::Value::as_str)
            .map(|t| self.intern(t));
        Ok(ConfigSummary {
            version: rec.version,
            marked: rec.marked_for_deletion,
            tenant,
            template,
        })
    }

    fn clear_part(&mut self, r: ResourceRef, f: impl FnOnce(&mut Entry)) -> Touched {
        let Some(e) = self.resources.get_mut(&r) else {
            return Touched::default();
        };
        f(e);
        self.prune(&r);
        Touched::one(r, Priority::Issue)
    }

    /// Applies a delete.
    pub fn delete(&mut self, key: &str) -> Touched {
        self.unparsed.remove(key);
        let mut touched = Touched::default();
        let Ok(Some(k)) = EsiKey::parse(key) else {
            return touched;
        };
        match k {
            EsiKey::Template(id) => {
                self.templates.remove(&id);
                touched.template = Some(id);
            }
            EsiKey::Config(r) => return self.clear_part(r, |e| e.config = None),
            EsiKey::State(r) => return self.clear_part(r, |e| e.state = None),
            EsiKey::HeatStack(r) => return self.clear_part(r, |e| e.stack = None),
            EsiKey::JobState(r) => return self.clear_part(r, |e| e.job_state = None),
            EsiKey::Reconciler(r) => return self.clear_part(r, |e| e.status = None),
            EsiKey::Job(slot, id) => {
                let id_str = id.to_string();
                let Some(job) = self.jobs.get_mut(&id_str) else {
                    return touched;
                };
                let mut unindex = None;
                match slot {
                    JobSlot::All => unindex = job.all.take().and_then(|o| o.value.ok()),
                    JobSlot::Waiting => job.waiting = None,
                    JobSlot::Ready => job.ready = None,
                    JobSlot::Working => job.working = None,
                    JobSlot::Finished => job.finished = None,
                }
                let empty = job.is_empty();
                if slot == JobSlot::All {
                    // Whatever waits for this job may move on.
                    touched
                        .resources
                        .extend(self.resources_waiting_for(&id_str));
                }
                self.index_job(&id_str, unindex.as_ref(), false);
                if empty {
                    self.jobs.remove(&id_str);
                    self.jobs.shrink_if_sparse();
                    if let Some(r) = self.resource_of_job(&id) {
                        if let Some(e) = self.resources.get_mut(&r) {
                            e.jobs.retain(|j| j != &id_str);
                            if e.jobs.is_empty() {
                                // Give the buffer back: most resources
                                // have no job most of the time.
                                e.jobs = Vec::new();
                            }
                        }
                        self.prune(&r);
                    }
                }
                if let Some(r) = self.resource_of_job(&id) {
                    // A claim gone (the worker finished, or its lease
                    // expired): its result, or the job, is to be taken back.
                    let own = if slot == JobSlot::Working {
                        Priority::Finish
                    } else {
                        Priority::Issue
                    };
                    touched.resources.push((r, own));
                }
            }
        }
        touched
    }
}
/// Adds `job` to (or removes it from) the set under `key`; empty sets go.
fn index<K>(map: &mut HashMap<K, HashSet<String>>, key: &K, job: &str, add: bool)
where
    K: std::hash::Hash + Eq + Clone,
{
    if add {
        map.entry(key.clone()).or_default().insert(job.to_string());
    } else if let Some(set) = map.get_mut(key) {
        set.remove(job);
        if set.is_empty() {
            map.remove(key);
            map.shrink_if_sparse();
        } else {
            set.shrink_if_sparse();
        }
    }
}

impl crate::store::mirror::View for World {
    fn apply(&mut self, change: &Change) {
        World::apply(self, change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(key: &str, value: serde_json::Value, rev: i64) -> Kv {
        Kv {
            key: key.to_string(),
            value: match value {
                serde_json::Value::String(s) => s.into_bytes(),
                v => serde_json::to_vec(&v).unwrap(),
            },
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    fn job(id: &str, rtype: &str, rid: &str, dependency: &[&str]) -> serde_json::Value {
        json!(["heat_worker", {
            "id": id, "job_name": format!("{rtype}:{rid}:1"), "handler": "heat_worker",
            "action": "create", "resource_type": rtype, "resource_id": rid, "version": 1,
            "is_first": true, "is_last": true, "on_failure": "fail",
            "dependency": dependency, "resource_input": {}, "params": []
        }, 0])
    }

    #[test]
    fn every_change_to_a_resource_moves_its_stamp() {
        let mut w = World::new(Arc::new(crate::esi::Catalog::load(None, None).unwrap()));
        let r = ResourceRef::new("networks", "n1");
        let changed = |w: &World| w.entry(&r).map(|e| e.changed);
        w.apply(&Change::Put(kv(
            "/config/v2.0/networks/n1",
            json!({"body": {"id": "n1"}, "version": 1}),
            5,
        )));
        assert_eq!(changed(&w), Some(5));
        let id = "create:heat_worker:network:n1:1:aaaaa";
        w.apply(&Change::Put(kv(
            &format!("/jobs/all/{id}"),
            job(id, "network", "n1", &[]),
            9,
        )));
        assert_eq!(changed(&w), Some(9), "a job key of it");
        w.apply(&Change::Delete {
            key: format!("/jobs/all/{id}"),
            revision: 12,
        });
        assert_eq!(changed(&w), Some(12));
        // Another resource's change leaves it alone.
        w.apply(&Change::Put(kv(
            "/config/v2.0/networks/n2",
            json!({"body": {"id": "n2"}, "version": 1}),
            15,
        )));
        assert_eq!(changed(&w), Some(12));
    }

    /// A world with network n1's job in flight and port p1's job waiting
    /// for it (and port p2 with no job).
    fn waiting_world() -> (World, String) {
        let mut w = World::new(Arc::new(crate::esi::Catalog::load(None, None).unwrap()));
        let net = "create:heat_worker:network:n1:1:aaaaa";
        let port = "create:heat_worker:port:p1:1:bbbbb";
        w.put(&kv(
            &format!("/jobs/all/{net}"),
            job(net, "network", "n1", &[]),
            2,
        ));
        w.put(&kv(
            &format!("/jobs/all/{port}"),
            job(port, "port", "p1", &[net]),
            3,
        ));
        w.put(&kv(
            &format!("/jobs/waiting/{port}"),
            json!("heat_worker"),
            3,
        ));
        w.put(&kv(
            "/config/v2.0/ports/p2",
            json!({"body": {"id": "p2"}, "version": 1}),
            4,
        ));
        (w, net.to_string())
    }

    fn touched(t: &Touched, r: &ResourceRef) -> Vec<Priority> {
        t.resources
            .iter()
            .filter(|(x, _)| x == r)
            .map(|(_, p)| *p)
            .collect()
    }

    #[test]
    fn a_finished_job_touches_exactly_the_resources_waiting_for_it() {
        let (mut w, net) = waiting_world();
        let t = w.put(&kv(&format!("/jobs/finished/{net}"), json!(""), 5));
        let p1 = ResourceRef::new("ports", "p1");
        // The job's own resource collects the result first; the one
        // waiting on it may release its job.
        assert_eq!(
            touched(&t, &ResourceRef::new("networks", "n1")),
            [Priority::Finish]
        );
        assert_eq!(touched(&t, &p1), [Priority::Release], "{:?}", t.resources);
        assert!(touched(&t, &ResourceRef::new("ports", "p2")).is_empty());
    }

    #[test]
    fn a_job_claim_going_away_is_a_finish_other_job_keys_are_issues() {
        let (mut w, net) = waiting_world();
        let n1 = ResourceRef::new("networks", "n1");
        let t = w.put(&kv(&format!("/jobs/working/{net}"), json!("r"), 5));
        assert_eq!(touched(&t, &n1), [Priority::Issue]);
        let t = w.delete(&format!("/jobs/working/{net}"));
        assert_eq!(touched(&t, &n1), [Priority::Finish]);
        let t = w.put(&kv(
            "/config/v2.0/ports/p2",
            json!({"body": {"id": "p2"}, "version": 2}),
            7,
        ));
        assert_eq!(
            touched(&t, &ResourceRef::new("ports", "p2")),
            [Priority::Issue]
        );
    }

    #[test]
    fn a_deleted_job_touches_the_resources_waiting_for_it_and_leaves_no_index() {
        let (mut w, net) = waiting_world();
        let t = w.delete(&format!("/jobs/all/{net}"));
        assert_eq!(
            touched(&t, &ResourceRef::new("ports", "p1")),
            [Priority::Release]
        );
        // The reconciler's own tidying of the job: nothing to collect.
        assert_eq!(
            touched(&t, &ResourceRef::new("networks", "n1")),
            [Priority::Issue]
        );
        // Once the waiting job goes too, nothing is left indexed.
        let port = "create:heat_worker:port:p1:1:bbbbb";
        w.delete(&format!("/jobs/waiting/{port}"));
        w.delete(&format!("/jobs/all/{port}"));
        assert!(w.dependents.is_empty(), "{:?}", w.dependents);
        assert!(w.referenced_by.is_empty());
    }
}
