//! The etcd layer against a real etcd cluster: requests keep working while
//! members die, and a store restored from a snapshot is noticed (the epoch
//! moves, the mirror lists again) instead of watched blindly.

mod common;

use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::mpsc;

use esi_harness::etcd::local_cluster::LocalCluster;
use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
use esi_reconciler::store::{Etcd, EtcdOptions, connect};

async fn etcd_on(cluster: &LocalCluster) -> Etcd {
    let mut opts = EtcdOptions::with_endpoints(cluster.endpoints());
    opts.request_timeout = Duration::from_secs(10);
    connect(&opts).await.unwrap()
}

/// A mirror of `/config/` on `etcd`, in pages of 100.
fn mirror_configs(etcd: &Etcd) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<MirrorEvent>) {
    let (tx, rx) = mpsc::channel(256);
    let mut opts = MirrorOptions::prefix("/config/");
    opts.page_size = 100;
    (tokio::spawn(mirror::run(etcd.clone(), opts, tx)), rx)
}

/// A fenced write of `/k`, as every product write is: it compares the
/// revision it read.
async fn fenced_put(etcd: &Etcd, value: &str) {
    let read = etcd.get("/k", None).await.expect("read");
    let rev = read.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0);
    let txn = Txn::new()
        .when(vec![Compare::mod_revision("/k", CompareOp::Equal, rev)])
        .and_then(vec![TxnOp::put("/k", value, None)]);
    etcd.txn(txn).await.expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_while_members_die() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let etcd = etcd_on(&cluster).await;
    fenced_put(&etcd, "v0").await;
    // Requests go to the first endpoint: kill it, then the leader.
    cluster.kill(0).await;
    for i in 1..=20 {
        fenced_put(&etcd, &format!("v{i}")).await;
    }
    cluster.restart(0).await.unwrap();
    cluster.wait_leader(Duration::from_secs(20)).await.unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(20)).await.unwrap();
    cluster.kill(leader).await;
    for i in 21..=40 {
        fenced_put(&etcd, &format!("v{i}")).await;
    }
    let got = etcd.get("/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v40");
    assert!(
        etcd.stats().failovers.get() >= 1,
        "no request moved to another member"
    );
    // The dead member is reported as such.
    let dead = cluster.members[leader].client_url();
    common::eventually(
        Duration::from_secs(10),
        "the dead member marked down",
        || {
            let members = etcd.members();
            let dead = dead.clone();
            async move {
                members
                    .iter()
                    .any(|(ep, healthy)| *ep == dead && !healthy)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(etcd.epoch(), 0, "a member failure is not a store reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_is_noticed_and_listed_again() {
    let mut cluster = LocalCluster::start(1).await.unwrap();
    let etcd = etcd_on(&cluster).await;
    for i in 0..5 {
        etcd.put(format!("/config/v2.0/ports/p{i}"), "{}", None)
            .await
            .unwrap();
    }
    // The mirror runs on a handle of its own that only reads: what it knows
    // of the store's progress comes from its watch.
    let reader = etcd_on(&cluster).await;
    let (task, mut rx) = mirror_configs(&reader);
    loop {
        if let MirrorEvent::ListEnd { .. } = rx.recv().await.unwrap() {
            break;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    cluster.snapshot(&snap).await.unwrap();
    // Work after the snapshot, which the restore erases; the mirror sees it.
    let mut last = 0;
    for i in 5..30 {
        let r = etcd
            .put(format!("/config/v2.0/ports/p{i}"), "{}", None)
            .await
            .unwrap();
        last = r.header().unwrap().revision();
    }
    let listed_at = loop {
        if let MirrorEvent::Changes { revision, .. } = rx.recv().await.unwrap()
            && revision >= last
        {
            break revision;
        }
    };
    cluster.restore(&snap).await.unwrap();
    // The mirror says so and lists the restored store from scratch.
    let relisted = tokio::time::timeout(Duration::from_secs(30), async {
        let mut reset = false;
        loop {
            match rx.recv().await.unwrap() {
                MirrorEvent::StoreReset { .. } => reset = true,
                MirrorEvent::ListStart { revision, .. } => break (reset, revision),
                _ => {}
            }
        }
    })
    .await
    .expect("no relist within 30 s of the restore");
    assert!(relisted.0, "the relist was not announced as a store reset");
    assert!(
        relisted.1 < listed_at,
        "relisted at {} (old store: {listed_at})",
        relisted.1
    );
    let mut keys = 0;
    loop {
        match rx.recv().await.unwrap() {
            MirrorEvent::ListPage(kvs) => keys += kvs.len(),
            MirrorEvent::ListEnd { .. } => break,
            _ => {}
        }
    }
    assert_eq!(
        keys, 5,
        "the restored store holds the 5 keys of the snapshot"
    );
    assert_eq!(reader.epoch(), 1);
    assert_eq!(reader.stats().resets.get(), 1);
    // New writes after the restore reach the mirror.
    etcd.put("/config/v2.0/ports/new", "{}", None)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let MirrorEvent::Changes { changes, .. } = rx.recv().await.unwrap()
                && !changes.is_empty()
            {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "a write after the restore was not seen");
    task.abort();
}

/// A restored store that another client writes to at once is noticed by a
/// reader whose watch broke: its view ends equal to the restored store, with
/// none of the erased history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_that_grew_past_us_is_noticed_too() {
    let mut cluster = LocalCluster::start(1).await.unwrap();
    let writer = etcd_on(&cluster).await;
    for i in 0..5 {
        writer
            .put(format!("/config/v2.0/ports/kept{i}"), "{}", None)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    cluster.snapshot(&snap).await.unwrap();
    let mut last = 0;
    for i in 0..10 {
        last = writer
            .put(format!("/config/v2.0/ports/erased{i}"), "{}", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    let reader = etcd_on(&cluster).await;
    let (task, mut rx) = mirror_configs(&reader);
    let mut view = std::collections::BTreeSet::new();
    // The reader's view: a map kept from the mirror's events.
    let apply = |ev: MirrorEvent, view: &mut std::collections::BTreeSet<String>| match ev {
        MirrorEvent::ListStart { .. } => view.clear(),
        MirrorEvent::ListPage(kvs) => view.extend(kvs.into_iter().map(|kv| kv.key)),
        MirrorEvent::Changes { changes, .. } => {
            for c in changes {
                match c {
                    esi_reconciler::store::Change::Put(kv) => {
                        view.insert(kv.key);
                    }
                    esi_reconciler::store::Change::Delete { key, .. } => {
                        view.remove(&key);
                    }
                }
            }
        }
        _ => {}
    };
    loop {
        let ev = rx.recv().await.unwrap();
        let end = matches!(ev, MirrorEvent::ListEnd { revision } if revision >= last);
        apply(ev, &mut view);
        if end {
            break;
        }
    }
    assert_eq!(view.len(), 15);
    cluster.restore(&snap).await.unwrap();
    // Another client writes past everything the reader saw, at once.
    let grower = etcd_on(&cluster).await;
    for i in 0..40 {
        grower
            .put(format!("/config/v2.0/ports/new{i}"), "{}", None)
            .await
            .unwrap();
    }
    let want: std::collections::BTreeSet<String> = (0..5)
        .map(|i| format!("/config/v2.0/ports/kept{i}"))
        .chain((0..40).map(|i| format!("/config/v2.0/ports/new{i}")))
        .collect();
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        while view != want {
            apply(rx.recv().await.unwrap(), &mut view);
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "the reader's view never matched the restored store; it holds {} keys, e.g. {:?}",
        view.len(),
        view.difference(&want).take(3).collect::<Vec<_>>()
    );
    assert_eq!(reader.epoch(), 1, "the reader did not notice the restore");
    task.abort();
}

/// A restored store that grew past every revision a handle saw, while the
/// handle sent nothing, is still noticed: the member's raft index went back
/// (the revision and the raft term alone cannot tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_noticed_from_the_raft_index_alone() {
    let mut cluster = LocalCluster::start(1).await.unwrap();
    let writer = etcd_on(&cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    // A snapshot far into the raft log, as a production one is.
    for i in 0..40 {
        writer.put(format!("/a{i}"), "1", None).await.unwrap();
    }
    writer.put("/a", "1", None).await.unwrap();
    cluster.snapshot(&snap).await.unwrap();
    for i in 0..20 {
        writer.put(format!("/b{i}"), "1", None).await.unwrap();
    }
    // The reader reads once (its floor) and then only health-checks.
    let reader = etcd_on(&cluster).await;
    let floor = reader
        .get("/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // Its first health round records the member's raft index.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restore(&snap).await.unwrap();
    let grower = etcd_on(&cluster).await;
    let mut now = 0;
    while now <= floor + 5 {
        now = grower
            .put("/c", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    common::eventually(
        Duration::from_secs(10),
        "the reader's epoch to move",
        || {
            let e = reader.epoch();
            async move { (e == 1).then_some(()) }
        },
    )
    .await;
    // And the next answer sets its floor on the new store: no second reset.
    reader.get("/a", None).await.unwrap();
    assert_eq!(reader.epoch(), 1);
}
