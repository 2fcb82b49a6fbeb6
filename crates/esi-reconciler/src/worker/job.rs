//! Running one claimed job: `job_state` `{}`, params, template, the stack
//! operation and its polling, then the results, each write fenced by the
//! claim.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op, Record};
use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::engine::{Engine, EngineError, StackInfo, StackSpec};
use crate::esi::Catalog;
use crate::esi::keys::{HEAT_STACKS, JobAction, JobId, JobSlot, ResourceRef, TEMPLATES};
use crate::esi::mapping::select::TemplateChoice;
use crate::esi::records::{
    self, ConfigRecord, HeatStack, HeatTemplate, Job, JobState, StackOutput, StateRecord,
};
use crate::limits::Limits;

use super::cache::{Cache, Parsed};
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
    /// Heat templates, kept from a watch (see [`cache`](super::cache)).
    pub templates: Cache<HeatTemplate>,
    /// Heat stack records whose outputs params reference.
    pub stacks: Cache<HeatStack>,
}

/// Heat templates the cache keeps: few, each serving every job of a type.
const TEMPLATE_CAPACITY: usize = 1024;
/// Referenced stack records the cache keeps (a network's, for its ports).
const STACK_CAPACITY: usize = 16_384;

impl<E> JobRunner<E> {
    /// A runner whose caches follow etcd from now on (in the current tokio
    /// runtime; the watches stop when the runner is dropped).
    pub fn new(client: Etcd, catalog: Arc<Catalog>, engine: Arc<E>, settings: JobSettings) -> Self {
        Self {
            templates: Cache::follow(client.clone(), TEMPLATES, TEMPLATE_CAPACITY, parse_template),
            stacks: Cache::follow(
                client.clone(),
                HEAT_STACKS,
                STACK_CAPACITY,
                params::parse_stack,
            ),
            client,
            catalog,
            engine,
            settings,
        }
    }
}

