//! The planning step: a pure function from what is observed of one resource
//! to the actions that move it toward what its config asks for.
//!
//! Desired target (the README's "What it is"):
//! - config present, not marked: `/state` at the config's version with
//!   `CREATE_COMPLETED`/`MODIFY_COMPLETED` and no error;
//! - config marked for deletion: `/state` at the config's version with
//!   `DELETE_COMPLETED`;
//! - no config: nothing of ours should remain; what does is reported.
//!
//! Jobs in flight are tidied first (finished, superseded, vanished,
//! abandoned); a new job is issued only when none is left in flight, so a
//! resource never has two jobs at once.

use std::fmt;

use crate::esi::keys::{JobAction, JobSlot, ResourceRef};

use super::action::{Action, Issue};
use super::draft::Draft;
use super::observed::{Observed, ObservedJob, TemplateStatus};
use super::status::ResourceStatus;
use super::world::{ConfigSummary, Parsed, StackSummary, StateSummary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Phase {
    Pending,
    Progressing,
    Converged,
    BackingOff,
    Failed,
    Invalid,
    Orphaned,
    Paused,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Converged,
        Phase::BackingOff,
        Phase::Failed,
        Phase::Invalid,
        Phase::Orphaned,
        Phase::Paused,
    ];
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Converged => "Converged",
            Phase::BackingOff => "BackingOff",
            Phase::Failed => "Failed",
            Phase::Invalid => "Invalid",
            Phase::Orphaned => "Orphaned",
            Phase::Paused => "Paused",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An action and why it is planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub action: Action,
    pub why: String,
}

/// What one plan decided for one resource: everything the executor needs
/// to write, and nothing it would have to look up again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub resource: ResourceRef,
    /// Singular type (`port`).
    pub rtype: String,
    pub phase: Phase,
    /// What the resource is waiting for, or what is wrong.
    pub message: String,
    pub actions: Vec<Planned>,
    /// Plan again after this long even if nothing changes (backoff).
    pub requeue_after_ms: Option<u64>,
    /// Mod revision of our status record (0: absent), the fence for its update.
    pub status_rev: i64,
    /// Our status record as observed (the default when absent or invalid):
    /// what each action's update of it starts from.
    pub status: ResourceStatus,
    /// When the plan was made (Unix ms): the time its writes record.
    pub now_ms: u64,
    /// A job is due, but its params need the config's body: draft the job
    /// ([`super::draft`]) and plan again.
    pub needs_draft: bool,
    /// The due job cannot be issued now.
    pub hold: Option<Hold>,
}

/// Why a due job is not issued, and what would change that.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub reason: String,
    /// Plan again when this resource changes.
    pub blocked_on: Option<ResourceRef>,
    pub cause: HoldCause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldCause {
    /// A referenced resource must come first.
    Waiting,
    /// The job cannot be built from this config and template.
    Unbuildable,
    /// What the job is built from could not be read (etcd failed).
    Unreadable,
}

impl Plan {
    /// A plan with no action yet, for `o`.
    pub fn empty(o: &Observed) -> Self {
        Plan {
            resource: o.resource.clone(),
            rtype: o.rtype.clone(),
            phase: Phase::Pending,
            message: String::new(),
            actions: vec![],
            requeue_after_ms: None,
            status_rev: o.status.as_ref().map(|s| s.mod_rev).unwrap_or(0),
            status: o
                .status
                .as_ref()
                .and_then(Parsed::ok)
                .cloned()
                .unwrap_or_default(),
            now_ms: o.now_ms,
            needs_draft: false,
            hold: None,
        }
    }

    /// A plan of one action (an operator's request, such as retry-now).
    pub fn only(o: &Observed, action: Action, why: &str) -> Self {
        let mut p = Self::empty(o);
        p.push(action, why);
        p
    }

    /// The due job is not issued now, for `reason`; what was planned
    /// before it (tidying jobs in flight) still goes ahead.
    pub fn hold(
        &mut self,
        phase: Phase,
        reason: String,
        blocked_on: Option<ResourceRef>,
        cause: HoldCause,
    ) {
        self.set(phase, reason.clone());
        self.needs_draft = false;
        self.hold = Some(Hold {
            reason,
            blocked_on,
            cause,
        });
    }

    fn push(&mut self, action: Action, why: impl Into<String>) {
        self.actions.push(Planned {
            action,
            why: why.into(),
        });
    }
    fn set(&mut self, phase: Phase, message: impl Into<String>) {
        self.phase = phase;
        self.message = message.into();
    }
}

