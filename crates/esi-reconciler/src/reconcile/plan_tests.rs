//! Table tests for every row of the planner, and a property test over
//! arbitrary reachable views.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::esi::job::CompiledTemplate;
use crate::esi::keys::{JobId, ResourceRef};
use crate::esi::records::ResourceId;
use crate::reconcile::draft::{Draft, JobDraft};
use crate::reconcile::observed::{DepState, ObservedJob};
use crate::reconcile::observed::{DraftView, Reference};
use crate::reconcile::status::ResourceStatus;
use crate::reconcile::world::{JobStateSummary, StackSummary, TemplateUse};

fn ok<T>(mod_rev: i64, v: T) -> Option<Parsed<T>> {
    Some(Parsed {
        mod_rev,
        value: Ok(v),
    })
}

/// A port with a ready template and a config at `version`.
fn port(version: u64, marked: bool) -> Observed {
    let mut o = Observed::empty(ResourceRef::new("ports", "p1"), "port");
    o.config = ok(
        10,
        ConfigSummary {
            version,
            marked,
            tenant: None,
            template: Some(Arc::new(TemplateUse {
                handler: "heat_worker".into(),
                template: "port".into(),
            })),
        },
    );
    o.template = TemplateStatus::Ready {
        handler: "heat_worker".into(),
        template: "port".into(),
        compiled: Arc::new(CompiledTemplate {
            id: "port".into(),
            handler: "heat_worker".into(),
            template_file: "port.yaml".into(),
            mappings: vec![],
        }),
    };
    o.now_ms = 1_000_000;
    o
}

/// `/state` as the worker writes it: with its heat stack record beside it.
fn with_state(mut o: Observed, version: u64, worker_state: &str, error: &str) -> Observed {
    o.state = ok(
        20,
        StateSummary {
            version,
            worker_state: worker_state.into(),
            error: error.into(),
        },
    );
    let stack = match worker_state {
        "CREATE_COMPLETED" => Some("CREATE_COMPLETE"),
        "MODIFY_COMPLETED" => Some("UPDATE_COMPLETE"),
        _ => None,
    };
    if let (None, Some(status)) = (&o.stack, stack) {
        o.stack = ok(
            30,
            StackSummary {
                status: status.into(),
            },
        );
    }
    o
}

fn with_stack(mut o: Observed, status: &str) -> Observed {
    o.stack = ok(
        30,
        StackSummary {
            status: status.into(),
        },
    );
    o
}

fn job(action: JobAction, version: u64) -> ObservedJob {
    ObservedJob {
        id: JobId {
            action,
            handler: "heat_worker".into(),
            resource_type: "port".into(),
            resource_id: "p1".into(),
            version,
            suffix: "abcde".into(),
        },
        all: ok(40, vec![]),
        waiting: None,
        ready: None,
        working: None,
        finished: None,
        deps: vec![],
    }
}

fn kinds(p: &Plan) -> Vec<&'static str> {
    p.actions.iter().map(|a| a.action.kind().as_str()).collect()
}

/// A draft read at the config's revision that references nothing.
fn drafted(o: &Observed) -> DraftView {
    DraftView {
        draft: Draft::Ready(Arc::new(JobDraft {
            config_rev: o.config.as_ref().map(|c| c.mod_rev).unwrap_or(0),
            body: Default::default(),
            params: vec![],
            references: vec![],
        })),
        references: vec![],
        referencing_jobs: vec![],
        missing: None,
    }
}

/// Plans as `decide` does: when the plan asks for a draft, it gets one
/// (here one that references nothing) and plans again.
fn plan(o: &Observed) -> Plan {
    let p = super::plan(o);
    if !p.needs_draft || o.draft.is_some() {
        return p;
    }
    let mut o = o.clone();
    o.draft = Some(drafted(&o));
    super::plan(&o)
}

