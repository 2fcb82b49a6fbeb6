//! Claiming a ready job, the ESI way, in one transaction: create
//! `/jobs/working/{id}` bound to our lease, delete `/jobs/ready/{id}` and
//! set the resource's `job_state` to `{}` (ESI's worker writes that right
//! after its claim; one transaction saves etcd a write per job).
//! Every later write of the job compares the working key's create revision
//! with the claim's: a worker whose lease expired (and so whose claim etcd
//! deleted) writes nothing.

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op};

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
    pub fn fence(&self) -> Cond {
        Cond::CreateRev(self.id.slot_key(JobSlot::Working), self.claim_rev)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("job {id} is invalid and left untouched: {reason}")]
    Invalid { id: String, reason: String },
}

/// A fresh reservation value for `working/` keys (a random UUID, as ESI's
/// worker writes).
pub fn new_reservation() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Tries to claim `id` under `lease`, setting `job_state_key` (when the
/// resource type is known) to `{}`. `Ok(None)`: somebody else has it, or it
/// is no longer ready.
pub async fn claim(
    client: &Etcd,
    id: &JobId,
    lease: i64,
    job_state_key: Option<String>,
    reservation: &str,
) -> Result<Option<Claim>, ClaimError> {
    let kv = client;
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
    let reservation = reservation.to_string();
    let working = id.slot_key(JobSlot::Working);
    let ready = id.slot_key(JobSlot::Ready);
    let mut then = vec![
        Op::put_leased(working.clone(), reservation.clone(), lease),
        Op::delete(ready.clone()),
    ];
    then.extend(job_state_key.map(|k| Op::put(k, "{}")));
    let txn = Fenced::new(
        vec![
            Cond::Present(ready),
            Cond::Absent(working.clone()),
            Cond::ModRev(all_key, all.mod_revision()),
        ],
        then,
    );
    let resp = match kv.commit(&txn).await {
        Ok(r) => Some(r),
        // No answer: it may still have landed (read below), or land later
        // (the caller retries with the same reservation).
        Err(e) if crate::store::cluster::is_retryable(&e) => {
            tracing::debug!(job = %id, error = %crate::store::client::describe(&e), "claim answer lost; reading back");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let claim_rev = if let Some(resp) = resp.filter(|r| r.succeeded) {
        resp.revision
    } else {
        // The store layer retries a transaction whose answer was lost; if
        // the first attempt did land, this one failed its compares on our
        // own claim. The reservation (random, ours alone) tells.
        let now = kv.get(working.clone(), None).await?;
        match now.kvs().first() {
            Some(w) if w.value() == reservation.as_bytes() && w.lease() == lease => {
                w.create_revision()
            }
            _ if resp.is_none() => {
                return Err(ClaimError::Etcd(etcd_client::Error::GRpcStatus(
                    tonic::Status::unavailable("claim not confirmed"),
                )));
            }
            _ => return Ok(None),
        }
    };
    Ok(Some(Claim {
        id: id.clone(),
        envelope,
        claim_rev,
        reservation,
    }))
}

/// Gives a claimed job back: `working/` removed, `ready/` restored, in one
/// transaction fenced by the claim.
pub async fn release(client: &Etcd, c: &Claim) -> Result<bool, etcd_client::Error> {
    let txn = Fenced::new(
        vec![c.fence()],
        vec![
            Op::delete(c.id.slot_key(JobSlot::Working)),
            Op::put(c.id.slot_key(JobSlot::Ready), queue_value(&c.id.handler)),
        ],
    );
    Ok(client.commit(&txn).await?.succeeded)
}
