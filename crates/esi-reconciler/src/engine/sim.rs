//! The simulated engine: behaves like Heat from the worker's side, without
//! OpenStack. Stacks go `{ACTION}_IN_PROGRESS` and, after a configurable
//! latency, `{ACTION}_COMPLETE` or `{ACTION}_FAILED`; outputs come from the
//! rendered template's `outputs`. Stacks live in etcd under
//! `/~esi-sim/v1/stacks/{name}` with the time their operation ends, so they
//! survive a worker restart and need no background task. The `~` puts them
//! after `/state`, outside the span the reconciler watches: engine-internal
//! writes are never sent to it (Heat's stacks are not in etcd either).
//!
//! Faults: fail a share of operations, fail the first K operations of each
//! stack, fail or hang stacks whose name (or one of whose template
//! resources) matches a pattern.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::hot::{self, Scope};
use super::{Engine, EngineError, StackInfo, StackSpec};
use crate::esi::records::StackOutput;
use crate::limits::Limits;

pub const PREFIX: &str = "/~esi-sim/v1/stacks/";

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// How long an operation stays in progress.
    pub latency: Duration,
    /// Share of operations that fail (0.0–1.0).
    pub failure_rate: f64,
    /// The first K operations of every stack fail.
    pub fail_first: u32,
    /// Operations on stacks matching any of these fail.
    pub fail_matching: Vec<String>,
    /// Operations on stacks matching any of these never finish.
    pub hang_matching: Vec<String>,
    /// Operations on stacks matching any of these panic: an engine bug, to
    /// show that the worker survives one (the job fails, the claim goes).
    pub panic_matching: Vec<String>,
    /// Bounds on evaluating a template's outputs.
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimStack {
    id: String,
    name: String,
    action: String,
    outcome: String,
    reason: String,
    /// Unix ms when the operation ends (`u64::MAX`: never).
    done_at_ms: u64,
    outputs: Vec<StackOutput>,
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Operations so far, for `fail_first`.
    operations: u32,
}

impl SimStack {
    fn info(&self, now_ms: u64) -> StackInfo {
        let done = now_ms >= self.done_at_ms;
        let status = if done {
            format!("{}_{}", self.action, self.outcome)
        } else {
            format!("{}_IN_PROGRESS", self.action)
        };
        let reason = if done {
            self.reason.clone()
        } else {
            format!("Stack {} started", self.action)
        };
        let outputs = if done && self.outcome == "COMPLETE" {
            self.outputs.clone()
        } else {
            vec![]
        };
        StackInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            status,
            reason,
            outputs,
        }
    }
}

#[derive(Clone)]
pub struct SimEngine {
    client: Etcd,
    opts: SimOptions,
    /// The stacks whose operation is under way, as this engine last saved
    /// or read them, with their records' mod revisions: the job polling one
    /// reads nothing, and an operation on one starts from here (its save
    /// compares the revision; a save that finds the record moved by another
    /// worker's engine gets it back with the failed answer and starts over).
    /// A stack whose operation ended is forgotten: memory stays bounded by
    /// the jobs in flight, and the next operation on it reads it once.
    known: Arc<Mutex<HashMap<String, Known>>>,
}

/// A stack record as last seen: the stack (`None`: no record) and its mod
/// revision (0: none).
type Known = (Option<SimStack>, i64);

/// Stacks [`SimEngine::known`] keeps at most; when full it starts over.
const KNOWN_CAPACITY: usize = 65_536;

/// Attempts at an operation whose save finds the record moved each time.
const SAVE_ATTEMPTS: usize = 3;

use crate::clock::now_ms;

fn storage(e: etcd_client::Error) -> EngineError {
    EngineError::Storage(crate::store::client::describe(&e))
}