fn issued(p: &Plan) -> Option<&Issue> {
    p.actions.iter().find_map(|a| match &a.action {
        Action::IssueJob(i) => Some(i),
        _ => None,
    })
}

#[test]
fn issues_create_modify_and_logical_delete() {
    let p = plan(&port(1, false));
    assert_eq!(
        issued(&p).map(|i| (i.action, i.version)),
        Some((JobAction::Create, 1))
    );
    assert_eq!(p.phase, Phase::Progressing);

    let o = with_stack(
        with_state(port(2, false), 1, "CREATE_COMPLETED", ""),
        "CREATE_COMPLETE",
    );
    let p = plan(&o);
    assert_eq!(
        issued(&p).map(|i| (i.action, i.version, i.state_rev)),
        Some((JobAction::Modify, 2, 20))
    );

    let o = with_stack(
        with_state(port(4, true), 3, "MODIFY_COMPLETED", ""),
        "UPDATE_COMPLETE",
    );
    let p = plan(&o);
    assert_eq!(
        issued(&p).map(|i| (i.action, i.version)),
        Some((JobAction::LogicalDelete, 4))
    );
}

#[test]
fn converged_resources_are_left_alone() {
    for (o, why) in [
        (
            with_state(port(1, false), 1, "CREATE_COMPLETED", ""),
            "created",
        ),
        (
            with_state(port(3, false), 3, "MODIFY_COMPLETED", ""),
            "modified",
        ),
        (
            with_state(port(4, true), 4, "DELETE_COMPLETED", ""),
            "deleted",
        ),
    ] {
        let p = plan(&o);
        assert_eq!((p.phase, kinds(&p)), (Phase::Converged, vec![]), "{why}");
    }
}

#[test]
fn a_job_in_flight_blocks_a_second_one() {
    for j in [
        ObservedJob {
            ready: Some(41),
            ..job(JobAction::Create, 1)
        },
        ObservedJob {
            waiting: Some(41),
            deps: vec![("d".into(), DepState::Unfinished)],
            ..job(JobAction::Create, 1)
        },
        ObservedJob {
            working: Some((42, 7)),
            ..job(JobAction::Create, 1)
        },
    ] {
        let mut o = port(1, false);
        o.jobs = vec![j];
        let p = plan(&o);
        assert_eq!((p.phase, kinds(&p)), (Phase::Progressing, vec![]));
    }
}

#[test]
fn waiting_jobs_are_released_when_dependencies_are_done() {
    let mut o = port(1, false);
    o.jobs = vec![ObservedJob {
        waiting: Some(41),
        deps: vec![
            ("a".into(), DepState::Gone),
            ("b".into(), DepState::Finished),
        ],
        ..job(JobAction::Create, 1)
    }];
    assert_eq!(kinds(&plan(&o)), vec!["release_job"]);
}

#[test]
fn superseded_unclaimed_jobs_are_withdrawn_and_replaced() {
    let mut o = with_stack(
        with_state(port(5, false), 3, "MODIFY_COMPLETED", ""),
        "UPDATE_COMPLETE",
    );
    o.jobs = vec![ObservedJob {
        ready: Some(41),
        ..job(JobAction::Modify, 4)
    }];
    let p = plan(&o);
    assert_eq!(kinds(&p), vec!["withdraw_job", "issue_job"]);
    assert_eq!(issued(&p).map(|i| i.version), Some(5));
    // A delete at the same version supersedes a modify of it.
    let mut o = with_stack(
        with_state(port(4, true), 3, "MODIFY_COMPLETED", ""),
        "UPDATE_COMPLETE",
    );
    o.jobs = vec![ObservedJob {
        ready: Some(41),
        ..job(JobAction::Modify, 4)
    }];
    assert_eq!(kinds(&plan(&o)), vec!["withdraw_job", "issue_job"]);
}

