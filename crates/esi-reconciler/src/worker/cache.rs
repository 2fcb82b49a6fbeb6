//! The records a job reads besides its own — its heat template and the heat
//! stack records whose outputs its params reference — kept from the
//! worker's own watches instead of read from etcd for every job.
//!
//! Why on demand: a template serves every job of its type and a network's
//! stack record every port on it, so most reads repeat; but the worker must
//! not hold every stack record of 100k resources to save them. A key is read
//! the first time a job asks for it and kept current from a watch of its
//! prefix (changes only, nothing listed) until the cache is full.
//!
//! Why a cached record cannot mislead a job: each one comes with its mod
//! revision, and the job's results are fenced on the revisions it used (see
//! `job::JobRunner::finish_using`). A watch that lags behind the `ready/`
//! watch (they are separate streams) can hand out an outdated template; the
//! results' transaction then fails its compare, the outdated records are
//! dropped, and the job is done again from fresh reads. A job that fails
//! while preparing (a template that does not render, an output that is not
//! there) is prepared once more from etcd before it is failed, in case a
//! cached record was the cause. The watch only keeps all that rare.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::store::Etcd;
use crate::store::mirror::{self, Change, MirrorEvent, MirrorOptions};

/// How a record's value is kept: parsed once per mod revision, errors kept
/// as text so a bad record costs one parse, not one per job.
pub type Parsed<T> = Result<Arc<T>, String>;

struct Entry<T> {
    mod_rev: i64,
    /// The record's size, for the byte budget.
    bytes: usize,
    /// The revision of the read that filled the entry: a delete at or
    /// before it is already reflected.
    as_of: i64,
    value: Parsed<T>,
}

/// The cached keys of one prefix and how far its watch has come.
pub struct Watched<T> {
    entries: HashMap<String, Entry<T>>,
    /// Every change up to this revision has been applied (0: none yet, or
    /// the store was reset): a read older than this is not kept.
    seen: i64,
    capacity: usize,
    /// The records' bytes kept, and at most: records can be large (up to
    /// the record limit), so the count alone does not bound the memory.
    bytes: usize,
    max_bytes: usize,
    parse: fn(&[u8]) -> Parsed<T>,
}

/// Bytes of records a cache keeps at most.
pub const MAX_BYTES: usize = 64 << 20;

impl<T> Watched<T> {
    pub fn new(capacity: usize, parse: fn(&[u8]) -> Parsed<T>) -> Self {
        Self {
            entries: HashMap::new(),
            seen: 0,
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes: MAX_BYTES,
            parse,
        }
    }

    /// Forgets every record (the next job reads what it needs).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The mod revision and value of `key` if it is cached; `None`: read it.
    pub fn get(&self, key: &str) -> Option<(i64, Parsed<T>)> {
        self.entries.get(key).map(|e| (e.mod_rev, e.value.clone()))
    }

