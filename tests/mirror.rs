//! The etcd mirror against a real etcd: paginated list at one revision,
//! watch from the next, resume after a broken stream, relist after compaction.

mod common;

use std::time::Duration;

use common::{TcpProxy, TestEtcd};
use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
use esi_reconciler::store::{Change, EtcdOptions, connect};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn opts(page_size: i64) -> MirrorOptions {
    MirrorOptions {
        start: "/config/".into(),
        end: "/state0".into(),
        page_size,
        list_prefixes: vec![],
        from: None,
        unlisted: false,
    }
}

async fn next(rx: &mut mpsc::Receiver<MirrorEvent>) -> MirrorEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("mirror event within 30s")
        .expect("mirror running")
}

/// Waits for the next change and asserts it is the put of `key` alone, at
/// `revision`. Events `pass` accepts may come first; any other fails.
async fn expect_put(
    rx: &mut mpsc::Receiver<MirrorEvent>,
    key: &str,
    revision: i64,
    mut pass: impl FnMut(&MirrorEvent) -> bool,
) {
    loop {
        match next(rx).await {
            MirrorEvent::Changes {
                revision: got,
                changes,
            } => {
                assert_eq!(got, revision, "the put of {key}");
                assert!(
                    matches!(&changes[..], [Change::Put(kv)] if kv.key == key),
                    "expected the put of {key} alone, got {changes:?}"
                );
                return;
            }
            other if pass(&other) => {}
            other => panic!("expected the put of {key}, got {other:?}"),
        }
    }
}

/// A mirror (pages of 100) reaching `etcd` through a proxy the test can cut.
async fn mirror_through_proxy(
    etcd: &TestEtcd,
) -> (TcpProxy, mpsc::Receiver<MirrorEvent>, JoinHandle<()>) {
    let proxy = TcpProxy::start(etcd.process.client_port()).await.unwrap();
    let client = connect(&EtcdOptions::with_endpoints(vec![proxy.url()]))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(mirror::run(client, opts(100), tx));
    (proxy, rx, task)
}

/// Collects a full list (ListStart .. ListEnd): (revision, keys).
async fn collect_list(rx: &mut mpsc::Receiver<MirrorEvent>) -> (i64, Vec<String>, usize) {
    let mut keys = vec![];
    let mut pages = 0;
    loop {
        match next(rx).await {
            MirrorEvent::ListStart { .. } => {}
            MirrorEvent::ListPage(kvs) => {
                pages += 1;
                keys.extend(kvs.into_iter().map(|kv| kv.key));
            }
            MirrorEvent::ListEnd { revision } => return (revision, keys, pages),
            other => panic!("unexpected {other:?} during a list"),
        }
    }
}

#[tokio::test]
async fn lists_in_pages_at_one_revision_then_watches() {
    let etcd = TestEtcd::start().await;
    for i in 0..7 {
        etcd.put(&format!("/config/v2.0/ports/p{i}"), "{}").await;
    }
    etcd.put("/unrelated", "x").await;
    let (tx, mut rx) = mpsc::channel(8);
    let client = etcd.client.clone();
    let task = tokio::spawn(mirror::run(client, opts(2), tx));
    let (rev, keys, pages) = collect_list(&mut rx).await;
    assert_eq!(keys.len(), 7, "{keys:?}");
    assert_eq!(pages, 4);
    assert!(rev >= 8);
    etcd.put("/state/v2.0/ports/p1", "{}").await;
    expect_put(&mut rx, "/state/v2.0/ports/p1", rev + 1, |_| false).await;
    task.abort();
}

/// An unlisted mirror (a cache that reads keys on demand) starts at the
/// current revision without reading a key, then sees every change.
#[tokio::test]
async fn an_unlisted_mirror_reads_no_key_and_watches_from_now() {
    let etcd = TestEtcd::start().await;
    for i in 0..5 {
        etcd.put(&format!("/config/v2.0/ports/p{i}"), "{}").await;
    }
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(mirror::run(
        etcd.client.clone(),
        MirrorOptions::prefix("/config/").unlisted(),
        tx,
    ));
    let (rev, keys, pages) = collect_list(&mut rx).await;
    assert_eq!((keys.len(), pages), (0, 0), "{keys:?}");
    assert!(rev >= 5, "the list still pins the current revision: {rev}");
    etcd.put("/config/v2.0/ports/p1", "{\"x\": 1}").await;
    expect_put(&mut rx, "/config/v2.0/ports/p1", rev + 1, |_| false).await;
    task.abort();
}

