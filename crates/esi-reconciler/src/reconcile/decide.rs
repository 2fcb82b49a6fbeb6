//! Observe → plan, with the one read planning may need: when a job is due,
//! draft it (read its config and the configs it references) and plan again
//! with the draft in view. The controller, `reconcile_once` and the `plan`
//! command all decide through here, so what `plan` prints is what `run` does.

use tokio::sync::RwLock;

use crate::esi::keys::ResourceRef;
use crate::store::txn::Kv;

use super::draft::draft;
use super::observed::{Observed, TemplateStatus};
use super::plan::{HoldCause, Phase, Plan, plan};
use super::world::World;

/// Plans `o` (built from `world` for `r`); drafts the job when the plan asks
/// for it and returns the final view and plan.
pub async fn decide(
    kv: &impl Kv,
    world: &RwLock<World>,
    o: Observed,
) -> Result<(Observed, Plan), etcd_client::Error> {
    let p = plan(&o);
    if !p.needs_draft {
        return Ok((o, p));
    }
    let TemplateStatus::Ready { compiled, .. } = &o.template else {
        return Ok((o, p));
    };
    let config_rev = o.config.as_ref().map(|c| c.mod_rev).unwrap_or(0);
    let drafted = draft(kv, world, compiled, &o.resource, &o.rtype, config_rev).await;
    match drafted {
        Ok(d) => {
            let o = o.with_draft(&*world.read().await, d);
            let p = plan(&o);
            Ok((o, p))
        }
        // What was planned besides the job (tidying) still goes ahead;
        // the job waits, with backoff, until its config can be read.
        Err(e) => {
            let mut p = p;
            let reason = format!(
                "reading the job's config: {}",
                crate::store::client::describe(&e)
            );
            p.hold(Phase::Progressing, reason, None, HoldCause::Unreadable);
            Ok((o, p))
        }
    }
}

/// The view of `r` in `world` at `now_ms`, decided.
pub async fn decide_for(
    kv: &impl Kv,
    world: &RwLock<World>,
    r: &ResourceRef,
    now_ms: u64,
    tune: impl FnOnce(&mut Observed),
) -> Result<Option<(Observed, Plan)>, etcd_client::Error> {
    let Some(mut o) = Observed::from_world(&*world.read().await, r, now_ms) else {
        return Ok(None);
    };
    tune(&mut o);
    decide(kv, world, o).await.map(Some)
}
