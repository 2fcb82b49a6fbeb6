//! Hostile records against a running reconciler and sim worker (separate
//! processes, on a real etcd): templates that explode when parsed, rendered
//! or evaluated, and outputs that used to panic the job task. Each bad job
//! must fail with its reason in `/state`, leave no claim behind, keep the
//! worker small and alive, and not hold up a good resource created next.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const NETWORK_TEMPLATE: &str = "/config/v2.0/heat_templates/network";

/// The reference `network` template record with its Jinja source changed.
fn network_template(edit: impl FnOnce(&str) -> String) -> Value {
    let mut v = read_json(reference().join("heat_templates/network.json"))["value"].clone();
    let source = v["body"]["template_file"].as_str().unwrap().to_string();
    v["body"]["template_file"] = json!(edit(&source));
    v
}

/// `levels` levels of anchors, each a list of ten aliases of the one before.
fn alias_bomb(levels: usize) -> String {
    let mut s =
        String::from("bomb:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..levels {
        s += &format!(
            "  a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 10].join(", ")
        );
    }
    s
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .expect("worker's /proc status");
    status.vmhwm.expect("VmHWM") / 1024
}

async fn put_network(etcd: &TestEtcd, id: &str) {
    etcd.put_json(
        &format!("/config/v2.0/networks/{id}"),
        &json!({"body": {"id": id, "name": id, "admin_state_up": true}, "version": 1}),
    )
    .await;
}

/// Waits for the network's job to fail, and returns the `/state` error.
async fn failed_with(etcd: &TestEtcd, id: &str) -> String {
    let key = format!("/state/v2.0/networks/{id}");
    eventually(
        Duration::from_secs(60),
        &format!("{key} failed"),
        || async {
            let v = etcd.get_json(&key).await?;
            let error = v["error"].as_str().unwrap_or_default().to_string();
            (!error.is_empty()).then_some(error)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_fail_their_job_and_nothing_else() {
    let etcd = TestEtcd::start().await;
    let metrics_port = free_port();
    let mut reconciler = spawn_args(&reconciler_args(&etcd.url(), ANY_PORT));
    let mut worker = spawn_args(&worker_args(
        &etcd.url(),
        metrics_port,
        &["--sim-panic", "network_engine-bug"],
    ));
    let worker_pid = worker.child.id().unwrap();

    let cases: Vec<(&str, Value, &str)> = vec![
        // Nine levels of ten aliases: 10^9 nodes once expanded.
        (
            "alias-bomb",
            network_template(|s| format!("{s}\n{}", alias_bomb(9))),
            "--max-yaml-nodes",
        ),
        // Output text that grows tenfold at every level of str_replace.
        (
            "replace-bomb",
            network_template(|s| {
                let mut v = "\"xx\"".to_string();
                for _ in 0..12 {
                    v = format!("{{str_replace: {{template: {v}, params: {{x: xxxxxxxxxx}}}}}}");
                }
                format!("{s}\n  bomb:\n    value: {v}\n")
            }),
            "--max-eval-bytes",
        ),
        // A render that never ends.
        (
            "jinja-loop",
            network_template(|s| {
                format!(
                    "{s}\n{{% for i in range(100000) %}}{{% for j in range(100000) %}}{{% endfor %}}{{% endfor %}}"
                )
            }),
            "--max-render-fuel",
        ),
        // A Jinja error quotes its line: one of 600 kB.
        (
            "long-line",
            network_template(|s| format!("{s}\n{{{{ {} + }}}}\n", "x".repeat(600_000))),
            "bytes cut",
        ),
    ];
    for (id, template, reason) in &cases {
        etcd.put_json(NETWORK_TEMPLATE, template).await;
        put_network(&etcd, id).await;
        let error = failed_with(&etcd, id).await;
        assert!(error.contains(reason), "{id}: {error}");
        assert!(error.len() < 5000, "{id}: {} bytes of error", error.len());
        assert!(
            worker.child.try_wait().unwrap().is_none(),
            "{id}: the worker exited"
        );
        let peak = peak_rss_mib(worker_pid);
        eprintln!("{id}: failed with the limit named; worker peak RSS so far {peak} MiB");
        assert!(peak < 512, "{id}: worker peaked at {peak} MiB");
    }

    // `{get_param: []}` used to panic the job task and strand its claim,
    // and a `heat_timeout` of 10^17 minutes overflowed the job's deadline.
    let mut t = network_template(|s| format!("{s}\n  empty_path:\n    value: {{get_param: []}}\n"));
    t["body"]["parameter_mappings"]["heat_timeout"] = json!("C100000000000000000");
    etcd.put_json(NETWORK_TEMPLATE, &t).await;
    put_network(&etcd, "empty-path").await;
    wait_state(
        &etcd,
        "/state/v2.0/networks/empty-path",
        1,
        "CREATE_COMPLETED",
        Duration::from_secs(30),
    )
    .await;

    // An engine that panics (a bug): the job fails with the panic in
    // /state, and the panic is counted.
    put_network(&etcd, "engine-bug").await;
    let error = failed_with(&etcd, "engine-bug").await;
    assert!(
        error.contains("panicked") && error.contains("simulated engine bug"),
        "{error}"
    );
    let (_, body) = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")
        .await
        .expect("worker metrics");
    assert!(
        metric(&body, "esi_worker_job_panics_total").unwrap_or(0.0) >= 1.0,
        "{body}"
    );

    // The good template back, and a good network converges within seconds.
    etcd.put_json(NETWORK_TEMPLATE, &network_template(str::to_string))
        .await;
    let start = Instant::now();
    put_network(&etcd, "good").await;
    wait_state(
        &etcd,
        "/state/v2.0/networks/good",
        1,
        "CREATE_COMPLETED",
        Duration::from_secs(15),
    )
    .await;
    eprintln!("good network converged in {:?}", start.elapsed());

    // No claim is left behind by any of the bad jobs.
    eventually(Duration::from_secs(10), "no job left working", || async {
        etcd.keys("/jobs/working/").await.is_empty().then_some(())
    })
    .await;
    assert!(reconciler.child.try_wait().unwrap().is_none());
    worker.sigkill().await;
    reconciler.sigkill().await;
}
