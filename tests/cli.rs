//! The operator's commands against a real etcd: writing configs the way
//! Gohan does, loading templates, inspecting, and clear errors on bad input.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

fn with_etcd<'a>(etcd: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--etcd-endpoints", etcd]);
    v
}

#[tokio::test]
async fn config_apply_and_delete_bump_versions_like_gohan() {
    let etcd = TestEtcd::start().await;
    let url = etcd.url();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("net.json");
    std::fs::write(
        &f,
        json!({"type": "network", "body": {"id": "n1", "name": "a"}}).to_string(),
    )
    .unwrap();
    let path = f.display().to_string();

    let (ok, out, err) = cli(&with_etcd(&url, &["config", "apply", "-f", &path])).await;
    assert!(ok, "{err}");
    assert!(out.contains("networks/n1: created (v1)"), "{out}");
    let (_, out, _) = cli(&with_etcd(&url, &["config", "apply", "-f", &path])).await;
    assert!(out.contains("unchanged (v1)"), "{out}");
    std::fs::write(
        &f,
        json!([{"type": "networks", "body": {"id": "n1", "name": "b"}}]).to_string(),
    )
    .unwrap();
    let (_, out, _) = cli(&with_etcd(&url, &["config", "apply", "-f", &path])).await;
    assert!(out.contains("updated (v1 -> v2)"), "{out}");
    let rec = etcd.get_json("/config/v2.0/networks/n1").await.unwrap();
    assert_eq!(
        rec,
        json!({"body": {"id": "n1", "name": "b"}, "version": 2, "marked_for_deletion": false})
    );

    let (ok, out, err) = cli(&with_etcd(&url, &["config", "delete", "network/n1"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("marked for deletion (v3)"), "{out}");
    let rec = etcd.get_json("/config/v2.0/networks/n1").await.unwrap();
    assert_eq!(
        (rec["version"].clone(), rec["marked_for_deletion"].clone()),
        (json!(3), json!(true))
    );

    // Gohan's own record format is accepted too (the seed's config).
    let seed = seed_records().join("1_config.json").display().to_string();
    let (ok, out, err) = cli(&with_etcd(&url, &["config", "apply", "-f", &seed])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("ports/db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc: created (v1)"),
        "{out}"
    );
    assert_eq!(
        etcd.get_json("/config/v2.0/ports/db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc")
            .await
            .unwrap()["marked_for_deletion"],
        json!(true)
    );
}

#[tokio::test]
async fn bad_input_gets_a_specific_error_and_writes_nothing() {
    let etcd = TestEtcd::start().await;
    let url = etcd.url();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{not json", "is not valid JSON"),
        (
            r#"{"type": "gizmo", "body": {"id": "x"}}"#,
            "unknown resource type \"gizmo\"",
        ),
        (
            r#"{"type": "port", "body": {"name": "no id"}}"#,
            "body has no string id",
        ),
        (
            r#"{"key": "/state/v2.0/ports/x", "value": {"body": {}}}"#,
            "no /config records (skipped: /state/v2.0/ports/x)",
        ),
    ];
    for (text, want) in cases {
        let f = dir.path().join("bad.json");
        std::fs::write(&f, text).unwrap();
        let (ok, _, err) = cli(&with_etcd(
            &url,
            &["config", "apply", "-f", &f.display().to_string()],
        ))
        .await;
        assert!(!ok, "{text} was accepted");
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = cli(&with_etcd(&url, &["config", "delete", "port/missing"])).await;
    assert!(!ok && err.contains("no config to delete"), "{err}");
    let (ok, _, err) = cli(&with_etcd(&url, &["plan", "port"])).await;
    assert!(!ok && err.contains("is not TYPE/ID"), "{err}");
    let (ok, _, err) = cli(&[
        "get",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        "--etcd-connect-timeout",
        "1",
    ])
    .await;
    assert!(
        !ok && err.contains(
            "cannot reach etcd at http://127.0.0.1:1: tcp connect error (Connection refused"
        ),
        "{err}"
    );
    let (ok, _, err) = cli(&with_etcd(&url, &["get", "--schemas", "/nonexistent.json"])).await;
    assert!(!ok && err.contains("cannot read schema document"), "{err}");
    assert!(etcd.keys("/").await.is_empty(), "bad input wrote something");
}

#[tokio::test]
async fn templates_load_then_plan_explains_the_next_action() {
    let etcd = TestEtcd::start().await;
    let url = etcd.url();
    let catalog = reference_catalog_args();
    let catalog: Vec<&str> = catalog.iter().map(String::as_str).collect();
    let tpl = reference().join("heat_templates").display().to_string();
    let (ok, out, err) = cli(&with_etcd(&url, &["templates", "load", &tpl])).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": created (v1)")).count(),
        47,
        "{out}"
    );
    assert_eq!(etcd.keys("/config/v2.0/heat_templates/").await.len(), 47);

    etcd.put_json(
        "/config/v2.0/networks/n1",
        &json!({"body": {"id": "n1", "admin_state_up": true}, "version": 1}),
    )
    .await;
    let mut args = with_etcd(&url, &["plan", "network/n1"]);
    args.extend(&catalog);
    let (ok, out, err) = cli(&args).await;
    assert!(ok, "{err}");
    assert!(out.contains("desired:  Present v1"), "{out}");
    assert!(
        out.contains(
            "next:     issue create job v1 (template network, handler heat_worker) — no /state yet"
        ),
        "{out}"
    );
    // plan writes nothing.
    assert!(etcd.keys("/jobs/").await.is_empty());
    assert!(etcd.keys("/esi-reconciler/").await.is_empty());

    let mut args = with_etcd(&url, &["get", "-o", "json"]);
    args.extend(&catalog);
    let (ok, out, err) = cli(&args).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["resources"][0]["phase"], "Progressing");
    assert_eq!(v["resources"][0]["desired_version"], 1);

    // A subnet and a port on that network, with no job yet: plan shows what
    // run does, the network's job first and the others waiting for it.
    etcd.put_json(
        "/config/v2.0/subnets/s1",
        &json!({"body": {"id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24"}, "version": 1}),
    )
    .await;
    etcd.put_json(
        "/config/v2.0/ports/p1",
        &json!({"body": {"id": "p1", "network_id": "n1", "device_owner": "compute:nova",
                          "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]}, "version": 1}),
    )
    .await;
    let mut args = with_etcd(&url, &["plan"]);
    args.extend(&catalog);
    let (ok, out, err) = cli(&args).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("next:     issue create job v1 (template network"),
        "{out}"
    );
    assert!(
        out.contains("phase:    Pending (waiting for network n1 to be issued first)"),
        "{out}"
    );
    assert_eq!(
        out.matches("to be issued first").count(),
        2,
        "the subnet and the port wait: {out}"
    );
    assert!(etcd.keys("/jobs/").await.is_empty(), "plan writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_every_figure_at_a_small_scale() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("bench.json");
    let plot = dir.path().join("bench.png");
    let (ok, out, err) = cli(&[
        "bench",
        "--scale",
        "40",
        "--changes",
        "20",
        "--change-rate",
        "20",
        "--idle-secs",
        "2",
        "--report",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[1..4], b"PNG", "the cold start is plotted");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(r["txn_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["cold_start_s"].as_f64().unwrap() > 0.0);
    assert!(r["ratio_to_limit"].as_f64().unwrap() > 0.0);
    assert_eq!(r["ready_latency"]["samples"], 20);
    assert_eq!(r["converged_latency"]["samples"], 20);
    assert!(r["reconciler"]["rss_kib"].as_u64().unwrap() > 0);
    assert!(r["worker"]["anon_kib"].as_u64().unwrap() > 0);
    let samples = r["convergence"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert_eq!(
        last["states"], r["resources"],
        "the timeline ends converged"
    );
    assert_eq!(last["jobs"], 0);
    // Every resource's creation took at least the needed writes.
    assert!(
        r["writes_per_resource_seen"].as_f64().unwrap() >= 5.0,
        "{r}"
    );
    // Converged and idle: neither process spins.
    assert!(r["idle_worker_cpu_pct"].as_f64().unwrap() < 20.0, "{r}");
    assert!(r["idle_reconciler_cpu_pct"].as_f64().unwrap() < 20.0, "{r}");
    assert!(out.contains("ratio to the limit"), "{out}");
}

/// Runs `demo` with `args`, its temporary files (log, etcd's data) in
/// `tmp`; returns (status, stdout, stderr).
async fn demo(tmp: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_esi-reconciler"))
        .arg("demo")
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .env_remove("ESI_LOG_FORMAT")
        .env_remove("ESI_LOG_LEVEL")
        .env_remove("ESI_DEMO_ETCD_ENDPOINTS")
        .output()
        .await
        .expect("run esi-reconciler demo");
    outcome(&out)
}

/// Lines of `s` that look like a log record (tracing's text or JSON, etcd's)
/// rather than the demo's story.
fn log_lines(s: &str) -> Vec<&str> {
    let re =
        regex::Regex::new(r#"\b(TRACE|DEBUG|INFO|WARN|WARNING|ERROR)\b|"level"|\x1b\["#).unwrap();
    s.lines().filter(|l| re.is_match(l)).collect()
}

/// The one file the demo left in `tmp`: its log (etcd's data is gone).
fn demo_log(tmp: &std::path::Path) -> std::path::PathBuf {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let name = left[0].file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("esi-demo-") && name.ends_with(".log"),
        "{left:?}"
    );
    left[0].clone()
}

#[tokio::test]
async fn demo_prints_only_its_story_and_logs_to_the_file_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = demo(tmp.path(), &["--latency-ms", "50"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("\nEverything converged in "), "{out}");
    assert!(
        out.contains("(5) /state/v2.0/ports/db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc"),
        "{out}"
    );
    assert_eq!(log_lines(&out), Vec::<&str>::new(), "{out}");
    assert_eq!(err, "", "nothing on stderr");

    let log = demo_log(tmp.path());
    let named = format!(
        "Logs of the reconciler, the worker and etcd: {}",
        log.display()
    );
    assert_eq!(out.lines().last(), Some(named.as_str()), "{out}");
    assert_eq!(
        out.lines().nth(1),
        Some(
            format!(
                "(logs of the reconciler, the worker and etcd: {})",
                log.display()
            )
            .as_str()
        ),
        "named at the start too: {out}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [
        " INFO esi_reconciler::reconcile::controller: applied resource=ports/db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc",
        " INFO esi_reconciler::worker: claimed job=logical_delete:heat_worker:port:db3bff62",
        " INFO esi_reconciler::worker: worker stopped",
    ] {
        assert!(text.contains(want), "{want:?} not in the log:\n{text}");
    }
    assert!(!text.contains('\x1b'), "colours in the log file:\n{text}");
}

#[tokio::test]
async fn demo_verbose_also_shows_the_logs_on_stderr_in_the_log_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = demo(
        tmp.path(),
        &["--latency-ms", "50", "--verbose", "--log-format", "json"],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(log_lines(&out), Vec::<&str>::new(), "{out}");
    // The records without their timestamps (each output takes its own).
    let records = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|mut r| {
                r.as_object_mut()?.remove("timestamp")?;
                Some(r)
            })
            .collect()
    };
    let shown = records(&err);
    assert_eq!(
        shown.len(),
        err.lines().count(),
        "stderr holds only JSON log records:\n{err}"
    );
    assert!(
        shown.iter().any(|r| r["target"] == "esi_reconciler::worker"
            && r["message"] == "claimed"
            && r["level"] == "INFO"),
        "{err}"
    );
    // The same records (two threads' events may reach the outputs in
    // different orders).
    let sorted = |mut v: Vec<serde_json::Value>| {
        v.sort_by_key(|r| r.to_string());
        v
    };
    let text = std::fs::read_to_string(demo_log(tmp.path())).unwrap();
    assert_eq!(
        sorted(records(&text)),
        sorted(shown),
        "the log file has the same records"
    );
}

#[tokio::test]
async fn demo_failure_names_the_log_holding_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing converges within 0 s: step 4 gives up.
    let (ok, out, err) = demo(tmp.path(), &["--timeout-secs", "0"]).await;
    assert!(!ok, "{out}{err}");
    assert_eq!(log_lines(&out), Vec::<&str>::new(), "{out}");
    let log = demo_log(tmp.path());
    assert!(
        err.starts_with(&format!(
            "error: the demo failed (logs of the reconciler, the worker and etcd: {}): \
             not converged within 0ns",
            log.display()
        )),
        "{err}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" ERROR esi_harness::demo::story: the demo failed error=\"not converged"),
        "{text}"
    );
}

/// A queued job of an old version is withdrawn even while the new version's
/// job has to wait for a referenced resource: plan shows both decisions, and
/// run carries out the first and holds the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_job_is_withdrawn_while_the_new_one_waits() {
    let etcd = TestEtcd::start().await;
    let url = etcd.url();
    // The port's and subnet's templates, not the network's: the network
    // stays without a job, so whatever references it has to wait.
    load_reference_templates_named(&etcd, &["port", "subnet"]).await;
    etcd.put_json(
        "/config/v2.0/networks/n1",
        &json!({"body": {"id": "n1", "tenant_id": "t"}, "version": 1}),
    )
    .await;
    let port = |version: u64| {
        json!({"body": {"id": "p1", "network_id": "n1", "device_owner": "compute:nova", "tenant_id": "t",
                        "fixed_ips": []}, "version": version})
    };
    etcd.put_json("/config/v2.0/ports/p1", &port(2)).await;
    // A v1 job the Job Manager queued before the config moved on.
    let id = "create:heat_worker:port:p1:1:old00";
    let job = json!(["heat_worker", {"id": id, "job_name": "port:p1:1", "handler": "heat_worker",
        "action": "create", "resource_type": "port", "resource_id": "p1", "version": 1,
        "is_first": true, "is_last": true, "on_failure": "fail", "dependency": [],
        "resource_input": {}, "params": []}, 0]);
    etcd.put_json(&format!("/jobs/all/{id}"), &job).await;
    etcd.put(&format!("/jobs/ready/{id}"), "heat_worker").await;

    let mut args = with_etcd(&url, &["plan", "port/p1"]);
    let catalog = reference_catalog_args();
    args.extend(catalog.iter().map(String::as_str));
    let (ok, out, err) = cli(&args).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("next:     withdraw {id}")), "{out}");
    assert!(
        out.contains("waiting for network n1 to be issued first"),
        "{out}"
    );

    let port = free_port();
    let _reconciler = spawn_args(&reconciler_args(&url, port));
    eventually(Duration::from_secs(30), "the v1 job withdrawn", || async {
        etcd.keys("/jobs/").await.is_empty().then_some(())
    })
    .await;
    // Held, not failed: a wait costs no write (get plans it live).
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "the job held", || async {
        let (_, body) = http_get(&addr, "/metrics").await?;
        metric(
            &body,
            "esi_reconciler_reconciles_total{result=\"deferred\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    let status = etcd
        .get_json("/esi-reconciler/v1/resources/ports/p1")
        .await
        .unwrap_or_default();
    assert_eq!(status["last_error"].as_str().unwrap_or(""), "", "{status}");
    let (ok, out, err) = cli(&{
        let mut a = with_etcd(&url, &["get"]);
        a.extend(catalog.iter().map(String::as_str));
        a
    })
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("waiting for network n1 to be issued first"),
        "{out}"
    );
    assert!(
        etcd.keys("/jobs/").await.is_empty(),
        "no v2 job while it waits"
    );
}
