//! A deduplicating, delaying work queue with at most one reconcile per
//! resource at a time (kube-runtime's scheduler + runner, in one place),
//! handing out due resources by [`Priority`].
//!
//! Scheduling a resource that is already queued keeps the earlier due time
//! and the higher priority; scheduling one that is being reconciled marks it
//! dirty, and it is queued again (at the earliest time and highest priority
//! asked for meanwhile) the moment its reconcile ends, so no change is ever
//! lost and no resource is reconciled twice concurrently.
//!
//! Why priorities: at 100k resources a plain FIFO made a finished job wait
//! about 190 s behind newly issued work, and since a finished job is what
//! frees a worker and lets the jobs waiting on it go on, jobs in flight
//! piled up (near 70,000). Collecting results first keeps the pipeline
//! short.
//!
//! The fairness rule: among due resources the highest priority goes first,
//! FIFO (due time, then the order they were queued in) within a priority,
//! except that a priority whose oldest due resource has been passed over
//! [`FAIR_SHARE`] picks in a row gets the next pick (the highest such
//! priority, if several do). So a lower priority is never starved: with all
//! three busy, `Release` gets at least one pick in 9 and `Issue` one in 10
//! (it may wait one more pick for a starved `Release`), and `Finish` still
//! gets about 8 in 10.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::sparse::Sparse;
use tokio::time::Instant;

/// Why a resource is queued: decides which due resource goes first.
/// Ordered: `Finish` > `Release` > `Issue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// New work or a safety net: config and template changes, resyncs,
    /// relists, retries, membership handovers. Issuing a job only adds to
    /// what is in flight, so it can wait behind what drains it.
    Issue,
    /// Something the resource waited on changed (a job it depends on ended,
    /// a resource it references moved): a waiting job may become ready.
    Release,
    /// A job of the resource finished, or its `working/` claim went away: a
    /// worker's result waits to be collected, and the jobs waiting on it
    /// wait for that.
    Finish,
}

impl Priority {
    /// Highest first: the order picks consider them in.
    const DESCENDING: [Priority; 3] = [Priority::Finish, Priority::Release, Priority::Issue];
}

/// Picks a priority with a due resource may be passed over in a row before
/// it gets the next one (see the module's fairness rule).
pub const FAIR_SHARE: u32 = 8;

/// One value per priority (no indexing: the crate forbids it).
#[derive(Default)]
struct PerPriority<T> {
    issue: T,
    release: T,
    finish: T,
}

impl<T> PerPriority<T> {
    fn get(&self, p: Priority) -> &T {
        match p {
            Priority::Issue => &self.issue,
            Priority::Release => &self.release,
            Priority::Finish => &self.finish,
        }
    }
    fn get_mut(&mut self, p: Priority) -> &mut T {
        match p {
            Priority::Issue => &mut self.issue,
            Priority::Release => &mut self.release,
            Priority::Finish => &mut self.finish,
        }
    }
}

/// Where a queued resource sits.
#[derive(Clone, Copy)]
struct Slot {
    at: Instant,
    seq: u64,
    priority: Priority,
}

struct Inner<K> {
    /// Queued resources of each priority, by due time then sequence.
    due: PerPriority<BTreeSet<(Instant, u64, K)>>,
    queued: HashMap<K, Slot>,
    running: HashSet<K>,
    /// Rescheduled while running: due time and priority to apply when it
    /// ends.
    dirty: HashMap<K, (Instant, Priority)>,
    seq: u64,
    /// Per priority: picks in a row that passed over its due resources.
    passed: PerPriority<u32>,
}

pub struct Queue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
    debounce: Duration,
}