#[tokio::test]
async fn lists_only_its_prefixes_each_paged_and_still_watches_the_span() {
    let etcd = TestEtcd::start().await;
    for i in 0..3 {
        etcd.put(&format!("/state/v2.0/ports/p{i}"), "{}").await;
        etcd.put(&format!("/config/v2.0/ports/p{i}"), "{}").await;
    }
    etcd.put("/gohan/ignored", "x").await;
    let (tx, mut rx) = mpsc::channel(8);
    let mut o = opts(2);
    // Out of order on purpose: the list reads them in key order.
    o.list_prefixes = vec!["/state/".into(), "/config/".into()];
    let task = tokio::spawn(mirror::run(etcd.client.clone(), o, tx));
    let (rev, keys, pages) = collect_list(&mut rx).await;
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in key order");
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("/gohan/")));
    assert_eq!(pages, 4, "two pages per prefix");
    // The watch covers the whole span, between the prefixes too.
    etcd.put("/gohan/seen", "y").await;
    expect_put(&mut rx, "/gohan/seen", rev + 1, |_| false).await;
    task.abort();
}

#[tokio::test]
async fn resumes_from_the_last_revision_after_a_broken_stream() {
    let etcd = TestEtcd::start().await;
    let (proxy, mut rx, task) = mirror_through_proxy(&etcd).await;
    let (rev, _, _) = collect_list(&mut rx).await;
    // A change through the watch proves it is established before the cut
    // (a watch that cannot start yet is retried inside the store layer).
    let progress = |ev: &MirrorEvent| matches!(ev, MirrorEvent::Progress { .. });
    etcd.put("/config/v2.0/ports/before-cut", "{}").await;
    expect_put(&mut rx, "/config/v2.0/ports/before-cut", rev + 1, progress).await;
    proxy.cut();
    etcd.put("/config/v2.0/ports/while-cut", "{}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    // The write made while cut off arrives as a change, with no relist.
    let mut restarts = 0;
    expect_put(
        &mut rx,
        "/config/v2.0/ports/while-cut",
        rev + 2,
        |ev| match ev {
            MirrorEvent::WatchRestart { .. } => {
                restarts += 1;
                true
            }
            other => progress(other),
        },
    )
    .await;
    assert!(restarts >= 1, "the broken stream was not noticed");
    task.abort();
}

#[tokio::test]
async fn relists_when_its_revision_was_compacted() {
    let etcd = TestEtcd::start().await;
    let (proxy, mut rx, task) = mirror_through_proxy(&etcd).await;
    collect_list(&mut rx).await;
    proxy.cut();
    etcd.put("/config/v2.0/ports/a", "{}").await;
    etcd.put("/config/v2.0/ports/a", "{\"v\":2}").await;
    let resp = etcd
        .client
        .put("/config/v2.0/ports/b", "{}", None)
        .await
        .unwrap();
    let now = resp.header().unwrap().revision();
    etcd.client.compact(now).await.unwrap();
    proxy.restore();
    loop {
        match next(&mut rx).await {
            MirrorEvent::WatchRestart { .. } | MirrorEvent::Progress { .. } => {}
            MirrorEvent::ListStart { revision, .. } => {
                assert!(revision >= now);
                break;
            }
            other => panic!("expected a relist, got {other:?}"),
        }
    }
    let mut keys = vec![];
    loop {
        match next(&mut rx).await {
            MirrorEvent::ListPage(kvs) => keys.extend(kvs.into_iter().map(|kv| kv.key)),
            MirrorEvent::ListEnd { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        keys,
        vec![
            "/config/v2.0/ports/a".to_string(),
            "/config/v2.0/ports/b".to_string()
        ]
    );
    task.abort();
}
