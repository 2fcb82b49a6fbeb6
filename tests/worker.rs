//! The heat worker with the reconciler, as two real processes on one etcd.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::*;

const LB: &str = "05_load_balancer";
const PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";
const NET: &str = "ce9a7a92-d11a-4fc6-8ae7-18061b62c98f";
/// How long any one wait in these tests may take.
const WITHIN: Duration = Duration::from_secs(30);

async fn apply_step(etcd: &TestEtcd, step: &str) {
    for (key, value) in gohan_step(LB, step) {
        etcd.put_json(&key, &value).await;
    }
}

/// Waits until network `NET`'s `/state` is at `version` with `worker_state`.
async fn wait_network(etcd: &TestEtcd, version: u64, worker_state: &str) -> Value {
    let key = format!("/state/v2.0/networks/{NET}");
    wait_state(etcd, &key, version, worker_state, WITHIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_yields_the_seed_records() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let rec = Recorder::start(&etcd, "/").await;
    let (_r, _w) = spawn_reconciler_and_worker(&etcd.url(), &["--sim-latency-ms", "50"]);
    let state = |id: &str, plural: &str| format!("/state/v2.0/{plural}/{id}");
    // The story of port db3bff62, one step at a time, as recorded.
    apply_step(&etcd, "CreateNetwork1_01").await;
    apply_step(&etcd, "CreateSubnet1_01").await;
    wait_state(
        &etcd,
        &state("6f5f33d6-2cfe-47c1-a91a-3f3d44972b1a", "subnets"),
        1,
        "CREATE_COMPLETED",
        WITHIN,
    )
    .await;
    for (step, v, ws) in [
        ("CreateLoadbalancer_02", 1, "CREATE_COMPLETED"),
        ("CreateLoadbalancer_16", 2, "MODIFY_COMPLETED"),
        ("CreateLoadbalancer_17", 3, "MODIFY_COMPLETED"),
        ("UpdateLoadbalancerInterface_07", 4, "DELETE_COMPLETED"),
    ] {
        apply_step(&etcd, step).await;
        wait_state(&etcd, &state(PORT, "ports"), v, ws, WITHIN).await;
    }
    // (1) the config, as Gohan wrote it.
    assert_eq!(
        etcd.get_json(&format!("/config/v2.0/ports/{PORT}"))
            .await
            .unwrap(),
        seed_value("1_config.json")
    );
    // (2) the job: same params (as sets), action, version, input; random suffix aside.
    let events = rec.events().await;
    let job: Value = events
        .iter()
        .find(|(_, put, k, _)| {
            *put && k.starts_with(&format!(
                "/jobs/all/logical_delete:heat_worker:port:{PORT}:4:"
            ))
        })
        .map(|(.., v)| serde_json::from_slice(v).unwrap())
        .expect("the logical_delete job was issued");
    assert_seed_job(&job);
    // (3), (4) and (5): exactly the seed's records.
    assert_seed_port_records(&etcd, &rec).await;
    let job_state_key = format!("/esi-worker/job_state/v2.0/ports/{PORT}");
    eventually(
        WITHIN,
        "job_state to be removed at the job's end",
        || async { etcd.get(&job_state_key).await.is_none().then_some(()) },
    )
    .await;
    // The reconciler then finishes the job (removes all/ and finished/).
    eventually(WITHIN, "the finished job to be removed", || async {
        etcd.keys("/jobs/").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_honours_dependencies() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let rec = Recorder::start(&etcd, "/jobs/").await;
    let (_r, _w) = spawn_reconciler_and_worker(&etcd.url(), &["--sim-latency-ms", "400"]);
    // Network, subnet and port all at once.
    for step in [
        "CreateNetwork1_01",
        "CreateSubnet1_01",
        "CreateLoadbalancer_02",
    ] {
        apply_step(&etcd, step).await;
    }
    wait_state(
        &etcd,
        &format!("/state/v2.0/ports/{PORT}"),
        1,
        "CREATE_COMPLETED",
        WITHIN,
    )
    .await;
    let events = rec.events().await;
    let first = |put: bool, prefix: &str, rtype: &str| -> (i64, String) {
        events
            .iter()
            .find(|(_, p, k, _)| {
                *p == put && k.starts_with(prefix) && k.contains(&format!(":{rtype}:"))
            })
            .map(|(r, _, k, _)| (*r, k.clone()))
            .unwrap_or_else(|| panic!("no {prefix} event for {rtype}"))
    };
    let (_, net_job) = first(true, "/jobs/all/", "network");
    let net_id = net_job.trim_start_matches("/jobs/all/");
    let (net_finished, _) = first(true, "/jobs/finished/", "network");
    let (sub_finished, _) = first(true, "/jobs/finished/", "subnet");
    // The subnet's job waited for the network's, naming it.
    let (_, sub_job) = first(true, "/jobs/all/", "subnet");
    let sub_doc: Value = serde_json::from_slice(
        &events
            .iter()
            .find(|(_, p, k, _)| *p && *k == sub_job)
            .unwrap()
            .3,
    )
    .unwrap();
    assert_eq!(sub_doc[1]["dependency"], json!([net_id]));
    let (sub_waiting, _) = first(true, "/jobs/waiting/", "subnet");
    let (sub_ready, _) = first(true, "/jobs/ready/", "subnet");
    assert!(
        sub_waiting < net_finished && net_finished < sub_ready,
        "subnet released before the network finished"
    );
    // The port's was claimed only after both had finished.
    let (port_claimed, _) = first(true, "/jobs/working/", "port");
    assert!(
        port_claimed > net_finished && port_claimed > sub_finished,
        "port claimed before its dependencies finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_claim_writes_nothing() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let rec = Recorder::start(&etcd, "/").await;
    let _r = spawn_args(&reconciler_args(&etcd.url(), ANY_PORT));
    let a_port = free_port();
    let mut a = spawn_args(&worker_args(
        &etcd.url(),
        a_port,
        &["--sim-latency-ms", "3000", "--lease-ttl-secs", "2"],
    ));
    apply_step(&etcd, "CreateNetwork1_01").await;
    let working_a = eventually(WITHIN, "worker A to claim the job", || async {
        etcd.keys("/jobs/working/").await.first().cloned()
    })
    .await;
    let reservation_a = etcd.get(&working_a).await.unwrap();
    // Freeze A mid-job: its lease lapses and etcd drops its claim.
    a.signal(Signal::STOP);
    eventually(WITHIN, "A's claim to expire", || async {
        etcd.get(&working_a).await.is_none().then_some(())
    })
    .await;
    // B and, later, C: quicker than A, on as short a lease.
    let spawn_worker = || {
        spawn_args(&worker_args(
            &etcd.url(),
            ANY_PORT,
            &["--sim-latency-ms", "200", "--lease-ttl-secs", "2"],
        ))
    };
    let mut b = spawn_worker();
    wait_network(&etcd, 1, "CREATE_COMPLETED").await;
    // Thaw A: it finds its claim gone and writes nothing.
    a.signal(Signal::CONT);
    let addr = format!("127.0.0.1:{a_port}");
    eventually(WITHIN, "A to notice its lost claim", || {
        let addr = addr.clone();
        async move {
            let (_, body) = http_get(&addr, "/metrics").await?;
            (metric(&body, "esi_worker_jobs_total{result=\"claim_lost\"}")? >= 1.0).then_some(())
        }
    })
    .await;
    let events = rec.events().await;
    let state_puts: Vec<&Recorded> = events
        .iter()
        .filter(|(_, p, k, _)| *p && k.starts_with("/state/"))
        .collect();
    assert_eq!(
        state_puts.len(),
        1,
        "exactly one /state write: {state_puts:?}"
    );
    let b_claim = events
        .iter()
        .find(|(_, p, k, v)| *p && k.starts_with("/jobs/working/") && *v != reservation_a)
        .expect("B claimed")
        .0;
    assert!(
        state_puts[0].0 > b_claim,
        "the result was written under B's claim"
    );
    // And a worker killed outright: its job is claimed again and completes.
    etcd.put_json(&format!("/config/v2.0/networks/{NET}"), &{
        let mut c = gohan_step(LB, "CreateNetwork1_01")[0].1.clone();
        c["version"] = json!(2);
        c["body"]["name"] = json!("renamed");
        c
    })
    .await;
    b.sigkill().await;
    let _c = spawn_worker();
    wait_network(&etcd, 2, "MODIFY_COMPLETED").await;
    let versions: Vec<u64> = rec
        .events()
        .await
        .iter()
        .filter(|(_, p, k, _)| *p && k.starts_with("/state/"))
        .map(|(.., v)| {
            serde_json::from_slice::<Value>(v).unwrap()["version"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        versions,
        vec![1, 2],
        "one /state write per version, never backwards"
    );
    a.sigkill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_scenario_converges() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let (_r, _w) = spawn_reconciler_and_worker(&etcd.url(), &["--sim-latency-ms", "20"]);
    let order = read_json(reference().join("step_order.json"));
    for step in order[LB].as_array().unwrap() {
        let f = reference()
            .join("scenarios")
            .join(LB)
            .join("01_Gohan")
            .join(format!("{}.json", step.as_str().unwrap()));
        let mut args = vec![
            "config".to_string(),
            "apply".into(),
            "-f".into(),
            f.display().to_string(),
            "--etcd-endpoints".into(),
            etcd.url(),
        ];
        args.extend(reference_catalog_args());
        let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(ok, "{step}: {err}");
    }
    let get = get_json_args(&etcd.url());
    let get: Vec<&str> = get.iter().map(String::as_str).collect();
    let resources = eventually(
        Duration::from_secs(90),
        "every resource converged",
        || async {
            let (ok, out, _) = cli(&get).await;
            let v: Value = serde_json::from_str(&out).ok()?;
            let all = v["resources"].as_array()?.clone();
            (ok && all.iter().all(|r| {
                r["phase"] == "Converged" && r["next"].as_array().is_some_and(|n| n.is_empty())
            }))
            .then_some(all)
        },
    )
    .await;
    // Every config of the scenario is realised at its latest version.
    let with_jobs: Vec<&Value> = resources
        .iter()
        .filter(|r| r["observed_version"].is_u64())
        .collect();
    assert!(
        with_jobs.len() >= 15,
        "{} resources with a state",
        with_jobs.len()
    );
    for r in &with_jobs {
        assert_eq!(r["observed_version"], r["desired_version"], "{r}");
    }
    assert!(etcd.keys("/jobs/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_running_jobs_after_the_grace_period() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let (_r, mut w) = spawn_reconciler_and_worker(
        &etcd.url(),
        &["--sim-latency-ms", "4000", "--shutdown-grace-secs", "1"],
    );
    apply_step(&etcd, "CreateNetwork1_01").await;
    let working = eventually(WITHIN, "the job to be claimed", || async {
        etcd.keys("/jobs/working/").await.first().cloned()
    })
    .await;
    let id = working.trim_start_matches("/jobs/working/").to_string();
    w.signal(Signal::TERM);
    let status = tokio::time::timeout(WITHIN, w.child.wait())
        .await
        .expect("worker exits after its grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The job is back in ready/, unclaimed, for another worker.
    assert!(etcd.get(&working).await.is_none(), "claim left behind");
    assert_eq!(
        etcd.get(&format!("/jobs/ready/{id}")).await.as_deref(),
        Some(&b"heat_worker"[..])
    );
    // A second worker adopts the stack operation the first started, and completes the job.
    let _w2 = spawn_args(&worker_args(
        &etcd.url(),
        ANY_PORT,
        &["--sim-latency-ms", "50"],
    ));
    wait_network(&etcd, 1, "CREATE_COMPLETED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deleted_removes_what_gohan_would() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    let mut args = reconciler_args(&etcd.url(), ANY_PORT);
    args.push("--purge-deleted".into());
    let _r = spawn_args(&args);
    let _w = spawn_args(&worker_args(
        &etcd.url(),
        ANY_PORT,
        &["--sim-latency-ms", "50"],
    ));
    apply_step(&etcd, "CreateNetwork1_01").await;
    wait_network(&etcd, 1, "CREATE_COMPLETED").await;
    let (ok, out, err) = cli(&[
        "config",
        "delete",
        &format!("network/{NET}"),
        "--etcd-endpoints",
        &etcd.url(),
        "--schemas",
        &reference().join("schemas.json").display().to_string(),
    ])
    .await;
    assert!(ok && out.contains("marked for deletion (v2)"), "{out}{err}");
    // Deleted, then purged: config and stack record gone, /state records the delete.
    eventually(WITHIN, "the config and stack record purged", || async {
        let gone = etcd
            .get(&format!("/config/v2.0/networks/{NET}"))
            .await
            .is_none()
            && etcd
                .get(&format!("/esi-worker/heat_stacks/v2.0/networks/{NET}"))
                .await
                .is_none();
        gone.then_some(())
    })
    .await;
    assert_state(
        &etcd,
        &format!("/state/v2.0/networks/{NET}"),
        2,
        "DELETE_COMPLETED",
    )
    .await;
    assert!(
        etcd.keys("/esi-reconciler/v1/resources/").await.is_empty(),
        "our status record outlived the resource"
    );
    let get = get_json_args(&etcd.url());
    let (_, out, _) = cli(&get.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["resources"][0]["phase"], "Converged", "{out}");
}

/// A network's `/config` record (the fields the network template maps).
fn network_config(id: &str, name: &str, version: u64) -> Value {
    json!({"body": {"id": id, "name": name, "tenant_id": "t", "admin_state_up": true},
           "version": version, "marked_for_deletion": false})
}

/// Adds an output `marker` (value `changed`) to the network template in
/// etcd: its outputs are the template's last section.
async fn add_marker_output_to_network_template(etcd: &TestEtcd) {
    let key = "/config/v2.0/heat_templates/network";
    let mut template = etcd.get_json(key).await.unwrap();
    let file = template["body"]["template_file"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        file.trim_end().ends_with("route_targets] }"),
        "outputs last"
    );
    template["body"]["template_file"] = json!(format!(
        "{}\n  marker:\n    description: added\n    value: changed\n",
        file.trim_end()
    ));
    etcd.put_json(key, &template).await;
}

/// The values of the `marker` output in a heat stack record.
fn markers(stack: &Value) -> Vec<Value> {
    stack["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["output_key"] == "marker")
        .map(|o| o["output_value"].clone())
        .collect()
}

/// The worker keeps heat templates from a watch instead of reading one per
/// job: a template changed after a job used it must be the one the next
/// job renders (here, an output the new template adds shows up in the
/// stack record of the network's next job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_template_is_what_the_next_job_renders() {
    let etcd = TestEtcd::start().await;
    load_reference_templates_named(&etcd, &["network"]).await;
    let (_r, _w) = spawn_reconciler_and_worker(&etcd.url(), &[]);
    let config = "/config/v2.0/networks/n-cache";
    let state = "/state/v2.0/networks/n-cache";
    let stack = "/esi-worker/heat_stacks/v2.0/networks/n-cache";
    etcd.put_json(config, &network_config("n-cache", "a", 1))
        .await;
    wait_state(&etcd, state, 1, "CREATE_COMPLETED", WITHIN).await;
    assert!(markers(&etcd.get_json(stack).await.unwrap()).is_empty());
    // The template gains an output.
    add_marker_output_to_network_template(&etcd).await;
    etcd.put_json(config, &network_config("n-cache", "b", 2))
        .await;
    wait_state(&etcd, state, 2, "MODIFY_COMPLETED", WITHIN).await;
    assert_eq!(
        markers(&etcd.get_json(stack).await.unwrap()),
        vec![json!("changed")]
    );
}

/// The results of a job are fenced on the records it was made from: a
/// template changed while the job's stack was being made (after the worker
/// rendered it) fails that fence, and the job is done again from the new
/// template before its results land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_changed_during_a_job_makes_it_run_again() {
    let etcd = TestEtcd::start().await;
    load_reference_templates_named(&etcd, &["network"]).await;
    let (_r, _w) = spawn_reconciler_and_worker(&etcd.url(), &["--sim-latency-ms", "2000"]);
    let stack = "/esi-worker/heat_stacks/v2.0/networks/n-redo";
    etcd.put_json(
        "/config/v2.0/networks/n-redo",
        &network_config("n-redo", "a", 1),
    )
    .await;
    // The sim engine's record exists once the worker rendered and started.
    eventually(WITHIN, "the stack operation to start", || async {
        etcd.get("/~esi-sim/v1/stacks/network_n-redo").await
    })
    .await;
    add_marker_output_to_network_template(&etcd).await;
    wait_state(
        &etcd,
        "/state/v2.0/networks/n-redo",
        1,
        "CREATE_COMPLETED",
        WITHIN,
    )
    .await;
    let record = etcd.get_json(stack).await.unwrap();
    let marker = markers(&record).first().cloned();
    assert_eq!(marker, Some(json!("changed")), "{record}");
}

/// A ready job whose record does not parse is found out only by claiming
/// it (the claim reads the record in its own transaction). The worker then
/// puts back exactly what it found — `ready/` and no `working/` or
/// `job_state` — counts it once as invalid, and does not take it again
/// while it goes on with other jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ready_job_is_given_back_untouched_and_not_retaken() {
    let etcd = TestEtcd::start().await;
    load_reference_templates_named(&etcd, &["network"]).await;
    let id = "create:heat_worker:network:n-bad:1:zzzzz";
    let all = format!("/jobs/all/{id}");
    let ready = format!("/jobs/ready/{id}");
    etcd.put(&all, "[\"heat_worker\", {").await;
    etcd.put(&ready, "heat_worker").await;
    let port = free_port();
    let _w = spawn_args(&worker_args(&etcd.url(), port, &[]));
    let _r = spawn_args(&reconciler_args(&etcd.url(), ANY_PORT));
    let addr = format!("127.0.0.1:{port}");
    let invalid = || async {
        let (_, body) = http_get(&addr, "/metrics").await?;
        metric(&body, "esi_worker_jobs_total{result=\"invalid\"}")
    };
    eventually(WITHIN, "the invalid job to be counted", || async {
        invalid().await.filter(|n| *n >= 1.0)
    })
    .await;
    // Another job runs to its end after it: the worker is not stuck on the
    // bad one, and had time to take it again if it would.
    etcd.put_json(
        "/config/v2.0/networks/n-good",
        &network_config("n-good", "g", 1),
    )
    .await;
    wait_state(
        &etcd,
        "/state/v2.0/networks/n-good",
        1,
        "CREATE_COMPLETED",
        WITHIN,
    )
    .await;
    assert_eq!(invalid().await, Some(1.0));
    assert_eq!(
        etcd.get(&all).await.as_deref(),
        Some(&b"[\"heat_worker\", {"[..])
    );
    assert_eq!(etcd.get(&ready).await.as_deref(), Some(&b"heat_worker"[..]));
    assert!(etcd.get(&format!("/jobs/working/{id}")).await.is_none());
    assert!(
        etcd.get("/esi-worker/job_state/v2.0/networks/n-bad")
            .await
            .is_none()
    );
}
