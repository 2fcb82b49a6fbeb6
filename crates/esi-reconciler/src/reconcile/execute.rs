//! Turning a plan into etcd transactions. Nothing is decided here: every
//! action carries the revisions it was planned from and what it writes, and
//! this module only spells each one as a fenced transaction.
//!
//! Every transaction compares the revisions its action was planned from
//! (the fence), so a stale view, a second reconciler or a racing worker makes
//! it fail instead of doing the wrong thing twice. Every transaction also
//! updates our status record for the resource, fenced on its revision.

use std::sync::Arc;

use crate::esi::job::{JobSpec, envelope, new_job_id};
use crate::esi::keys::{JobAction, JobId, JobSlot};
use crate::esi::records::{self, HeatStack, StateRecord, queue_value};
use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op};

use super::action::{Action, ActionKind, Issue};
use super::membership::Membership;
use super::observed::DepState;
use super::plan::Plan;
use super::status::ResourceStatus;

/// How executing a plan ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every action applied; the last write is at `revision`.
    Applied {
        revision: i64,
        actions: Vec<ActionKind>,
    },
    /// A fence failed: the view was stale. Plan again once the world has
    /// caught up with `revision`.
    Conflict {
        revision: i64,
        action: ActionKind,
        applied: Vec<ActionKind>,
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

impl ExecError {
    /// A short name, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::Etcd(_) => "etcd",
            ExecError::Build(_) => "build_job",
            ExecError::NotMember => "not_member",
        }
    }
}

#[derive(Clone)]
pub struct Executor<K: Kv = Etcd> {
    kv: K,
    /// The replica's membership: every write is fenced on it.
    membership: Option<Arc<Membership>>,
}

/// The job is still in `all/` at the revision read, and nobody claimed or
/// finished it since.
fn unclaimed(job: &JobId, all_rev: i64) -> Vec<Cond> {
    vec![
        Cond::ModRev(job.slot_key(JobSlot::All), all_rev),
        Cond::Absent(job.slot_key(JobSlot::Working)),
        Cond::Absent(job.slot_key(JobSlot::Finished)),
    ]
}

/// Deletes these keys of a job, each fenced at the revision it was read at.
fn delete_at(job: &JobId, keys: &[(JobSlot, i64)]) -> (Vec<Cond>, Vec<Op>) {
    keys.iter()
        .map(|(slot, rev)| {
            let key = job.slot_key(*slot);
            (Cond::ModRev(key.clone(), *rev), Op::delete(key))
        })
        .unzip()
}

/// Our status record after `action`, from the one before it. Pure, so the
/// bookkeeping of every action is a table in the tests.
fn status_after(mut s: ResourceStatus, action: &Action, now_ms: u64) -> ResourceStatus {
    match action {
        Action::IssueJob(i) => {
            if !i.retry && s.version != i.version {
                s.attempts = 0;
                s.next_retry_ms = 0;
                s.version = i.version;
            }
            s.last_error.clear();
        }
        Action::RecordFailure {
            version,
            attempts,
            failure_revision,
            error,
            next_retry_ms,
        } => {
            s.attempts = *attempts;
            s.version = *version;
            s.failure_revision = *failure_revision;
            s.next_retry_ms = *next_retry_ms;
            s.last_error = crate::limits::clip_message(error);
        }
        Action::ClearBackoff => {
            s.attempts = 0;
            s.next_retry_ms = 0;
            s.last_error.clear();
        }
        _ => {}
    }
    s.last_action = action.to_string();
    s.last_action_ms = now_ms;
    s
}

/// What one action writes besides our status record.
enum Built {
    /// Write this, and our status record with it.
    Txn(Fenced),
    /// Write this, and delete our status record (nothing of the resource is
    /// left to keep it for).
    Final(Fenced),
    /// What the action was planned from is gone: plan again.
    Conflict,
}

impl<K: Kv> Executor<K> {
    pub fn new(kv: K) -> Self {
        Self {
            kv,
            membership: None,
        }
    }

    /// Fences every write on this replica's membership.
    pub fn with_membership(mut self, m: Arc<Membership>) -> Self {
        self.membership = Some(m);
        self
    }

    /// Sends a transaction with the membership fence added.
    async fn send(&self, mut txn: Fenced) -> Result<crate::store::txn::Committed, ExecError> {
        if let Some(m) = &self.membership {
            txn.when.push(m.fence().ok_or(ExecError::NotMember)?);
        }
        Ok(self.kv.commit(&txn).await?)
    }

