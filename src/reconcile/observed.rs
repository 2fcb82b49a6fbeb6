//! The view of one resource that planning works from: everything the world
//! knows about it, with job dependencies already looked up.

use crate::esi::keys::{JobId, ResourceRef};

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
    Invalid {
        template: String,
        reason: String,
    },
    Ready {
        handler: String,
        template: String,
    },
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
        }
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
                        Ok(_) => TemplateStatus::Ready {
                            handler: t.handler.clone(),
                            template: t.template.clone(),
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
        })
    }
}