#[test]
fn claimed_superseded_jobs_are_waited_for() {
    let mut o = with_stack(
        with_state(port(5, false), 3, "MODIFY_COMPLETED", ""),
        "UPDATE_COMPLETE",
    );
    o.jobs = vec![ObservedJob {
        working: Some((42, 7)),
        ..job(JobAction::Modify, 4)
    }];
    let p = plan(&o);
    assert_eq!((p.phase, kinds(&p)), (Phase::Progressing, vec![]));
}

#[test]
fn finished_jobs_are_finished_then_the_next_version_issued() {
    let mut o = with_stack(
        with_state(port(2, false), 1, "CREATE_COMPLETED", ""),
        "CREATE_COMPLETE",
    );
    o.jobs = vec![ObservedJob {
        finished: Some(43),
        ..job(JobAction::Create, 1)
    }];
    assert_eq!(kinds(&plan(&o)), vec!["finish_job", "issue_job"]);
    let mut o = with_state(port(1, false), 1, "CREATE_COMPLETED", "");
    o.jobs = vec![ObservedJob {
        finished: Some(43),
        ..job(JobAction::Create, 1)
    }];
    let p = plan(&o);
    assert_eq!((kinds(&p), p.phase), (vec!["finish_job"], Phase::Converged));
}

#[test]
fn vanished_jobs_are_requeued_completed_or_dropped() {
    // Lost from the queue, nothing done: back to ready.
    let mut o = port(1, false);
    o.jobs = vec![job(JobAction::Create, 1)];
    let p = plan(&o);
    assert_eq!(kinds(&p), vec!["requeue_job"]);
    assert!(matches!(
        p.actions[0].action,
        Action::RequeueJob {
            to: JobSlot::Ready,
            ..
        }
    ));
    // With an unfinished dependency: back to waiting.
    o.jobs = vec![ObservedJob {
        deps: vec![("d".into(), DepState::Unfinished)],
        ..job(JobAction::Create, 1)
    }];
    assert!(matches!(
        plan(&o).actions[0].action,
        Action::RequeueJob {
            to: JobSlot::Waiting,
            ..
        }
    ));
    // Stack done and job_state says so, /state missing: complete it.
    let mut o = with_stack(port(1, false), "CREATE_COMPLETE");
    o.stack.as_mut().unwrap().mod_rev = 45;
    o.job_state = ok(
        50,
        JobStateSummary {
            orchestration_state: Some("CREATE_COMPLETE".into()),
        },
    );
    o.jobs = vec![job(JobAction::Create, 1)];
    let p = plan(&o);
    assert_eq!(
        (kinds(&p), p.phase),
        (vec!["complete_state"], Phase::Progressing)
    );
    // The same records, but older than the job (left by an earlier job):
    // they do not speak for it, so it runs again.
    let mut stale = o.clone();
    stale.job_state.as_mut().unwrap().mod_rev = 35;
    assert_eq!(kinds(&plan(&stale)), vec!["requeue_job"]);
    let mut stale = o.clone();
    stale.stack.as_mut().unwrap().mod_rev = 30;
    assert_eq!(kinds(&plan(&stale)), vec!["requeue_job"]);
    // /state already has the result: drop the job.
    let mut o = with_state(port(1, false), 1, "CREATE_COMPLETED", "");
    o.jobs = vec![job(JobAction::Create, 1)];
    assert_eq!(kinds(&plan(&o)), vec!["drop_job"]);
}

#[test]
fn claims_without_a_lease_are_reclaimed() {
    let mut o = port(1, false);
    o.jobs = vec![ObservedJob {
        working: Some((42, 0)),
        ..job(JobAction::Create, 1)
    }];
    let p = plan(&o);
    assert_eq!(
        (kinds(&p), p.phase),
        (vec!["reclaim_job"], Phase::Progressing)
    );
}

#[test]
fn stray_queue_entries_are_dropped() {
    let mut o = with_state(port(1, false), 1, "CREATE_COMPLETED", "");
    o.jobs = vec![ObservedJob {
        all: None,
        ready: Some(5),
        finished: Some(6),
        ..job(JobAction::Create, 1)
    }];
    assert_eq!(kinds(&plan(&o)), vec!["drop_strays"]);
}

