//! The view of one resource that planning works from: everything the world
//! knows about it, with job dependencies already looked up.

use std::sync::Arc;

use crate::esi::job::CompiledTemplate;
use crate::esi::keys::{JobId, ResourceRef};
use crate::esi::records::ResourceId;

use super::backoff::BackoffPolicy;
use super::draft::Draft;
use super::status::ResourceStatus;
use super::world::{ConfigSummary, JobStateSummary, Parsed, StackSummary, StateSummary, World};

/// The heat template a resource needs, as far as the world knows.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateStatus {
    /// No config, or the config does not parse.
    Unknown,
    /// The mappings say this resource has no template: nothing to orchestrate.
    NotNeeded,
    /// The template is not in etcd (yet).
    Missing(String),
    /// The template's record or mappings do not parse.
    Invalid { template: String, reason: String },
    Ready {
        handler: String,
        template: String,
        compiled: Arc<CompiledTemplate>,
    },
}

/// A drafted job and where the resources it references stand.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftView {
    pub draft: Draft,
    pub references: Vec<Reference>,
    /// Unfinished jobs of other resources that reference this one: a
    /// resource being changed that points here goes first (a firewall
    /// waits for its interfaces' jobs).
    pub referencing_jobs: Vec<String>,
    /// For [`Draft::MissingReference`]: the resource whose config is missing.
    pub missing: Option<ResourceRef>,
}

/// A resource the drafted job's params reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub id: ResourceId,
    /// The resource, if its type is one the catalog knows.
    pub resource: Option<ResourceRef>,
    /// Its jobs in flight: the new job depends on them.
    pub unfinished_jobs: Vec<String>,
    /// It is managed here, has no job in flight and no `/state`: its own
    /// job is still to be issued, and issuing this one first would hand the
    /// worker an output it cannot resolve.
    pub awaiting_issue: bool,
}

/// Where a dependency of a waiting job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepState {
    /// Its `all/` entry is gone: done.
    Gone,
    /// Its worker wrote `finished`.
    Finished,
    Unfinished,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedJob {
    pub id: JobId,
    /// `all/` mod revision and dependencies, or why the record is invalid.
    pub all: Option<Parsed<Vec<String>>>,
    pub waiting: Option<i64>,
    pub ready: Option<i64>,
    /// Mod revision and lease of the `working/` claim.
    pub working: Option<(i64, i64)>,
    pub finished: Option<i64>,
    pub deps: Vec<(String, DepState)>,
}

