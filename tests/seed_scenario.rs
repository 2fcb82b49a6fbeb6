//! The issue's acceptance scenario, with the reconciler as a real process:
//! etcd holds the port template, the seed's config (v4, marked for
//! deletion), the port's previous state (v3) and stack, and the converged
//! network and subnet it references.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

const PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";

async fn load(etcd: &TestEtcd) {
    load_seed_world(etcd).await;
    assert_state(
        etcd,
        &format!("/state/v2.0/ports/{PORT}"),
        3,
        "MODIFY_COMPLETED",
    )
    .await;
}

/// Waits until a freshly started reconciler has loaded etcd and planned
/// the port (it counts a reconcile), so "nothing changed" is a real result.
async fn wait_reconciled(metrics_port: u16) {
    let addr = format!("127.0.0.1:{metrics_port}");
    eventually(
        Duration::from_secs(30),
        "the reconciler to reconcile after start",
        || {
            let addr = addr.clone();
            async move {
                let (code, _) = http_get(&addr, "/readyz").await?;
                let (_, body) = http_get(&addr, "/metrics").await?;
                let n = metric(&body, "esi_reconciler_reconciles_total{result=\"noop\"}")
                    .unwrap_or(0.0)
                    + metric(&body, "esi_reconciler_reconciles_total{result=\"applied\"}")
                        .unwrap_or(0.0);
                (code == 200 && n >= 3.0).then_some(())
            }
        },
    )
    .await;
}

async fn jobs_of_port(etcd: &TestEtcd) -> Vec<String> {
    etcd.keys("/jobs/all/")
        .await
        .into_iter()
        .filter(|k| k.contains(PORT))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_issues_one_fenced_logical_delete() {
    let etcd = TestEtcd::start().await;
    load(&etcd).await;
    let port = free_port();
    let args = reconciler_args(&etcd.url(), port);
    let mut reconciler = spawn_args(&args);

    let prefix = format!("/jobs/all/logical_delete:heat_worker:port:{PORT}:4:");
    let key = eventually(
        Duration::from_secs(30),
        "the logical_delete job",
        || async {
            let keys = etcd.keys(&prefix).await;
            keys.first().cloned()
        },
    )
    .await;
    let id = key.trim_start_matches("/jobs/all/").to_string();
    let ready = etcd
        .get(&format!("/jobs/ready/{id}"))
        .await
        .expect("the job is ready");
    assert_eq!(ready, b"heat_worker");
    let job = etcd.get_json(&key).await.unwrap();
    assert_seed_job(&job);
    assert_eq!(
        (job[0].clone(), job[2].clone()),
        (json!("heat_worker"), json!(0))
    );
    // No job for the converged network and subnet.
    assert_eq!(etcd.keys("/jobs/all/").await.len(), 1);

    // SIGKILL and restart, twice: still exactly one job.
    for _ in 0..2 {
        reconciler.sigkill().await;
        reconciler = spawn_args(&args);
        wait_reconciled(port).await;
        assert_eq!(
            jobs_of_port(&etcd).await,
            vec![key.clone()],
            "a restart issued a second job"
        );
        assert!(etcd.get(&format!("/jobs/ready/{id}")).await.is_some());
    }

    // Config v5 before any worker claims v4: v4 is withdrawn, one v5 job.
    let mut cfg = seed_value("1_config.json");
    cfg["version"] = json!(5);
    cfg["body"]["description"] = json!("changed while the delete was queued");
    etcd.put_json(&format!("/config/v2.0/ports/{PORT}"), &cfg)
        .await;
    let v5 = eventually(
        Duration::from_secs(30),
        "the v4 job replaced by a v5 job",
        || async {
            let jobs = jobs_of_port(&etcd).await;
            (jobs.len() == 1 && jobs[0].contains(&format!("port:{PORT}:5:")))
                .then(|| jobs[0].clone())
        },
    )
    .await;
    assert!(v5.starts_with("/jobs/all/logical_delete:"));
    assert!(
        etcd.get(&format!("/jobs/ready/{id}")).await.is_none(),
        "the v4 ready entry was left behind"
    );
    let v5_id = v5.trim_start_matches("/jobs/all/");
    assert!(etcd.get(&format!("/jobs/ready/{v5_id}")).await.is_some());
    // Our status record says what happened last.
    let status = etcd
        .get_json(&format!("/esi-reconciler/v1/resources/ports/{PORT}"))
        .await
        .unwrap();
    assert!(
        status["last_action"]
            .as_str()
            .unwrap()
            .contains("logical_delete job v5"),
        "{status}"
    );
    // The seed config was never touched except by our own v5 write.
    assert_eq!(
        etcd.get_json(&format!("/config/v2.0/ports/{PORT}"))
            .await
            .unwrap(),
        cfg
    );
    reconciler.signal(Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(30), reconciler.child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