#[test]
fn failures_back_off_then_retry() {
    let failed = with_stack(
        with_state(port(1, false), 1, "CREATE_FAILED", "boom"),
        "CREATE_FAILED",
    );
    let p = plan(&failed);
    assert_eq!(
        (kinds(&p), p.phase),
        (vec!["record_failure"], Phase::BackingOff)
    );
    assert!(matches!(
        p.actions[0].action,
        Action::RecordFailure {
            attempts: 1,
            failure_revision: 20,
            ..
        }
    ));

    let mut waiting = failed.clone();
    waiting.status = ok(
        60,
        ResourceStatus {
            attempts: 1,
            version: 1,
            failure_revision: 20,
            next_retry_ms: 1_005_000,
            ..Default::default()
        },
    );
    let p = plan(&waiting);
    assert_eq!(
        (kinds(&p), p.phase, p.requeue_after_ms),
        (vec![], Phase::BackingOff, Some(5_000))
    );

    let mut due = waiting.clone();
    due.now_ms = 1_005_000;
    let p = plan(&due);
    let i = issued(&p).unwrap();
    assert!(i.retry);
    assert_eq!(i.action, JobAction::Create);
    assert_eq!(p.status_rev, 60);

    // Converged again: the backoff is cleared.
    let mut done = with_state(port(1, false), 1, "CREATE_COMPLETED", "");
    done.status = waiting.status.clone();
    assert_eq!(kinds(&plan(&done)), vec!["clear_backoff"]);
}

#[test]
fn invalid_records_are_reported_and_untouched() {
    let mut o = port(1, false);
    o.config = Some(Parsed {
        mod_rev: 10,
        value: Err("expected value at line 1".into()),
    });
    o.template = TemplateStatus::Unknown;
    o.jobs = vec![ObservedJob {
        finished: Some(43),
        ..job(JobAction::Create, 1)
    }];
    let p = plan(&o);
    assert_eq!((p.phase, kinds(&p)), (Phase::Invalid, vec![]));
    assert!(p.message.contains("expected value"), "{}", p.message);

    let mut o = port(1, false);
    o.jobs = vec![ObservedJob {
        all: Some(Parsed {
            mod_rev: 1,
            value: Err("bad".into()),
        }),
        ..job(JobAction::Create, 1)
    }];
    assert_eq!(plan(&o).phase, Phase::Invalid);
}

#[test]
fn templates_decide_whether_there_is_work() {
    let mut o = port(1, false);
    o.template = TemplateStatus::NotNeeded;
    assert_eq!(
        (plan(&o).phase, kinds(&plan(&o))),
        (Phase::Converged, vec![])
    );
    o.template = TemplateStatus::Missing("port".into());
    assert_eq!((plan(&o).phase, kinds(&plan(&o))), (Phase::Pending, vec![]));
    o.template = TemplateStatus::Invalid {
        template: "port".into(),
        reason: "x".into(),
    };
    assert_eq!(plan(&o).phase, Phase::Failed);
}

#[test]
fn orphans_are_reported_not_removed() {
    let mut o = with_state(
        Observed::empty(ResourceRef::new("ports", "p1"), "port"),
        1,
        "CREATE_COMPLETED",
        "",
    );
    o.jobs = vec![ObservedJob {
        ready: Some(3),
        ..job(JobAction::Create, 1)
    }];
    let p = plan(&o);
    assert_eq!((p.phase, kinds(&p)), (Phase::Orphaned, vec![]));
    // ...but a finished job of it is still finished.
    o.jobs = vec![ObservedJob {
        finished: Some(3),
        ..job(JobAction::Create, 1)
    }];
    assert_eq!(kinds(&plan(&o)), vec!["finish_job"]);
}