/// The action a job for this config must have.
pub fn target_action(o: &Observed, cfg: &ConfigSummary) -> JobAction {
    if cfg.marked {
        return JobAction::LogicalDelete;
    }
    // A stack that was never created (or is gone) is created again; Heat
    // cannot update a stack whose create failed into a sound state.
    let stack_alive = o
        .stack
        .as_ref()
        .and_then(Parsed::ok)
        .is_some_and(|s| !s.status.starts_with("DELETE") && &*s.status != "CREATE_FAILED");
    let created = o.state.as_ref().and_then(Parsed::ok).is_some_and(|s| {
        matches!(
            &*s.worker_state,
            "CREATE_COMPLETED" | "MODIFY_COMPLETED" | "MODIFY_FAILED"
        )
    });
    if stack_alive || created {
        JobAction::Modify
    } else {
        JobAction::Create
    }
}

/// `/state` says the config is realised, and (unless deleted) the heat stack
/// record shows the stack in place. A lost stack record with a good `/state`
/// is not converged: a `modify` job re-records it.
pub fn is_converged(
    state: Option<&StateSummary>,
    stack: Option<&StackSummary>,
    cfg: &ConfigSummary,
) -> bool {
    let Some(s) = state else { return false };
    if s.version != cfg.version || !s.error.is_empty() {
        return false;
    }
    if cfg.marked {
        &*s.worker_state == "DELETE_COMPLETED"
    } else {
        matches!(&*s.worker_state, "CREATE_COMPLETED" | "MODIFY_COMPLETED")
            && stack.is_some_and(|st| matches!(&*st.status, "CREATE_COMPLETE" | "UPDATE_COMPLETE"))
    }
}

fn invalid_reasons(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: &str, e: Option<&str>| {
        if let Some(e) = e {
            out.push(format!("{what}: {e}"));
        }
    };
    note("config", o.config.as_ref().and_then(Parsed::error));
    note("state", o.state.as_ref().and_then(Parsed::error));
    note("heat stack", o.stack.as_ref().and_then(Parsed::error));
    note("job state", o.job_state.as_ref().and_then(Parsed::error));
    note(
        "reconciler status",
        o.status.as_ref().and_then(Parsed::error),
    );
    for j in &o.jobs {
        note(
            &format!("job {}", j.id),
            j.all.as_ref().and_then(Parsed::error),
        );
    }
    out
}

fn queue_slot(j: &ObservedJob) -> JobSlot {
    if j.unfinished_deps().next().is_some() {
        JobSlot::Waiting
    } else {
        JobSlot::Ready
    }
}

fn where_is(j: &ObservedJob) -> &'static str {
    if j.working.is_some() {
        "working"
    } else if j.waiting.is_some() {
        "waiting"
    } else if j.ready.is_some() {
        "ready"
    } else {
        "in flight"
    }
}

/// Plans the next actions for one resource. Pure: the same view always
/// yields the same plan.
pub fn plan(o: &Observed) -> Plan {
    let mut p = Plan::empty(o);
    let invalid = invalid_reasons(o);
    if !invalid.is_empty() {
        p.set(
            Phase::Invalid,
            format!("left untouched: {}", invalid.join("; ")),
        );
        return p;
    }
    let tidied = tidy_jobs(o, &mut p);
    compare(o, &mut p, &tidied);
    if o.paused {
        let would: Vec<String> = p.actions.drain(..).map(|a| a.action.to_string()).collect();
        let msg = if would.is_empty() {
            "paused".to_string()
        } else {
            format!("paused; would {}", would.join(", "))
        };
        p.set(Phase::Paused, msg);
        // Still drafted (a read, no write), so it can say what it would issue.
        p.requeue_after_ms = None;
        p.hold = None;
    }
    p
}

/// What tidying the jobs in flight left for the comparison.
struct Tidied<'a> {
    /// Jobs that stay in flight (queued, claimed or put back).
    live: Vec<&'a ObservedJob>,
    /// A planned action writes `/state`.
    state_changing: bool,
}

/// Step 1: tidy the jobs in flight (finished, superseded, vanished,
/// abandoned), so that a new job is issued only when none is left.
fn tidy_jobs<'a>(o: &'a Observed, p: &mut Plan) -> Tidied<'a> {
    let mut t = Tidied {
        live: vec![],
        state_changing: false,
    };
    for j in &o.jobs {
        tidy_job(o, j, p, &mut t);
    }
    t
}

