//! Turning planned actions into etcd transactions.
//!
//! Every transaction compares the revisions its action was planned from
//! (the fence), so a stale view, a second reconciler or a racing worker makes
//! it fail instead of doing the wrong thing twice. Every transaction also
//! updates our status record for the resource, fenced on its revision.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::Etcd;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use crate::esi::job::{JobSpec, build_params, envelope, new_job_id};
use crate::esi::keys::{JobAction, JobId, JobSlot, ResourceRef};
use crate::esi::mapping::eval::referenced;
use crate::esi::mapping::{Configs, EvalError, Lookup, Subject};
use crate::esi::records::{
    self, ConfigRecord, HeatStack, JobEnvelope, ResourceId, StateRecord, WorkerState,
};
use crate::esi::{Catalog, records::queue_value};

use super::action::{Action, Issue};
use super::backoff::BackoffPolicy;
use super::membership::Membership;
use super::observed::{DepState, Observed};
use super::plan::Plan;
use super::status::ResourceStatus;
use super::world::{Parsed, World};

/// How executing a plan ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every action applied; the last write is at `revision`.
    Applied {
        revision: i64,
        actions: Vec<&'static str>,
    },
    /// A fence failed: the view was stale. Plan again once the world has
    /// caught up with `revision`.
    Conflict {
        revision: i64,
        action: &'static str,
        applied: Vec<&'static str>,
    },
    /// The job cannot be built yet (e.g. a referenced resource is missing).
    Deferred {
        reason: String,
        /// The resource it waits for: plan again when that one changes.
        blocked_on: Option<ResourceRef>,
        applied: Vec<&'static str>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Build(String),
    #[error(
        "this replica holds no membership (lease lapsed or not yet registered): writing nothing"
    )]
    NotMember,
}

#[derive(Clone)]
pub struct Executor {
    client: Etcd,
    world: Arc<RwLock<World>>,
    catalog: Arc<Catalog>,
    backoff: BackoffPolicy,
    /// The replica's membership: every write is fenced on it.
    membership: Option<Arc<Membership>>,
}

fn absent(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

fn at(key: impl Into<Vec<u8>>, rev: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, rev)
}

fn present(key: impl Into<Vec<u8>>) -> Compare {
    Compare::create_revision(key, CompareOp::Greater, 0)
}

/// The job is still in `all/` at the revision read, and nobody claimed or
/// finished it since.
fn unclaimed(job: &JobId, all_rev: i64) -> Vec<Compare> {
    vec![
        at(job.slot_key(JobSlot::All), all_rev),
        absent(job.slot_key(JobSlot::Working)),
        absent(job.slot_key(JobSlot::Finished)),
    ]
}

/// Deletes these keys of a job, each fenced at the revision it was read at.
fn delete_at(job: &JobId, keys: &[(JobSlot, i64)]) -> (Vec<Compare>, Vec<TxnOp>) {
    keys.iter()
        .map(|(slot, rev)| (at(job.slot_key(*slot), *rev), del(job.slot_key(*slot))))
        .unzip()
}

fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::put(key, value, None)
}

fn del(key: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::delete(key, None)
}

use crate::clock::now_ms;

/// Configs fetched from etcd while building a job.
#[derive(Default)]
struct Fetched(HashMap<(String, String), Option<Map<String, Value>>>);

impl Configs for Fetched {
    fn lookup(&self, rtype: &str, id: &str) -> Lookup<'_> {
        match self.0.get(&(rtype.to_string(), id.to_string())) {
            Some(Some(b)) => Lookup::Found(b),
            Some(None) => Lookup::Absent,
            None => Lookup::NotLoaded,
        }
    }
}

impl Executor {
    pub fn new(
        client: Etcd,
        world: Arc<RwLock<World>>,
        catalog: Arc<Catalog>,
        backoff: BackoffPolicy,
    ) -> Self {
        Self {
            client,
            world,
            catalog,
            backoff,
            membership: None,
        }
    }

