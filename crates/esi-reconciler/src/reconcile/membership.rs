//! Replicas that share the work: each reconciler registers a key under its
//! own lease in `/esi-reconciler/v1/members/`, every replica watches that
//! prefix, and each resource has one owner among the live members by
//! rendezvous hashing of `{plural}/{id}`. A replica acts only on what it
//! owns; when a member's lease lapses its key goes, and the survivors own
//! its resources from the next view on (within the lease TTL).
//!
//! Rendezvous hashing moves only the dead member's resources (about 1/N of
//! them) and needs no coordination: every replica computes the same owner
//! from the same member list.
//!
//! **Fencing.** Every write of a replica also compares its member key's
//! create revision with the one it registered ([`Membership::fence`]). A
//! replica that was frozen past its lease (and so lost its key) writes
//! nothing when it wakes, whatever its stale view of the members says; the
//! per-resource revision compares stay the safety net while two replicas'
//! views of the members differ during a hand-over.

use std::sync::Arc;
use std::time::Duration;

use crate::store::txn::{Cond, Fenced, Kv, Op};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::esi::keys::{MEMBERS, ResourceRef};
use crate::store::mirror::{self, MirrorOptions, Reflector, Step};
use crate::store::{Change, Etcd};
use futures::StreamExt;

/// What a replica writes under its member key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: u64,
}

/// One replica's view of the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Live members, sorted.
    pub members: Vec<String>,
    /// This replica's id.
    pub me: String,
    /// Create revision of our member key while we hold it.
    pub registration: Option<i64>,
    /// True once the member list was loaded: before, nothing is owned.
    pub listed: bool,
}

/// The rendezvous score of `member` for `resource`.
fn score(member: &str, resource: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(member.as_bytes());
    h.update(&[0]);
    h.update(resource.as_bytes());
    h.digest()
}

/// The owner of `r` among `members` (highest score; ties by id).
pub fn owner_among<'a>(members: &'a [String], r: &ResourceRef) -> Option<&'a str> {
    let key = r.to_string();
    members
        .iter()
        .max_by(|a, b| score(a, &key).cmp(&score(b, &key)).then_with(|| a.cmp(b)))
        .map(String::as_str)
}

impl View {
    pub fn owner(&self, r: &ResourceRef) -> Option<&str> {
        owner_among(&self.members, r)
    }

    /// Whether this replica may act on `r` now: registered, listed, and
    /// the owner.
    pub fn owns(&self, r: &ResourceRef) -> bool {
        if !self.listed || self.registration.is_none() {
            return false;
        }
        match self.members.as_slice() {
            // Alone (the default): everything, without hashing.
            [only] => *only == self.me,
            _ => self.owner(r) == Some(self.me.as_str()),
        }
    }
}

/// The member key of replica `id`.
pub fn member_key(id: &str) -> String {
    format!("{MEMBERS}{id}")
}

/// A default replica id: the pod or host name and a random suffix, so two
/// processes on one host never share an id.
pub fn default_id() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "reconciler".into());
    let suffix: u32 = rand::random();
    format!("{host}-{:06x}", suffix & 0xff_ffff)
}