fn tidy_job<'a>(o: &Observed, j: &'a ObservedJob, p: &mut Plan, t: &mut Tidied<'a>) {
    let cfg = o.config.as_ref().and_then(Parsed::ok);
    let Some(all_rev) = j.all_rev() else {
        let mut keys = vec![];
        keys.extend(j.waiting.map(|r| (JobSlot::Waiting, r)));
        keys.extend(j.ready.map(|r| (JobSlot::Ready, r)));
        keys.extend(j.finished.map(|r| (JobSlot::Finished, r)));
        if j.working.is_some() {
            // A worker still holds it; its lease or its own cleanup ends it.
            t.live.push(j);
        } else if !keys.is_empty() {
            p.push(
                Action::DropStrays {
                    job: j.id.clone(),
                    keys,
                },
                "its /jobs/all entry is gone",
            );
        }
        return;
    };
    if let Some(finished_rev) = j.finished {
        p.push(
            Action::FinishJob {
                job: j.id.clone(),
                all_rev,
                finished_rev,
            },
            "the worker marked it finished",
        );
        return;
    }
    if let Some((working_rev, lease)) = j.working {
        if lease == 0 {
            p.push(
                Action::ReclaimJob {
                    job: j.id.clone(),
                    all_rev,
                    working_rev,
                    to: queue_slot(j),
                },
                "its working claim has no lease, so no expiry would ever release it",
            );
        }
        t.live.push(j);
        return;
    }
    // Create and modify both realise a version; only deleting versus not
    // deleting makes a job of the same version wrong.
    let superseded = cfg.is_some_and(|c| {
        j.id.version < c.version
            || (j.id.version == c.version && (j.id.action == JobAction::LogicalDelete) != c.marked)
    });
    if superseded {
        let mut queued = vec![];
        queued.extend(j.waiting.map(|r| (JobSlot::Waiting, r)));
        queued.extend(j.ready.map(|r| (JobSlot::Ready, r)));
        let version = cfg.map(|c| c.version).unwrap_or(0);
        let target = cfg.map(|c| target_action(o, c).as_str()).unwrap_or("-");
        p.push(
            Action::WithdrawJob {
                job: j.id.clone(),
                all_rev,
                queued,
            },
            format!("unclaimed and superseded by config v{version} ({target})"),
        );
        return;
    }
    if j.waiting.is_some() || j.ready.is_some() {
        if let Some(waiting_rev) = j.waiting
            && j.unfinished_deps().next().is_none()
        {
            p.push(
                Action::ReleaseJob {
                    job: j.id.clone(),
                    all_rev,
                    waiting_rev,
                    deps: j.deps.clone(),
                },
                "every job it depends on is done",
            );
        }
        t.live.push(j);
        return;
    }
    tidy_vanished(o, j, all_rev, p, t);
}

/// A job neither queued, claimed nor finished: it vanished from the queue.
fn tidy_vanished<'a>(
    o: &Observed,
    j: &'a ObservedJob,
    all_rev: i64,
    p: &mut Plan,
    t: &mut Tidied<'a>,
) {
    let state = o.state.as_ref().and_then(Parsed::ok);
    let action = j.id.action;
    let recorded = state.is_some_and(|s| {
        s.version > j.id.version
            || (s.version == j.id.version
                && (&*s.worker_state == action.completed_state()
                    || &*s.worker_state == action.failed_state()))
    });
    // Only records written after this job was issued speak for it: a
    // `job_state` left by an earlier job (the reconciler never deletes
    // worker records) is older than this job's `all/` key.
    let stack_done = o
        .stack
        .as_ref()
        .filter(|s| s.mod_rev > all_rev)
        .and_then(Parsed::ok)
        .is_some_and(|s| &*s.status == action.stack_complete());
    let job_state_done = o
        .job_state
        .as_ref()
        .filter(|js| js.mod_rev > all_rev)
        .and_then(Parsed::ok)
        .is_some_and(|js| js.orchestration_state.as_deref() == Some(action.stack_complete()));
    if recorded {
        p.push(
            Action::DropJob {
                job: j.id.clone(),
                all_rev,
            },
            "it left the queue and /state already records its result",
        );
    } else if let (true, true, Some(stack), Some(js)) =
        (stack_done, job_state_done, &o.stack, &o.job_state)
    {
        p.push(
            Action::CompleteState {
                job: j.id.clone(),
                all_rev,
                state_rev: o.state.as_ref().map(|s| s.mod_rev).unwrap_or(0),
                stack_rev: stack.mod_rev,
                job_state_rev: js.mod_rev,
            },
            "its stack finished but the worker died before writing /state",
        );
        t.state_changing = true;
    } else {
        p.push(
            Action::RequeueJob {
                job: j.id.clone(),
                all_rev,
                to: queue_slot(j),
            },
            "it is in /jobs/all but neither queued, claimed nor finished (lost, or its worker's lease expired)",
        );
        t.live.push(j);
    }
}

