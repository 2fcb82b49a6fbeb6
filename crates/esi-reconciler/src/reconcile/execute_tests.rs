//! The executor against an in-memory key space with etcd's revision rules:
//! what each action writes, what it fences on, and that a stale plan writes
//! nothing.

use std::sync::Arc;

use serde_json::{Map, json};

use super::*;
use crate::esi::keys::{JobAction, JobId, JobSlot, ResourceRef};
use crate::reconcile::draft::JobDraft;
use crate::reconcile::observed::Observed;
use crate::reconcile::plan::Planned;
use crate::reconcile::world::Parsed;
use crate::store::txn::mem::MemKv;

fn port() -> ResourceRef {
    ResourceRef::new("ports", "p1")
}

fn observed() -> Observed {
    Observed::empty(port(), "port")
}

fn job(version: u64) -> JobId {
    JobId {
        action: JobAction::Create,
        handler: "heat".into(),
        resource_type: "port".into(),
        resource_id: "p1".into(),
        version,
        suffix: "abcde".into(),
    }
}

fn issue(config_rev: i64, dependency: Vec<String>) -> Action {
    let mut body = Map::new();
    body.insert("id".into(), json!("p1"));
    Action::IssueJob(Issue {
        action: JobAction::Create,
        version: 1,
        handler: "heat".into(),
        template: "port".into(),
        config_rev,
        state_rev: 0,
        retry: false,
        job: Arc::new(JobDraft {
            config_rev,
            body,
            params: vec![],
            references: vec![],
        }),
        dependency,
    })
}

fn status_of(kv: &MemKv) -> ResourceStatus {
    let raw = kv.value(&port().reconciler_key()).expect("status record");
    serde_json::from_slice(&raw).unwrap()
}

fn jobs_of(kv: &MemKv) -> Vec<String> {
    kv.keys()
        .into_iter()
        .filter(|k| k.starts_with("/jobs/"))
        .collect()
}

