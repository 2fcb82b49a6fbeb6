//! Running one claimed job: `job_state` `{}`, params, template, the stack
//! operation and its polling, then the results, each write fenced by the
//! claim.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op};
use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::engine::{Engine, EngineError, StackInfo, StackSpec};
use crate::esi::Catalog;
use crate::esi::keys::{JobAction, JobId, JobSlot, ResourceRef, TEMPLATES};
use crate::esi::mapping::select::TemplateChoice;
use crate::esi::records::{
    self, ConfigRecord, HeatStack, HeatTemplate, Job, JobState, StackOutput, StateRecord,
};
use crate::limits::Limits;

use super::claim::{self, Claim};
use super::params::{self, Resolver};
use super::render;

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Upper bound on any job's timeout (`heat_timeout` otherwise).
    pub timeout_cap: Option<Duration>,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub limits: Limits,
}

/// How a job ended for this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    Failed(String),
    /// The claim was gone (lease expired): nothing was written.
    ClaimLost,
    /// Shutting down: the job went back to `ready/`.
    Released,
}

pub struct JobRunner<E> {
    pub client: Etcd,
    pub catalog: Arc<Catalog>,
    pub engine: Arc<E>,
    pub settings: JobSettings,
}

/// The work a job asks of the engine, once prepared.
enum Work {
    Apply(StackSpec),
    Delete(String),
}

impl<E: Engine> JobRunner<E> {
    /// Runs the job to its end. `cancel` turning true asks to stop and
    /// release the job.
    pub async fn run(&self, c: &Claim, mut cancel: watch::Receiver<bool>) -> JobOutcome {
        match self.run_inner(c, &mut cancel).await {
            Ok(o) => o,
            Err(e) => {
                // etcd trouble mid-job: give the job back if we still can.
                tracing::warn!(job = %c.id, error = %crate::store::client::describe(&e), "job interrupted");
                self.give_back(c).await
            }
        }
    }

    /// Puts the job back in `ready/` for another try, if the claim is
    /// still ours.
    async fn give_back(&self, c: &Claim) -> JobOutcome {
        match claim::release(&self.client, c).await {
            Ok(true) => JobOutcome::Released,
            _ => JobOutcome::ClaimLost,
        }
    }

    /// Ends the job as failed with `error` in `/state`, as the protocol does
    /// for any failed job (the reconciler then retries with backoff); if
    /// even that cannot be written, gives the job back. Used when the job's
    /// own task panicked, so nothing of its progress is trusted.
    pub async fn fail(&self, c: &Claim, error: String) -> JobOutcome {
        let job = &c.envelope.1;
        let r = self
            .catalog
            .schemas
            .plural_of(&job.resource_type)
            .map(|plural| ResourceRef::new(plural, job.resource_id.clone()));
        match self.finish(c, r.as_ref(), error.clone(), None).await {
            Ok(JobOutcome::Completed) => JobOutcome::Failed(error),
            Ok(other) => other,
            Err(e) => {
                tracing::warn!(job = %c.id, error = %crate::store::client::describe(&e), "cannot record the failure; giving the job back");
                self.give_back(c).await
            }
        }
    }

    /// The `job_state` key of the job's resource, when its type is known.
    pub fn job_state_key(&self, id: &JobId) -> Option<String> {
        let plural = self.catalog.schemas.plural_of(&id.resource_type)?;
        Some(ResourceRef::new(plural, id.resource_id.clone()).job_state_key())
    }

    async fn fenced(&self, c: &Claim, ops: Vec<Op>) -> Result<bool, etcd_client::Error> {
        let txn = Fenced::new(vec![c.fence()], ops);
        Ok(self.client.commit(&txn).await?.succeeded)
    }

