//! What the reconciler can do to etcd. Each action carries the revisions it
//! was planned from; the executor turns it into one fenced transaction.

use std::fmt;
use std::sync::Arc;

use crate::esi::keys::{JobAction, JobId, JobSlot};

use super::draft::JobDraft;
use super::observed::DepState;

/// Issue a new job for the resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub action: JobAction,
    pub version: u64,
    pub handler: String,
    pub template: String,
    /// Mod revision of the config the job is built from.
    pub config_rev: i64,
    /// Mod revision of `/state` (0: absent) the action was chosen from.
    pub state_rev: i64,
    /// This retries a failed job after its backoff.
    pub retry: bool,
    /// The params and body, read at `config_rev`.
    pub job: Arc<JobDraft>,
    /// Unfinished jobs this one waits for (empty: it goes to `ready/`).
    pub dependency: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    IssueJob(Issue),
    /// Move a waiting job to ready: its dependencies are done.
    ReleaseJob {
        job: JobId,
        all_rev: i64,
        waiting_rev: i64,
        deps: Vec<(String, DepState)>,
    },
    /// Remove an unclaimed job that no longer matches the config.
    WithdrawJob {
        job: JobId,
        all_rev: i64,
        queued: Vec<(JobSlot, i64)>,
    },
    /// The worker wrote `finished`: remove `all/` and `finished/`.
    FinishJob {
        job: JobId,
        all_rev: i64,
        finished_rev: i64,
    },
    /// The job left the queue without being claimed or finished: put it back.
    RequeueJob {
        job: JobId,
        all_rev: i64,
        to: JobSlot,
    },
    /// The `working/` claim has no lease, so nothing will ever end it.
    ReclaimJob {
        job: JobId,
        all_rev: i64,
        working_rev: i64,
        to: JobSlot,
    },
    /// The worker finished the stack but died before writing `/state`.
    /// Writes `/state` and drops the job; the worker's own records
    /// (`/esi-worker/…`) are left as they are: the reconciler's role has no
    /// write access there (`esi-reconciler etcd-roles`; only
    /// `--purge-deleted` adds the stack records), and the next claim of a job
    /// for this resource resets `job_state`.
    CompleteState {
        job: JobId,
        all_rev: i64,
        state_rev: i64,
        stack_rev: i64,
        job_state_rev: i64,
    },
    /// The job vanished from the queue but `/state` already has its result.
    DropJob {
        job: JobId,
        all_rev: i64,
    },
    /// Queue entries (`waiting/`, `ready/`, `finished/`) of a job whose `all/` is gone.
    DropStrays {
        job: JobId,
        keys: Vec<(JobSlot, i64)>,
    },
    /// Count a failed attempt and schedule the retry.
    RecordFailure {
        version: u64,
        attempts: u32,
        failure_revision: i64,
        error: String,
        /// Unix ms before which the job is not retried.
        next_retry_ms: u64,
    },
    /// The resource converged: reset its backoff.
    ClearBackoff,
    /// `--purge-deleted`: after `DELETE_COMPLETED`, delete the config and the
    /// heat stack record, as Gohan and the Job Manager do.
    PurgeDeleted {
        config_rev: i64,
        state_rev: i64,
        stack_rev: Option<i64>,
    },
}

/// What kind of action, for metrics labels, events and `last_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    IssueJob,
    RetryJob,
    ReleaseJob,
    WithdrawJob,
    FinishJob,
    RequeueJob,
    ReclaimJob,
    CompleteState,
    DropJob,
    DropStrays,
    RecordFailure,
    ClearBackoff,
    PurgeDeleted,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::IssueJob => "issue_job",
            ActionKind::RetryJob => "retry_job",
            ActionKind::ReleaseJob => "release_job",
            ActionKind::WithdrawJob => "withdraw_job",
            ActionKind::FinishJob => "finish_job",
            ActionKind::RequeueJob => "requeue_job",
            ActionKind::ReclaimJob => "reclaim_job",
            ActionKind::CompleteState => "complete_state",
            ActionKind::DropJob => "drop_job",
            ActionKind::DropStrays => "drop_strays",
            ActionKind::RecordFailure => "record_failure",
            ActionKind::ClearBackoff => "clear_backoff",
            ActionKind::PurgeDeleted => "purge_deleted",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::IssueJob(i) if i.retry => ActionKind::RetryJob,
            Action::IssueJob(_) => ActionKind::IssueJob,
            Action::ReleaseJob { .. } => ActionKind::ReleaseJob,
            Action::WithdrawJob { .. } => ActionKind::WithdrawJob,
            Action::FinishJob { .. } => ActionKind::FinishJob,
            Action::RequeueJob { .. } => ActionKind::RequeueJob,
            Action::ReclaimJob { .. } => ActionKind::ReclaimJob,
            Action::CompleteState { .. } => ActionKind::CompleteState,
            Action::DropJob { .. } => ActionKind::DropJob,
            Action::DropStrays { .. } => ActionKind::DropStrays,
            Action::RecordFailure { .. } => ActionKind::RecordFailure,
            Action::ClearBackoff => ActionKind::ClearBackoff,
            Action::PurgeDeleted { .. } => ActionKind::PurgeDeleted,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::IssueJob(i) => {
                write!(
                    f,
                    "{} {} job v{} (template {}, handler {})",
                    if i.retry { "retry" } else { "issue" },
                    i.action,
                    i.version,
                    i.template,
                    i.handler
                )?;
                // A count, not the ids: this text is our status record's
                // `last_action`, and a resource many others reference
                // would make it long.
                match i.dependency.len() {
                    0 => {}
                    1 => write!(f, " after 1 job in flight")?,
                    n => write!(f, " after {n} jobs in flight")?,
                }
                Ok(())
            }
            Action::ReleaseJob { job, .. } => write!(f, "release {job} to ready"),
            Action::WithdrawJob { job, .. } => write!(f, "withdraw {job}"),
            Action::FinishJob { job, .. } => write!(f, "finish {job}"),
            Action::RequeueJob { job, to, .. } => write!(f, "requeue {job} to {}", slot_name(*to)),
            Action::ReclaimJob { job, to, .. } => write!(
                f,
                "reclaim {job} (claim without lease) to {}",
                slot_name(*to)
            ),
            Action::CompleteState { job, .. } => {
                write!(f, "complete /state from the finished stack of {job}")
            }
            Action::DropJob { job, .. } => write!(f, "drop {job} (its result is in /state)"),
            Action::DropStrays { job, keys } => {
                let names: Vec<&str> = keys.iter().map(|(s, _)| slot_name(*s)).collect();
                write!(f, "drop stray {} entries of {job}", names.join("/"))
            }
            Action::RecordFailure {
                attempts, version, ..
            } => write!(f, "record failed attempt {attempts} of v{version}"),
            Action::ClearBackoff => write!(f, "clear backoff"),
            Action::PurgeDeleted { .. } => write!(
                f,
                "purge the deleted resource's config and heat stack record"
            ),
        }
    }
}

pub fn slot_name(s: JobSlot) -> &'static str {
    match s {
        JobSlot::All => "all",
        JobSlot::Waiting => "waiting",
        JobSlot::Ready => "ready",
        JobSlot::Working => "working",
        JobSlot::Finished => "finished",
    }
}
