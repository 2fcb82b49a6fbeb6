//! Reconciling one resource once, outside the controller: load the world,
//! plan, execute. The same stages the controller runs, for tools and tests
//! that need a single, synchronous step.

use std::sync::Arc;

use crate::store::Etcd;
use tokio::sync::RwLock;

use crate::esi::Catalog;
use crate::esi::keys::ResourceRef;
use crate::store::StoreError;

use super::backoff::BackoffPolicy;
use super::controller::now_ms;
use super::execute::{ExecError, Executor, Outcome};
use super::observed::Observed;
use super::plan::{Plan, plan};
use super::snapshot;

#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("nothing is recorded for {0}")]
    Unknown(ResourceRef),
}

/// Plans `r` from a fresh view of etcd and executes the plan.
pub async fn reconcile_once(
    client: &Etcd,
    catalog: Arc<Catalog>,
    r: &ResourceRef,
) -> Result<(Plan, Option<Outcome>), OnceError> {
    let world = snapshot::load(client, catalog.clone(), 1000).await?;
    let o =
        Observed::from_world(&world, r, now_ms()).ok_or_else(|| OnceError::Unknown(r.clone()))?;
    let p = plan(&o);
    if p.actions.is_empty() {
        return Ok((p, None));
    }
    let executor = Executor::new(
        client.clone(),
        Arc::new(RwLock::new(world)),
        catalog,
        BackoffPolicy::default(),
    );
    let outcome = executor.execute(&o, &p).await?;
    Ok((p, Some(outcome)))
}
