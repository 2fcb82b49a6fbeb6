//! Giving back the spare capacity of maps that drain.
//!
//! A cold start or a relist fills the job index, the queue and the reverse
//! indexes with an entry per resource at once; once everything converged
//! they are nearly empty again, but a `HashMap` never shrinks by itself and
//! would hold its peak size for good (hundreds of bytes per resource at
//! 100k). Shrinking once a map has drained to a quarter of its capacity
//! keeps the cost amortised: it happens only after as many removals as the
//! map holds.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// A map or set that can give capacity back.
pub trait Sparse {
    fn len_and_capacity(&self) -> (usize, usize);
    fn shrink_to(&mut self, min: usize);

    /// Shrinks to twice the length when at most a quarter is used.
    fn shrink_if_sparse(&mut self) {
        const SMALL: usize = 64;
        let (len, cap) = self.len_and_capacity();
        if cap > SMALL && len.saturating_mul(4) <= cap {
            self.shrink_to(len.saturating_mul(2).max(SMALL / 2));
        }
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Sparse for HashMap<K, V, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        HashMap::shrink_to(self, min)
    }
}

impl<K: Eq + Hash, S: BuildHasher> Sparse for HashSet<K, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        HashSet::shrink_to(self, min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_map_gives_its_capacity_back() {
        let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let peak = m.capacity();
        for i in 0..9_990 {
            m.remove(&i);
            m.shrink_if_sparse();
        }
        assert_eq!(m.len(), 10);
        assert!(m.capacity() < peak / 16, "{} of {peak}", m.capacity());
        assert!((9_990..10_000).all(|i| m.get(&i) == Some(&i)));
    }

    #[test]
    fn a_full_map_is_left_alone() {
        let mut s: HashSet<u32> = (0..1000).collect();
        let cap = s.capacity();
        s.shrink_if_sparse();
        assert_eq!(s.capacity(), cap);
        let mut small: HashSet<u32> = HashSet::with_capacity(10);
        small.shrink_if_sparse();
        assert!(small.capacity() >= 10);
    }
}
