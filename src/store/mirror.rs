//! Mirroring a key range, the way etcd's mirror syncer does: a paginated list
//! at one pinned revision, then a watch from that revision + 1.
//!
//! A broken watch stream resumes from the last revision it delivered; a
//! watch whose start revision was compacted away triggers a fresh list. The
//! consumer sees a [`MirrorEvent`] stream that always describes one
//! consistent, revision-ordered history.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

/// A key-value as the mirror delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

impl Kv {
    fn from_etcd(kv: &etcd_client::KeyValue) -> Option<Kv> {
        Some(Kv {
            key: String::from_utf8(kv.key().to_vec()).ok()?,
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
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
    /// A fresh list begins at `revision`: forget everything.
    ListStart { revision: i64 },
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
}

impl MirrorOptions {
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
    client: &mut Client,
    opts: &MirrorOptions,
    out: &mpsc::Sender<MirrorEvent>,
) -> Result<Option<i64>, etcd_client::Error> {
    let mut revision = 0i64;
    for (start, end) in opts.list_ranges() {
        let mut from = start;
        loop {
            let mut o = GetOptions::new()
                .with_range(end.clone())
                .with_limit(opts.page_size);
            if revision > 0 {
                o = o.with_revision(revision);
            }
            let resp = client.get(from.clone(), Some(o)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                if out.send(MirrorEvent::ListStart { revision }).await.is_err() {
                    return Ok(None);
                }
            }
            let kvs = resp.kvs();
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

/// Reports a restart; false when the receiver is gone.
async fn restarting(out: &mpsc::Sender<MirrorEvent>, reason: String) -> bool {
    out.send(MirrorEvent::WatchRestart { reason }).await.is_ok()
}

enum WatchEnd {
    /// The start revision was compacted: list again.
    Compacted,
    /// The stream broke: resume from the revision reached.
    Broken(String),
    /// The receiver is gone: stop.
    Closed,
}

/// Runs forever (until `out` closes): list, then watch, resuming and
/// relisting as needed. Connection failures are retried with backoff.
pub async fn run(mut client: Client, opts: MirrorOptions, out: mpsc::Sender<MirrorEvent>) {
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    'relist: loop {
        let mut delays = retry.build();
        let mut revision = loop {
            match list(&mut client, &opts, &out).await {
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
            match watch(&mut client, &opts, &mut revision, &out).await {
                WatchEnd::Closed => return,
                WatchEnd::Compacted => {
                    let reason = format!("revision {} was compacted; relisting", revision + 1);
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
                }
            }
        }
    }
}

/// Watches from `revision + 1`, advancing `revision` as changes arrive.
async fn watch(
    client: &mut Client,
    opts: &MirrorOptions,
    revision: &mut i64,
    out: &mpsc::Sender<MirrorEvent>,
) -> WatchEnd {
    let wo = WatchOptions::new()
        .with_range(opts.end.as_bytes().to_vec())
        .with_start_revision(*revision + 1)
        .with_progress_notify();
    let mut stream = match client.watch(opts.start.as_bytes().to_vec(), Some(wo)).await {
        Ok(s) => s,
        Err(e) => {
            return WatchEnd::Broken(format!(
                "watch failed to start: {}",
                super::client::describe(&e)
            ));
        }
    };
    // Ask for a progress report now and then so an idle mirror still learns
    // the current revision, and a dead stream is noticed.
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    let mut awaiting_progress = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tick.tick() => {
                if awaiting_progress {
                    return WatchEnd::Broken("no progress report within 30s".into());
                }
                awaiting_progress = true;
                if let Err(e) = stream.request_progress().await {
                    return WatchEnd::Broken(format!("progress request failed: {e}"));
                }
                continue;
            }
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return WatchEnd::Broken("watch stream ended".into()),
            Err(e) => {
                return WatchEnd::Broken(format!(
                    "watch stream error: {}",
                    super::client::describe(&e)
                ));
            }
        };
        awaiting_progress = false;
        if resp.compact_revision() > 0 {
            return WatchEnd::Compacted;
        }
        if resp.canceled() {
            return WatchEnd::Broken(format!("watch canceled: {}", resp.cancel_reason()));
        }
        let header_rev = resp.header().map(|h| h.revision()).unwrap_or(*revision);
        let events = resp.events();
        if events.is_empty() {
            if resp.created() {
                continue;
            }
            // A progress notification: everything up to the header revision
            // has been delivered.
            if header_rev > *revision {
                *revision = header_rev;
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