    /// Executes the plan's actions in order, stopping at the first that
    /// cannot be applied.
    pub async fn execute(&self, plan: &Plan) -> Result<Outcome, ExecError> {
        let mut status = plan.status.clone();
        let mut status_rev = plan.status_rev;
        let mut applied = vec![];
        let mut revision = 0;
        let status_key = plan.resource.reconciler_key();
        for planned in &plan.actions {
            let kind = planned.action.kind();
            let (mut txn, last) = match self.txn_for(plan, &planned.action).await? {
                Built::Txn(t) => (t, false),
                Built::Final(t) => (t, true),
                Built::Conflict => {
                    return Ok(Outcome::Conflict {
                        revision: 0,
                        action: kind,
                        applied,
                    });
                }
            };
            status = status_after(status, &planned.action, plan.now_ms);
            txn.kind = kind.as_str();
            txn.when.push(Cond::ModRev(status_key.clone(), status_rev));
            txn.then.push(if last {
                Op::delete(status_key.clone())
            } else {
                Op::put(
                    status_key.clone(),
                    serde_json::to_vec(&status).unwrap_or_default(),
                )
            });
            let done = self.send(txn).await?;
            if !done.succeeded {
                return Ok(Outcome::Conflict {
                    revision: done.revision,
                    action: kind,
                    applied,
                });
            }
            status_rev = done.revision;
            revision = done.revision;
            applied.push(kind);
        }
        Ok(Outcome::Applied {
            revision,
            actions: applied,
        })
    }

