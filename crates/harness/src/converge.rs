//! Waiting for convergence, as an operator would check it: every resource's
//! report (what `esi-reconciler get` shows) from a fresh, consistent read of
//! etcd, polled until each one is as wanted. The demo, the drills and the
//! bench all wait this way.

use std::sync::Arc;
use std::time::Duration;

use esi_reconciler::clock::now_ms;
use esi_reconciler::esi::Catalog;
use esi_reconciler::reconcile::report::{self, Report};
use esi_reconciler::reconcile::snapshot;
use esi_reconciler::store::Etcd;
use tokio::sync::RwLock;

/// Every resource's report, decided from one consistent read of etcd.
pub async fn reports(client: &Etcd, catalog: &Arc<Catalog>) -> anyhow::Result<Vec<Report>> {
    let world = RwLock::new(snapshot::load(client, catalog.clone(), 1000).await?);
    Ok(report::all(client, &world, now_ms()).await?)
}

/// A resource converged at its config, with nothing left to do.
pub fn converged(r: &Report) -> bool {
    r.phase == esi_reconciler::reconcile::Phase::Converged && r.next.is_empty()
}

/// What was still not as wanted when the time was up.
#[derive(Debug)]
pub struct Stuck {
    pub within: Duration,
    /// `type id phase (message)` of each resource not yet as wanted, or
    /// why etcd could not be read.
    pub stuck: Vec<String>,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<&str> = self.stuck.iter().take(3).map(String::as_str).collect();
        write!(
            f,
            "not converged within {:?}: {} stuck, e.g. {}",
            self.within,
            self.stuck.len(),
            shown.join("; ")
        )
    }
}

impl std::error::Error for Stuck {}

/// Polls until `wanted` holds for every resource; returns the reports.
/// An unreachable etcd is waited out like a resource not yet converged.
pub async fn wait_until(
    client: &Etcd,
    catalog: &Arc<Catalog>,
    within: Duration,
    wanted: impl Fn(&Report) -> bool,
) -> Result<Vec<Report>, Stuck> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stuck = match reports(client, catalog).await {
            Ok(reports) => {
                let stuck: Vec<String> = reports
                    .iter()
                    .filter(|r| !wanted(r))
                    .map(|r| format!("{} {} {} ({})", r.rtype, r.id, r.phase, r.message))
                    .collect();
                if stuck.is_empty() {
                    return Ok(reports);
                }
                stuck
            }
            Err(e) => vec![format!("etcd unreachable: {e:#}")],
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Stuck { within, stuck });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
