//! A deduplicating, delaying work queue with at most one reconcile per
//! resource at a time (kube-runtime's scheduler + runner, in one place).
//!
//! Scheduling a resource that is already queued keeps the earlier due time;
//! scheduling one that is being reconciled marks it dirty, and it is queued
//! again the moment its reconcile ends, so no change is ever lost and no
//! resource is reconciled twice concurrently.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::sparse::Sparse;
use tokio::time::Instant;

struct Inner<K> {
    due: BTreeSet<(Instant, u64, K)>,
    queued: HashMap<K, (Instant, u64)>,
    running: HashSet<K>,
    /// Rescheduled while running: due time to apply when it ends.
    dirty: HashMap<K, Instant>,
    seq: u64,
}

pub struct Queue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
    debounce: Duration,
}

impl<K: Clone + Ord + Hash + Eq> Queue<K> {
    /// `debounce`: a change is reconciled no sooner than this after it is
    /// scheduled, so a burst of events for one resource coalesces.
    pub fn new(debounce: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                due: BTreeSet::new(),
                queued: HashMap::new(),
                running: HashSet::new(),
                dirty: HashMap::new(),
                seq: 0,
            }),
            notify: Notify::new(),
            debounce,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules `k` after the debounce.
    pub fn schedule(&self, k: K) {
        self.schedule_after(k, Duration::ZERO);
    }

    /// Schedules `k` after `delay` (at least the debounce).
    pub fn schedule_after(&self, k: K, delay: Duration) {
        let at = crate::clock::deadline_in(delay.max(self.debounce));
        let mut g = self.lock();
        if g.running.contains(&k) {
            let e = g.dirty.entry(k).or_insert(at);
            *e = (*e).min(at);
            return;
        }
        Self::enqueue(&mut g, k, at);
        drop(g);
        self.notify.notify_one();
    }

    fn enqueue(g: &mut Inner<K>, k: K, at: Instant) {
        if let Some(&(old_at, old_seq)) = g.queued.get(&k) {
            if old_at <= at {
                return;
            }
            g.due.remove(&(old_at, old_seq, k.clone()));
        }
        g.seq = g.seq.wrapping_add(1);
        let seq = g.seq;
        g.due.insert((at, seq, k.clone()));
        g.queued.insert(k, (at, seq));
    }

    /// Waits for the next due resource and marks it running.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            let wait = {
                let mut g = self.lock();
                match g.due.first().cloned() {
                    Some((at, seq, k)) if at <= Instant::now() => {
                        g.due.remove(&(at, seq, k.clone()));
                        g.queued.remove(&k);
                        g.queued.shrink_if_sparse();
                        g.running.insert(k.clone());
                        return k;
                    }
                    Some((at, _, _)) => Some(at),
                    None => None,
                }
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `k`'s reconcile as ended, queueing it again if it went dirty.
    pub fn done(&self, k: &K) {
        let mut g = self.lock();
        g.running.remove(k);
        g.running.shrink_if_sparse();
        g.dirty.shrink_if_sparse();
        if let Some(at) = g.dirty.remove(k) {
            Self::enqueue(&mut g, k.clone(), at);
            drop(g);
            self.notify.notify_one();
        }
    }

    /// Resources queued or waiting to be queued again.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.queued.len().saturating_add(g.dirty.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_keeps_the_earliest_due_time() {
        let q = Queue::new(Duration::ZERO);
        q.schedule_after("a", Duration::from_secs(10));
        q.schedule_after("a", Duration::from_secs(1));
        q.schedule_after("a", Duration::from_secs(5));
        q.schedule("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, "b");
        let t0 = Instant::now();
        assert_eq!(q.next().await, "a");
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_resource_is_requeued_when_done_not_run_twice() {
        let q = Queue::new(Duration::ZERO);
        q.schedule("a");
        assert_eq!(q.next().await, "a");
        q.schedule("a");
        q.schedule("b");
        // "a" is running: only "b" comes out.
        assert_eq!(q.next().await, "b");
        let pending = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(pending.is_err(), "a was handed out while running");
        q.done(&"a");
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_delays_and_coalesces() {
        let q = Queue::new(Duration::from_millis(100));
        let t0 = Instant::now();
        q.schedule("a");
        q.schedule("a");
        assert_eq!(q.next().await, "a");
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        assert!(q.is_empty());
    }
}
