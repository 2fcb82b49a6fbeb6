//! Fenced transactions against a real etcd: the keys a transaction reads
//! come back with its answer on either branch, as they were before its
//! writes, and every transaction is counted by its kind.

mod common;

use common::TestEtcd;
use esi_reconciler::store::txn::{Cond, Fenced, Kv, Op};

#[tokio::test]
async fn reads_come_back_with_the_answer_on_both_branches() {
    let etcd = TestEtcd::start().await;
    etcd.put("/a", "1").await;
    let kv = &etcd.client;
    let claim = Fenced::new(
        vec![Cond::Absent("/b".into())],
        vec![Op::put("/a", "2"), Op::put("/b", "x")],
    )
    .reading(vec!["/a".into(), "/b".into(), "/missing".into()])
    .named("test_claim");
    let done = kv.commit(&claim).await.unwrap();
    assert!(done.succeeded);
    let value = |i: usize, read: &[Option<esi_reconciler::store::txn::Record>]| {
        read[i].as_ref().map(|r| r.value.clone())
    };
    // Before the writes: /a as it was, /b not yet there.
    assert_eq!(done.read.len(), 3);
    assert_eq!(value(0, &done.read), Some(b"1".to_vec()));
    assert_eq!(value(1, &done.read), None);
    assert_eq!(value(2, &done.read), None);
    // The same again fails (/b exists): the reads say why, at that revision.
    let failed = kv.commit(&claim).await.unwrap();
    assert!(!failed.succeeded);
    assert_eq!(value(0, &failed.read), Some(b"2".to_vec()));
    assert_eq!(value(1, &failed.read), Some(b"x".to_vec()));
    let b = failed.read[1].as_ref().unwrap();
    assert_eq!(b.mod_rev, done.revision);
    assert_eq!(failed.revision, done.revision);
    // Both attempts counted under their kind.
    let text = esi_reconciler::telemetry::metrics::WorkerMetrics::new()
        .with_store(kv.stats())
        .encode();
    assert_eq!(
        common::metric(
            &text,
            "esi_worker_etcd_transactions_total{kind=\"test_claim\"}"
        ),
        Some(2.0),
        "{text}"
    );
}
