//! Mirroring a key range, the way etcd's mirror syncer does: a paginated list
//! at one pinned revision, then a watch from that revision + 1.
//!
//! A broken watch stream resumes from the last revision it delivered, on
//! another member when its member died or lost the leader; a watch whose
//! start revision was compacted away triggers a fresh list, and so does a
//! store found restored or replaced ([`Etcd::epoch`]): resuming there from
//! our old revision would deliver nothing, ever. The consumer sees a
//! [`MirrorEvent`] stream that always describes one consistent,
//! revision-ordered history of one store.
//!
//! [`stream`] is the mirror as a `Stream`; a [`Reflector`] folds it into a
//! view the way kube-runtime's reflector does (a relist is built aside and
//! swapped in whole). Every consumer — the controller's world, the worker's
//! ready queue, the replica membership, the CLI's snapshot, the harness's
//! ledgers — goes through these two, so list-then-watch, resumption and
//! relisting after a restore are written once.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::Stream;
use tokio::sync::mpsc;

use super::cluster::Etcd;

/// A key-value as the mirror delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// Equal to `mod_revision` when this put created the key.
    pub create_revision: i64,
    pub lease: i64,
}

impl Kv {
    fn from_etcd(kv: &etcd_client::KeyValue) -> Option<Kv> {
        Some(Kv {
            key: String::from_utf8(kv.key().to_vec()).ok()?,
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

#[derive(Debug)]
pub enum MirrorEvent {
    /// A fresh list begins at `revision`: forget everything. `epoch` is the
    /// store epoch ([`Etcd::epoch`]) the list was read in.
    ListStart { revision: i64, epoch: u64 },
    /// One page of the list.
    ListPage(Vec<Kv>),
    /// The list is complete: the mirror is consistent at its revision.
    ListEnd { revision: i64 },
    /// Changes up to and including `revision`.
    Changes { revision: i64, changes: Vec<Change> },
    /// Nothing changed up to `revision`.
    Progress { revision: i64 },
    /// The watch broke and is being re-established (for metrics).
    WatchRestart { reason: String },
    /// The store was found restored or replaced: a fresh list follows
    /// (for metrics and logs; `ListStart` still begins it).
    StoreReset { reason: String },
}

#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// The span watched: `[start, end)`.
    pub start: String,
    pub end: String,
    pub page_size: i64,
    /// The parts of the span a list reads, each paged on its own (empty:
    /// the whole span). etcd counts the rest of the range on every page, so
    /// a list of n keys in one range costs about n²/page key visits; the
    /// prefixes a mirror keeps, listed apart, cost Σnᵢ²/page, and keys it
    /// would ignore are not read at all.
    pub list_prefixes: Vec<String>,
    /// Start with a watch from this revision + 1 instead of a list: for
    /// consumers of the history rather than of the current state. A list
    /// still follows when that history was compacted or the store reset.
    pub from: Option<i64>,
    /// Changes only: a list reads no key, just the revision to watch from
    /// (an empty list that still says "forget everything"), for views that
    /// keep only the keys their user asked for ([`MirrorOptions::unlisted`]).
    pub unlisted: bool,
}

impl MirrorOptions {
    /// Every key under `prefix`, listed in pages of 1000.
    pub fn prefix(prefix: &str) -> Self {
        Self {
            start: prefix.to_string(),
            end: String::from_utf8(crate::esi::keys::prefix_end(prefix)).unwrap_or_default(),
            page_size: 1000,
            list_prefixes: vec![],
            from: None,
            unlisted: false,
        }
    }

    /// Changes under the prefix from now on, without listing what is there:
    /// for a cache that reads a key when first asked for it and then keeps
    /// it current from the watch. After a compaction or a reset the view is
    /// told to forget everything, as a relist would, but nothing is read.
    pub fn unlisted(mut self) -> Self {
        self.unlisted = true;
        self
    }

    /// The history after `revision` instead of a list first.
    pub fn after(mut self, revision: i64) -> Self {
        self.from = Some(revision);
        self
    }

    /// The ranges a list reads, in key order.
    fn list_ranges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        if self.list_prefixes.is_empty() {
            return vec![(
                self.start.clone().into_bytes(),
                self.end.clone().into_bytes(),
            )];
        }
        let mut prefixes = self.list_prefixes.clone();
        prefixes.sort();
        prefixes
            .into_iter()
            .map(|p| {
                let end = crate::esi::keys::prefix_end(&p);
                (p.into_bytes(), end)
            })
            .collect()
    }
}

/// Lists `[start, end)` at a pinned revision, page by page, into `out`.
/// Returns the revision, or `None` when the receiver is gone.
pub async fn list(
    client: &Etcd,
    opts: &MirrorOptions,
    out: &mpsc::Sender<MirrorEvent>,
) -> Result<Option<i64>, etcd_client::Error> {
    let mut revision = 0i64;
    // Taken before the first read: a reset found during the list makes the
    // list's epoch older than the store's, and its user waits for the next.
    let epoch = client.epoch();
    for (start, end) in opts.list_ranges() {
        let mut from = start;
        loop {
            let mut o = GetOptions::new()
                .with_range(end.clone())
                .with_limit(opts.page_size);
            if revision > 0 {
                o = o.with_revision(revision);
            }
            if opts.unlisted {
                o = o.with_limit(1).with_keys_only();
            }
            let resp = client.get(from.clone(), Some(o)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                if out
                    .send(MirrorEvent::ListStart { revision, epoch })
                    .await
                    .is_err()
                {
                    return Ok(None);
                }
            }
            let kvs = resp.kvs();
            if opts.unlisted {
                break;
            }
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let page: Vec<Kv> = kvs.iter().filter_map(Kv::from_etcd).collect();
            if !page.is_empty() && out.send(MirrorEvent::ListPage(page)).await.is_err() {
                return Ok(None);
            }
            if !resp.more() || kvs.is_empty() {
                break;
            }
        }
    }
    if out.send(MirrorEvent::ListEnd { revision }).await.is_err() {
        return Ok(None);
    }
    Ok(Some(revision))
}

/// How often an idle watch asks for a progress report; a watch without one
/// for this long is taken as dead (e.g. its member hangs).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Reports a restart; false when the receiver is gone.
async fn restarting(out: &mpsc::Sender<MirrorEvent>, reason: String) -> bool {
    out.send(MirrorEvent::WatchRestart { reason }).await.is_ok()
}

enum WatchEnd {
    /// The start revision was compacted: list again.
    Compacted,
    /// The store was restored or replaced: list again.
    Reset(String),
    /// The stream broke: resume from the revision reached.
    Broken(String),
    /// The receiver is gone: stop.
    Closed,
}

/// Runs forever (until `out` closes): list, then watch, resuming and
/// relisting as needed. Connection failures are retried with backoff.
pub async fn run(client: Etcd, opts: MirrorOptions, out: mpsc::Sender<MirrorEvent>) {
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let mut resets = client.subscribe_resets();
    let mut from = opts.from;
    'relist: loop {
        let mut delays = retry.build();
        resets.borrow_and_update();
        let mut revision = loop {
            if let Some(rev) = from.take() {
                break rev;
            }
            match list(&client, &opts, &out).await {
                Ok(Some(rev)) => break rev,
                Ok(None) => return,
                Err(e) => {
                    let reason = format!("list failed: {}", super::client::describe(&e));
                    if !restarting(&out, reason).await {
                        return;
                    }
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                }
            }
        };
        let mut delays = retry.build();
        loop {
            match watch(&client, &opts, &mut revision, &out, &mut resets).await {
                WatchEnd::Closed => return,
                WatchEnd::Reset(reason) => {
                    if out.send(MirrorEvent::StoreReset { reason }).await.is_err() {
                        return;
                    }
                    continue 'relist;
                }
                WatchEnd::Compacted => {
                    let reason = format!(
                        "revision {} was compacted; relisting",
                        revision.saturating_add(1)
                    );
                    if !restarting(&out, reason).await {
                        return;
                    }
                    continue 'relist;
                }
                WatchEnd::Broken(reason) => {
                    if !restarting(&out, reason).await {
                        return;
                    }
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                    // Whatever broke the stream may have been a restore:
                    // a linearizable read against what we saw tells before
                    // we resume (the next watch sees the epoch move).
                    let _ = client.check_store().await;
                }
            }
        }
    }
}

/// Watches from `revision + 1`, advancing `revision` as changes arrive.
async fn watch(
    client: &Etcd,
    opts: &MirrorOptions,
    revision: &mut i64,
    out: &mpsc::Sender<MirrorEvent>,
    resets: &mut tokio::sync::watch::Receiver<u64>,
) -> WatchEnd {
    let wo = WatchOptions::new()
        .with_range(opts.end.as_bytes().to_vec())
        .with_start_revision(revision.saturating_add(1))
        .with_progress_notify();
    if resets.has_changed().unwrap_or(false) {
        return WatchEnd::Reset("the store was restored or replaced".into());
    }
    let w = match client.watch(opts.start.as_bytes().to_vec(), Some(wo)).await {
        Ok(s) => s,
        Err(e) => {
            return WatchEnd::Broken(format!(
                "watch failed to start: {}",
                super::client::describe(&e)
            ));
        }
    };
    let crate::store::MemberWatch {
        mut stream,
        endpoint,
        mut down,
    } = w;
    // Ask for a progress report now and then so an idle mirror still learns
    // the current revision, and a dead stream is noticed.
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let mut awaiting_progress = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tick.tick() => {
                if awaiting_progress {
                    let why = format!("no progress report from {} within {PROGRESS_EVERY:?}", endpoint);
                    client.watch_failed(&endpoint, &why);
                    return WatchEnd::Broken(why);
                }
                awaiting_progress = true;
                if let Err(e) = stream.request_progress().await {
                    return WatchEnd::Broken(format!("progress request failed: {e}"));
                }
                continue;
            }
            _ = down.wait() => {
                return WatchEnd::Broken(format!("etcd member {} found down; resuming on another", endpoint));
            }
            Ok(()) = resets.changed() => {
                return WatchEnd::Reset("the store was restored or replaced".into());
            }
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                let why = format!("watch stream from {} ended", endpoint);
                client.watch_failed(&endpoint, &why);
                return WatchEnd::Broken(why);
            }
            Err(e) => {
                let why = format!(
                    "watch stream error from {}: {}",
                    endpoint,
                    super::client::describe(&e)
                );
                client.watch_failed(&endpoint, &why);
                return WatchEnd::Broken(why);
            }
        };
        awaiting_progress = false;
        if resp.compact_revision() > 0 {
            return WatchEnd::Compacted;
        }
        if resp.canceled() {
            let why = format!("watch canceled by {}: {}", endpoint, resp.cancel_reason());
            client.watch_failed(&endpoint, &why);
            return WatchEnd::Broken(why);
        }
        let header_rev = resp.header().map(|h| h.revision()).unwrap_or(*revision);
        let events = resp.events();
        if events.is_empty() {
            if header_rev < *revision {
                // This member is behind what we have seen: it lags, or the
                // store went back in time. A linearizable read tells which
                // (and bumps the epoch if the store went back).
                let epoch = client.epoch();
                let _ = client.check_store().await;
                if client.epoch() != epoch {
                    return WatchEnd::Reset(format!(
                        "store revision {header_rev} is below the mirror's {}",
                        *revision
                    ));
                }
            }
            if resp.created() {
                continue;
            }
            // A progress notification: everything up to the header revision
            // has been delivered.
            if header_rev > *revision {
                *revision = header_rev;
                client.saw_revision(header_rev);
                if out
                    .send(MirrorEvent::Progress {
                        revision: header_rev,
                    })
                    .await
                    .is_err()
                {
                    return WatchEnd::Closed;
                }
            }
            continue;
        }
        let mut changes = Vec::with_capacity(events.len());
        let mut last = *revision;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            last = last.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Put => {
                    if let Some(kv) = Kv::from_etcd(kv) {
                        changes.push(Change::Put(kv));
                    }
                }
                EventType::Delete => {
                    if let Ok(key) = String::from_utf8(kv.key().to_vec()) {
                        changes.push(Change::Delete {
                            key,
                            revision: kv.mod_revision(),
                        });
                    }
                }
            }
        }
        *revision = last;
        client.saw_revision(last);
        if out
            .send(MirrorEvent::Changes {
                revision: last,
                changes,
            })
            .await
            .is_err()
        {
            return WatchEnd::Closed;
        }
    }
}

