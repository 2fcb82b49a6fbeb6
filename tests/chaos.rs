//! Every fault drill, as `esi-reconciler chaos` runs it, with a small
//! scenario: real etcd, reconciler and worker processes, one fault each.

mod common;

use serde_json::Value;

use common::cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drill_converges_with_its_invariants_intact() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (ok, out, err) = cli(&[
        "chaos",
        "--ports",
        "20",
        "--within-secs",
        "90",
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    println!("{out}");
    assert!(ok, "chaos failed:\n{out}\n{err}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let drills = r["drills"].as_array().unwrap();
    assert_eq!(drills.len(), esi_harness::chaos::drills::Drill::ALL.len());
    for d in drills {
        assert_eq!(d["passed"], true, "{d}");
        assert!(d["converge_ms"].is_u64(), "{d}");
        assert!(d["actions"].as_u64().unwrap() > 20, "{d}");
        assert!(d["duplicates"].as_array().unwrap().is_empty(), "{d}");
    }
    let engine = drills
        .iter()
        .find(|d| d["drill"] == "engine-fails")
        .unwrap();
    let timeline = engine["backoff_timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 3);
    for t in timeline {
        assert_eq!(t["retry_delays_ms"].as_array().unwrap().len(), 3, "{t}");
    }
    // The table names every drill.
    for name in [
        "worker-kill",
        "etcd-restart",
        "network-cut",
        "corrupt-records",
        "etcd-leader-kill",
        "etcd-restore",
        "replica-freeze",
    ] {
        assert!(out.contains(name), "{out}");
    }
}