/// Step 2: compare what the config asks for with what is observed.
fn compare(o: &Observed, p: &mut Plan, t: &Tidied<'_>) {
    let Some(cfg) = o.config.as_ref().and_then(Parsed::ok) else {
        return without_config(o, p);
    };
    let state = o.state.as_ref().and_then(Parsed::ok);
    let (handler, template) = match &o.template {
        TemplateStatus::NotNeeded => {
            return p.set(
                Phase::Converged,
                "no template applies: nothing to orchestrate",
            );
        }
        TemplateStatus::Missing(t) => {
            return p.set(Phase::Pending, format!("waiting for heat template {t}"));
        }
        TemplateStatus::Invalid { template, reason } => {
            return p.set(
                Phase::Failed,
                format!("heat template {template} is invalid: {reason}"),
            );
        }
        TemplateStatus::Unknown => return p.set(Phase::Pending, "config not understood"),
        TemplateStatus::Ready {
            handler, template, ..
        } => (handler, template),
    };
    let action = target_action(o, cfg);
    if is_converged(state, o.stack.as_ref().and_then(Parsed::ok), cfg) {
        return converged(o, p, cfg, action, &t.live);
    }
    if let Some(s) = state
        && s.version > cfg.version
    {
        return p.set(
            Phase::Failed,
            format!(
                "/state is at v{}, ahead of config v{}",
                s.version, cfg.version
            ),
        );
    }
    if let Some(j) = t.live.first() {
        return p.set(
            Phase::Progressing,
            format!("{} v{} job is {}", j.id.action, j.id.version, where_is(j)),
        );
    }
    if t.state_changing {
        return p.set(Phase::Progressing, "completing /state");
    }
    let intent = Intent {
        action,
        version: cfg.version,
        handler,
        template,
        config_rev: o.config.as_ref().map(|c| c.mod_rev).unwrap_or(0),
        state_rev: o.state.as_ref().map(|s| s.mod_rev).unwrap_or(0),
    };
    if let Some(s) = state
        && s.version == cfg.version
        && s.is_failed()
    {
        return back_off(o, p, &intent, s);
    }
    let why = match state {
        None => format!("no /state yet: {action} v{}", cfg.version),
        Some(s) => format!(
            "/state is v{} {}, config is v{}",
            s.version, s.worker_state, cfg.version
        ),
    };
    issue_job(o, p, &intent, false, why);
}

/// No config: nothing of ours should remain; what does is reported.
fn without_config(o: &Observed, p: &mut Plan) {
    let state = o.state.as_ref().and_then(Parsed::ok);
    // A `job_state` with no job in flight is a dead worker's leftover that
    // nothing here may remove (see `Action::CompleteState`): not counted as
    // a record of ours that remains.
    let left = [
        o.state.is_some(),
        o.stack.is_some(),
        o.job_state.is_some() && !o.jobs.is_empty(),
        !o.jobs.is_empty(),
    ];
    let deleted = state.is_some_and(|s| &*s.worker_state == "DELETE_COMPLETED");
    if deleted && o.stack.is_none() && o.jobs.is_empty() {
        p.set(Phase::Converged, "deleted; its config was removed");
    } else if left.iter().any(|x| *x) {
        p.set(
            Phase::Orphaned,
            "no config, but records of it remain (removal is opt-in)",
        );
    } else {
        p.set(Phase::Converged, "no config and nothing left");
    }
}

fn converged(
    o: &Observed,
    p: &mut Plan,
    cfg: &ConfigSummary,
    action: JobAction,
    live: &[&ObservedJob],
) {
    if !live.is_empty() {
        return p.set(
            Phase::Progressing,
            format!("converged; {} stale job(s) still in flight", live.len()),
        );
    }
    if cfg.marked && o.purge_deleted {
        p.push(
            Action::PurgeDeleted {
                config_rev: o.config.as_ref().map(|c| c.mod_rev).unwrap_or(0),
                state_rev: o.state.as_ref().map(|s| s.mod_rev).unwrap_or(0),
                stack_rev: o.stack.as_ref().map(|s| s.mod_rev),
            },
            "deleted, and --purge-deleted is on",
        );
    } else if o
        .status
        .as_ref()
        .and_then(Parsed::ok)
        .is_some_and(|s| s.attempts > 0)
    {
        p.push(Action::ClearBackoff, "converged");
    }
    p.set(
        Phase::Converged,
        format!("v{} {}", cfg.version, action.completed_state()),
    );
}

/// The job the comparison calls for, before it is drafted.
struct Intent<'a> {
    action: JobAction,
    version: u64,
    handler: &'a str,
    template: &'a str,
    config_rev: i64,
    state_rev: i64,
}