#[test]
fn paused_resources_plan_but_do_not_act() {
    let mut o = port(1, false);
    o.paused = true;
    let p = plan(&o);
    assert_eq!((p.phase, kinds(&p)), (Phase::Paused, vec![]));
    assert!(p.message.contains("would issue create"), "{}", p.message);
}

#[test]
fn state_ahead_of_config_is_a_failure() {
    let o = with_state(port(2, false), 3, "MODIFY_COMPLETED", "");
    assert_eq!(plan(&o).phase, Phase::Failed);
}

// ---- property test ----------------------------------------------------

const WORKER_STATES: [&str; 7] = [
    "CREATE_COMPLETED",
    "MODIFY_COMPLETED",
    "DELETE_COMPLETED",
    "CREATE_FAILED",
    "MODIFY_FAILED",
    "DELETE_FAILED",
    "READ_COMPLETE",
];

fn arb_job() -> impl Strategy<Value = ObservedJob> {
    (
        0..3usize,
        1..6u64,
        any::<bool>(),
        prop::option::of(0..3u8),
        any::<bool>(),
        prop::collection::vec(
            prop::sample::select(vec![
                DepState::Gone,
                DepState::Finished,
                DepState::Unfinished,
            ]),
            0..3,
        ),
        "[a-e]{5}",
    )
        .prop_map(|(a, version, has_all, queue, finished, deps, suffix)| {
            let mut j = job(JobAction::ALL[a], version);
            j.id.suffix = suffix;
            if !has_all {
                j.all = None;
            }
            match queue {
                Some(0) => j.waiting = Some(41),
                Some(1) => j.ready = Some(41),
                Some(_) => j.working = Some((42, if version % 2 == 0 { 7 } else { 0 })),
                None => {}
            }
            if finished {
                j.finished = Some(43);
            }
            // A job with no key at all is not reachable: the world forgets it.
            if j.all.is_none()
                && j.waiting.is_none()
                && j.ready.is_none()
                && j.working.is_none()
                && j.finished.is_none()
            {
                j.all = ok(40, vec![]);
            }
            j.deps = deps
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("d{i}"), s))
                .collect();
            j
        })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        1..6u64,
        any::<bool>(),
        prop::option::of((1..6u64, 0..WORKER_STATES.len(), any::<bool>())),
        prop::option::of(prop::sample::select(vec![
            "CREATE_COMPLETE",
            "UPDATE_COMPLETE",
            "DELETE_COMPLETE",
            "CREATE_FAILED",
        ])),
        prop::collection::vec(arb_job(), 0..4),
        prop::option::of((0..4u32, 0..3i64)),
    )
        .prop_map(|(version, marked, state, stack, jobs, status)| {
            let mut o = port(version, marked);
            if let Some((v, ws, err)) = state {
                o = with_state(o, v, WORKER_STATES[ws], if err { "boom" } else { "" });
            }
            if let Some(s) = stack {
                o = with_stack(o, s);
            }
            o.jobs = jobs;
            if let Some((attempts, which)) = status {
                o.status = ok(
                    60,
                    ResourceStatus {
                        attempts,
                        version,
                        failure_revision: [0, 20, 99][which as usize],
                        next_retry_ms: 999_000,
                        ..Default::default()
                    },
                );
            }
            o
        })
}

