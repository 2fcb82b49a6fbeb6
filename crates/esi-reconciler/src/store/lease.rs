//! Holding one etcd lease for a process's lifetime: granted, renewed on
//! whichever member answers, and replaced when it is gone.
//!
//! A member that dies does not take the lease with it (leases live in the
//! cluster), so a failed renewal is retried elsewhere; the lease is given up
//! only when etcd says it is gone, when no renewal got through for a whole
//! TTL (it has expired by then, as far as anyone can tell), or when the
//! store was restored (a restored store may hold an old copy of our lease
//! with claims we no longer track: revoking it frees them).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::describe;
use super::cluster::Etcd;

/// Keeps a lease of `ttl` alive forever, publishing its id in `current`
/// (0 while there is none). `lost` runs each time a lease is given up.
pub async fn keep(
    etcd: Etcd,
    ttl: Duration,
    current: watch::Sender<i64>,
    lost: impl Fn() + Send + 'static,
) {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let period = Duration::from_secs(ttl_secs.unsigned_abs())
        .checked_div(3)
        .unwrap_or(Duration::from_secs(1));
    let mut resets = etcd.subscribe_resets();
    loop {
        let lease = match etcd.lease_grant(ttl_secs).await {
            Ok(g) => g.id(),
            Err(e) => {
                tracing::warn!(error = %describe(&e), "cannot get an etcd lease; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        resets.borrow_and_update();
        let mut renewed = Instant::now();
        current.send_replace(lease);
        tracing::info!(lease, ttl_secs, "holding lease");
        let why = loop {
            let wait = if renewed.elapsed() < period {
                period
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = resets.changed() => break "the store was restored or replaced".to_string(),
            }
            match etcd.lease_keep_alive_once(lease).await {
                Ok(t) if t > 0 => renewed = Instant::now(),
                Ok(_) => break "etcd says it expired".to_string(),
                Err(e) if renewed.elapsed() >= Duration::from_secs(ttl_secs as u64) => {
                    break format!("not renewed for a whole TTL: {}", describe(&e));
                }
                Err(e) => {
                    tracing::debug!(lease, error = %describe(&e), "lease renewal failed; retrying")
                }
            }
        };
        tracing::warn!(lease, reason = %why, "lease lost");
        current.send_replace(0);
        lost();
        let _ = etcd.lease_revoke(lease).await;
    }
}
