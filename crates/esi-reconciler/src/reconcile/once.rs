//! Reconciling one resource once, outside the controller: load the world,
//! plan, execute. The same stages the controller runs, for tools and tests
//! that need a single, synchronous step.

use std::sync::Arc;

use crate::store::Etcd;
use tokio::sync::RwLock;

use crate::esi::Catalog;
use crate::esi::keys::ResourceRef;
use crate::store::StoreError;

use super::decide::decide_for;
use super::execute::{ExecError, Executor, Outcome};
use super::plan::Plan;
use super::snapshot;
use crate::clock::now_ms;

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
    let world = RwLock::new(snapshot::load(client, catalog, 1000).await?);
    let (_, p) = decide_for(client, &world, r, now_ms(), |_| {})
        .await
        .map_err(ExecError::from)?
        .ok_or_else(|| OnceError::Unknown(r.clone()))?;
    if p.actions.is_empty() {
        return Ok((p, None));
    }
    let outcome = Executor::new(client.clone()).execute(&p).await?;
    Ok((p, Some(outcome)))
}