proptest! {
    #[test]
    fn plans_are_safe_and_make_progress(o in arb_observed()) {
        let p = plan(&o);
        // Never two jobs for one (type, id, version, action), and never a new
        // job beside one still in flight.
        let issues: Vec<&Issue> = p.actions.iter().filter_map(|a| match &a.action { Action::IssueJob(i) => Some(i), _ => None }).collect();
        prop_assert!(issues.len() <= 1);
        if let Some(i) = issues.first() {
            let cfg = o.config.as_ref().unwrap().value.as_ref().unwrap();
            prop_assert_eq!(i.version, cfg.version);
            prop_assert_eq!(i.action == JobAction::LogicalDelete, cfg.marked);
            for j in &o.jobs {
                let tidied = p.actions.iter().any(|a| match &a.action {
                    Action::FinishJob { job, .. } | Action::WithdrawJob { job, .. } | Action::DropJob { job, .. } | Action::DropStrays { job, .. } => job == &j.id,
                    _ => false,
                });
                prop_assert!(tidied, "issued beside live job {}", j.id);
            }
        }
        // Every action targets this resource's own jobs.
        for a in &p.actions {
            if let Action::FinishJob { job, .. } | Action::WithdrawJob { job, .. } | Action::RequeueJob { job, .. } = &a.action {
                prop_assert!(o.jobs.iter().any(|j| &j.id == job));
            }
        }
        // Progress: a resource that is not converged either acts, or waits on
        // something that will change without us (a job in flight, a backoff
        // timer, a failure that needs an operator).
        match p.phase {
            Phase::Converged => {
                let cfg = o.config.as_ref().unwrap().value.as_ref().unwrap();
                prop_assert!(is_converged(o.state.as_ref().and_then(Parsed::ok), o.stack.as_ref().and_then(Parsed::ok), cfg));
            }
            Phase::Progressing => prop_assert!(!p.actions.is_empty() || o.jobs.iter().any(|j| j.all.is_some() || j.working.is_some())),
            Phase::BackingOff => prop_assert!(!p.actions.is_empty() || p.requeue_after_ms.is_some()),
            Phase::Failed => prop_assert!(p.message.contains("ahead")),
            other => prop_assert!(false, "unexpected phase {:?}: {}", other, p.message),
        }
        // Deterministic.
        prop_assert_eq!(plan(&o), p);
    }
}

#[test]
fn purge_deleted_removes_config_once_deleted() {
    let mut o = with_stack(
        with_state(port(4, true), 4, "DELETE_COMPLETED", ""),
        "DELETE_COMPLETE",
    );
    assert_eq!(kinds(&plan(&o)), Vec::<&str>::new());
    o.purge_deleted = true;
    let p = plan(&o);
    assert_eq!(kinds(&p), vec!["purge_deleted"]);
    assert!(matches!(
        p.actions[0].action,
        Action::PurgeDeleted {
            config_rev: 10,
            state_rev: 20,
            stack_rev: Some(30)
        }
    ));
    // Not before the delete completed.
    let o = Observed {
        purge_deleted: true,
        ..with_state(port(4, true), 3, "MODIFY_COMPLETED", "")
    };
    assert_eq!(kinds(&plan(&o)), vec!["issue_job"]);
    // Afterwards only /state is left: that is a deleted resource, not an orphan.
    let gone = with_state(
        Observed::empty(ResourceRef::new("ports", "p1"), "port"),
        4,
        "DELETE_COMPLETED",
        "",
    );
    assert_eq!(plan(&gone).phase, Phase::Converged);
}

#[test]
fn a_lost_stack_record_is_recorded_again() {
    let mut o = with_state(port(2, false), 2, "MODIFY_COMPLETED", "");
    o.stack = None;
    let p = plan(&o);
    assert_eq!(
        issued(&p).map(|i| (i.action, i.version)),
        Some((JobAction::Modify, 2))
    );
}

