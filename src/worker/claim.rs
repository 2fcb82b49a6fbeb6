//! Claiming a ready job, the ESI way, in one transaction: create
//! `/jobs/working/{id}` bound to our lease, delete `/jobs/ready/{id}` and
//! set the resource's `job_state` to `{}` (ESI's worker writes that right
//! after its claim; one transaction saves etcd a write per job).
//! Every later write of the job compares the working key's create revision
//! with the claim's: a worker whose lease expired (and so whose claim etcd
//! deleted) writes nothing.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use crate::esi::keys::{JobId, JobSlot};
use crate::esi::records::{self, JobEnvelope, queue_value};

/// A job this worker holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: JobId,
    pub envelope: JobEnvelope,
    /// Create revision of our `working/` key: the fence for every write.
    pub claim_rev: i64,
    pub reservation: String,
}

impl Claim {
    /// Holds while our claim is the one in etcd.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(
            self.id.slot_key(JobSlot::Working),
            CompareOp::Equal,
            self.claim_rev,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("job {id} is invalid and left untouched: {reason}")]
    Invalid { id: String, reason: String },
}

fn reservation() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Tries to claim `id` under `lease`, setting `job_state_key` (when the
/// resource type is known) to `{}`. `Ok(None)`: somebody else has it, or it
/// is no longer ready.
pub async fn claim(
    client: &Client,
    id: &JobId,
    lease: i64,
    job_state_key: Option<String>,
) -> Result<Option<Claim>, ClaimError> {
    let mut kv = client.kv_client();
    let all_key = id.slot_key(JobSlot::All);
    let resp = kv.get(all_key.clone(), None).await?;
    let Some(all) = resp.kvs().first() else {
        return Ok(None);
    };
    let envelope: JobEnvelope =
        records::parse("job", all.value()).map_err(|e| ClaimError::Invalid {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
    let reservation = reservation();
    let working = id.slot_key(JobSlot::Working);
    let ready = id.slot_key(JobSlot::Ready);
    let txn = Txn::new()
        .when(vec![
            Compare::create_revision(ready.clone(), CompareOp::Greater, 0),
            Compare::create_revision(working.clone(), CompareOp::Equal, 0),
            Compare::mod_revision(all_key, CompareOp::Equal, all.mod_revision()),
        ])
        .and_then(
            vec![
                TxnOp::put(
                    working,
                    reservation.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::delete(ready, None),
            ]
            .into_iter()
            .chain(job_state_key.map(|k| TxnOp::put(k, "{}", None)))
            .collect::<Vec<_>>(),
        );
    let resp = kv.txn(txn).await?;
    if !resp.succeeded() {
        return Ok(None);
    }
    let claim_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok(Some(Claim {
        id: id.clone(),
        envelope,
        claim_rev,
        reservation,
    }))
}

/// Gives a claimed job back: `working/` removed, `ready/` restored, in one
/// transaction fenced by the claim.
pub async fn release(client: &Client, c: &Claim) -> Result<bool, etcd_client::Error> {
    let txn = Txn::new().when(vec![c.fence()]).and_then(vec![
        TxnOp::delete(c.id.slot_key(JobSlot::Working), None),
        TxnOp::put(
            c.id.slot_key(JobSlot::Ready),
            queue_value(&c.id.handler),
            None,
        ),
    ]);
    Ok(client.kv_client().txn(txn).await?.succeeded())
}

/// Keeps one lease alive for all of this worker's claims, granting a new
/// one when it is lost. Publishes the current lease id (0 while none).
pub async fn keep_lease(
    client: Client,
    ttl: Duration,
    current: watch::Sender<i64>,
    lost: impl Fn() + Send + 'static,
) {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    loop {
        let mut lc = client.lease_client();
        let lease = match lc.grant(ttl_secs, None).await {
            Ok(g) => g.id(),
            Err(e) => {
                tracing::warn!(error = %crate::store::client::describe(&e), "cannot get a lease; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        current.send_replace(lease);
        tracing::info!(lease, ttl_secs, "holding lease");
        let (mut keeper, mut stream) = match lc.keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %crate::store::client::describe(&e), "lease keep-alive failed to start");
                continue;
            }
        };
        let period = Duration::from_millis((ttl_secs as u64 * 1000) / 3);
        loop {
            tokio::time::sleep(period).await;
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => continue,
                _ => break,
            }
        }
        // Whether it expired or we could not tell, the claims under it are
        // not to be trusted: get a new lease for new claims.
        tracing::warn!(lease, "lease lost");
        current.send_replace(0);
        lost();
        let _ = client.lease_client().revoke(lease).await;
    }
}
