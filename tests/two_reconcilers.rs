//! Two reconcilers on one etcd for the whole run: fencing means no
//! (type, id, version, action) ever has two jobs.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

const PORTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_never_duplicate_a_job() {
    let etcd = TestEtcd::start().await;
    load_reference_templates_named(&etcd, &["port", "network", "subnet"]).await;
    // A converged network and subnet; ports on them with no state yet.
    etcd.put_json(
        "/config/v2.0/networks/n1",
        &json!({"body": {"id": "n1", "tenant_id": "t"}, "version": 1}),
    )
    .await;
    etcd.put_json(
        "/state/v2.0/networks/n1",
        &json!({"state": {"worker_state": "CREATE_COMPLETED"}, "version": 1, "error": ""}),
    )
    .await;
    etcd.put_json("/esi-worker/heat_stacks/v2.0/networks/n1", &json!({"id": "x", "stack_status": "CREATE_COMPLETE", "output": [{"output_key": "id", "output_value": "n1"}]})).await;
    etcd.put_json(
        "/config/v2.0/subnets/s1",
        &json!({"body": {"id": "s1", "network_id": "n1", "tenant_id": "t"}, "version": 1}),
    )
    .await;
    etcd.put_json(
        "/state/v2.0/subnets/s1",
        &json!({"state": {"worker_state": "CREATE_COMPLETED"}, "version": 1, "error": ""}),
    )
    .await;
    etcd.put_json("/esi-worker/heat_stacks/v2.0/subnets/s1", &json!({"id": "x", "stack_status": "CREATE_COMPLETE", "output": [{"output_key": "id", "output_value": "s1"}]})).await;

    // Record every job ever created, from before the reconcilers start.
    let recorder = Recorder::start(&etcd, "/jobs/all/").await;

    let start = |port: u16| {
        let mut a = vec![
            "run".to_string(),
            "--etcd-endpoints".into(),
            etcd.url(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
        ];
        a.extend(reference_catalog_args());
        a.extend(["--debounce-ms".into(), "0".into()]);
        Proc::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut a = start(ANY_PORT);
    let mut b = start(ANY_PORT);
    // Configs arrive while both run; some change again right away.
    for i in 0..PORTS {
        let body = json!({"id": format!("p{i}"), "network_id": "n1", "device_owner": "compute:nova", "tenant_id": "t",
                          "fixed_ips": [{"subnet_id": "s1", "ip_address": format!("10.0.0.{i}")}]});
        etcd.put_json(
            &format!("/config/v2.0/ports/p{i}"),
            &json!({"body": body, "version": 1}),
        )
        .await;
        if i % 3 == 0 {
            let mut body = body.clone();
            body["name"] = json!("renamed");
            etcd.put_json(
                &format!("/config/v2.0/ports/p{i}"),
                &json!({"body": body, "version": 2}),
            )
            .await;
        }
    }
    // Every port ends with exactly one ready job at its latest version.
    eventually(
        Duration::from_secs(60),
        "one ready job per port at its latest version",
        || async {
            let ready = etcd.keys("/jobs/ready/").await;
            let all = etcd.keys("/jobs/all/").await;
            let ok = all.len() == PORTS
                && ready.len() == PORTS
                && (0..PORTS).all(|i| {
                    let v = if i % 3 == 0 { 2 } else { 1 };
                    all.iter()
                        .filter(|k| k.contains(&format!(":port:p{i}:{v}:")))
                        .count()
                        == 1
                });
            ok.then_some(())
        },
    )
    .await;
    let dups = recorder.duplicate_jobs().await;
    assert!(dups.is_empty(), "duplicate jobs: {dups:?}");
    assert!(recorder.jobs_created().await >= PORTS);
    a.sigkill().await;
    b.sigkill().await;
}