/// Step 3: a failed attempt at this version. Count it once, wait out its
/// backoff, then retry.
fn back_off(o: &Observed, p: &mut Plan, intent: &Intent<'_>, s: &StateSummary) {
    let (action, version) = (intent.action, intent.version);
    let status = o.status.as_ref().and_then(Parsed::ok);
    let counted = status.is_some_and(|st| st.failure_revision == intent.state_rev);
    let attempts = status
        .filter(|st| st.version == version)
        .map(|st| st.attempts)
        .unwrap_or(0);
    let error = if s.error.is_empty() {
        s.worker_state.to_string()
    } else {
        s.error.to_string()
    };
    if !counted {
        let attempts = attempts.saturating_add(1);
        // Seeded by the failure itself: the same observation always plans
        // the same retry time, and resources failing together spread out.
        let seed = xxhash_rust::xxh3::xxh3_64(
            format!("{}#{}", o.resource.config_key(), intent.state_rev).as_bytes(),
        );
        let delay = o.backoff.delay_seeded(attempts, Some(seed));
        p.push(
            Action::RecordFailure {
                version,
                attempts,
                failure_revision: intent.state_rev,
                error: error.clone(),
                next_retry_ms: o.now_ms.saturating_add(crate::clock::millis(delay)),
            },
            format!("{action} failed: {error}"),
        );
        return p.set(
            Phase::BackingOff,
            format!("attempt {attempts} failed: {error}"),
        );
    }
    let next = status.map(|st| st.next_retry_ms).unwrap_or(0);
    // Jitter adds at most one more delay: twice the cap is the most a
    // backoff ever sets; anything later is not a retry time.
    let latest = crate::clock::millis(super::backoff::MAX_CAP.saturating_mul(2));
    if let Some(wait) = next.checked_sub(o.now_ms).filter(|&w| w > 0 && w <= latest) {
        p.requeue_after_ms = Some(wait);
        return p.set(
            Phase::BackingOff,
            format!("attempt {attempts} failed: {error}; retry in {wait} ms"),
        );
    }
    issue_job(
        o,
        p,
        intent,
        true,
        format!("backoff after attempt {attempts} elapsed"),
    );
}

/// Step 4: issue the job, once it is drafted and nothing it references
/// still has to be issued first.
fn issue_job(o: &Observed, p: &mut Plan, intent: &Intent<'_>, retry: bool, why: String) {
    let (action, version) = (intent.action, intent.version);
    let verb = if retry { "retrying" } else { "issuing" };
    let view = o
        .draft
        .as_ref()
        .filter(|v| !matches!(&v.draft, Draft::Ready(d) if d.config_rev != intent.config_rev));
    let Some(view) = view else {
        // The job's params need the config's body: read it, then plan again.
        p.needs_draft = true;
        return p.set(Phase::Progressing, format!("{verb} {action} v{version}"));
    };
    let job = match &view.draft {
        Draft::Ready(job) => job,
        Draft::Stale => {
            p.needs_draft = true;
            return p.set(
                Phase::Progressing,
                "the config changed while its job was built",
            );
        }
        Draft::MissingReference { rtype, id } => {
            let reason = format!("{rtype} {id} is referenced but has no config");
            return p.hold(
                Phase::Pending,
                reason,
                view.missing.clone(),
                HoldCause::Waiting,
            );
        }
        Draft::Invalid(e) => {
            return p.hold(
                Phase::Failed,
                format!("cannot build the job: {e}"),
                None,
                HoldCause::Unbuildable,
            );
        }
    };
    if let Some(r) = view.references.iter().find(|r| r.awaiting_issue) {
        let reason = format!(
            "waiting for {} {} to be issued first",
            r.id.resource_type, r.id.resource_id
        );
        return p.hold(
            Phase::Pending,
            reason,
            r.resource.clone(),
            HoldCause::Waiting,
        );
    }
    let mut dependency: Vec<String> = vec![];
    let jobs = view.references.iter().flat_map(|r| &r.unfinished_jobs);
    for j in jobs.chain(&view.referencing_jobs) {
        if !dependency.contains(j) {
            dependency.push(j.clone());
        }
    }
    p.push(
        Action::IssueJob(Issue {
            action,
            version,
            handler: intent.handler.to_string(),
            template: intent.template.to_string(),
            config_rev: intent.config_rev,
            state_rev: intent.state_rev,
            retry,
            job: job.clone(),
            dependency,
        }),
        why,
    );
    p.set(Phase::Progressing, format!("{verb} {action} v{version}"));
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
