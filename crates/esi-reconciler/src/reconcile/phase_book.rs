//! The phase each resource's last plan found, for the phase gauges.
//!
//! Kept apart from the world (which mirrors etcd and knows nothing of plans)
//! and keyed by a 64-bit hash of the resource rather than its name: at 100k
//! resources a map keyed by names costs about 300 B per resource, this one
//! about 30. Two resources whose hashes collide (about one chance in 10^9 at
//! 100k) would only share a gauge entry.

use std::collections::HashMap;

use crate::esi::keys::ResourceRef;

use super::plan::Phase;
use super::sparse::Sparse;

/// Each resource's last planned phase, with the world's
/// [`changed`](super::world::Entry::changed) stamp it was planned at.
#[derive(Default)]
pub struct PhaseBook(HashMap<u64, (Phase, i64)>);

fn key(r: &ResourceRef) -> u64 {
    r.stable_hash()
}

impl PhaseBook {
    pub fn set(&mut self, r: &ResourceRef, phase: Phase, changed: i64) {
        self.0.insert(key(r), (phase, changed));
    }

    /// Whether the resource was last planned Converged from the world as it
    /// still is (`changed` unchanged): planning it again would change
    /// nothing, since the planner is pure and a converged plan does not
    /// depend on the time. The resync skips it.
    pub fn settled(&self, hash: u64, changed: i64) -> bool {
        self.0
            .get(&hash)
            .is_some_and(|(p, at)| *p == Phase::Converged && *at == changed)
    }

    /// The last phase planned for `r` (`Pending` before its first plan).
    pub fn get(&self, r: &ResourceRef) -> Phase {
        self.by_hash(key(r))
    }

    /// The same, by the resource's [`stable_hash`](ResourceRef::stable_hash).
    pub fn by_hash(&self, hash: u64) -> Phase {
        self.0.get(&hash).map_or(Phase::Pending, |(p, _)| *p)
    }

    /// Forgets every phase (a relist: each is planned again).
    pub fn clear(&mut self) {
        self.0 = HashMap::new();
    }

    pub fn forget(&mut self, r: &ResourceRef) {
        if self.0.remove(&key(r)).is_some() {
            self.0.shrink_if_sparse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_each_resource_apart() {
        let mut b = PhaseBook::default();
        let (p1, p2) = (
            ResourceRef::new("ports", "a"),
            ResourceRef::new("port", "sa"),
        );
        b.set(&p1, Phase::Converged, 7);
        assert_eq!((b.get(&p1), b.get(&p2)), (Phase::Converged, Phase::Pending));
        assert!(b.settled(p1.stable_hash(), 7));
        assert!(!b.settled(p1.stable_hash(), 8), "changed since");
        b.set(&p2, Phase::Failed, 7);
        assert!(!b.settled(p2.stable_hash(), 7), "not converged");
        b.forget(&p1);
        assert_eq!((b.get(&p1), b.get(&p2)), (Phase::Pending, Phase::Failed));
    }
}