    /// Fences every write on this replica's membership.
    pub fn with_membership(mut self, m: Arc<Membership>) -> Self {
        self.membership = Some(m);
        self
    }

    /// The compares every transaction carries besides its own: this
    /// replica still holds its member key.
    fn member_fence(&self) -> Result<Option<Compare>, ExecError> {
        match &self.membership {
            None => Ok(None),
            Some(m) => m.fence().map(Some).ok_or(ExecError::NotMember),
        }
    }

    /// Sends a transaction with the membership fence added.
    async fn send(
        &self,
        mut compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<etcd_client::TxnResponse, ExecError> {
        compares.extend(self.member_fence()?);
        Ok(self
            .client
            .txn(Txn::new().when(compares).and_then(ops))
            .await?)
    }

    /// Executes the plan's actions in order, stopping at the first that
    /// cannot be applied.
    pub async fn execute(&self, o: &Observed, plan: &Plan) -> Result<Outcome, ExecError> {
        let mut status = o
            .status
            .as_ref()
            .and_then(Parsed::ok)
            .cloned()
            .unwrap_or_default();
        let mut status_rev = plan.status_rev;
        let mut applied = vec![];
        let mut revision = 0;
        for planned in &plan.actions {
            let kind = planned.action.kind();
            let step = match self.txn_for(o, &planned.action, &mut status).await? {
                built @ (Built::Txn(..) | Built::Final(..)) => {
                    status.last_action = planned.action.to_string();
                    status.last_action_ms = now_ms();
                    let status_key = o.resource.reconciler_key();
                    let (mut compares, mut ops, last) = match built {
                        Built::Txn(c, o) => (c, o, false),
                        Built::Final(c, o) => (c, o, true),
                        _ => unreachable!("matched above"),
                    };
                    compares.push(at(status_key.clone(), status_rev));
                    ops.push(if last {
                        del(status_key)
                    } else {
                        put(status_key, serde_json::to_vec(&status).unwrap_or_default())
                    });
                    let resp = self.send(compares, ops).await?;
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    if !resp.succeeded() {
                        return Ok(Outcome::Conflict {
                            revision: rev,
                            action: kind,
                            applied,
                        });
                    }
                    status_rev = rev;
                    revision = rev;
                    applied.push(kind);
                    continue;
                }
                Built::Conflict => Outcome::Conflict {
                    revision: self.world.read().await.revision,
                    action: kind,
                    applied,
                },
                Built::Deferred(reason, blocked_on) => Outcome::Deferred {
                    reason,
                    blocked_on,
                    applied,
                },
            };
            return Ok(step);
        }
        Ok(Outcome::Applied {
            revision,
            actions: applied,
        })
    }

    async fn txn_for(
        &self,
        o: &Observed,
        action: &Action,
        status: &mut ResourceStatus,
    ) -> Result<Built, ExecError> {
        let handler_of = |j: &JobId| queue_value(&j.handler);
        Ok(match action {
            Action::IssueJob(issue) => return self.issue(o, issue, status).await,
            Action::ReleaseJob {
                job,
                all_rev,
                waiting_rev,
                deps,
            } => {
                let mut c = vec![
                    at(job.slot_key(JobSlot::All), *all_rev),
                    at(job.slot_key(JobSlot::Waiting), *waiting_rev),
                ];
                for (dep, s) in deps {
                    match s {
                        DepState::Gone => c.push(absent(format!("{}{dep}", JobSlot::All.prefix()))),
                        DepState::Finished => {
                            c.push(present(format!("{}{dep}", JobSlot::Finished.prefix())))
                        }
                        DepState::Unfinished => return Ok(Built::Conflict),
                    }
                }
                Built::Txn(
                    c,
                    vec![
                        del(job.slot_key(JobSlot::Waiting)),
                        put(job.slot_key(JobSlot::Ready), handler_of(job)),
                    ],
                )
            }
            Action::WithdrawJob {
                job,
                all_rev,
                queued,
            } => {
                let (mut c, mut ops) = delete_at(job, queued);
                c.extend(unclaimed(job, *all_rev));
                ops.push(del(job.slot_key(JobSlot::All)));
                Built::Txn(c, ops)
            }
            Action::FinishJob {
                job,
                all_rev,
                finished_rev,
            } => Built::Txn(
                vec![
                    at(job.slot_key(JobSlot::All), *all_rev),
                    at(job.slot_key(JobSlot::Finished), *finished_rev),
                ],
                vec![
                    del(job.slot_key(JobSlot::All)),
                    del(job.slot_key(JobSlot::Finished)),
                ],
            ),
            Action::RequeueJob { job, all_rev, to } => Built::Txn(
                vec![
                    at(job.slot_key(JobSlot::All), *all_rev),
                    absent(job.slot_key(JobSlot::Waiting)),
                    absent(job.slot_key(JobSlot::Ready)),
                    absent(job.slot_key(JobSlot::Working)),
                    absent(job.slot_key(JobSlot::Finished)),
                ],
                vec![put(job.slot_key(*to), handler_of(job))],
            ),
            Action::ReclaimJob {
                job,
                all_rev,
                working_rev,
                to,
            } => Built::Txn(
                vec![
                    at(job.slot_key(JobSlot::All), *all_rev),
                    at(job.slot_key(JobSlot::Working), *working_rev),
                ],
                vec![
                    del(job.slot_key(JobSlot::Working)),
                    put(job.slot_key(*to), handler_of(job)),
                ],
            ),
            Action::CompleteState {
                job,
                all_rev,
                state_rev,
                stack_rev,
                job_state_rev,
            } => {
                let r = &o.resource;
                let resp = self.client.get(r.heat_stack_key(), None).await?;
                let Some(kv) = resp
                    .kvs()
                    .first()
                    .filter(|kv| kv.mod_revision() == *stack_rev)
                else {
                    return Ok(Built::Conflict);
                };
                let stack: HeatStack = records::parse("heat stack", kv.value())
                    .map_err(|e| ExecError::Build(e.to_string()))?;
                let state = StateRecord {
                    state: WorkerState {
                        worker_state: job.action.completed_state().to_string(),
                        orchestration_state: Some(stack.stack_status.clone()),
                        heat_outputs: Some(
                            serde_json::to_string(&stack.output).unwrap_or_else(|_| "[]".into()),
                        ),
                        extra: Map::new(),
                    },
                    version: job.version,
                    error: String::new(),
                    extra: Map::new(),
                };
                let mut fence = unclaimed(job, *all_rev);
                fence.extend([
                    at(r.state_key(), *state_rev),
                    at(r.heat_stack_key(), *stack_rev),
                    at(r.job_state_key(), *job_state_rev),
                ]);
                Built::Txn(
                    fence,
                    vec![
                        put(
                            r.state_key(),
                            serde_json::to_vec(&state).unwrap_or_default(),
                        ),
                        del(job.slot_key(JobSlot::All)),
                    ],
                )
            }
            Action::DropJob { job, all_rev } => Built::Txn(
                unclaimed(job, *all_rev),
                vec![del(job.slot_key(JobSlot::All))],
            ),
            Action::DropStrays { job, keys } => {
                let (mut c, ops) = delete_at(job, keys);
                c.push(absent(job.slot_key(JobSlot::All)));
                Built::Txn(c, ops)
            }
            Action::RecordFailure {
                version,
                attempts,
                failure_revision,
                error,
            } => {
                let delay = self.backoff.delay(*attempts);
                status.attempts = *attempts;
                status.version = *version;
                status.failure_revision = *failure_revision;
                status.next_retry_ms = now_ms().saturating_add(crate::clock::millis(delay));
                status.last_error = crate::limits::clip_message(error);
                Built::Txn(vec![], vec![])
            }
            Action::PurgeDeleted {
                config_rev,
                state_rev,
                stack_rev,
            } => {
                let r = &o.resource;
                let mut c = vec![
                    at(r.config_key(), *config_rev),
                    at(r.state_key(), *state_rev),
                ];
                let mut ops = vec![del(r.config_key())];
                if let Some(rev) = stack_rev {
                    c.push(at(r.heat_stack_key(), *rev));
                    ops.push(del(r.heat_stack_key()));
                }
                Built::Final(c, ops)
            }
            Action::ClearBackoff => {
                status.attempts = 0;
                status.next_retry_ms = 0;
                status.last_error.clear();
                Built::Txn(vec![], vec![])
            }
        })
    }

    /// Builds and issues a job: reads the config (fenced by its revision),
    /// evaluates the template's mappings, finds the unfinished jobs of the
    /// resources the params reference, and writes `all/` plus `ready/` or
    /// `waiting/` in one transaction that also checks the resource has no
    /// job at all.
    async fn issue(
        &self,
        o: &Observed,
        issue: &Issue,
        status: &mut ResourceStatus,
    ) -> Result<Built, ExecError> {
        let r = &o.resource;
        let kv = &self.client;
        let resp = kv.get(r.config_key(), None).await?;
        let Some(ckv) = resp
            .kvs()
            .first()
            .filter(|k| k.mod_revision() == issue.config_rev)
        else {
            return Ok(Built::Conflict);
        };
        let config: ConfigRecord =
            records::parse("config", ckv.value()).map_err(|e| ExecError::Build(e.to_string()))?;
        let template = {
            let w = self.world.read().await;
            match w.template(&issue.template).map(|t| t.compiled.clone()) {
                Some(Ok(t)) => t,
                _ => return Ok(Built::Conflict),
            }
        };
        let subject = Subject {
            rtype: &o.rtype,
            body: &config.body.fields,
            version: config.version,
        };
        let mut fetched = Fetched::default();
        let params = loop {
            match build_params(&template, subject, &self.catalog.schemas, &fetched) {
                Ok(p) => break p,
                Err(EvalError::NeedConfig(rid)) => {
                    if fetched.0.len() > 256 {
                        return Err(ExecError::Build("too many referenced configs".into()));
                    }
                    let body = self.fetch_config(&rid).await?;
                    fetched.0.insert((rid.resource_type, rid.resource_id), body);
                }
                Err(EvalError::MissingReference { rtype, id }) => {
                    let blocked_on = self.world.read().await.resource_of_job_type(&rtype, &id);
                    let why = EvalError::MissingReference { rtype, id }.to_string();
                    return Ok(Built::Deferred(why, blocked_on));
                }
                Err(e) => return Err(ExecError::Build(format!("template {}: {e}", template.id))),
            }
        };
        let me = ResourceId {
            resource_type: o.rtype.clone(),
            resource_id: r.id.clone(),
        };
        let mut dependency = vec![];
        {
            let w = self.world.read().await;
            for dep in referenced(&params).into_iter().filter(|d| *d != me) {
                let jobs = w.unfinished_jobs_of(&dep.resource_type, &dep.resource_id);
                if jobs.is_empty()
                    && let Some(why) = not_yet_created(&w, &dep)
                {
                    let blocked_on = w.resource_of_job_type(&dep.resource_type, &dep.resource_id);
                    return Ok(Built::Deferred(why, blocked_on));
                }
                dependency.extend(jobs.iter().map(|j| j.id.to_string()));
            }
            // A resource that references this one and is being changed goes
            // first (a firewall waits for its interfaces' jobs).
            for j in w.unfinished_jobs_referencing(&o.rtype, &r.id) {
                let id = j.id.to_string();
                if !dependency.contains(&id) {
                    dependency.push(id);
                }
            }
        }
        let spec = JobSpec {
            action: issue.action,
            handler: &issue.handler,
            resource_type: &o.rtype,
            resource_id: &r.id,
            version: issue.version,
            body: &config.body.fields,
        };
        let id = new_job_id(&spec);
        let slot = if dependency.is_empty() {
            JobSlot::Ready
        } else {
            JobSlot::Waiting
        };
        let env: JobEnvelope = envelope(&id, &spec, params, dependency);
        let mut compares = vec![
            at(r.config_key(), issue.config_rev),
            at(r.state_key(), issue.state_rev),
        ];
        for action in JobAction::ALL {
            compares.push(
                absent(JobId::resource_prefix(
                    action,
                    &issue.handler,
                    &o.rtype,
                    &r.id,
                ))
                .with_prefix(),
            );
        }
        if !issue.retry && status.version != issue.version {
            status.attempts = 0;
            status.next_retry_ms = 0;
            status.version = issue.version;
        }
        status.last_error.clear();
        let value = serde_json::to_vec(&env).map_err(|e| ExecError::Build(e.to_string()))?;
        Ok(Built::Txn(
            compares,
            vec![
                put(id.slot_key(JobSlot::All), value),
                put(id.slot_key(slot), queue_value(&issue.handler)),
            ],
        ))
    }

    /// Records an error in the resource's status (best effort, fenced),
    /// so `get` shows why it is stuck. Writes only when the text changes.
    pub async fn note_error(&self, o: &Observed, error: &str) {
        let mut status = o
            .status
            .as_ref()
            .and_then(Parsed::ok)
            .cloned()
            .unwrap_or_default();
        // Compared clipped, as stored: an unchanged long error is no news.
        let error = crate::limits::clip_message(error);
        if status.last_error == error {
            return;
        }
        status.last_error = error;
        let key = o.resource.reconciler_key();
        let rev = o.status.as_ref().map(|s| s.mod_rev).unwrap_or(0);
        let ops = vec![put(
            key.clone(),
            serde_json::to_vec(&status).unwrap_or_default(),
        )];
        if let Err(e) = self.send(vec![at(key, rev)], ops).await {
            tracing::debug!(error = %e, "could not record error");
        }
    }

    async fn fetch_config(
        &self,
        rid: &ResourceId,
    ) -> Result<Option<Map<String, Value>>, ExecError> {
        let Some(plural) = self.catalog.schemas.plural_of(&rid.resource_type) else {
            return Ok(None);
        };
        let key = ResourceRef::new(plural, rid.resource_id.clone()).config_key();
        let resp = self.client.get(key, None).await?;
        Ok(match resp.kvs().first() {
            None => None,
            Some(kv) => Some(
                records::parse::<ConfigRecord>("config", kv.value())
                    .map_err(|e| ExecError::Build(format!("{}: {e}", rid.resource_id)))?
                    .body
                    .fields,
            ),
        })
    }
}

/// A referenced resource the reconciler manages that has neither a job in
/// flight nor a `/state` yet: issuing now would hand the worker an output it
/// cannot resolve, so wait until that resource's own job is issued.
fn not_yet_created(w: &World, dep: &ResourceId) -> Option<String> {
    let r = w.resource_of_job_type(&dep.resource_type, &dep.resource_id)?;
    let e = w.entry(&r)?;
    let cfg = e.config.as_ref()?.ok()?;
    (cfg.template.is_some() && !cfg.marked && e.state.is_none()).then(|| {
        format!(
            "waiting for {} {} to be issued first",
            dep.resource_type, dep.resource_id
        )
    })
}

enum Built {
    Txn(Vec<Compare>, Vec<TxnOp>),
    Conflict,
    /// Like `Txn`, and the resource's status record goes with it.
    Final(Vec<Compare>, Vec<TxnOp>),
    Deferred(String, Option<ResourceRef>),
}