impl<K: Clone + Ord + Hash + Eq> Inner<K> {
    fn enqueue(&mut self, k: K, at: Instant, priority: Priority) {
        let mut slot = Slot {
            at,
            seq: 0,
            priority,
        };
        if let Some(&old) = self.queued.get(&k) {
            if old.at <= at && old.priority >= priority {
                return;
            }
            // Upgrade only: the earlier due time, the higher priority.
            slot.at = old.at.min(at);
            slot.priority = old.priority.max(priority);
            slot.seq = old.seq;
            self.due
                .get_mut(old.priority)
                .remove(&(old.at, old.seq, k.clone()));
            if slot.at != old.at {
                slot.seq = self.next_seq();
            }
        } else {
            slot.seq = self.next_seq();
        }
        self.due
            .get_mut(slot.priority)
            .insert((slot.at, slot.seq, k.clone()));
        self.queued.insert(k, slot);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Takes the resource to hand out now, if any is due (by priority and
    /// the fairness rule); otherwise says when the next one falls due.
    fn pop_due(&mut self, now: Instant) -> Result<K, Option<Instant>> {
        let mut pick = None;
        let mut starved = None;
        let mut earliest: Option<Instant> = None;
        for p in Priority::DESCENDING {
            match self.due.get(p).first() {
                Some((at, _, _)) if *at <= now => {
                    pick = pick.or(Some(p));
                    if starved.is_none() && *self.passed.get(p) >= FAIR_SHARE {
                        starved = Some(p);
                    }
                }
                Some((at, _, _)) => {
                    earliest = Some(earliest.map_or(*at, |e| e.min(*at)));
                }
                None => {}
            }
        }
        let Some(pick) = starved.or(pick) else {
            return Err(earliest);
        };
        for p in Priority::DESCENDING {
            let due = self.due.get(p).first().is_some_and(|(at, _, _)| *at <= now);
            let passed = self.passed.get_mut(p);
            *passed = if due && p != pick {
                passed.saturating_add(1)
            } else {
                0
            };
        }
        let Some((_, _, k)) = self.due.get_mut(pick).pop_first() else {
            return Err(earliest);
        };
        self.queued.remove(&k);
        self.queued.shrink_if_sparse();
        self.running.insert(k.clone());
        Ok(k)
    }
}

impl<K: Clone + Ord + Hash + Eq> Queue<K> {
    /// `debounce`: a change is reconciled no sooner than this after it is
    /// scheduled, so a burst of events for one resource coalesces.
    pub fn new(debounce: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                due: PerPriority::default(),
                queued: HashMap::new(),
                running: HashSet::new(),
                dirty: HashMap::new(),
                seq: 0,
                passed: PerPriority::default(),
            }),
            notify: Notify::new(),
            debounce,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules `k` after the debounce, as [`Priority::Issue`].
    pub fn schedule(&self, k: K) {
        self.schedule_after_as(k, Duration::ZERO, Priority::Issue);
    }

    /// Schedules `k` after `delay` (at least the debounce), as
    /// [`Priority::Issue`].
    pub fn schedule_after(&self, k: K, delay: Duration) {
        self.schedule_after_as(k, delay, Priority::Issue);
    }

    /// Schedules `k` after the debounce at `priority` (or higher, if it is
    /// already queued higher).
    pub fn schedule_as(&self, k: K, priority: Priority) {
        self.schedule_after_as(k, Duration::ZERO, priority);
    }

    /// Schedules `k` after `delay` (at least the debounce) at `priority`.
    /// Already queued, it keeps the earlier due time and the higher
    /// priority: a resource is never demoted by a later, lesser reason.
    pub fn schedule_after_as(&self, k: K, delay: Duration, priority: Priority) {
        let at = crate::clock::deadline_in(delay.max(self.debounce));
        let mut g = self.lock();
        if g.running.contains(&k) {
            let e = g.dirty.entry(k).or_insert((at, priority));
            *e = (e.0.min(at), e.1.max(priority));
            return;
        }
        g.enqueue(k, at, priority);
        drop(g);
        self.notify.notify_one();
    }

    /// Waits for the next due resource (see the module's rule for which)
    /// and marks it running.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            let wait = match self.lock().pop_due(Instant::now()) {
                Ok(k) => return k,
                Err(wait) => wait,
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
        if let Some((at, priority)) = g.dirty.remove(k) {
            g.enqueue(k.clone(), at, priority);
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

    /// The next resource, failing (not hanging) if none comes out within
    /// an hour of paused time.
    async fn next<K: Clone + Ord + Hash + Eq>(q: &Queue<K>) -> K {
        tokio::time::timeout(Duration::from_secs(3600), q.next())
            .await
            .expect("nothing came out of the queue")
    }

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_keeps_the_earliest_due_time() {
        let q = &Queue::new(Duration::ZERO);
        q.schedule_after("a", Duration::from_secs(10));
        q.schedule_after("a", Duration::from_secs(1));
        q.schedule_after("a", Duration::from_secs(5));
        q.schedule("b");
        assert_eq!(q.len(), 2);
        assert_eq!(next(q).await, "b");
        let t0 = Instant::now();
        assert_eq!(next(q).await, "a");
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_resource_is_requeued_when_done_not_run_twice() {
        let q = &Queue::new(Duration::ZERO);
        q.schedule("a");
        assert_eq!(next(q).await, "a");
        q.schedule("a");
        q.schedule("b");
        // "a" is running: only "b" comes out.
        assert_eq!(next(q).await, "b");
        let pending = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(pending.is_err(), "a was handed out while running");
        q.done(&"a");
        assert_eq!(next(q).await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_delays_and_coalesces() {
        let q = &Queue::new(Duration::from_millis(100));
        let t0 = Instant::now();
        q.schedule("a");
        q.schedule("a");
        assert_eq!(next(q).await, "a");
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn due_resources_come_out_finish_then_release_then_issue() {
        let q = &Queue::new(Duration::ZERO);
        // Queued in the reverse order: FIFO alone would give issue first.
        q.schedule("issue");
        q.schedule_as("release", Priority::Release);
        q.schedule_as("finish", Priority::Finish);
        assert_eq!(next(q).await, "finish");
        assert_eq!(next(q).await, "release");
        assert_eq!(next(q).await, "issue");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_within_a_priority_by_due_time_then_order_queued() {
        let q = &Queue::new(Duration::ZERO);
        // Keys in the opposite order to the expected one, so ordering by
        // key would fail.
        q.schedule_after_as("a", Duration::from_secs(3), Priority::Release);
        q.schedule_after_as("z", Duration::from_secs(1), Priority::Release);
        q.schedule_after_as("y", Duration::from_secs(1), Priority::Release);
        tokio::time::advance(Duration::from_secs(5)).await;
        let t0 = Instant::now();
        assert_eq!(next(q).await, "z");
        assert_eq!(next(q).await, "y");
        assert_eq!(next(q).await, "a");
        assert_eq!(Instant::now(), t0, "all three were due");
    }

    /// Picks (each done at once) until `issue` comes out, queueing a fresh
    /// finish item before every pick; `issue` ends the list (or 101 picks).
    async fn picks_until(q: &Queue<u32>, issue: u32, next_finish: &mut u32) -> Vec<u32> {
        let mut picks = vec![];
        loop {
            // A fresh finish item before every pick: the supply never ends.
            q.schedule_as(*next_finish, Priority::Finish);
            *next_finish += 1;
            let k = next(q).await;
            picks.push(k);
            q.done(&k);
            if k == issue || picks.len() > 100 {
                return picks;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_issue_gets_a_pick_after_fair_share_finishes_however_many_keep_coming() {
        let q = &Queue::new(Duration::ZERO);
        let mut next_finish = 1000;
        q.schedule_as(next_finish, Priority::Finish);
        next_finish += 1;
        q.schedule(1);
        let picks = picks_until(q, 1, &mut next_finish).await;
        // Exactly FAIR_SHARE finishes first (priority), then the issue.
        assert_eq!(picks.len(), FAIR_SHARE as usize + 1, "{picks:?}");
        assert!(picks[..FAIR_SHARE as usize].iter().all(|k| *k >= 1000));
        // The count starts over: a second issue waits as long again.
        q.schedule(2);
        let picks = picks_until(q, 2, &mut next_finish).await;
        assert_eq!(picks.len(), FAIR_SHARE as usize + 1, "{picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_priority_busy_none_is_starved_and_finish_leads() {
        let q = &Queue::new(Duration::ZERO);
        let classes = [Priority::Finish, Priority::Release, Priority::Issue];
        let mut n = 0u32;
        for p in classes {
            for _ in 0..2 {
                q.schedule_as((p, n), p);
                n += 1;
            }
        }
        let mut since: HashMap<Priority, usize> = HashMap::new();
        let mut longest: HashMap<Priority, usize> = HashMap::new();
        let mut count: HashMap<Priority, usize> = HashMap::new();
        for _ in 0..300 {
            let (p, k) = next(q).await;
            q.done(&(p, k));
            // Replace what was taken: every priority stays due.
            q.schedule_as((p, n), p);
            n += 1;
            *count.entry(p).or_default() += 1;
            for c in classes {
                let s = since.entry(c).or_default();
                *s = if c == p { 0 } else { *s + 1 };
                let l = longest.entry(c).or_default();
                *l = (*l).max(*s);
            }
        }
        // Passed over at most FAIR_SHARE picks in a row (Issue: one more,
        // for a starved Release).
        assert_eq!(longest[&Priority::Release], FAIR_SHARE as usize);
        assert_eq!(longest[&Priority::Issue], FAIR_SHARE as usize + 1);
        assert!(count[&Priority::Finish] >= 230, "{count:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rescheduling_upgrades_keeping_the_earlier_due_time_and_never_downgrades() {
        let q = &Queue::new(Duration::ZERO);
        q.schedule_after_as("release", Duration::from_secs(1), Priority::Release);
        q.schedule_after("up", Duration::from_secs(1));
        // Upgraded to Finish, still due at 1 s (not 10 s).
        q.schedule_after_as("up", Duration::from_secs(10), Priority::Finish);
        let t0 = Instant::now();
        assert_eq!(next(q).await, "up");
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert_eq!(next(q).await, "release");

        q.schedule("issue");
        q.schedule_as("kept", Priority::Finish);
        // A lesser reason later does not demote it behind "issue".
        q.schedule("kept");
        assert_eq!(q.len(), 2);
        assert_eq!(next(q).await, "kept");
        assert_eq!(next(q).await, "issue");

        // Nor does a lesser reason that is due sooner: it takes the earlier
        // time and keeps the priority.
        q.schedule_after("other", Duration::from_secs(1));
        q.schedule_after_as("sooner", Duration::from_secs(10), Priority::Finish);
        q.schedule_after("sooner", Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(next(q).await, "sooner");
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        assert_eq!(next(q).await, "other");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_resource_rescheduled_as_finish_is_requeued_as_finish() {
        let q = &Queue::new(Duration::ZERO);
        q.schedule("a");
        assert_eq!(next(q).await, "a");
        q.schedule("issue");
        q.schedule_as("a", Priority::Finish);
        // A lesser reason meanwhile does not lower what it is requeued as.
        q.schedule("a");
        q.done(&"a");
        assert_eq!(next(q).await, "a");
        assert_eq!(next(q).await, "issue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finish_not_yet_due_does_not_hold_back_a_due_issue() {
        let q = &Queue::new(Duration::ZERO);
        q.schedule_after_as("finish", Duration::from_secs(10), Priority::Finish);
        q.schedule("issue");
        let t0 = Instant::now();
        assert_eq!(next(q).await, "issue");
        assert_eq!(Instant::now(), t0);
        assert_eq!(next(q).await, "finish");
        assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    }
}