impl SimEngine {
    pub fn new(client: Etcd, opts: SimOptions) -> Self {
        Self {
            client,
            opts,
            known: Arc::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, name: &str, mut known: Known) {
        let ended = known
            .0
            .as_ref()
            .is_none_or(|s| s.info(now_ms()).is_terminal());
        if ended {
            self.known().remove(name);
            return;
        }
        // An operation never looks at the last one's parameters: not kept.
        if let Some(s) = known.0.as_mut() {
            s.parameters = Map::new();
        }
        let mut k = self.known();
        if k.len() >= KNOWN_CAPACITY && !k.contains_key(name) {
            k.clear();
        }
        k.insert(name.to_string(), known);
    }

    /// The stack and the mod revision of its record (0: none), which its
    /// next save compares: as known, or read. `expect_none`: a stack this
    /// engine does not know is taken to be absent without a read (a create
    /// of a new stack, the common case); if it is there, the save's compare
    /// fails and returns it, and the operation starts over from it.
    async fn load(&self, name: &str, expect_none: bool) -> Result<Known, EngineError> {
        if let Some(known) = self.known().get(name) {
            return Ok(known.clone());
        }
        if expect_none {
            return Ok((None, 0));
        }
        let resp = self
            .client
            .get(format!("{PREFIX}{name}"), None)
            .await
            .map_err(storage)?;
        let known = match resp.kvs().first() {
            None => (None, 0),
            Some(kv) => (Some(parse(name, kv.value())?), kv.mod_revision()),
        };
        self.remember(name, known.clone());
        Ok(known)
    }

    /// Saves a stack if its record is still at `version` (its mod
    /// revision as loaded): a write that a frozen etcd member applies late
    /// (after the store layer retried it elsewhere) can never overwrite a
    /// newer operation. `false`: the record moved; it is known anew.
    async fn save(&self, s: &SimStack, version: i64) -> Result<bool, EngineError> {
        let key = format!("{PREFIX}{}", s.name);
        let v = serde_json::to_vec(s).map_err(|e| EngineError::Storage(e.to_string()))?;
        let txn = Fenced::new(
            vec![Cond::ModRev(key.clone(), version)],
            vec![Op::put(key.clone(), v.clone())],
        )
        .reading(vec![key])
        .named("sim_engine");
        let done = self.client.commit(&txn).await.map_err(storage)?;
        if done.succeeded {
            self.remember(&s.name, (Some(s.clone()), done.revision));
            return Ok(true);
        }
        match done.read.into_iter().next().flatten() {
            // Our own first attempt landed before the store layer's retry.
            Some(now) if now.value == v => {
                self.remember(&s.name, (Some(s.clone()), now.mod_rev));
                Ok(true)
            }
            Some(now) => {
                let stack = parse(&s.name, &now.value)?;
                self.remember(&s.name, (Some(stack), now.mod_rev));
                Ok(false)
            }
            None => {
                self.remember(&s.name, (None, 0));
                Ok(false)
            }
        }
    }

    fn matches(patterns: &[String], name: &str, resources: &[String]) -> Option<String> {
        patterns
            .iter()
            .find(|p| name.contains(p.as_str()) || resources.iter().any(|r| r == *p))
            .cloned()
    }

    /// Starts an operation: decides now how and when it ends.
    async fn start(
        &self,
        action: &str,
        spec: Option<&StackSpec>,
        name: &str,
        previous: Option<SimStack>,
        version: i64,
    ) -> Result<Option<StackInfo>, EngineError> {
        let resources = spec
            .map(|s| hot::resource_names(&s.template))
            .unwrap_or_default();
        let operations = previous
            .as_ref()
            .map_or(0, |p| p.operations)
            .saturating_add(1);
        let failure = if operations <= self.opts.fail_first {
            Some(format!(
                "simulated failure: operation {operations} of the first {} fails",
                self.opts.fail_first
            ))
        } else if let Some(p) = Self::matches(&self.opts.fail_matching, name, &resources) {
            Some(format!("simulated failure: {p} is set to fail"))
        } else if self.opts.failure_rate > 0.0
            && rand::rng().random_bool(self.opts.failure_rate.clamp(0.0, 1.0))
        {
            Some(format!(
                "simulated failure: {:.0}% of operations fail",
                self.opts.failure_rate * 100.0
            ))
        } else {
            None
        };
        if let Some(p) = Self::matches(&self.opts.panic_matching, name, &resources) {
            panic!("simulated engine bug: {p} is set to panic");
        }
        let hang = Self::matches(&self.opts.hang_matching, name, &resources).is_some();
        let now = now_ms();
        let done_at_ms = if hang {
            u64::MAX
        } else {
            now.saturating_add(crate::clock::millis(self.opts.latency))
        };
        let outputs = match spec {
            Some(s) if action != "DELETE" => {
                let declared = s.template.get("parameters").and_then(Value::as_object);
                let scope = Scope {
                    stack: name,
                    parameters: &s.parameters,
                    declared,
                };
                // One budget for all of the stack's outputs: a hostile
                // template must not cost more by having many.
                let mut eval = hot::Eval::new(&scope, &self.opts.limits);
                let mut outputs = Vec::new();
                for (k, o) in s
                    .template
                    .get("outputs")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let value = eval
                        .eval(o.get("value").unwrap_or(&Value::Null))
                        .map_err(|e| EngineError::Rejected(e.to_string()))?;
                    outputs.push(StackOutput {
                        output_key: k.clone(),
                        output_value: value,
                        description: o
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        extra: Map::new(),
                    });
                }
                outputs
            }
            _ => vec![],
        };
        let (outcome, reason) = match failure {
            Some(why) => ("FAILED", format!("Resource {action} failed: {why}")),
            None => ("COMPLETE", format!("Stack {action} completed successfully")),
        };
        let stack = SimStack {
            id: previous
                .as_ref()
                .map(|p| p.id.clone())
                .filter(|_| action != "CREATE")
                .unwrap_or_else(|| hot::stable_id(name, &format!("stack#{operations}"))),
            name: name.to_string(),
            action: action.to_string(),
            outcome: outcome.to_string(),
            reason,
            done_at_ms,
            outputs,
            parameters: spec.map(|s| s.parameters.clone()).unwrap_or_default(),
            operations,
        };
        Ok(self.save(&stack, version).await?.then(|| stack.info(now)))
    }