/// Extreme numbers anywhere a record can put them: versions, revisions,
/// attempts, retry times and the clock at their limits, any worker state
/// and stack status text, records that did not parse. A status or state in
/// etcd is untrusted input, so none of this may panic the planner.
fn arb_hostile() -> impl Strategy<Value = Observed> {
    let num = || {
        prop_oneof![
            Just(0u64),
            Just(1u64),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(i64::MAX as u64),
            any::<u64>()
        ]
    };
    let rev = || {
        prop_oneof![
            Just(0i64),
            Just(-1i64),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>()
        ]
    };
    (
        (arb_observed(), num(), num(), num(), num()),
        (
            prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            rev(),
            rev(),
            ".{0,12}",
            ".{0,12}",
            any::<bool>(),
            prop::collection::vec(rev(), 4),
        ),
    )
        .prop_map(
            |(
                (mut o, cfg_version, state_version, retry, now),
                (attempts, status_rev, failure_rev, worker_state, stack_status, broken, revs),
            )| {
                if let Some(Ok(c)) = o.config.as_mut().map(|c| &mut c.value) {
                    c.version = cfg_version;
                }
                if let Some(Ok(s)) = o.state.as_mut().map(|s| &mut s.value) {
                    s.version = state_version;
                    s.worker_state = worker_state.as_str().into();
                }
                if let Some(Ok(s)) = o.stack.as_mut().map(|s| &mut s.value) {
                    s.status = stack_status.as_str().into();
                }
                o.status = ok(
                    status_rev,
                    ResourceStatus {
                        attempts,
                        version: cfg_version,
                        failure_revision: failure_rev,
                        next_retry_ms: retry,
                        ..Default::default()
                    },
                );
                o.now_ms = now;
                for (j, r) in o.jobs.iter_mut().zip(revs) {
                    j.waiting = j.waiting.map(|_| r);
                    j.working = j.working.map(|(_, lease)| (r, lease));
                }
                if broken {
                    o.state = Some(Parsed {
                        mod_rev: status_rev,
                        value: Err("not JSON".into()),
                    });
                }
                o
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn plan_never_panics_on_hostile_states(o in arb_hostile()) {
        let p = plan(&o);
        // And what it asks for stays within the protocol's numbers.
        for a in &p.actions {
            if let Action::RecordFailure { attempts, .. } = &a.action {
                prop_assert!(*attempts >= 1);
            }
        }
        prop_assert_eq!(plan(&o), p);
    }
}

#[test]
fn a_retry_time_no_backoff_could_set_is_not_waited_for() {
    let mut o = with_state(port(2, false), 2, "MODIFY_FAILED", "boom");
    let status = |next_retry_ms| {
        ok(
            60,
            ResourceStatus {
                attempts: 1,
                version: 2,
                failure_revision: 20,
                next_retry_ms,
                ..Default::default()
            },
        )
    };
    o.now_ms = 1_000_000;
    // A real backoff: waited for.
    o.status = status(1_000_000 + 300_000);
    assert_eq!(plan(&o).requeue_after_ms, Some(300_000));
    // Five hundred million years ahead: retried now.
    o.status = status(u64::MAX);
    let p = plan(&o);
    assert_eq!((kinds(&p), p.requeue_after_ms), (vec!["retry_job"], None));
}

#[test]
fn a_due_job_is_drafted_before_anything_is_decided() {
    let o = port(1, false);
    let p = super::plan(&o);
    assert!(p.needs_draft);
    assert_eq!((p.phase, kinds(&p)), (Phase::Progressing, vec![]));
    // A draft read at another revision of the config is no draft of this one.
    let mut o2 = o.clone();
    let mut d = drafted(&o);
    d.draft = Draft::Ready(Arc::new(JobDraft {
        config_rev: 9,
        body: Default::default(),
        params: vec![],
        references: vec![],
    }));
    o2.draft = Some(d);
    assert!(super::plan(&o2).needs_draft);
    o2.draft = Some(DraftView {
        draft: Draft::Stale,
        ..drafted(&o)
    });
    let p = super::plan(&o2);
    assert!(p.needs_draft && p.actions.is_empty());
}

fn reference(id: &str, unfinished: &[&str], awaiting_issue: bool) -> Reference {
    Reference {
        id: ResourceId {
            resource_type: "network".into(),
            resource_id: id.into(),
        },
        resource: Some(ResourceRef::new("networks", id)),
        unfinished_jobs: unfinished.iter().map(|s| s.to_string()).collect(),
        awaiting_issue,
    }
}

#[test]
fn the_draft_decides_between_issuing_waiting_and_failing() {
    let with = |refs: Vec<Reference>, referencing: Vec<&str>| {
        let mut o = port(1, false);
        let mut d = drafted(&o);
        d.references = refs;
        d.referencing_jobs = referencing.into_iter().map(String::from).collect();
        o.draft = Some(d);
        super::plan(&o)
    };
    // A referenced resource whose own job is still to be issued goes first.
    let p = with(vec![reference("n1", &[], true)], vec![]);
    assert_eq!((p.phase, kinds(&p)), (Phase::Pending, vec![]));
    let hold = p.hold.expect("held");
    assert_eq!(hold.blocked_on, Some(ResourceRef::new("networks", "n1")));
    assert_eq!(hold.cause, HoldCause::Waiting);
    assert_eq!(hold.reason, "waiting for network n1 to be issued first");

    // Jobs in flight of referenced and referencing resources become the
    // new job's dependencies, each once.
    let p = with(
        vec![
            reference("n1", &["j1", "j2"], false),
            reference("n2", &[], false),
        ],
        vec!["j2", "j3"],
    );
    let i = issued(&p).expect("issued");
    assert_eq!(i.dependency, vec!["j1", "j2", "j3"]);
    assert!(p.hold.is_none());

    // A referenced resource with no config: wait for it.
    let mut o = port(1, false);
    o.draft = Some(DraftView {
        draft: Draft::MissingReference {
            rtype: "network".into(),
            id: "n9".into(),
        },
        missing: Some(ResourceRef::new("networks", "n9")),
        ..drafted(&o)
    });
    let p = super::plan(&o);
    assert_eq!(
        p.hold.map(|h| (h.blocked_on, h.cause)),
        Some((Some(ResourceRef::new("networks", "n9")), HoldCause::Waiting))
    );

    // A job that cannot be built is a failure, retried with backoff.
    o.draft = Some(DraftView {
        draft: Draft::Invalid("bad mapping".into()),
        ..drafted(&o)
    });
    let p = super::plan(&o);
    assert_eq!(p.phase, Phase::Failed);
    assert!(p.hold.is_some_and(|h| h.cause == HoldCause::Unbuildable));
}

#[test]
fn a_paused_resource_is_drafted_but_holds_nothing() {
    let mut o = port(1, false);
    o.paused = true;
    let p = super::plan(&o);
    assert_eq!(
        (p.phase, p.needs_draft, &p.hold),
        (Phase::Paused, true, &None)
    );
    let mut d = drafted(&o);
    d.references = vec![reference("n1", &[], true)];
    o.draft = Some(d);
    let p = super::plan(&o);
    assert_eq!(
        (p.phase, p.needs_draft, p.hold),
        (Phase::Paused, false, None)
    );
}

#[test]
fn retry_times_are_a_function_of_the_failure() {
    let o = with_state(port(1, false), 1, "CREATE_FAILED", "boom");
    let next = |o: &Observed| match &plan(o).actions[0].action {
        Action::RecordFailure { next_retry_ms, .. } => *next_retry_ms,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(next(&o), next(&o), "the same view plans the same retry");
    let wait = next(&o) - o.now_ms;
    assert!(
        (1_000..=2_000).contains(&wait),
        "first retry in 1-2 s: {wait}"
    );
}

#[test]
fn a_held_job_still_lets_the_jobs_in_flight_be_tidied() {
    // v1 queued, config now v2 whose job must wait for its network.
    let mut o = port(2, false);
    o.jobs = vec![ObservedJob {
        ready: Some(41),
        ..job(JobAction::Create, 1)
    }];
    let mut d = drafted(&o);
    d.references = vec![reference("n1", &[], true)];
    o.draft = Some(d);
    let p = super::plan(&o);
    assert_eq!(kinds(&p), vec!["withdraw_job"]);
    assert!(p.hold.is_some());
}