impl ObservedJob {
    pub fn all_rev(&self) -> Option<i64> {
        self.all.as_ref().map(|a| a.mod_rev)
    }
    pub fn unfinished_deps(&self) -> impl Iterator<Item = &str> {
        self.deps
            .iter()
            .filter(|(_, s)| *s == DepState::Unfinished)
            .map(|(d, _)| d.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub resource: ResourceRef,
    /// Singular type (`port`).
    pub rtype: String,
    pub config: Option<Parsed<ConfigSummary>>,
    pub template: TemplateStatus,
    pub state: Option<Parsed<StateSummary>>,
    pub stack: Option<Parsed<StackSummary>>,
    pub job_state: Option<Parsed<JobStateSummary>>,
    pub status: Option<Parsed<ResourceStatus>>,
    pub jobs: Vec<ObservedJob>,
    /// Wall-clock time of the observation, Unix ms (for backoff).
    pub now_ms: u64,
    /// Paused by an operator: plan, but take no action.
    pub paused: bool,
    /// Delete configs (and stack records) once their deletion completed.
    pub purge_deleted: bool,
    /// Retry delays for failed jobs.
    pub backoff: BackoffPolicy,
    /// The job a plan asked to draft, once drafted.
    pub draft: Option<DraftView>,
}

impl Observed {
    /// A resource with nothing recorded, for building test cases.
    pub fn empty(resource: ResourceRef, rtype: &str) -> Self {
        Self {
            resource,
            rtype: rtype.to_string(),
            config: None,
            template: TemplateStatus::Unknown,
            state: None,
            stack: None,
            job_state: None,
            status: None,
            jobs: vec![],
            now_ms: 0,
            paused: false,
            purge_deleted: false,
            backoff: BackoffPolicy::default(),
            draft: None,
        }
    }

    /// Adds a drafted job to the view, with where the resources it
    /// references stand in `world`.
    pub fn with_draft(mut self, world: &World, draft: Draft) -> Self {
        let references = match &draft {
            Draft::Ready(d) => d
                .references
                .iter()
                .map(|dep| {
                    let (rtype, id) = (&dep.resource_type, &dep.resource_id);
                    let unfinished_jobs: Vec<String> = world
                        .unfinished_jobs_of(rtype, id)
                        .iter()
                        .map(|j| j.id.to_string())
                        .collect();
                    let resource = world.resource_of_job_type(rtype, id);
                    let awaiting_issue = unfinished_jobs.is_empty()
                        && resource.as_ref().is_some_and(|r| awaits_issue(world, r));
                    Reference {
                        id: dep.clone(),
                        resource,
                        unfinished_jobs,
                        awaiting_issue,
                    }
                })
                .collect(),
            _ => vec![],
        };
        let missing = match &draft {
            Draft::MissingReference { rtype, id } => world.resource_of_job_type(rtype, id),
            _ => None,
        };
        let referencing_jobs = world
            .unfinished_jobs_referencing(&self.rtype, &self.resource.id)
            .iter()
            .map(|j| j.id.to_string())
            .collect();
        self.draft = Some(DraftView {
            draft,
            references,
            referencing_jobs,
            missing,
        });
        self
    }

    /// Builds the view of `r` from the world, or `None` if nothing of it is known.
    pub fn from_world(world: &World, r: &ResourceRef, now_ms: u64) -> Option<Observed> {
        let e = world.entry(r)?;
        let template = match e.config.as_ref().map(|c| &c.value) {
            None | Some(Err(_)) => TemplateStatus::Unknown,
            Some(Ok(c)) => match &c.template {
                None => TemplateStatus::NotNeeded,
                Some(t) => match world.template(&t.template) {
                    None => TemplateStatus::Missing(t.template.clone()),
                    Some(te) => match &te.compiled {
                        Ok(compiled) => TemplateStatus::Ready {
                            handler: t.handler.clone(),
                            template: t.template.clone(),
                            compiled: compiled.clone(),
                        },
                        Err(reason) => TemplateStatus::Invalid {
                            template: t.template.clone(),
                            reason: reason.clone(),
                        },
                    },
                },
            },
        };
        let mut jobs: Vec<ObservedJob> = e
            .jobs
            .iter()
            .filter_map(|id| world.job(id))
            .map(|j| {
                let deps = j
                    .all
                    .as_ref()
                    .and_then(Parsed::ok)
                    .map(|deps| {
                        deps.dependency
                            .iter()
                            .map(|d| {
                                let s = match world.job(d) {
                                    None => DepState::Gone,
                                    Some(dj) if dj.all.is_none() => DepState::Gone,
                                    Some(dj) if dj.finished.is_some() => DepState::Finished,
                                    Some(_) => DepState::Unfinished,
                                };
                                (d.clone(), s)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ObservedJob {
                    id: j.id.clone(),
                    all: j.all.as_ref().map(|a| Parsed {
                        mod_rev: a.mod_rev,
                        value: a.value.clone().map(|d| d.dependency),
                    }),
                    waiting: j.waiting,
                    ready: j.ready,
                    working: j.working,
                    finished: j.finished,
                    deps,
                }
            })
            .collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Some(Observed {
            resource: r.clone(),
            rtype: e.rtype.to_string(),
            config: e.config.clone(),
            template,
            state: e.state.clone(),
            stack: e.stack.clone(),
            job_state: e.job_state.clone(),
            status: e.status.as_ref().map(|p| Parsed {
                mod_rev: p.mod_rev,
                value: p
                    .value
                    .as_ref()
                    .map(|s| s.to_status())
                    .map_err(Clone::clone),
            }),
            jobs,
            now_ms,
            paused: false,
            purge_deleted: false,
            backoff: BackoffPolicy::default(),
            draft: None,
        })
    }
}

/// A resource with a valid config that needs a template, not marked for
/// deletion and with no `/state` yet.
fn awaits_issue(world: &World, r: &ResourceRef) -> bool {
    world.entry(r).is_some_and(|e| {
        e.state.is_none()
            && e.config
                .as_ref()
                .and_then(Parsed::ok)
                .is_some_and(|c| c.template.is_some() && !c.marked)
    })
}