    /// Runs `op` from the stack as known until its save lands (a record
    /// moved by another engine is known anew by the failed save).
    async fn operate<'a, F, Fut>(
        &'a self,
        name: &str,
        expect_none: bool,
        op: F,
    ) -> Result<StackInfo, EngineError>
    where
        F: Fn(Option<SimStack>, i64) -> Fut,
        Fut: std::future::Future<Output = Result<Option<StackInfo>, EngineError>> + 'a,
    {
        for attempt in 0..SAVE_ATTEMPTS {
            let (prev, version) = self.load(name, expect_none && attempt == 0).await?;
            if let Some(info) = op(prev, version).await? {
                return Ok(info);
            }
        }
        Err(EngineError::Storage(format!(
            "sim stack {name} changed while being saved"
        )))
    }
}

fn parse(name: &str, value: &[u8]) -> Result<SimStack, EngineError> {
    serde_json::from_slice(value)
        .map_err(|e| EngineError::Storage(format!("sim stack {name} is corrupt: {e}")))
}

impl Engine for SimEngine {
    async fn create_stack(&self, spec: &StackSpec) -> Result<StackInfo, EngineError> {
        self.operate(&spec.name, true, |prev, version| async move {
            if let Some(p) = &prev {
                let info = p.info(now_ms());
                let gone = p.action == "DELETE" && info.is_terminal() && !info.is_failed();
                if !gone && !info.is_failed() {
                    // Exists (or is being made): adopt it.
                    return Ok(Some(info));
                }
                if !gone {
                    // A failed stack is updated into shape, as Heat allows.
                    return self
                        .start("UPDATE", Some(spec), &spec.name, prev, version)
                        .await;
                }
            }
            self.start("CREATE", Some(spec), &spec.name, prev, version)
                .await
        })
        .await
    }

    async fn update_stack(&self, spec: &StackSpec) -> Result<StackInfo, EngineError> {
        self.operate(&spec.name, false, |prev, version| async move {
            let missing = prev.as_ref().is_none_or(|p| {
                p.action == "DELETE" && p.info(now_ms()).is_terminal() && p.outcome == "COMPLETE"
            });
            let action = if missing { "CREATE" } else { "UPDATE" };
            self.start(action, Some(spec), &spec.name, prev, version)
                .await
        })
        .await
    }

    async fn delete_stack(&self, name: &str) -> Result<StackInfo, EngineError> {
        self.operate(name, false, |prev, version| async move {
            match &prev {
                None => Ok(Some(StackInfo::gone(name))),
                Some(p)
                    if p.action == "DELETE"
                        && p.outcome == "COMPLETE"
                        && p.info(now_ms()).is_terminal() =>
                {
                    Ok(Some(p.info(now_ms())))
                }
                Some(_) => self.start("DELETE", None, name, prev, version).await,
            }
        })
        .await
    }

    /// From the stack as known: its status is a function of time once an
    /// operation started, and only an operation (ours, or another engine's
    /// on a job this worker no longer holds) changes the record.
    async fn get_stack(&self, name: &str) -> Result<Option<StackInfo>, EngineError> {
        let stack = self.load(name, false).await?.0;
        let info = stack.map(|s| s.info(now_ms()));
        if info.as_ref().is_none_or(StackInfo::is_terminal) {
            self.known().remove(name);
        }
        Ok(info)
    }
}

#[cfg(test)]
mod prefix_tests {
    #[test]
    fn sim_stacks_are_outside_the_reconcilers_watch() {
        use crate::esi::keys::{WATCH_END, WATCH_START};
        assert!(!(WATCH_START..WATCH_END).contains(&super::PREFIX));
    }
}