#[tokio::test]
async fn issuing_writes_the_job_and_a_queue_entry_fenced_on_config_and_state() {
    let kv = MemKv::new();
    let config_rev = kv.seed(&port().config_key(), "{}");
    let p = Plan::only(&observed(), issue(config_rev, vec![]), "test");
    let out = Executor::new(&kv).execute(&p).await.unwrap();
    assert!(
        matches!(out, Outcome::Applied { ref actions, .. } if actions == &[ActionKind::IssueJob])
    );
    let jobs = jobs_of(&kv);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter()
            .any(|k| k.starts_with("/jobs/all/create:heat:port:p1:1:"))
    );
    assert!(
        jobs.iter()
            .any(|k| k.starts_with("/jobs/ready/create:heat:port:p1:1:"))
    );
    let all = jobs.iter().find(|k| k.starts_with("/jobs/all/")).unwrap();
    let env: serde_json::Value = serde_json::from_slice(&kv.value(all).unwrap()).unwrap();
    assert_eq!(env[1]["resource_input"]["id"], "p1", "{env}");
    let committed = kv.committed();
    let when = &committed.last().unwrap().when;
    assert!(when.contains(&Cond::ModRev(port().config_key(), config_rev)));
    assert!(when.contains(&Cond::ModRev(port().state_key(), 0)));
    // The status record says what was done.
    assert!(
        status_of(&kv)
            .last_action
            .starts_with("issue create job v1")
    );

    // The same plan again finds a job of the resource in flight: it is a
    // conflict, and nothing more is written.
    let again = Plan::only(&observed(), issue(config_rev, vec![]), "test");
    let out = Executor::new(&kv).execute(&again).await.unwrap();
    assert!(
        matches!(
            out,
            Outcome::Conflict {
                action: ActionKind::IssueJob,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(jobs_of(&kv).len(), 2);
}

#[tokio::test]
async fn a_job_with_dependencies_waits() {
    let kv = MemKv::new();
    let config_rev = kv.seed(&port().config_key(), "{}");
    let dep = "create:heat:network:n1:1:zzzzz".to_string();
    let p = Plan::only(&observed(), issue(config_rev, vec![dep.clone()]), "test");
    Executor::new(&kv).execute(&p).await.unwrap();
    let jobs = jobs_of(&kv);
    assert!(
        jobs.iter().any(|k| k.starts_with("/jobs/waiting/")),
        "{jobs:?}"
    );
    assert!(
        !jobs.iter().any(|k| k.starts_with("/jobs/ready/")),
        "{jobs:?}"
    );
    let all = jobs.iter().find(|k| k.starts_with("/jobs/all/")).unwrap();
    let env: serde_json::Value = serde_json::from_slice(&kv.value(all).unwrap()).unwrap();
    assert_eq!(env[1]["dependency"], json!([dep]), "{env}");
}

#[tokio::test]
async fn a_plan_from_a_stale_view_writes_nothing() {
    let kv = MemKv::new();
    let planned_rev = kv.seed(&port().config_key(), "{}");
    // The config changed after the plan was made.
    kv.seed(&port().config_key(), "{\"v\":2}");
    let p = Plan::only(&observed(), issue(planned_rev, vec![]), "test");
    let out = Executor::new(&kv).execute(&p).await.unwrap();
    assert!(matches!(out, Outcome::Conflict { ref applied, .. } if applied.is_empty()));
    assert!(jobs_of(&kv).is_empty());
    assert!(kv.value(&port().reconciler_key()).is_none());
}

#[tokio::test]
async fn actions_apply_in_order_and_stop_at_the_first_conflict() {
    let kv = MemKv::new();
    let j = job(1);
    let all_rev = kv.seed(&j.slot_key(JobSlot::All), "{}");
    let finished_rev = kv.seed(&j.slot_key(JobSlot::Finished), "");
    let mut p = Plan::only(
        &observed(),
        Action::FinishJob {
            job: j.clone(),
            all_rev,
            finished_rev,
        },
        "done",
    );
    // Planned from a revision the job never had.
    p.actions.push(Planned {
        action: Action::DropJob {
            job: job(2),
            all_rev: 99,
        },
        why: "stale".into(),
    });
    let out = Executor::new(&kv).execute(&p).await.unwrap();
    assert_eq!(
        out,
        Outcome::Conflict {
            revision: 3,
            action: ActionKind::DropJob,
            applied: vec![ActionKind::FinishJob],
        }
    );
    assert!(jobs_of(&kv).is_empty(), "the finished job is gone");
}

#[tokio::test]
async fn failures_and_clearing_keep_the_backoff_in_the_status_record() {
    let kv = MemKv::new();
    let o = observed();
    let mut p = Plan::only(
        &o,
        Action::RecordFailure {
            version: 3,
            attempts: 2,
            failure_revision: 41,
            error: "stack failed".into(),
            next_retry_ms: 5_000,
        },
        "failed",
    );
    p.now_ms = 1_000;
    Executor::new(&kv).execute(&p).await.unwrap();
    let s = status_of(&kv);
    assert_eq!(
        (s.attempts, s.version, s.failure_revision, s.next_retry_ms),
        (2, 3, 41, 5_000)
    );
    assert_eq!(
        (s.last_error.as_str(), s.last_action_ms),
        ("stack failed", 1_000)
    );

    // The next plan is fenced on the record just written.
    let mut o = observed();
    o.status = Some(Parsed {
        mod_rev: kv.mod_rev(&port().reconciler_key()),
        value: Ok(s),
    });
    let p = Plan::only(&o, Action::ClearBackoff, "converged");
    Executor::new(&kv).execute(&p).await.unwrap();
    let s = status_of(&kv);
    assert_eq!(
        (s.attempts, s.next_retry_ms, s.last_error.as_str()),
        (0, 0, "")
    );
    assert_eq!(s.version, 3, "the version the attempts counted for stays");

    // A plan from before that write is stale.
    let stale = Plan::only(&observed(), Action::ClearBackoff, "again");
    let out = Executor::new(&kv).execute(&stale).await.unwrap();
    assert!(matches!(out, Outcome::Conflict { .. }));
}

#[tokio::test]
async fn purging_a_deleted_resource_removes_its_status_record_too() {
    let kv = MemKv::new();
    let r = port();
    let config_rev = kv.seed(&r.config_key(), "{}");
    let state_rev = kv.seed(&r.state_key(), "{}");
    let stack_rev = kv.seed(&r.heat_stack_key(), "{}");
    let status_rev = kv.seed(&r.reconciler_key(), "{}");
    let mut p = Plan::only(
        &observed(),
        Action::PurgeDeleted {
            config_rev,
            state_rev,
            stack_rev: Some(stack_rev),
        },
        "deleted",
    );
    p.status_rev = status_rev;
    Executor::new(&kv).execute(&p).await.unwrap();
    assert_eq!(kv.keys(), vec![r.state_key()], "only /state is left");
}

#[tokio::test]
async fn completing_state_reads_the_stack_at_the_planned_revision() {
    let kv = MemKv::new();
    let r = port();
    let j = job(2);
    let all_rev = kv.seed(&j.slot_key(JobSlot::All), "{}");
    let stack = json!({"id": "port_p1", "stack_status": "CREATE_COMPLETE",
        "output": [{"output_key": "ip", "output_value": "10.0.0.5"}]});
    let stack_rev = kv.seed(&r.heat_stack_key(), stack.to_string());
    let job_state_rev = kv.seed(&r.job_state_key(), "{}");
    let complete = |stack_rev| Action::CompleteState {
        job: j.clone(),
        all_rev,
        state_rev: 0,
        stack_rev,
        job_state_rev,
    };
    // A stack record that changed since the plan: plan again.
    let p = Plan::only(&observed(), complete(stack_rev - 1), "lost");
    let out = Executor::new(&kv).execute(&p).await.unwrap();
    assert!(matches!(out, Outcome::Conflict { .. }));
    assert!(kv.value(&r.state_key()).is_none());

    let p = Plan::only(&observed(), complete(stack_rev), "lost");
    Executor::new(&kv).execute(&p).await.unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&kv.value(&r.state_key()).unwrap()).unwrap();
    assert_eq!(
        state["state"]["worker_state"], "CREATE_COMPLETED",
        "{state}"
    );
    assert_eq!(state["version"], 2);
    assert!(
        state["state"]["heat_outputs"]
            .as_str()
            .unwrap()
            .contains("10.0.0.5"),
        "{state}"
    );
    assert!(kv.value(&j.slot_key(JobSlot::All)).is_none());
}

#[tokio::test]
async fn noting_an_error_writes_only_news() {
    let kv = MemKv::new();
    let p = Plan::empty(&observed());
    let ex = Executor::new(&kv);
    ex.note_error(&p, "waiting for network n1").await;
    assert_eq!(status_of(&kv).last_error, "waiting for network n1");
    let writes = kv.committed().len();
    let mut o = observed();
    o.status = Some(Parsed {
        mod_rev: kv.mod_rev(&port().reconciler_key()),
        value: Ok(status_of(&kv)),
    });
    ex.note_error(&Plan::empty(&o), "waiting for network n1")
        .await;
    assert_eq!(
        kv.committed().len(),
        writes,
        "the same error is not written again"
    );
}

#[test]
fn status_updates_per_action() {
    let before = ResourceStatus {
        attempts: 3,
        version: 1,
        next_retry_ms: 9,
        last_error: "boom".into(),
        ..ResourceStatus::default()
    };
    // Issuing a new version starts its attempts afresh; a retry keeps them.
    let Action::IssueJob(mut i) = issue(1, vec![]) else {
        unreachable!()
    };
    i.version = 2;
    let s = status_after(before.clone(), &Action::IssueJob(i.clone()), 7);
    assert_eq!(
        (
            s.attempts,
            s.version,
            s.next_retry_ms,
            s.last_error.as_str()
        ),
        (0, 2, 0, "")
    );
    assert_eq!(s.last_action_ms, 7);
    i.retry = true;
    let s = status_after(before.clone(), &Action::IssueJob(i), 7);
    assert_eq!((s.attempts, s.version, s.next_retry_ms), (3, 1, 9));
    // Tidying a job leaves the backoff alone.
    let s = status_after(
        before.clone(),
        &Action::DropJob {
            job: job(1),
            all_rev: 1,
        },
        7,
    );
    assert_eq!((s.attempts, s.last_error.as_str()), (3, "boom"));
    assert!(s.last_action.starts_with("drop "));
}