    /// Drops `key` (found outdated): the next job reads it.
    pub fn forget(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(e.bytes);
        }
    }

    /// Keeps what a read of `key` at `revision` found, unless the watch is
    /// already past that read (it may have dropped a later change to a key
    /// it was not keeping). Returns the parsed value either way.
    pub fn fill(&mut self, key: &str, value: &[u8], mod_rev: i64, revision: i64) -> Parsed<T> {
        let parsed = (self.parse)(value);
        if self.seen > revision {
            return parsed;
        }
        if let Some(e) = self.entries.get(key)
            && e.mod_rev > mod_rev
        {
            return parsed;
        }
        self.forget(key);
        let full = self.entries.len() >= self.capacity
            || self.bytes.saturating_add(value.len()) > self.max_bytes;
        if full {
            // Start again rather than track recency; the keys in use come
            // back with one read each.
            self.clear();
        }
        if value.len() > self.max_bytes {
            return parsed;
        }
        self.bytes = self.bytes.saturating_add(value.len());
        self.entries.insert(
            key.to_string(),
            Entry {
                mod_rev,
                bytes: value.len(),
                as_of: revision,
                value: parsed.clone(),
            },
        );
        parsed
    }

    /// Applies one event of the prefix's watch.
    pub fn on_event(&mut self, ev: &MirrorEvent) {
        match ev {
            // The watch (re)starts after the list's revision: a read from
            // before it may miss a change the watch will not show.
            MirrorEvent::ListStart { revision, .. } => {
                self.clear();
                self.seen = *revision;
            }
            MirrorEvent::StoreReset { .. } => {
                self.clear();
                self.seen = 0;
            }
            MirrorEvent::ListEnd { revision } => self.seen = *revision,
            MirrorEvent::Changes { revision, changes } => {
                for c in changes {
                    self.apply(c);
                }
                self.seen = self.seen.max(*revision);
            }
            MirrorEvent::Progress { revision } => self.seen = self.seen.max(*revision),
            MirrorEvent::ListPage(_) | MirrorEvent::WatchRestart { .. } => {}
        }
    }

    fn apply(&mut self, c: &Change) {
        match c {
            Change::Put(kv) => {
                if let Some(e) = self.entries.get_mut(&kv.key)
                    && kv.mod_revision > e.mod_rev
                {
                    self.bytes = self
                        .bytes
                        .saturating_sub(e.bytes)
                        .saturating_add(kv.value.len());
                    e.mod_rev = kv.mod_revision;
                    e.bytes = kv.value.len();
                    e.value = (self.parse)(&kv.value);
                    if self.bytes > self.max_bytes {
                        self.clear();
                    }
                }
            }
            Change::Delete { key, revision } => {
                if self.entries.get(key).is_some_and(|e| *revision > e.as_of) {
                    self.forget(key);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A [`Watched`] prefix shared by the jobs, with its reads. Its watch
/// stops when the cache is dropped.
pub struct Cache<T> {
    client: Etcd,
    watched: Arc<Mutex<Watched<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for Cache<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Send + Sync + 'static> Cache<T> {
    /// Starts following `prefix` (in the current tokio runtime).
    pub fn follow(
        client: Etcd,
        prefix: &str,
        capacity: usize,
        parse: fn(&[u8]) -> Parsed<T>,
    ) -> Self {
        let watched = Arc::new(Mutex::new(Watched::new(capacity, parse)));
        let mut events = mirror::stream(client.clone(), MirrorOptions::prefix(prefix).unlisted());
        let w = watched.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                lock(&w).on_event(&ev);
            }
        });
        Self {
            client,
            watched,
            task,
        }
    }

    /// `key`'s mod revision and record, cached or read; `None`: the key
    /// does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<(i64, Parsed<T>)>, etcd_client::Error> {
        if let Some(hit) = lock(&self.watched).get(key) {
            return Ok(Some(hit));
        }
        let resp = self.client.get(key, None).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(resp.kvs().first().map(|kv| {
            let parsed = lock(&self.watched).fill(key, kv.value(), kv.mod_revision(), revision);
            (kv.mod_revision(), parsed)
        }))
    }

    /// Drops `key`, found outdated by a failed compare.
    pub fn forget(&self, key: &str) {
        lock(&self.watched).forget(key);
    }

    /// Drops every record: a job failed from what the cache gave it.
    pub fn forget_all(&self) {
        lock(&self.watched).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mirror::Kv;

    fn text(v: &[u8]) -> Parsed<String> {
        std::str::from_utf8(v)
            .map(|s| Arc::new(s.to_string()))
            .map_err(|e| e.to_string())
    }

    fn put(key: &str, value: &str, rev: i64) -> MirrorEvent {
        MirrorEvent::Changes {
            revision: rev,
            changes: vec![Change::Put(Kv {
                key: key.into(),
                value: value.into(),
                mod_revision: rev,
                create_revision: rev,
                lease: 0,
            })],
        }
    }

    fn value(w: &Watched<String>, key: &str) -> Option<String> {
        w.get(key).map(|(_, v)| v.map(|s| (*s).clone()).unwrap())
    }

    #[test]
    fn keeps_what_was_asked_for_with_its_revision() {
        let mut w = Watched::new(10, text);
        w.on_event(&MirrorEvent::ListEnd { revision: 5 });
        let _ = w.fill("/k", b"a", 4, 5);
        assert_eq!(w.get("/k").map(|(rev, _)| rev), Some(4));
        assert_eq!(value(&w, "/k").as_deref(), Some("a"));
        // Keys never asked for are not kept.
        w.on_event(&put("/other", "x", 8));
        assert_eq!(value(&w, "/other"), None);
        w.forget("/k");
        assert_eq!(value(&w, "/k"), None);
    }

    #[test]
    fn the_watch_keeps_a_kept_key_current_and_never_goes_back() {
        let mut w = Watched::new(10, text);
        w.on_event(&MirrorEvent::ListEnd { revision: 1 });
        let _ = w.fill("/k", b"a", 4, 6);
        // Older changes the read already reflects arrive late: ignored.
        w.on_event(&put("/k", "old", 3));
        w.on_event(&MirrorEvent::Changes {
            revision: 5,
            changes: vec![Change::Delete {
                key: "/k".into(),
                revision: 5,
            }],
        });
        w.on_event(&MirrorEvent::Progress { revision: 6 });
        assert_eq!(value(&w, "/k").as_deref(), Some("a"));
        w.on_event(&put("/k", "b", 9));
        assert_eq!(value(&w, "/k").as_deref(), Some("b"));
        w.on_event(&MirrorEvent::Changes {
            revision: 10,
            changes: vec![Change::Delete {
                key: "/k".into(),
                revision: 10,
            }],
        });
        assert_eq!(value(&w, "/k"), None);
    }

    #[test]
    fn a_read_older_than_the_watch_is_used_once_not_kept() {
        let mut w = Watched::new(10, text);
        w.on_event(&MirrorEvent::ListEnd { revision: 1 });
        w.on_event(&MirrorEvent::Progress { revision: 20 });
        // Read at 15 (a slow member): the watch may have passed a change.
        let got = w.fill("/k", b"a", 4, 15);
        assert_eq!(got.map(|s| (*s).clone()), Ok("a".to_string()));
        assert!(w.is_empty());
    }

    #[test]
    fn a_relist_or_a_reset_forgets_everything() {
        for ev in [
            MirrorEvent::ListStart {
                revision: 3,
                epoch: 1,
            },
            MirrorEvent::StoreReset {
                reason: "restored".into(),
            },
        ] {
            let mut w = Watched::new(10, text);
            w.on_event(&MirrorEvent::ListEnd { revision: 1 });
            let _ = w.fill("/k", b"a", 1, 1);
            w.on_event(&ev);
            assert_eq!(value(&w, "/k"), None);
            assert!(w.is_empty());
        }
        // A read from before a relist's revision is not kept: the watch
        // resumes after it and may never show what changed in between.
        let mut w = Watched::new(10, text);
        w.on_event(&MirrorEvent::ListStart {
            revision: 9,
            epoch: 1,
        });
        let _ = w.fill("/k", b"a", 1, 8);
        assert!(w.is_empty());
        let _ = w.fill("/k", b"a", 1, 9);
        assert_eq!(value(&w, "/k").as_deref(), Some("a"));
    }

    #[test]
    fn large_records_are_bounded_by_bytes_too() {
        let mut w = Watched::new(100, text);
        w.max_bytes = 10;
        let _ = w.fill("/a", b"aaaa", 1, 1);
        let _ = w.fill("/b", b"bbbb", 1, 1);
        assert_eq!(w.len(), 2);
        // A third would pass the budget: start over.
        let _ = w.fill("/c", b"cccc", 1, 1);
        assert_eq!(w.len(), 1);
        // One larger than the budget is used, never kept.
        let got = w.fill("/d", b"ddddddddddddd", 1, 1);
        assert!(got.is_ok());
        assert!(w.get("/d").is_none());
        // A watched update that grows past the budget empties it.
        w.on_event(&put("/c", "cccccccccccc", 2));
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_cache_starts_over_and_bad_records_stay_errors() {
        let mut w = Watched::new(2, text);
        w.on_event(&MirrorEvent::ListEnd { revision: 1 });
        let _ = w.fill("/a", b"a", 1, 1);
        let _ = w.fill("/b", &[0xff], 1, 1);
        assert!(matches!(w.get("/b"), Some((_, Err(_)))));
        let _ = w.fill("/c", b"c", 1, 1);
        assert_eq!(w.len(), 1);
        assert_eq!(value(&w, "/c").as_deref(), Some("c"));
    }
}