    async fn txn_for(&self, plan: &Plan, action: &Action) -> Result<Built, ExecError> {
        let r = &plan.resource;
        let handler_of = |j: &JobId| queue_value(&j.handler);
        Ok(Built::Txn(match action {
            Action::IssueJob(issue) => issue_txn(plan, issue)?,
            Action::ReleaseJob {
                job,
                all_rev,
                waiting_rev,
                deps,
            } => {
                let mut c = vec![
                    Cond::ModRev(job.slot_key(JobSlot::All), *all_rev),
                    Cond::ModRev(job.slot_key(JobSlot::Waiting), *waiting_rev),
                ];
                for (dep, s) in deps {
                    match s {
                        DepState::Gone => {
                            c.push(Cond::Absent(format!("{}{dep}", JobSlot::All.prefix())))
                        }
                        DepState::Finished => c.push(Cond::Present(format!(
                            "{}{dep}",
                            JobSlot::Finished.prefix()
                        ))),
                        DepState::Unfinished => return Ok(Built::Conflict),
                    }
                }
                Fenced::new(
                    c,
                    vec![
                        Op::delete(job.slot_key(JobSlot::Waiting)),
                        Op::put(job.slot_key(JobSlot::Ready), handler_of(job)),
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
                ops.push(Op::delete(job.slot_key(JobSlot::All)));
                Fenced::new(c, ops)
            }
            Action::FinishJob {
                job,
                all_rev,
                finished_rev,
            } => Fenced::new(
                vec![
                    Cond::ModRev(job.slot_key(JobSlot::All), *all_rev),
                    Cond::ModRev(job.slot_key(JobSlot::Finished), *finished_rev),
                ],
                vec![
                    Op::delete(job.slot_key(JobSlot::All)),
                    Op::delete(job.slot_key(JobSlot::Finished)),
                ],
            ),
            Action::RequeueJob { job, all_rev, to } => Fenced::new(
                vec![
                    Cond::ModRev(job.slot_key(JobSlot::All), *all_rev),
                    Cond::Absent(job.slot_key(JobSlot::Waiting)),
                    Cond::Absent(job.slot_key(JobSlot::Ready)),
                    Cond::Absent(job.slot_key(JobSlot::Working)),
                    Cond::Absent(job.slot_key(JobSlot::Finished)),
                ],
                vec![Op::put(job.slot_key(*to), handler_of(job))],
            ),
            Action::ReclaimJob {
                job,
                all_rev,
                working_rev,
                to,
            } => Fenced::new(
                vec![
                    Cond::ModRev(job.slot_key(JobSlot::All), *all_rev),
                    Cond::ModRev(job.slot_key(JobSlot::Working), *working_rev),
                ],
                vec![
                    Op::delete(job.slot_key(JobSlot::Working)),
                    Op::put(job.slot_key(*to), handler_of(job)),
                ],
            ),
            Action::CompleteState {
                job,
                all_rev,
                state_rev,
                stack_rev,
                job_state_rev,
            } => {
                // The outputs are not in the world (they would double its
                // memory): read the stack record at the revision planned from.
                let Some(kv) = self
                    .kv
                    .read(&r.heat_stack_key())
                    .await?
                    .filter(|kv| kv.mod_rev == *stack_rev)
                else {
                    return Ok(Built::Conflict);
                };
                let stack: HeatStack = records::parse("heat stack", &kv.value)
                    .map_err(|e| ExecError::Build(e.to_string()))?;
                // The `/state` the worker would have written.
                let state = StateRecord::finished(
                    job.action.completed_state(),
                    &stack.stack_status,
                    &stack.output,
                    job.version,
                    "",
                );
                let mut fence = unclaimed(job, *all_rev);
                fence.extend([
                    Cond::ModRev(r.state_key(), *state_rev),
                    Cond::ModRev(r.heat_stack_key(), *stack_rev),
                    Cond::ModRev(r.job_state_key(), *job_state_rev),
                ]);
                Fenced::new(
                    fence,
                    vec![
                        Op::put(
                            r.state_key(),
                            serde_json::to_vec(&state).unwrap_or_default(),
                        ),
                        Op::delete(job.slot_key(JobSlot::All)),
                    ],
                )
            }
            Action::DropJob { job, all_rev } => Fenced::new(
                unclaimed(job, *all_rev),
                vec![Op::delete(job.slot_key(JobSlot::All))],
            ),
            Action::DropStrays { job, keys } => {
                let (mut c, ops) = delete_at(job, keys);
                c.push(Cond::Absent(job.slot_key(JobSlot::All)));
                Fenced::new(c, ops)
            }
            Action::RecordFailure { .. } | Action::ClearBackoff => Fenced::default(),
            Action::PurgeDeleted {
                config_rev,
                state_rev,
                stack_rev,
            } => {
                let mut c = vec![
                    Cond::ModRev(r.config_key(), *config_rev),
                    Cond::ModRev(r.state_key(), *state_rev),
                ];
                let mut ops = vec![Op::delete(r.config_key())];
                if let Some(rev) = stack_rev {
                    c.push(Cond::ModRev(r.heat_stack_key(), *rev));
                    ops.push(Op::delete(r.heat_stack_key()));
                }
                return Ok(Built::Final(Fenced::new(c, ops)));
            }
        }))
    }

    /// Records why a resource's job cannot be built or read, or why its
    /// reconcile failed, in its status (best effort, fenced), so `get`
    /// shows why it is stuck; `""` clears it. Writes only when the text
    /// changes.
    pub async fn note_error(&self, plan: &Plan, error: &str) {
        // Compared clipped, as stored: an unchanged long error is no news.
        let error = crate::limits::clip_message(error);
        if plan.status.last_error == error {
            return;
        }
        let mut status = plan.status.clone();
        status.last_error = error;
        let key = plan.resource.reconciler_key();
        let txn = Fenced::new(
            vec![Cond::ModRev(key.clone(), plan.status_rev)],
            vec![Op::put(
                key,
                serde_json::to_vec(&status).unwrap_or_default(),
            )],
        )
        .named("note_error");
        if let Err(e) = self.send(txn).await {
            tracing::debug!(error = %e, "could not record error");
        }
    }
}

/// The job the plan drafted: `all/` plus `ready/` or `waiting/`, in one
/// transaction that also checks the config and `/state` are as planned and
/// that the resource has no job at all.
fn issue_txn(plan: &Plan, issue: &Issue) -> Result<Fenced, ExecError> {
    let r = &plan.resource;
    let spec = JobSpec {
        action: issue.action,
        handler: &issue.handler,
        resource_type: &plan.rtype,
        resource_id: &r.id,
        version: issue.version,
        body: &issue.job.body,
    };
    let id = new_job_id(&spec);
    let slot = if issue.dependency.is_empty() {
        JobSlot::Ready
    } else {
        JobSlot::Waiting
    };
    let env = envelope(
        &id,
        &spec,
        issue.job.params.clone(),
        issue.dependency.clone(),
    );
    let mut when = vec![
        Cond::ModRev(r.config_key(), issue.config_rev),
        Cond::ModRev(r.state_key(), issue.state_rev),
    ];
    when.extend(JobAction::ALL.into_iter().map(|action| {
        Cond::NoneUnder(JobId::resource_prefix(
            action,
            &issue.handler,
            &plan.rtype,
            &r.id,
        ))
    }));
    let value = serde_json::to_vec(&env).map_err(|e| ExecError::Build(e.to_string()))?;
    Ok(Fenced::new(
        when,
        vec![
            Op::put(id.slot_key(JobSlot::All), value),
            Op::put(id.slot_key(slot), queue_value(&issue.handler)),
        ],
    ))
}

#[cfg(test)]
#[path = "execute_tests.rs"]
mod tests;