/// The mirror as a stream of events; its task ends when the stream is dropped.
pub fn stream(client: Etcd, opts: MirrorOptions) -> MirrorStream {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(run(client, opts, tx));
    MirrorStream { rx, task }
}

pub struct MirrorStream {
    rx: mpsc::Receiver<MirrorEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for MirrorStream {
    type Item = MirrorEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MirrorEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for MirrorStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Something kept from a mirrored range.
pub trait View {
    /// Applies one change; a listed key arrives as a put. Borrowed: the
    /// same changes go on to the consumer (`Step::Apply`).
    fn apply(&mut self, change: &Change);
}

/// What one mirror event means for a view.
#[derive(Debug)]
pub enum Step<V> {
    /// Nothing to do (a list page was buffered).
    Idle,
    /// A list completed: this view replaces the old one.
    Replace { view: V, revision: i64, epoch: u64 },
    /// Apply these changes, in order.
    Apply { revision: i64, changes: Vec<Change> },
    /// Nothing changed up to `revision`.
    Progress { revision: i64 },
    /// The watch broke and is being re-established.
    Restart { reason: String },
    /// The store was found restored or replaced; a list follows.
    Reset { reason: String },
}

/// The reflector step: buffers a relist in a fresh view and hands it over
/// only once complete, so no consumer ever sees a half-listed view (or acts
/// on the old one mixed with part of the new).
pub struct Reflector<V> {
    fresh: Box<dyn FnMut() -> V + Send>,
    listing: Option<(V, u64)>,
}

impl<V: View> Reflector<V> {
    /// `fresh` makes the empty view a list starts from.
    pub fn new(fresh: impl FnMut() -> V + Send + 'static) -> Self {
        Self {
            fresh: Box::new(fresh),
            listing: None,
        }
    }

    pub fn step(&mut self, ev: MirrorEvent) -> Step<V> {
        match ev {
            MirrorEvent::ListStart { epoch, .. } => {
                self.listing = Some(((self.fresh)(), epoch));
                Step::Idle
            }
            MirrorEvent::ListPage(kvs) => {
                if let Some((view, _)) = self.listing.as_mut() {
                    for kv in kvs {
                        view.apply(&Change::Put(kv));
                    }
                }
                Step::Idle
            }
            MirrorEvent::ListEnd { revision } => match self.listing.take() {
                Some((view, epoch)) => Step::Replace {
                    view,
                    revision,
                    epoch,
                },
                None => Step::Idle,
            },
            MirrorEvent::Changes { revision, changes } => Step::Apply { revision, changes },
            MirrorEvent::Progress { revision } => Step::Progress { revision },
            MirrorEvent::WatchRestart { reason } => Step::Restart { reason },
            MirrorEvent::StoreReset { reason } => Step::Reset { reason },
        }
    }

    /// Steps and brings `view` up to date: what most consumers want.
    /// Returns the step with a replacement already swapped in (the view it
    /// replaced is in `Replace`).
    pub fn update(&mut self, view: &mut V, ev: MirrorEvent) -> Step<V> {
        match self.step(ev) {
            Step::Replace {
                view: fresh,
                revision,
                epoch,
            } => Step::Replace {
                view: std::mem::replace(view, fresh),
                revision,
                epoch,
            },
            Step::Apply { revision, changes } => {
                for c in &changes {
                    view.apply(c);
                }
                Step::Apply { revision, changes }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: vec![],
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    /// The keys of a view, in order.
    #[derive(Default, Debug, PartialEq)]
    struct Keys(Vec<String>);

    impl View for Keys {
        fn apply(&mut self, change: &Change) {
            match change {
                Change::Put(kv) => self.0.push(kv.key.clone()),
                Change::Delete { key, .. } => self.0.retain(|k| k != key),
            }
        }
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_only_when_complete() {
        let mut r = Reflector::new(Keys::default);
        let mut view = Keys(vec!["/old".into()]);
        let start = MirrorEvent::ListStart {
            revision: 5,
            epoch: 2,
        };
        assert!(matches!(r.update(&mut view, start), Step::Idle));
        let page = MirrorEvent::ListPage(vec![kv("/a", 3), kv("/b", 4)]);
        assert!(matches!(r.update(&mut view, page), Step::Idle));
        assert_eq!(view.0, vec!["/old"], "untouched while the list is read");
        match r.update(&mut view, MirrorEvent::ListEnd { revision: 5 }) {
            Step::Replace {
                view: old,
                revision,
                epoch,
            } => {
                assert_eq!((old.0, revision, epoch), (vec!["/old".to_string()], 5, 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(view.0, vec!["/a", "/b"]);
        let changes = MirrorEvent::Changes {
            revision: 6,
            changes: vec![Change::Delete {
                key: "/a".into(),
                revision: 6,
            }],
        };
        assert!(matches!(
            r.update(&mut view, changes),
            Step::Apply { revision: 6, .. }
        ));
        assert_eq!(view.0, vec!["/b"]);
    }

    #[test]
    fn a_list_that_never_started_replaces_nothing() {
        let mut r = Reflector::new(Keys::default);
        let mut view = Keys(vec!["/kept".into()]);
        // A page or an end without a start (a broken list): ignored.
        let page = MirrorEvent::ListPage(vec![kv("/a", 1)]);
        assert!(matches!(r.update(&mut view, page), Step::Idle));
        let end = MirrorEvent::ListEnd { revision: 1 };
        assert!(matches!(r.update(&mut view, end), Step::Idle));
        assert_eq!(view.0, vec!["/kept"]);
        // A list restarted midway starts over from an empty view.
        for ev in [
            MirrorEvent::ListStart {
                revision: 2,
                epoch: 1,
            },
            MirrorEvent::ListPage(vec![kv("/x", 2)]),
            MirrorEvent::ListStart {
                revision: 3,
                epoch: 1,
            },
            MirrorEvent::ListPage(vec![kv("/y", 3)]),
            MirrorEvent::ListEnd { revision: 3 },
        ] {
            r.update(&mut view, ev);
        }
        assert_eq!(view.0, vec!["/y"]);
    }
}