    async fn run_inner(
        &self,
        c: &Claim,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<JobOutcome, etcd_client::Error> {
        let job = &c.envelope.1;
        let Some(plural) = self.catalog.schemas.plural_of(&job.resource_type) else {
            return self
                .finish(
                    c,
                    None,
                    format!("unknown resource type {}", job.resource_type),
                    None,
                )
                .await;
        };
        // The claim set job_state to `{}`.
        let r = ResourceRef::new(plural, job.resource_id.clone());
        let work = match self.prepare(job, &r).await {
            Ok(w) => w,
            Err(reason) => return self.finish(c, Some(&r), reason, None).await,
        };
        let timeout_mins = match &work {
            Work::Apply(s) => s.timeout_mins,
            Work::Delete(_) => self.timeout_mins(job),
        };
        let name = match &work {
            Work::Apply(s) => s.name.clone(),
            Work::Delete(n) => n.clone(),
        };
        let mut timeout = crate::clock::minutes(timeout_mins);
        if let Some(cap) = self.settings.timeout_cap {
            timeout = timeout.min(cap);
        }
        // The job's time covers every engine call, the first included: an
        // engine (or its Keystone) that accepts connections and never
        // answers must not hold the claim forever.
        let deadline = crate::clock::deadline_in(timeout);
        let timed_out = |waiting_for: &str| {
            format!(
                "timed out after {} s waiting for {waiting_for} (heat_timeout {timeout_mins} min)",
                timeout.as_secs()
            )
        };
        let start = async {
            match &work {
                Work::Apply(spec) if c.id.action == JobAction::Create => {
                    self.engine.create_stack(spec).await
                }
                Work::Apply(spec) => self.engine.update_stack(spec).await,
                Work::Delete(name) => self.engine.delete_stack(name).await,
            }
        };
        let mut info = match tokio::time::timeout_at(deadline, start).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return self.finish(c, Some(&r), format!("engine: {e}"), None).await,
            Err(_) => {
                return self
                    .finish(
                        c,
                        Some(&r),
                        timed_out("the engine to accept the operation"),
                        None,
                    )
                    .await;
            }
        };
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.settings.poll_min)
            .with_max_delay(self.settings.poll_max)
            .with_factor(1.5)
            .without_max_times()
            .build();
        while !info.is_terminal() {
            let wait = delays.next().unwrap_or(self.settings.poll_max);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = cancel.changed() => {
                    return Ok(if claim::release(&self.client, c).await? { JobOutcome::Released } else { JobOutcome::ClaimLost });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let action = info.status.split('_').next().unwrap_or("STACK").to_string();
                info.status = format!("{action}_FAILED");
                info.reason = timed_out("the stack");
                break;
            }
            let Ok(seen) = tokio::time::timeout_at(deadline, self.engine.get_stack(&name)).await
            else {
                continue; // the deadline check above ends it
            };
            info = match seen {
                Ok(Some(i)) => i,
                Ok(None) if matches!(work, Work::Delete(_)) => StackInfo::gone(&name),
                Ok(None) => {
                    return self
                        .finish(c, Some(&r), format!("stack {name} vanished"), None)
                        .await;
                }
                // Heat restarting, a proxy in between: the stack goes on
                // without us, so ask again until the job's time is up.
                Err(e @ EngineError::Unavailable(_)) => {
                    tracing::warn!(job = %c.id, error = %e, "cannot see the stack; polling again");
                    continue;
                }
                Err(e) => return self.finish(c, Some(&r), format!("engine: {e}"), None).await,
            };
        }
        let error = if info.is_failed() {
            info.reason.clone()
        } else {
            String::new()
        };
        self.finish(c, Some(&r), error, Some(&info)).await
    }

    fn timeout_mins(&self, job: &Job) -> u64 {
        let m: Map<String, Value> = job
            .params
            .iter()
            .filter(|p| p.param == "heat_timeout")
            .filter_map(|p| match &p.value {
                records::ParamValue::Value(v) => Some((p.param.clone(), v.clone())),
                _ => None,
            })
            .collect();
        params::timeout_mins(&m).unwrap_or(60)
    }

    /// Chooses and loads the template, resolves params and renders.
    async fn prepare(&self, job: &Job, r: &ResourceRef) -> Result<Work, String> {
        let name = format!("{}_{}", job.resource_type, job.resource_id);
        if job.action() == Some(JobAction::LogicalDelete) {
            return Ok(Work::Delete(name));
        }
        let body = job
            .resource_input
            .as_object()
            .cloned()
            .ok_or("resource_input is not an object")?;
        let template_id = match self.catalog.mappings.choose(
            &job.resource_type,
            &body,
            job.version,
            &self.catalog.schemas,
        ) {
            Ok(TemplateChoice::Template { template, .. }) => template,
            Ok(_) => return Err(format!("no heat template applies to {r}")),
            Err(e) => return Err(format!("choosing a template: {e}")),
        };
        let resp = self
            .client
            .get(format!("{TEMPLATES}{template_id}"), None)
            .await
            .map_err(|e| e.to_string())?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| format!("heat template {template_id} is not in etcd"))?;
        let template = records::parse::<ConfigRecord>("heat template", kv.value())
            .map_err(|e| e.to_string())
            .and_then(|rec| HeatTemplate::from_config(&rec).map_err(|e| e.to_string()))?;
        let resolved = Resolver::new(&self.client, &self.catalog.schemas)
            .resolve_all(&job.params)
            .await
            .map_err(|e| e.to_string())?;
        let (context, parameters) = params::split(&resolved);
        // Rendering is CPU work bounded by fuel, up to seconds for a hostile
        // template: off the async threads, or it starves the lease keepalive
        // and etcd health checks of every other job.
        let limits = self.settings.limits;
        let hot = tokio::task::spawn_blocking(move || {
            render::render(&template_id, &template.template_file, &context, &limits)
        })
        .await
        .map_err(|e| format!("rendering the template panicked: {e}"))?
        .map_err(|e| e.to_string())?;
        Ok(Work::Apply(StackSpec {
            name,
            template: hot,
            parameters,
            timeout_mins: params::timeout_mins(&resolved).unwrap_or(60),
        }))
    }

    /// Writes the job's results (fenced by the claim) and the `finished`
    /// marker, then removes `working/` and `job_state`, as the ESI worker does.
    async fn finish(
        &self,
        c: &Claim,
        r: Option<&ResourceRef>,
        error: String,
        stack: Option<&StackInfo>,
    ) -> Result<JobOutcome, etcd_client::Error> {
        let error = crate::limits::clip_message(&error);
        for _ in 0..5 {
            if let Some(outcome) = self.try_finish(c, r, &error, stack).await? {
                return Ok(outcome);
            }
        }
        tracing::warn!(job = %c.id, "/state kept changing; giving the job back");
        Ok(if claim::release(&self.client, c).await? {
            JobOutcome::Released
        } else {
            JobOutcome::ClaimLost
        })
    }

    /// One attempt at `finish`; `None` when /state moved under us.
    async fn try_finish(
        &self,
        c: &Claim,
        r: Option<&ResourceRef>,
        error: &str,
        stack: Option<&StackInfo>,
    ) -> Result<Option<JobOutcome>, etcd_client::Error> {
        let job = &c.envelope.1;
        let action = c.id.action;
        let failed = !error.is_empty();
        let mut ops = vec![];
        let mut compares = vec![c.fence()];
        if let Some(r) = r {
            let status = match stack {
                Some(s) => s.status.clone(),
                None => action.stack_failed().to_string(),
            };
            let outputs: Vec<StackOutput> = stack.map(|s| s.outputs.clone()).unwrap_or_default();
            if let Some(s) = stack {
                let deleted = s.status == "DELETE_COMPLETE";
                let tenant = job
                    .resource_input
                    .get("tenant_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let record = HeatStack {
                    id: format!("{}:{}", job.resource_type, job.resource_id),
                    stack_id: if deleted { String::new() } else { s.id.clone() },
                    stack_status: s.status.clone(),
                    status_reason: if deleted {
                        String::new()
                    } else {
                        s.reason.clone()
                    },
                    output: outputs.clone(),
                    tenant_id: tenant.to_string(),
                    extra: Default::default(),
                };
                ops.push(Op::put(
                    r.heat_stack_key(),
                    serde_json::to_vec(&record).unwrap_or_default(),
                ));
            }
            let job_state = JobState::finished(outputs.clone(), &status);
            ops.push(Op::put(
                r.job_state_key(),
                serde_json::to_vec(&job_state).unwrap_or_default(),
            ));
            // Never move /state back to an older version.
            let current = self.client.get(r.state_key(), None).await?;
            let newer = current
                .kvs()
                .first()
                .and_then(|kv| records::parse::<StateRecord>("state", kv.value()).ok())
                .is_some_and(|s| s.version > job.version);
            if !newer {
                compares.push(Cond::ModRev(
                    r.state_key(),
                    current
                        .kvs()
                        .first()
                        .map(|kv| kv.mod_revision())
                        .unwrap_or(0),
                ));
                let worker_state = if failed {
                    action.failed_state()
                } else {
                    action.completed_state()
                };
                let state =
                    StateRecord::finished(worker_state, &status, &outputs, job.version, error);
                ops.push(Op::put(
                    r.state_key(),
                    serde_json::to_vec(&state).unwrap_or_default(),
                ));
            }
        }
        ops.push(Op::put(c.id.slot_key(JobSlot::Finished), ""));
        let resp = self.client.commit(&Fenced::new(compares, ops)).await?;
        if !resp.succeeded {
            // Either the claim is gone or /state moved under us.
            if self.fenced(c, vec![]).await? {
                return Ok(None);
            }
            tracing::warn!(job = %c.id, "claim lost before the results were written; writing nothing");
            return Ok(Some(JobOutcome::ClaimLost));
        }
        let mut cleanup = vec![Op::delete(c.id.slot_key(JobSlot::Working))];
        if let Some(r) = r {
            cleanup.push(Op::delete(r.job_state_key()));
        }
        self.fenced(c, cleanup).await?;
        Ok(Some(if failed {
            JobOutcome::Failed(error.to_string())
        } else {
            JobOutcome::Completed
        }))
    }
}
