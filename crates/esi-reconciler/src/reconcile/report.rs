//! One resource as an operator sees it: desired, observed, phase and the
//! reconciler's bookkeeping. Used by `get`, `plan` and the Kubernetes mirror.

use serde::Serialize;

use crate::esi::keys::ResourceRef;

use tokio::sync::RwLock;

use crate::store::txn::Kv;

use super::decide::decide_for;
use super::observed::Observed;
use super::plan::{Phase, Plan};
use super::world::{Parsed, World};

/// What the config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Desired {
    Present,
    /// Marked for deletion.
    Absent,
    /// No valid config.
    #[serde(rename = "-")]
    Unknown,
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Desired::Present => "Present",
            Desired::Absent => "Absent",
            Desired::Unknown => "-",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: String,
    pub tenant: Option<String>,
    pub desired: Desired,
    pub desired_version: Option<u64>,
    pub observed_version: Option<u64>,
    pub worker_state: Option<String>,
    pub stack_status: Option<String>,
    pub phase: Phase,
    pub message: String,
    pub attempts: u32,
    pub next_retry_ms: u64,
    pub last_action: String,
    pub last_action_ms: u64,
    pub last_error: String,
    /// The next actions and why, as `plan` shows them.
    pub next: Vec<String>,
}

impl Report {
    pub fn new(o: &Observed, p: &Plan) -> Self {
        let cfg = o.config.as_ref().and_then(Parsed::ok);
        let state = o.state.as_ref().and_then(Parsed::ok);
        let status = o
            .status
            .as_ref()
            .and_then(Parsed::ok)
            .cloned()
            .unwrap_or_default();
        // Messages quote records (a worker's error, a parse failure), which
        // may be as long as a record: what `get` and the Kubernetes mirror
        // show is clipped.
        let clip = crate::limits::clip_message;
        let last_error = if matches!(p.phase, Phase::Invalid | Phase::Failed | Phase::BackingOff)
            && status.last_error.is_empty()
        {
            clip(&p.message)
        } else {
            clip(&status.last_error)
        };
        Report {
            rtype: o.rtype.clone(),
            id: o.resource.id.clone(),
            tenant: cfg.and_then(|c| c.tenant.as_deref().map(str::to_string)),
            desired: match cfg {
                Some(c) if c.marked => Desired::Absent,
                Some(_) => Desired::Present,
                None => Desired::Unknown,
            },
            desired_version: cfg.map(|c| c.version),
            observed_version: state.map(|s| s.version),
            worker_state: state.map(|s| s.worker_state.to_string()),
            stack_status: o
                .stack
                .as_ref()
                .and_then(Parsed::ok)
                .map(|s| s.status.to_string()),
            phase: p.phase,
            message: clip(&p.message),
            attempts: status.attempts,
            next_retry_ms: status.next_retry_ms,
            last_action: clip(&status.last_action),
            last_action_ms: status.last_action_ms,
            last_error,
            next: p
                .actions
                .iter()
                .map(|a| clip(&format!("{} — {}", a.action, a.why)))
                .collect(),
        }
    }

    /// Decides `r` in `world` (drafting its job if one is due, as the
    /// controller does) and reports it.
    pub async fn of(
        kv: &impl Kv,
        world: &RwLock<World>,
        r: &ResourceRef,
        now_ms: u64,
    ) -> Result<Option<Report>, etcd_client::Error> {
        let decided = decide_for(kv, world, r, now_ms, |_| {}).await?;
        Ok(decided.map(|(o, p)| Report::new(&o, &p)))
    }
}

/// Every resource, sorted by type and id.
pub async fn all(
    kv: &impl Kv,
    world: &RwLock<World>,
    now_ms: u64,
) -> Result<Vec<Report>, etcd_client::Error> {
    let all: Vec<ResourceRef> = world
        .read()
        .await
        .resources()
        .map(|(r, _)| r.clone())
        .collect();
    let mut out = Vec::with_capacity(all.len());
    for r in &all {
        out.extend(Report::of(kv, world, r, now_ms).await?);
    }
    out.sort_by(|a, b| (&a.rtype, &a.id).cmp(&(&b.rtype, &b.id)));
    Ok(out)
}