/// The member ids registered in etcd now (for `get`).
pub async fn list_members(etcd: &Etcd) -> Result<Vec<String>, etcd_client::Error> {
    let resp = etcd
        .get(
            MEMBERS,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?;
    let mut ids: Vec<String> = resp
        .kvs()
        .iter()
        .filter(|kv| kv.lease() != 0)
        .filter_map(|kv| kv.key_str().ok()?.strip_prefix(MEMBERS).map(String::from))
        .collect();
    ids.sort();
    Ok(ids)
}

pub struct Membership {
    etcd: Etcd,
    ttl: Duration,
    view: watch::Sender<Arc<View>>,
    /// Set by `leave`: never register again.
    leaving: std::sync::atomic::AtomicBool,
    /// Leases our member key was written under (the current one last).
    held: std::sync::Mutex<Vec<i64>>,
}

impl Membership {
    pub fn new(etcd: Etcd, id: String, ttl: Duration) -> Arc<Membership> {
        let view = View {
            me: id,
            ..View::default()
        };
        Arc::new(Membership {
            etcd,
            ttl,
            view: watch::channel(Arc::new(view)).0,
            leaving: std::sync::atomic::AtomicBool::new(false),
            held: std::sync::Mutex::new(vec![]),
        })
    }

    pub fn id(&self) -> String {
        self.view.borrow().me.clone()
    }

    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.view.subscribe()
    }

    /// The compare every write of this replica carries, or `None` while it
    /// holds no registration (then it must not write at all).
    pub fn fence(&self) -> Option<Cond> {
        let v = self.view.borrow();
        v.registration
            .map(|rev| Cond::CreateRev(member_key(&v.me), rev))
    }

    fn publish(&self, f: impl FnOnce(&mut View)) {
        self.view.send_if_modified(|v| {
            let mut next = (**v).clone();
            f(&mut next);
            if next == **v {
                return false;
            }
            *v = Arc::new(next);
            true
        });
    }

    /// Registers and follows the membership until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let (lease_tx, mut lease_rx) = watch::channel(0i64);
        // Both helpers end with this task, even when it is aborted.
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(crate::store::lease::keep(
            self.etcd.clone(),
            self.ttl,
            lease_tx,
            || {},
        ));
        let mut events = mirror::stream(self.etcd.clone(), MirrorOptions::prefix(MEMBERS));
        let mut reflector = Reflector::new(Members::default);
        let mut members = Members::default();
        let me = self.id();
        let key = member_key(&me);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            let lease = *lease_rx.borrow_and_update();
            // (Re-)register when we hold a lease but no key.
            let leaving = self.leaving.load(std::sync::atomic::Ordering::Relaxed);
            if lease != 0 && !leaving && self.view.borrow().registration.is_none() {
                match self.register(&key, lease).await {
                    Ok(rev) => {
                        tracing::info!(replica = %me, lease, "registered as a reconciler replica");
                        self.publish(|v| v.registration = Some(rev));
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::store::client::describe(&e), "cannot register as a replica yet")
                    }
                }
            }
            tokio::select! {
                r = lease_rx.changed() => {
                    if r.is_err() { break; }
                    // A new lease (or none): the old key is gone or going.
                    self.publish(|v| v.registration = None);
                }
                ev = events.next() => {
                    let Some(ev) = ev else { break };
                    // Our key gone, in a list taken or a delete seen after
                    // we registered: act on nothing until registered again.
                    let (gone, listed) = match reflector.update(&mut members, ev) {
                        Step::Replace { revision, .. } => {
                            (!members.0.contains(&me) && self.registered_before(revision), true)
                        }
                        Step::Apply { changes, .. } => {
                            let gone = changes.iter().any(|c| matches!(c,
                                Change::Delete { key: k, revision }
                                    if k.strip_prefix(MEMBERS) == Some(me.as_str()) && self.registered_before(*revision)));
                            // Gone because we left (shutdown) is no news.
                            let leaving = self.leaving.load(std::sync::atomic::Ordering::Relaxed);
                            if gone && !leaving {
                                tracing::warn!(replica = %me, "our member key is gone (lease lapsed?): acting on nothing until registered again");
                            }
                            (gone, false)
                        }
                        Step::Reset { .. } => {
                            self.publish(|v| { v.registration = None; v.listed = false; });
                            continue;
                        }
                        Step::Idle | Step::Progress { .. } | Step::Restart { .. } => continue,
                    };
                    self.publish(|v| {
                        v.members = members.0.iter().cloned().collect();
                        v.listed |= listed;
                        if gone { v.registration = None; }
                    });
                }
                _ = retry.tick() => {}
            }
        }
        drop(events);
        helpers.abort_all();
    }

    /// Whether we hold a registration made before `revision`.
    fn registered_before(&self, revision: i64) -> bool {
        self.view
            .borrow()
            .registration
            .is_some_and(|rev| rev <= revision)
    }

    /// Writes our member key under `lease` unless another process holds
    /// it (a second replica given the same id must not share our fence);
    /// returns its create revision.
    async fn register(&self, key: &str, lease: i64) -> Result<i64, etcd_client::Error> {
        let record = MemberRecord {
            id: self.id(),
            host: std::env::var("HOSTNAME").unwrap_or_default(),
            pid: std::process::id(),
            started_ms: crate::clock::now_ms(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let txn = Fenced::new(
            vec![Cond::Absent(key.to_string())],
            vec![Op::put_leased(key, value, lease)],
        )
        .named("membership");
        let resp = self.etcd.commit(&txn).await?;
        if resp.succeeded {
            let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
            h.push(lease);
            // Only recent leases can still hold our key.
            if h.len() > 8 {
                h.remove(0);
            }
            drop(h);
            return Ok(resp.revision);
        }
        let got = self.etcd.get(key, None).await?;
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match got.kvs().first() {
            // Ours: an earlier attempt whose answer was lost.
            Some(kv) if kv.lease() == lease => Ok(kv.create_revision()),
            // Ours under a lease we gave up (e.g. etcd lost its quorum for
            // longer than the TTL; etcd then extends the old lease, which
            // would keep our key, and our share, for another TTL): move the
            // key to the new lease.
            Some(kv) if held.contains(&kv.lease()) => {
                let old = kv.lease();
                let txn = Fenced::new(
                    vec![Cond::Lease(key.to_string(), old)],
                    vec![Op::put_leased(key, kv.value().to_vec(), lease)],
                )
                .named("membership");
                if !self.etcd.commit(&txn).await?.succeeded {
                    return Err(etcd_client::Error::InvalidArgs(
                        "member key changed while being moved to the new lease".into(),
                    ));
                }
                {
                    let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
                    h.retain(|l| *l != old);
                    h.push(lease);
                }
                let _ = self.etcd.lease_revoke(old).await;
                Ok(kv.create_revision())
            }
            Some(kv) => Err(etcd_client::Error::InvalidArgs(format!(
                "replica id {} is registered by another process (lease {:x}); give each replica its own --replica-id",
                self.id(),
                kv.lease()
            ))),
            None => Err(etcd_client::Error::InvalidArgs(
                "member key vanished right after it was checked".into(),
            )),
        }
    }

    /// Removes our member key at shutdown, so the others take over at once
    /// instead of after the TTL.
    pub async fn leave(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let key = member_key(&self.id());
        if let Some(fence) = self.fence() {
            let _ = self
                .etcd
                .commit(&Fenced::new(vec![fence], vec![Op::delete(key)]).named("membership"))
                .await;
        }
        self.publish(|v| v.registration = None);
    }
}

/// The live members' ids, kept from the mirror of the member keys.
#[derive(Default)]
struct Members(std::collections::BTreeSet<String>);

impl mirror::View for Members {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(kv) => {
                if let Some(id) = kv.key.strip_prefix(MEMBERS) {
                    if is_live(kv) {
                        self.0.insert(id.to_string());
                    } else {
                        self.0.remove(id);
                    }
                }
            }
            Change::Delete { key, .. } => {
                if let Some(id) = key.strip_prefix(MEMBERS) {
                    self.0.remove(id);
                }
            }
        }
    }
}

