//! Three reconciler replicas share the work: each issues the jobs of the
//! resources it owns (about a third), together exactly one per resource,
//! and when one is SIGKILLed the others take its resources over within the
//! membership lease, with no job ever issued twice.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::*;

const PORTS: usize = 60;
const TTL_SECS: u64 = 3;

fn port(i: usize, version: u64) -> Value {
    let body = json!({"id": format!("p{i}"), "network_id": "n1", "device_owner": "compute:nova", "tenant_id": "t",
                      "name": format!("v{version}"),
                      "fixed_ips": [{"subnet_id": "s1", "ip_address": format!("10.0.0.{i}")}]});
    json!({"body": body, "version": version})
}

async fn issued(addr: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.unwrap_or_default();
    metric(&body, "esi_reconciler_actions_total{kind=\"issue_job\"}").unwrap_or(0.0)
}

async fn state_version(etcd: &TestEtcd, i: usize) -> Option<u64> {
    etcd.get_json(&format!("/state/v2.0/ports/p{i}"))
        .await
        .and_then(|v| v["version"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_work_and_take_over_from_a_dead_one() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    etcd.put_json(
        "/config/v2.0/networks/n1",
        &json!({"body": {"id": "n1", "tenant_id": "t"}, "version": 1}),
    )
    .await;
    etcd.put_json(
        "/config/v2.0/subnets/s1",
        &json!({"body": {"id": "s1", "network_id": "n1", "tenant_id": "t"}, "version": 1}),
    )
    .await;
    let recorder = Recorder::start(&etcd, "/jobs/all/").await;

    let mut replicas = vec![];
    for i in 0..3 {
        let port = free_port();
        let mut args = reconciler_args(&etcd.url(), port);
        args.extend([
            "--replica-id".into(),
            format!("r{i}"),
            "--member-ttl-secs".into(),
            TTL_SECS.to_string(),
        ]);
        replicas.push((format!("127.0.0.1:{port}"), spawn_args(&args)));
    }
    let _worker = spawn_args(&worker_args(&etcd.url(), ANY_PORT, &[]));
    eventually(
        Duration::from_secs(30),
        "three replicas registered",
        || async { (etcd.keys("/esi-reconciler/v1/members/").await.len() == 3).then_some(()) },
    )
    .await;
    // And every replica's view holds all three: ownership is settled before
    // any resource arrives (while views differ, a resource may be acted on
    // by two replicas; the fences keep that from doubling a job, but not
    // from shifting which replica issued it).
    for (addr, _) in &replicas {
        eventually(
            Duration::from_secs(30),
            "every view holds three replicas",
            || async {
                let (_, body) = http_get(addr, "/metrics").await?;
                (metric(&body, "esi_reconciler_replica_members") == Some(3.0)).then_some(())
            },
        )
        .await;
    }

    // The network and subnet were there before all three registered: which
    // replica issued their jobs depends on who was up first. Count from
    // once they are done.
    eventually(
        Duration::from_secs(60),
        "the network and subnet created",
        || async {
            for k in ["/state/v2.0/networks/n1", "/state/v2.0/subnets/s1"] {
                etcd.get_json(k).await?;
            }
            Some(())
        },
    )
    .await;
    let mut before = vec![];
    for (addr, _) in &replicas {
        before.push(issued(addr).await);
    }
    assert_eq!(
        before.iter().sum::<f64>(),
        2.0,
        "one job each for the network and subnet"
    );

    for i in 0..PORTS {
        etcd.put_json(&format!("/config/v2.0/ports/p{i}"), &port(i, 1))
            .await;
    }
    eventually(Duration::from_secs(90), "every port created", || async {
        for i in 0..PORTS {
            state_version(&etcd, i).await?;
        }
        Some(())
    })
    .await;

    // Each replica issued the jobs of the resources `get` says it owns.
    let get = get_json_args(&etcd.url());
    let (ok, out, err) = cli(&get.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replicas"], json!(["r0", "r1", "r2"]));
    let mut owned: HashMap<String, Vec<String>> = HashMap::new();
    for r in v["resources"].as_array().unwrap() {
        if r["type"] != "port" {
            continue;
        }
        owned
            .entry(r["owner"].as_str().unwrap().to_string())
            .or_default()
            .push(r["id"].as_str().unwrap().to_string());
    }
    let total = PORTS;
    let mut sum = 0.0;
    for (i, (addr, _)) in replicas.iter().enumerate() {
        let mine = owned.get(&format!("r{i}")).map(Vec::len).unwrap_or(0);
        assert!(
            (total / 6..=total / 2).contains(&mine),
            "r{i} owns {mine} of {total} ports: not a share"
        );
        let n = issued(addr).await - before[i];
        assert_eq!(
            n, mine as f64,
            "r{i} issued {n} port jobs but owns {mine} ports"
        );
        sum += n;
    }
    assert_eq!(sum, total as f64, "together, one job per port");

    // r0 dies; its ports change; the others take them over.
    let mut survivors_before = 0.0;
    for (addr, _) in &replicas[1..] {
        survivors_before += issued(addr).await;
    }
    let (_, mut dead) = replicas.remove(0);
    let killed = Instant::now();
    dead.sigkill().await;
    let orphans: Vec<usize> = (0..PORTS)
        .filter(|i| owned["r0"].contains(&format!("p{i}")))
        .collect();
    assert!(!orphans.is_empty());
    for &i in &orphans {
        etcd.put_json(&format!("/config/v2.0/ports/p{i}"), &port(i, 2))
            .await;
    }
    eventually(
        Duration::from_secs(TTL_SECS + 5),
        "the dead replica's member key gone",
        || async { (etcd.keys("/esi-reconciler/v1/members/").await.len() == 2).then_some(()) },
    )
    .await;
    let gone = killed.elapsed();
    eventually(
        Duration::from_secs(60),
        "the dead replica's ports converged at v2",
        || async {
            for &i in &orphans {
                (state_version(&etcd, i).await? == 2).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    println!(
        "member key gone {:.1} s after the kill (TTL {TTL_SECS} s); {} ports taken over in {:.1} s",
        gone.as_secs_f64(),
        orphans.len(),
        killed.elapsed().as_secs_f64()
    );
    assert!(
        gone < Duration::from_secs(TTL_SECS + 2),
        "took {gone:?} to notice a dead replica with a {TTL_SECS} s lease"
    );
    let mut survivors = 0.0;
    for (addr, _) in &replicas {
        survivors += issued(addr).await;
    }
    assert_eq!(
        survivors,
        survivors_before + orphans.len() as f64,
        "the survivors issued exactly the v2 jobs of the dead replica's ports"
    );

    // Every job ever created: no (action, type, id, version) twice.
    let dups = recorder.duplicate_jobs().await;
    assert!(dups.is_empty(), "jobs issued twice: {dups:?}");
}

/// Member keys written without a lease (by hand, or by a bug) are not
/// replicas: counted, they would each take a share of the resources and
/// act on none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_keys_without_a_lease_take_no_share() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    for ghost in ["ghost-a", "ghost-b", "ghost-c"] {
        etcd.put(&format!("/esi-reconciler/v1/members/{ghost}"), "{}")
            .await;
    }
    let port = free_port();
    let _reconciler = spawn_args(&reconciler_args(&etcd.url(), port));
    for i in 0..12 {
        etcd.put_json(
            &format!("/config/v2.0/networks/n{i}"),
            &json!({"body": {"id": format!("n{i}"), "tenant_id": "t"}, "version": 1}),
        )
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "a job for every network",
        || async {
            for i in 0..12 {
                let prefix = format!("/jobs/all/create:heat_worker:network:n{i}:1:");
                etcd.keys(&prefix).await.first()?;
            }
            Some(())
        },
    )
    .await;
    let (_, body) = http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .await
        .unwrap();
    assert_eq!(metric(&body, "esi_reconciler_replica_members"), Some(1.0));
}