/// A heat template record as the cache keeps it.
fn parse_template(value: &[u8]) -> Parsed<HeatTemplate> {
    records::parse::<ConfigRecord>("heat template", value)
        .map_err(|e| e.to_string())
        .and_then(|rec| HeatTemplate::from_config(&rec).map_err(|e| e.to_string()))
        .map(Arc::new)
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
            // etcd refused the request itself (too large, too many
            // operations): giving the job back would only run it again.
            Err(e) if !crate::store::cluster::is_retryable(&e) => {
                let why = crate::store::client::describe(&e);
                tracing::warn!(job = %c.id, error = %why, "etcd refused the job's writes; failing it");
                self.fail(c, format!("etcd refused the job's writes: {why}"))
                    .await
            }
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

    /// The `job_state` and `/state` keys of the job's resource, when its
    /// type is known: what a claim sets and reads.
    pub fn resource_keys(&self, id: &JobId) -> Option<(String, String)> {
        let plural = self.catalog.schemas.plural_of(&id.resource_type)?;
        let r = ResourceRef::new(plural, id.resource_id.clone());
        Some((r.job_state_key(), r.state_key()))
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
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let redo = attempt > 1;
            let (info, mut used) = match self.operate(c, &r, redo, cancel).await? {
                Operated::Ended(outcome) => return Ok(outcome),
                Operated::Stack { info, used } => (info, used),
            };
            if attempt >= REDO_ATTEMPTS {
                // What the job reads keeps changing: its results land as
                // they are, like a job that read them just before the change.
                used.clear();
            }
            let error = if info.is_failed() {
                info.reason.clone()
            } else {
                String::new()
            };
            match self
                .finish_using(c, Some(&r), error, Some(&info), &used)
                .await?
            {
                Some(outcome) => return Ok(outcome),
                None => {
                    tracing::info!(job = %c.id, "a template or stack record the job used has changed; doing it again")
                }
            }
        }
    }

    /// Prepares the job and runs its stack operation to a final status.
    /// `redo`: the stack was already made by this job from outdated
    /// records, so a create becomes an update.
    async fn operate(
        &self,
        c: &Claim,
        r: &ResourceRef,
        redo: bool,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<Operated, etcd_client::Error> {
        let ended = |o: JobOutcome| Ok(Operated::Ended(o));
        let job = &c.envelope.1;
        let r = Some(r);
        let (work, used) = match self.prepare(job).await {
            Ok(w) => w,
            Err(_) => {
                // A cached record the watch has not brought up to date yet
                // may be the cause: once more from etcd before failing.
                self.templates.forget_all();
                self.stacks.forget_all();
                match self.prepare(job).await {
                    Ok(w) => w,
                    Err(reason) => return ended(self.finish(c, r, reason, None).await?),
                }
            }
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
                Work::Apply(spec) if c.id.action == JobAction::Create && !redo => {
                    self.engine.create_stack(spec).await
                }
                Work::Apply(spec) => self.engine.update_stack(spec).await,
                Work::Delete(name) => self.engine.delete_stack(name).await,
            }
        };
        let mut info = match tokio::time::timeout_at(deadline, start).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return ended(self.finish(c, r, format!("engine: {e}"), None).await?),
            Err(_) => {
                let why = timed_out("the engine to accept the operation");
                return ended(self.finish(c, r, why, None).await?);
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
                    return ended(if claim::release(&self.client, c).await? { JobOutcome::Released } else { JobOutcome::ClaimLost });
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
                    return ended(
                        self.finish(c, r, format!("stack {name} vanished"), None)
                            .await?,
                    );
                }
                // Heat restarting, a proxy in between: the stack goes on
                // without us, so ask again until the job's time is up.
                Err(e @ EngineError::Unavailable(_)) => {
                    tracing::warn!(job = %c.id, error = %e, "cannot see the stack; polling again");
                    continue;
                }
                Err(e) => return ended(self.finish(c, r, format!("engine: {e}"), None).await?),
            };
        }
        Ok(Operated::Stack { info, used })
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

    /// Chooses and loads the template, resolves params and renders; also
    /// returns the records it used (template, referenced stacks) with
    /// their mod revisions, for the results to be fenced on.
    async fn prepare(&self, job: &Job) -> Result<(Work, Vec<Used>), String> {
        let name = format!("{}_{}", job.resource_type, job.resource_id);
        if job.action() == Some(JobAction::LogicalDelete) {
            return Ok((Work::Delete(name), vec![]));
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
            Ok(_) => return Err(format!("no heat template applies to {name}")),
            Err(e) => return Err(format!("choosing a template: {e}")),
        };
        let template_key = format!("{TEMPLATES}{template_id}");
        let (template_rev, template) = self
            .templates
            .get(&template_key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("heat template {template_id} is not in etcd"))?;
        let template = template?;
        let mut resolver = Resolver::new(&self.stacks, &self.catalog.schemas);
        let resolved = resolver
            .resolve_all(&job.params)
            .await
            .map_err(|e| e.to_string())?;
        let mut used = resolver.used();
        used.push((template_key, template_rev));
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
        let spec = StackSpec {
            name,
            template: hot,
            parameters,
            timeout_mins: params::timeout_mins(&resolved).unwrap_or(60),
        };
        Ok((Work::Apply(spec), used))
    }

    /// Writes the job's results (fenced by the claim) and the `finished`
    /// marker, then removes `working/` and `job_state`, as the ESI worker
    /// does. (Both steps stay: `job_state`'s final outputs are one of the
    /// seed's five records, and a transaction cannot write a key and delete
    /// it.)
    async fn finish(
        &self,
        c: &Claim,
        r: Option<&ResourceRef>,
        error: String,
        stack: Option<&StackInfo>,
    ) -> Result<JobOutcome, etcd_client::Error> {
        // Fenced on nothing the job read: never "outdated".
        let ended = self.finish_using(c, r, error, stack, &[]).await?;
        Ok(ended.unwrap_or(JobOutcome::ClaimLost))
    }

    /// [`finish`](Self::finish), also fenced on the records in `used` being
    /// at the revisions the job read them at. `None`: one has changed since
    /// (it is dropped from the caches); nothing was written, and the job
    /// should be done again.
    async fn finish_using(
        &self,
        c: &Claim,
        r: Option<&ResourceRef>,
        error: String,
        stack: Option<&StackInfo>,
        used: &[Used],
    ) -> Result<Option<JobOutcome>, etcd_client::Error> {
        let error = crate::limits::clip_message(&error);
        // `/state` as the claim found it; each failed compare returns it anew.
        let mut seen = match (&c.state, r) {
            (Some((key, record)), Some(r)) if *key == r.state_key() => Some(record.clone()),
            _ => None,
        };
        for _ in 0..5 {
            let state = match (seen.take(), r) {
                (Some(s), _) => s,
                // A job whose record names another resource than its key.
                (None, Some(r)) => self.client.read(&r.state_key()).await?,
                (None, None) => None,
            };
            match self
                .try_finish(c, r, &error, stack, state.as_ref(), used)
                .await?
            {
                Finished::Done(outcome) => return Ok(Some(outcome)),
                Finished::StateMoved(now) => seen = Some(now),
                Finished::Outdated(keys) => {
                    for k in keys {
                        self.templates.forget(&k);
                        self.stacks.forget(&k);
                    }
                    return Ok(None);
                }
            }
        }
        tracing::warn!(job = %c.id, "/state kept changing; giving the job back");
        Ok(Some(if claim::release(&self.client, c).await? {
            JobOutcome::Released
        } else {
            JobOutcome::ClaimLost
        }))
    }

    /// One attempt at `finish`, against `/state` as last seen.
    async fn try_finish(
        &self,
        c: &Claim,
        r: Option<&ResourceRef>,
        error: &str,
        stack: Option<&StackInfo>,
        state: Option<&Record>,
        used: &[Used],
    ) -> Result<Finished, etcd_client::Error> {
        let job = &c.envelope.1;
        let action = c.id.action;
        let failed = !error.is_empty();
        let working = c.id.slot_key(JobSlot::Working);
        let mut ops = vec![];
        let mut compares = vec![c.fence()];
        let mut read = vec![working.clone()];
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
            let newer = state
                .and_then(|kv| records::parse::<StateRecord>("state", &kv.value).ok())
                .is_some_and(|s| s.version > job.version);
            if !newer {
                compares.push(Cond::ModRev(
                    r.state_key(),
                    state.map_or(0, |kv| kv.mod_rev),
                ));
                read.push(r.state_key());
                let worker_state = if failed {
                    action.failed_state()
                } else {
                    action.completed_state()
                };
                let record =
                    StateRecord::finished(worker_state, &status, &outputs, job.version, error);
                ops.push(Op::put(
                    r.state_key(),
                    serde_json::to_vec(&record).unwrap_or_default(),
                ));
            }
        }
        ops.push(Op::put(c.id.slot_key(JobSlot::Finished), ""));
        // The records the job was made from are still as it read them
        // (compared only: their values are not sent back with the answer).
        // `/state` comes back after `working/` when it was compared.
        let state_read = read.len() > 1;
        let used: &[Used] = if used.len() > MAX_FENCED_RECORDS {
            tracing::debug!(job = %c.id, records = used.len(), "made from too many records to fence on");
            &[]
        } else {
            used
        };
        for (key, rev) in used {
            compares.push(Cond::ModRev(key.clone(), *rev));
        }
        let done = self
            .client
            .commit(
                &Fenced::new(compares, ops)
                    .reading(read)
                    .named("job_results"),
            )
            .await?;
        if done.succeeded {
            let mut cleanup = vec![Op::delete(working)];
            cleanup.extend(r.map(|r| Op::delete(r.job_state_key())));
            self.client
                .commit(&Fenced::new(vec![c.fence()], cleanup).named("job_cleanup"))
                .await?;
            return Ok(Finished::Done(if failed {
                JobOutcome::Failed(error.to_string())
            } else {
                JobOutcome::Completed
            }));
        }
        // Either the claim is gone or /state moved under us.
        let ours = done
            .read
            .first()
            .and_then(Option::as_ref)
            .is_some_and(|w| w.create_rev == c.claim_rev);
        if ours {
            // Which record moved, if any: read only now (the rare case).
            let keys: Vec<String> = used.iter().map(|(k, _)| k.clone()).collect();
            let now = if keys.is_empty() {
                vec![]
            } else {
                let check = Fenced::default().reading(keys).named("job_check");
                self.client.commit(&check).await?.read
            };
            let outdated: Vec<String> = used
                .iter()
                .zip(now.iter())
                .filter(|((_, rev), now)| now.as_ref().map_or(0, |n| n.mod_rev) != *rev)
                .map(|((key, _), _)| key.clone())
                .collect();
            if !outdated.is_empty() {
                return Ok(Finished::Outdated(outdated));
            }
            let state = state_read.then(|| done.read.get(1).cloned().flatten());
            return Ok(Finished::StateMoved(state.flatten()));
        }
        tracing::warn!(job = %c.id, "claim lost before the results were written; writing nothing");
        Ok(Finished::Done(JobOutcome::ClaimLost))
    }
}

/// How one attempt at finishing a job went.
enum Finished {
    Done(JobOutcome),
    /// `/state` changed since it was last seen: here it is now.
    StateMoved(Option<Record>),
    /// These records the job was made from changed since it read them.
    Outdated(Vec<String>),
}

/// A record a job was made from: its key and the mod revision it was read at.
type Used = (String, i64);

/// Times a job is done again because what it read changed meanwhile; the
/// last time its results land regardless.
const REDO_ATTEMPTS: u32 = 3;

/// Records a job's results are fenced on at most (etcd allows 128
/// operations a transaction by default): the results of a job made from
/// more are not fenced on them, as before these fences existed (the claim
/// and `/state` still are).
const MAX_FENCED_RECORDS: usize = 64;

/// How a job's stack operation went.
enum Operated {
    /// The job already ended (failed, released, or its claim lost).
    Ended(JobOutcome),
    /// The stack reached a final status; the job was made from `used`.
    Stack { info: StackInfo, used: Vec<Used> },
}