/// A member key counts only under a lease: a replica's key goes with its
/// lease, while one written by hand (or left by a bug) without a lease
/// would take a share of the resources forever and act on none of them.
fn is_live(kv: &crate::store::Kv) -> bool {
    kv.lease != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    fn resources(n: usize) -> Vec<ResourceRef> {
        (0..n)
            .map(|i| ResourceRef::new("ports", format!("p{i}")))
            .collect()
    }

    #[test]
    fn every_resource_has_one_owner_and_the_split_is_even() {
        let m = members(3);
        let rs = resources(30_000);
        let mut counts = std::collections::HashMap::new();
        for r in &rs {
            *counts.entry(owner_among(&m, r).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        for (_, c) in counts {
            // A third each, within 3%.
            assert!((9_700..=10_300).contains(&c), "{c}");
        }
    }

    #[test]
    fn losing_a_member_moves_only_its_resources() {
        let m = members(3);
        let survivors: Vec<String> = m[..2].to_vec();
        for r in resources(5_000) {
            let before = owner_among(&m, &r).unwrap();
            let after = owner_among(&survivors, &r).unwrap();
            if before != "replica-2" {
                assert_eq!(before, after, "{r} moved although its owner lives");
            }
        }
    }

    #[test]
    fn owner_is_independent_of_member_order() {
        let mut m = members(5);
        let r = ResourceRef::new("networks", "n1");
        let a = owner_among(&m, &r).unwrap().to_string();
        m.reverse();
        assert_eq!(owner_among(&m, &r).unwrap(), a);
    }

    #[test]
    fn a_view_owns_nothing_until_listed_and_registered() {
        let r = ResourceRef::new("ports", "p");
        let mut v = View {
            members: vec!["a".into()],
            me: "a".into(),
            registration: None,
            listed: true,
        };
        assert!(!v.owns(&r));
        v.registration = Some(7);
        assert!(v.owns(&r));
        v.listed = false;
        assert!(!v.owns(&r));
        assert_eq!(owner_among(&[], &r), None);
    }
}
