//! Claiming a ready job, the ESI way, in one transaction: create
//! `/jobs/working/{id}` bound to our lease, delete `/jobs/ready/{id}` and
//! set the resource's `job_state` to `{}` (ESI's worker writes that right
//! after its claim; one transaction saves etcd a write per job).
//! Every later write of the job compares the working key's create revision
//! with the claim's: a worker whose lease expired (and so whose claim etcd
//! deleted) writes nothing.

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op, Record};

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
    /// The resource's `/state` key and record as the claim found it
    /// (`None`: the job's type is unknown): the results compare its mod
    /// revision instead of reading it again.
    pub state: Option<(String, Option<Record>)>,
}

impl Claim {
    /// Holds while our claim is the one in etcd.
    pub fn fence(&self) -> Cond {
        Cond::CreateRev(self.id.slot_key(JobSlot::Working), self.claim_rev)
    }
}

/// What a claim got.
#[derive(Debug)]
pub enum Claimed {
    Job(Box<Claim>),
    /// The job's record does not parse: found out only once claimed.
    Unreadable(Unreadable),
}

/// A claimed job whose record does not parse, to be given back as found.
#[derive(Debug)]
pub struct Unreadable {
    pub reason: String,
    /// Undoes the claim: `working/` removed, `ready/` restored, and
    /// `job_state` as it was, while it is still the claim's `{}`.
    undo: Fenced,
    /// The same without `job_state`, for when something else wrote it
    /// since the claim.
    undo_queue: Fenced,
}

impl Unreadable {
    /// Puts back what the claim changed, so the record stays as the
    /// protocol left it. The caller first makes sure it will not take the
    /// job again when `ready/` reappears.
    pub async fn give_back(&self, kv: &impl Kv) -> Result<bool, etcd_client::Error> {
        if kv.commit(&self.undo).await?.succeeded {
            return Ok(true);
        }
        Ok(kv.commit(&self.undo_queue).await?.succeeded)
    }
}

/// A fresh reservation value for `working/` keys (a random UUID, as ESI's
/// worker writes).
pub fn new_reservation() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The keys a claim returns with its answer, in this order.
enum Read {
    All,
    Working,
    JobState,
    State,
}

/// Tries to claim `id` under `lease`, setting the resource's `job_state`
/// (when its type is known, `keys` = its `job_state` and `/state` keys) to
/// `{}`. `Ok(None)`: somebody else has it, or it is no longer ready.
///
/// One request: the transaction itself returns the job (`all/`), our
/// `working/` key, and the resource's `job_state` and `/state`, so the
/// claim reads nothing before or after.
pub async fn claim(
    kv: &impl Kv,
    id: &JobId,
    lease: i64,
    keys: Option<(String, String)>,
    reservation: &str,
) -> Result<Option<Claimed>, etcd_client::Error> {
    let all_key = id.slot_key(JobSlot::All);
    let working = id.slot_key(JobSlot::Working);
    let ready = id.slot_key(JobSlot::Ready);
    let (job_state_key, state_key) = keys.unzip();
    let mut read = vec![all_key.clone(), working.clone()];
    read.extend(job_state_key.clone());
    read.extend(state_key.clone());
    let mut then = vec![
        Op::put_leased(working.clone(), reservation.to_string(), lease),
        Op::delete(ready.clone()),
    ];
    then.extend(job_state_key.clone().map(|k| Op::put(k, "{}")));
    let txn = Fenced::new(
        vec![
            Cond::Present(ready),
            Cond::Absent(working.clone()),
            Cond::Present(all_key),
        ],
        then,
    )
    .reading(read)
    .named("claim");
    let done = kv.commit(&txn).await?;
    let typed = job_state_key.is_some();
    let got = |r: Read| -> Option<&Record> {
        let i = match r {
            Read::All => 0,
            Read::Working => 1,
            Read::JobState if typed => 2,
            Read::State if typed => 3,
            _ => return None,
        };
        done.read.get(i).and_then(Option::as_ref)
    };
    let claim_rev = if done.succeeded {
        done.revision
    } else {
        // The store layer retries a transaction whose answer was lost; if
        // the first attempt did land, this one failed its compares on our
        // own claim. The reservation (random, ours alone) tells.
        match got(Read::Working) {
            Some(w) if w.value == reservation.as_bytes() && w.lease == lease => w.create_rev,
            _ => return Ok(None),
        }
    };
    let Some(all) = got(Read::All) else {
        return Ok(None);
    };
    Ok(Some(
        match records::parse::<JobEnvelope>("job", &all.value) {
            Ok(envelope) => Claimed::Job(Box::new(Claim {
                id: id.clone(),
                envelope,
                claim_rev,
                reservation: reservation.to_string(),
                state: state_key.map(|k| (k, got(Read::State).cloned())),
            })),
            Err(e) => {
                // What `job_state` was before the claim is known only from
                // the claim's own answer (a claim found from its
                // reservation read it after): otherwise the `{}` goes.
                let before = got(Read::JobState).filter(|_| done.succeeded);
                let mut undo = unclaim_txn(id, claim_rev, None);
                if let Some(k) = job_state_key {
                    undo.when.push(Cond::ModRev(k.clone(), claim_rev));
                    undo.then.push(match before {
                        Some(b) => Op::put(k, b.value.clone()),
                        None => Op::delete(k),
                    });
                }
                Claimed::Unreadable(Unreadable {
                    reason: e.to_string(),
                    undo,
                    undo_queue: unclaim_txn(id, claim_rev, None),
                })
            }
        },
    ))
}

/// Gives a claimed job back: `working/` removed, `ready/` restored (and
/// `restore`, when given), in one transaction fenced by the claim.
fn unclaim_txn(id: &JobId, claim_rev: i64, restore: Option<Op>) -> Fenced {
    let working = id.slot_key(JobSlot::Working);
    let mut ops = vec![
        Op::delete(working.clone()),
        Op::put(id.slot_key(JobSlot::Ready), queue_value(&id.handler)),
    ];
    ops.extend(restore);
    let fence = Cond::CreateRev(working, claim_rev);
    Fenced::new(vec![fence], ops).named("release_claim")
}

/// Gives a claimed job back: `working/` removed, `ready/` restored, in one
/// transaction fenced by the claim.
pub async fn release(client: &Etcd, c: &Claim) -> Result<bool, etcd_client::Error> {
    Ok(client
        .commit(&unclaim_txn(&c.id, c.claim_rev, None))
        .await?
        .succeeded)
}
