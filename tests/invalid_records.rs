//! Records that do not parse are reported (get, metrics) and left
//! untouched; the reconciler keeps running and reconciling everything else.

mod common;

use std::time::Duration;

use common::*;

fn catalog_args() -> Vec<String> {
    reference_catalog_args()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_config_is_reported_and_nothing_is_written_for_it() {
    let etcd = TestEtcd::start().await;
    let port_tpl = read_json(reference().join("heat_templates/network.json"));
    etcd.put_json(port_tpl["key"].as_str().unwrap(), &port_tpl["value"])
        .await;
    etcd.put(
        "/config/v2.0/networks/broken",
        "{\"body\": {\"id\": \"broken\", ",
    )
    .await;
    etcd.put(
        "/config/v2.0/networks/wrong-shape",
        "{\"body\": 3, \"version\": 1}",
    )
    .await;
    etcd.put("/jobs/all/not-a-job-id", "[]").await;
    let metrics_port = free_port();
    let mut args = vec![
        "run".to_string(),
        "--etcd-endpoints".into(),
        etcd.url(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    args.extend(catalog_args());
    let mut reconciler = Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = format!("127.0.0.1:{metrics_port}");
    eventually(
        Duration::from_secs(30),
        "invalid records in the metrics",
        || {
            let addr = addr.clone();
            async move {
                let (_, body) = http_get(&addr, "/metrics").await?;
                let invalid = metric(&body, "esi_reconciler_invalid_records")?;
                let phase = metric(&body, "esi_reconciler_resources{phase=\"Invalid\"}")?;
                (invalid >= 3.0 && phase >= 2.0).then_some(())
            }
        },
    )
    .await;

    // The reconciler keeps working: a valid network added now gets its job.
    etcd.put_json(
        "/config/v2.0/networks/good",
        &serde_json::json!({"body": {"id": "good", "admin_state_up": true}, "version": 1}),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "a job for the valid network",
        || async {
            etcd.keys("/jobs/ready/create:heat_worker:network:good:1:")
                .await
                .first()
                .cloned()
        },
    )
    .await;

    // Nothing was written for the broken ones: no job, no status record,
    // and their values are as they were.
    let keys = etcd.keys("/").await;
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("broken") && !k.starts_with("/config/")),
        "{keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("wrong-shape") && !k.starts_with("/config/")),
        "{keys:?}"
    );
    assert_eq!(
        etcd.get("/config/v2.0/networks/broken").await.unwrap(),
        b"{\"body\": {\"id\": \"broken\", "
    );

    // `get` shows them as Invalid, with the reason.
    let mut get = vec!["get".to_string(), "--etcd-endpoints".into(), etcd.url()];
    get.extend(catalog_args());
    let (ok, out, err) = cli(&get.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("broken"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("Invalid") && line.contains("EOF while parsing"),
        "{line}"
    );
    let line = out.lines().find(|l| l.contains("wrong-shape")).unwrap();
    assert!(line.contains("Invalid") && line.contains("body"), "{line}");
    assert!(out.contains("/jobs/all/not-a-job-id"), "{out}");
    assert!(
        reconciler.child.try_wait().unwrap().is_none(),
        "the reconciler exited"
    );
    reconciler.sigkill().await;
}
