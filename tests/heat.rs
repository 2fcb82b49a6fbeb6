//! The worker's Heat engine against a real OpenStack Heat (Debian's Heat 19
//! as one `heat-all`, no Keystone), with the reconciler, as real processes
//! on a real etcd. The catalog is ESI's schema document alone: templates are
//! chosen by each schema's `metadata.template_path`, as ESI does.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::heat::TestHeat;
use common::keystone::{self, TestKeystone};
use common::*;

const LB: &str = "05_load_balancer";
const PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";

/// ESI's schema document, and nothing else.
fn esi_catalog() -> Vec<String> {
    vec![
        "--schemas".into(),
        reference().join("schemas.json").display().to_string(),
    ]
}

fn reconciler(etcd: &str, catalog: &[String]) -> Proc {
    let mut a: Vec<String> = [
        "run",
        "--etcd-endpoints",
        etcd,
        "--metrics-addr",
        "127.0.0.1:0",
        "--no-mirror",
        "--backoff-base-ms",
        "200",
        "--backoff-cap-secs",
        "2",
    ]
    .map(String::from)
    .to_vec();
    a.extend_from_slice(catalog);
    spawn_args(&a)
}

/// The Heat engine on Heat's no-auth pipeline at `url`: the Heat these
/// tests start has no Keystone.
fn heat_no_auth(url: &str) -> [&str; 6] {
    ["--engine", "heat", "--heat-auth", "none", "--heat-url", url]
}

/// `worker` flags on `etcd` with `engine`'s flags and the catalog.
fn heat_worker_args(etcd: &str, engine: &[&str], catalog: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "worker",
        "--etcd-endpoints",
        etcd,
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .chain(engine)
    .map(|s| s.to_string())
    .collect();
    a.extend_from_slice(catalog);
    a
}

/// A worker on Heat's no-auth pipeline, with the test environment.
fn heat_worker(etcd: &str, heat: &TestHeat, catalog: &[String], extra: &[&str]) -> Proc {
    let url = heat.url();
    let env = heat.environment_file().display().to_string();
    let engine = [
        &heat_no_auth(&url)[..],
        &["--heat-environment", &env],
        extra,
    ]
    .concat();
    spawn_args(&heat_worker_args(etcd, &engine, catalog))
}

async fn get_all(etcd: &str, catalog: &[String]) -> Option<Vec<Value>> {
    let mut a: Vec<String> = ["get", "-o", "json", "--etcd-endpoints", etcd]
        .map(String::from)
        .to_vec();
    a.extend_from_slice(catalog);
    let (ok, out, _) = cli(&a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let v: Value = serde_json::from_str(&out).ok()?;
    ok.then(|| v["resources"].as_array().cloned())?
}

/// The load-balancer scenario, every step as Gohan wrote it, converges on a
/// real Heat; Heat's stacks are the resources' `{type}_{id}` with the
/// statuses and outputs the records carry; the seed port's stack is
/// deleted and its records are the seed's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_story_converges_on_real_heat() {
    let etcd = TestEtcd::start().await;
    let heat = TestHeat::start().await;
    load_reference_templates(&etcd).await;
    let catalog = esi_catalog();
    let rec = Recorder::start(&etcd, "/esi-worker/job_state/").await;
    let _r = reconciler(&etcd.url(), &catalog);
    let _w = heat_worker(&etcd.url(), &heat, &catalog, &[]);
    let order = read_json(reference().join("step_order.json"));
    for step in order[LB].as_array().unwrap() {
        for (k, v) in gohan_step(LB, step.as_str().unwrap()) {
            etcd.put_json(&k, &v).await;
        }
    }
    let resources = eventually(
        Duration::from_secs(240),
        "every resource converged on Heat",
        || async {
            let all = get_all(&etcd.url(), &catalog).await?;
            all.iter()
                .all(|r| {
                    r["phase"] == "Converged" && r["next"].as_array().is_some_and(|n| n.is_empty())
                })
                .then_some(all)
        },
    )
    .await;
    let stacks = heat.stacks().await;
    let schemas =
        esi_reconciler::esi::schema::Schemas::load(&reference().join("schemas.json")).unwrap();
    let mut checked = 0;
    for r in &resources {
        let (Some(rtype), Some(id)) = (r["type"].as_str(), r["id"].as_str()) else {
            panic!("a resource without type and id: {r}");
        };
        if !r["observed_version"].is_u64() {
            continue;
        }
        let plural = schemas.plural_of(rtype).unwrap();
        let record = etcd
            .get_json(&format!("/esi-worker/heat_stacks/v2.0/{plural}/{id}"))
            .await
            .unwrap_or_else(|| panic!("no heat_stacks record for {rtype}/{id}"));
        let name = format!("{rtype}_{id}");
        let listed = stacks.iter().find(|(n, ..)| *n == name);
        if record["stack_status"] == "DELETE_COMPLETE" {
            assert!(listed.is_none(), "{name} is deleted but Heat lists it");
            continue;
        }
        let (_, status, stack_id) =
            listed.unwrap_or_else(|| panic!("Heat has no stack {name}: {stacks:?}"));
        assert!(
            status == "CREATE_COMPLETE" || status == "UPDATE_COMPLETE",
            "{name}: {status}"
        );
        assert_eq!(record["stack_id"], json!(stack_id), "{name}");
        assert_eq!(record["stack_status"], json!(status), "{name}");
        // Outputs as Heat itself reports them.
        let shown = heat.stack(&name).await.unwrap();
        let mut want = shown["outputs"].as_array().cloned().unwrap_or_default();
        let mut got = record["output"].as_array().cloned().unwrap_or_default();
        let by_key = |v: &Value| v["output_key"].as_str().unwrap_or_default().to_string();
        want.sort_by_key(by_key);
        got.sort_by_key(by_key);
        assert_eq!(got, want, "{name}: outputs");
        checked += 1;
    }
    assert!(checked >= 10, "{checked} stacks compared with Heat");
    assert!(
        stacks.iter().all(|(n, ..)| !n.ends_with(PORT)),
        "the seed port's stack is deleted"
    );
    // The seed port's records (3)-(5): exactly the seed's.
    assert_seed_port_records(&etcd, &rec).await;
}

/// A type whose template is one `OS::Heat::TestResource`, so a test can
/// make Heat fail (`fail`) or take its time (`wait_secs`; -1: forever).
struct Widgets {
    dir: tempfile::TempDir,
}

impl Widgets {
    async fn install(etcd: &TestEtcd) -> Widgets {
        let dir = tempfile::tempdir().unwrap();
        let schemas = json!({"schemas": [{
            "id": "widget", "singular": "widget", "plural": "widgets",
            "metadata": {"template_path": "Cwidget"},
            "schema": {"properties": {"id": {"type": "string"}}}}]});
        std::fs::write(dir.path().join("schemas.json"), schemas.to_string()).unwrap();
        let template = "heat_template_version: 2018-08-31
parameters:
  value: {type: string}
  fail: {type: boolean, default: false}
  wait_secs: {type: number, default: 0}
resources:
  r:
    type: OS::Heat::TestResource
    properties:
      value: {get_param: value}
      fail: {get_param: fail}
      wait_secs: {get_param: wait_secs}
outputs:
  out:
    description: what the resource made
    value: {get_attr: [r, output]}
";
        etcd.put_json(
            "/config/v2.0/heat_templates/widget",
            &json!({"body": {"id": "widget", "handler": "heat_worker", "watch": [],
                "template_file": template,
                "parameter_mappings": {"value": "Pvalue", "fail": "Pfail",
                    "wait_secs": "Pwait_secs", "heat_timeout": "C1"}},
                "version": 1, "marked_for_deletion": false}),
        )
        .await;
        Widgets { dir }
    }

    fn catalog(&self) -> Vec<String> {
        vec![
            "--schemas".into(),
            self.dir.path().join("schemas.json").display().to_string(),
        ]
    }

    async fn put(etcd: &TestEtcd, id: &str, version: u64, body: Value) {
        let mut b = body;
        b["id"] = json!(id);
        b["tenant_id"] = json!("t1");
        etcd.put_json(
            &format!("/config/v2.0/widgets/{id}"),
            &json!({"body": b, "version": version, "marked_for_deletion": false}),
        )
        .await;
    }
}

async fn state(etcd: &TestEtcd, id: &str) -> Option<Value> {
    etcd.get_json(&format!("/state/v2.0/widgets/{id}")).await
}

/// Waits until widget `id`'s `/state` has `worker_state` (and, for a
/// completed one, no error); returns it.
async fn wait_widget(etcd: &TestEtcd, id: &str, worker_state: &str) -> Value {
    let completed = worker_state.ends_with("_COMPLETED");
    eventually(
        Duration::from_secs(60),
        &format!("widget {id} {worker_state}"),
        || async {
            let s = state(etcd, id).await?;
            (s["state"]["worker_state"] == worker_state && (!completed || s["error"] == ""))
                .then_some(s)
        },
    )
    .await
}

/// What most widget tests start from: an etcd with the widget template, a
/// Heat, and a reconciler reading the widget catalog.
async fn widget_world() -> (TestEtcd, TestHeat, Widgets, Proc) {
    let etcd = TestEtcd::start().await;
    let heat = TestHeat::start().await;
    let widgets = Widgets::install(&etcd).await;
    let reconciler = reconciler(&etcd.url(), &widgets.catalog());
    (etcd, heat, widgets, reconciler)
}

/// Waits until Heat shows the stack in progress; returns its id.
async fn in_progress(heat: &TestHeat, name: &str) -> String {
    eventually(Duration::from_secs(60), "the stack in progress", || async {
        let s = heat.stack(name).await?;
        (s["stack_status"].as_str()?.ends_with("_IN_PROGRESS"))
            .then(|| s["id"].as_str().unwrap().to_string())
    })
    .await
}

/// A stack that fails in Heat fails the job with Heat's reason; the
/// reconciler retries it with backoff (each retry recovers the FAILED stack
/// with PUT, and fails again); once the config is fixed, the same stack is
/// updated into shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stack_backs_off_and_recovers() {
    let (etcd, heat, widgets, _r) = widget_world().await;
    let rec = Recorder::start(&etcd, "/state/").await;
    let _w = heat_worker(&etcd.url(), &heat, &widgets.catalog(), &[]);
    Widgets::put(&etcd, "w1", 1, json!({"value": "one", "fail": true})).await;
    let failed = eventually(
        Duration::from_secs(60),
        "a second failed attempt",
        || async {
            let failures: Vec<Value> = rec
                .events()
                .await
                .iter()
                .filter(|(_, put, k, _)| *put && k.ends_with("/widgets/w1"))
                .map(|(.., v)| serde_json::from_slice::<Value>(v).unwrap())
                .filter(|v| v["state"]["worker_state"] == "CREATE_FAILED")
                .collect();
            (failures.len() >= 2).then_some(failures)
        },
    )
    .await;
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Test Resource failed"),
        "Heat's reason: {error}"
    );
    assert_eq!(failed[0]["state"]["orchestration_state"], "CREATE_FAILED");
    let first = heat.stack("widget_w1").await.unwrap();
    assert!(
        first["stack_status"].as_str().unwrap().ends_with("_FAILED"),
        "{first}"
    );
    let stack_id = first["id"].as_str().unwrap().to_string();

    Widgets::put(&etcd, "w1", 2, json!({"value": "two", "fail": false})).await;
    let s = eventually(Duration::from_secs(60), "v2 converged", || async {
        let s = state(&etcd, "w1").await?;
        (s["version"] == 2 && s["error"] == "").then_some(s)
    })
    .await;
    assert_eq!(s["state"]["orchestration_state"], "UPDATE_COMPLETE", "{s}");
    let now = heat.stack("widget_w1").await.unwrap();
    assert_eq!(
        now["id"],
        json!(stack_id),
        "the failed stack was recovered, not replaced"
    );
    assert_eq!(now["stack_status"], "UPDATE_COMPLETE");
    let outputs: Value =
        serde_json::from_str(s["state"]["heat_outputs"].as_str().unwrap()).unwrap();
    assert_eq!(outputs[0]["output_key"], "out");
    assert_eq!(outputs[0]["output_value"], "two");
    assert_eq!(heat.stacks().await.len(), 1);
}

/// A stack that outlives the job's time fails the job (the worker's cap
/// stands in for `heat_timeout`, which is whole minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_that_outlives_its_timeout_fails_the_job() {
    let (etcd, heat, widgets, _r) = widget_world().await;
    let _w = heat_worker(
        &etcd.url(),
        &heat,
        &widgets.catalog(),
        &["--job-timeout-cap-secs", "2"],
    );
    Widgets::put(&etcd, "slow", 1, json!({"value": "v", "wait_secs": -1})).await;
    let s = wait_widget(&etcd, "slow", "CREATE_FAILED").await;
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("timed out"), "{error}");
    // Heat is still at it: the job failed, not the stack.
    let shown = heat.stack("widget_slow").await.unwrap();
    assert_eq!(shown["stack_status"], "CREATE_IN_PROGRESS");
}

/// heat-all killed while a stack is being made: the worker keeps polling
/// through the outage; Heat, restarted, marks the stack FAILED ("Engine
/// went down"); the job fails with that reason and its retry recovers the
/// same stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_killed_mid_stack_and_restarted() {
    let (etcd, mut heat, widgets, _r) = widget_world().await;
    let rec = Recorder::start(&etcd, "/state/").await;
    let _w = heat_worker(&etcd.url(), &heat, &widgets.catalog(), &[]);
    Widgets::put(&etcd, "w2", 1, json!({"value": "v", "wait_secs": 3})).await;
    let id = in_progress(&heat, "widget_w2").await;
    heat.restart().await;
    let s = wait_widget(&etcd, "w2", "CREATE_COMPLETED").await;
    let shown = heat.stack("widget_w2").await.unwrap();
    assert_eq!(
        shown["id"],
        json!(id),
        "the same stack, recovered: {}",
        heat.log_tail()
    );
    assert!(
        shown["stack_status"]
            .as_str()
            .unwrap()
            .ends_with("_COMPLETE"),
        "{shown}"
    );
    assert_eq!(s["state"]["orchestration_state"], shown["stack_status"]);
    let went_down = rec
        .events()
        .await
        .iter()
        .any(|(_, put, _, v)| *put && String::from_utf8_lossy(v).contains("Engine went down"));
    assert!(
        went_down,
        "the interrupted attempt failed with Heat's reason"
    );
}

/// heat-all frozen (SIGSTOP: connections accepted, nothing answered) while
/// a stack is made, for longer than a request may take: the worker's
/// requests time out and are retried, and once Heat thaws the job
/// completes. No attempt fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_frozen_mid_stack_costs_no_failed_job() {
    let (etcd, heat, widgets, _r) = widget_world().await;
    let rec = Recorder::start(&etcd, "/state/").await;
    let _w = heat_worker(
        &etcd.url(),
        &heat,
        &widgets.catalog(),
        &["--heat-request-timeout-secs", "1"],
    );
    Widgets::put(&etcd, "w4", 1, json!({"value": "v", "wait_secs": 2})).await;
    in_progress(&heat, "widget_w4").await;
    heat.signal(Signal::STOP);
    // Longer than a request may take (1 s), shorter than the retries (5).
    tokio::time::sleep(Duration::from_secs(4)).await;
    heat.signal(Signal::CONT);
    wait_widget(&etcd, "w4", "CREATE_COMPLETED").await;
    let failed = rec
        .events()
        .await
        .iter()
        .any(|(_, put, _, v)| *put && String::from_utf8_lossy(v).contains("_FAILED"));
    assert!(!failed, "a frozen Heat cost a failed job");
}

/// A "Heat" that accepts connections and never answers: the job fails
/// within its own time (capped here to 3 s; each request would wait 30 s
/// and be retried 5 times), the claim is not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heat_that_never_answers_fails_the_job_in_its_time() {
    let etcd = TestEtcd::start().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/admin", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = vec![];
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let widgets = Widgets::install(&etcd).await;
    let _r = reconciler(&etcd.url(), &widgets.catalog());
    let engine = [&heat_no_auth(&url)[..], &["--job-timeout-cap-secs", "3"]].concat();
    let _w = spawn_args(&heat_worker_args(&etcd.url(), &engine, &widgets.catalog()));
    Widgets::put(&etcd, "mute", 1, json!({"value": "v"})).await;
    let s = wait_widget(&etcd, "mute", "CREATE_FAILED").await;
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("timed out after 3 s waiting for the engine"),
        "{error}"
    );
    held.abort();
}

/// The worker killed while Heat makes a stack: a new worker claims the job
/// again, finds the stack (409 StackExists) and adopts it: one stack, the
/// same id, created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stack_and_the_stack_adopted() {
    let (etcd, heat, widgets, _r) = widget_world().await;
    let lease = ["--lease-ttl-secs", "2"];
    let mut first = heat_worker(&etcd.url(), &heat, &widgets.catalog(), &lease);
    Widgets::put(&etcd, "w3", 1, json!({"value": "v", "wait_secs": 4})).await;
    let id = in_progress(&heat, "widget_w3").await;
    first.sigkill().await;
    let _second = heat_worker(&etcd.url(), &heat, &widgets.catalog(), &lease);
    let s = wait_widget(&etcd, "w3", "CREATE_COMPLETED").await;
    let shown = heat.stack("widget_w3").await.unwrap();
    assert_eq!(shown["id"], json!(id), "adopted, not made again");
    assert_eq!(
        shown["stack_status"], "CREATE_COMPLETE",
        "adopted as it was"
    );
    assert_eq!(s["state"]["orchestration_state"], "CREATE_COMPLETE");
    assert_eq!(heat.stacks().await.len(), 1);
}

/// The worker refuses a Heat configuration that can never work, at start.
#[tokio::test]
async fn bad_heat_settings_stop_the_worker_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--heat-auth", "none"], "--heat-url is required"),
        (
            &["--heat-auth", "none", "--heat-url", "ftp://x"],
            "not an http(s) endpoint",
        ),
        (&["--heat-auth", "keystone"], "OS_AUTH_URL"),
        (
            &[
                "--heat-auth",
                "none",
                "--heat-url",
                "http://127.0.0.1:1/v1/a",
                "--heat-environment",
                "/nonexistent.yaml",
            ],
            "/nonexistent.yaml",
        ),
    ];
    for (flags, want) in cases {
        let mut a = vec![
            "worker",
            "--engine",
            "heat",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ];
        a.extend_from_slice(flags);
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_esi-reconciler"))
            .args(&a)
            .env_remove("OS_AUTH_URL")
            .env_remove("OS_CLOUD")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("{flags:?}: the worker did not stop"))
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flags:?}: {err}"
        );
    }
}

/// The chaos drill on the Heat engine: a worker killed mid-job while Heat
/// makes the stacks; everything converges, no job is issued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_worker_kill_on_heat() {
    let heat = TestHeat::start().await;
    let report = tempfile::NamedTempFile::new().unwrap();
    let env = heat.environment_file();
    let url = heat.url();
    let args = [
        &["chaos"][..],
        &heat_no_auth(&url),
        &[
            "--heat-environment",
            env.to_str().unwrap(),
            "--drills",
            "worker-kill",
            "--ports",
            "20",
            "--within-secs",
            "120",
            "--report",
            report.path().to_str().unwrap(),
        ],
    ]
    .concat();
    let (ok, out, err) = cli(&args).await;
    assert!(ok, "{out}\n{err}\n{}", heat.log_tail());
    let r = read_json(report.path());
    assert_eq!(r["drills"][0]["passed"], true, "{r}");
    // The drill's stacks are Heat's, complete, in a project of the drill's own.
    let stacks = heat.all_stacks();
    assert!(stacks.len() >= 20, "{stacks:?}");
    for (project, name, status) in &stacks {
        assert!(
            project.starts_with("admin-chaos-worker-kill-"),
            "{project} {name}"
        );
        assert!(status.ends_with("_COMPLETE"), "{name}: {status}");
    }
    let sim_only = [
        &["chaos"][..],
        &heat_no_auth(&url),
        &["--drills", "engine-fails"],
    ]
    .concat();
    let (ok, _, err) = cli(&sim_only).await;
    assert!(!ok && err.contains("sim engine"), "{err}");
}

/// A worker started as the OpenStack tools are: no --heat-url, credentials
/// in the environment (and a `clouds.yaml` in its working directory).
fn keystone_worker(
    etcd: &str,
    heat: &TestHeat,
    catalog: &[String],
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) -> tokio::process::Child {
    let env_file = heat.environment_file().display().to_string();
    let engine = [
        "--engine",
        "heat",
        "--heat-auth",
        "keystone",
        "--heat-environment",
        &env_file,
    ];
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_esi-reconciler"));
    cmd.args(heat_worker_args(etcd, &engine, catalog))
        .current_dir(cwd)
        .env("ESI_LOG_LEVEL", "warn")
        .env("HOME", cwd)
        .kill_on_drop(true);
    for k in [
        "OS_CLOUD",
        "OS_AUTH_URL",
        "OS_USERNAME",
        "OS_PASSWORD",
        "OS_PROJECT_NAME",
        "OS_AUTH_TYPE",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the worker")
}

/// Keystone v3 for real: the worker authenticates with a password from the
/// `OS_*` variables, then with an application credential from a
/// `clouds.yaml` entry, and finds Heat in the catalog each time; a wrong
/// password fails the job with Keystone's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_password_and_application_credential() {
    let (etcd, heat, widgets, _r) = widget_world().await;
    let ks = TestKeystone::start().await;
    ks.register_heat(&heat.url()).await;
    let home = tempfile::tempdir().unwrap();
    let auth_url = ks.auth_url();
    let password = [
        ("OS_AUTH_URL", auth_url.as_str()),
        ("OS_USERNAME", "admin"),
        ("OS_PASSWORD", keystone::PASSWORD),
        ("OS_PROJECT_NAME", "admin"),
        ("OS_USER_DOMAIN_NAME", "Default"),
        ("OS_PROJECT_DOMAIN_NAME", "Default"),
        ("OS_REGION_NAME", keystone::REGION),
    ];
    let mut w = keystone_worker(
        &etcd.url(),
        &heat,
        &widgets.catalog(),
        &password,
        home.path(),
    );
    Widgets::put(&etcd, "pw", 1, json!({"value": "by password"})).await;
    wait_widget(&etcd, "pw", "CREATE_COMPLETED").await;
    w.kill().await.unwrap();

    let (id, secret) = ks.application_credential("esi-worker").await;
    std::fs::write(
        home.path().join("clouds.yaml"),
        format!("clouds:\n  esi:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {auth_url}\n      application_credential_id: {id}\n      application_credential_secret: {secret}\n    region_name: {}\n    interface: public\n", keystone::REGION),
    )
    .unwrap();
    let mut w = keystone_worker(
        &etcd.url(),
        &heat,
        &widgets.catalog(),
        &[("OS_CLOUD", "esi")],
        home.path(),
    );
    Widgets::put(
        &etcd,
        "ac",
        1,
        json!({"value": "by application credential"}),
    )
    .await;
    wait_widget(&etcd, "ac", "CREATE_COMPLETED").await;
    w.kill().await.unwrap();
    let names: Vec<String> = heat.stacks().await.into_iter().map(|(n, ..)| n).collect();
    assert_eq!(names, ["widget_ac", "widget_pw"]);

    let mut wrong = password;
    wrong[2] = ("OS_PASSWORD", "wrong");
    let _w = keystone_worker(&etcd.url(), &heat, &widgets.catalog(), &wrong, home.path());
    Widgets::put(&etcd, "no", 1, json!({"value": "refused"})).await;
    let s = wait_widget(&etcd, "no", "CREATE_FAILED").await;
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("Keystone"), "{error}");
}

/// Templates mean here what they mean to Heat: the same YAML read by our
/// loader and by Heat 19's own (`heat.common.template_format`) gives the
/// same JSON. (Infinities and NaN are left out: JSON has none; they stay
/// text here.)
#[tokio::test]
async fn yaml_reads_as_heat_reads_it() {
    let scalars = [
        "yes",
        "Yes",
        "YES",
        "no",
        "on",
        "Off",
        "y",
        "n",
        "true",
        "False",
        "~",
        "null",
        "Null",
        "",
        "017",
        "08",
        "0o17",
        "0b101",
        "0x_1F",
        "1_000",
        "+1",
        "-0",
        "1:30",
        "-1:30.5",
        "190:20:30",
        "1e3",
        "1.0e+3",
        "1.",
        ".5",
        "-.5",
        "2001-12-14",
        "2001-12-14 21:59:43.10 -5",
        "2001-12-14t21:59:43.10-05:00",
        "12:60",
        "port",
        "0x",
        "1__0",
        "'017'",
        "\"yes\"",
        "!!str 017",
        "!!int '12'",
        "!!float '1'",
        "!!bool 'yes'",
        "9223372036854775807",
    ];
    let mut doc = String::from("heat_template_version: 2018-08-31\nvalues:\n");
    for (i, v) in scalars.iter().enumerate() {
        doc.push_str(&format!("  k{i}: {v}\n"));
    }
    doc.push_str("base: &b {a: 1, b: 2}\nmerged:\n  <<: *b\n  b: 3\nyes: key\n017: octal-key\n");
    let ours = esi_reconciler::engine::yaml::load(&doc, &esi_reconciler::limits::Limits::default())
        .unwrap();
    let mut heat = tokio::process::Command::new(DEBIAN_PYTHON)
        .args([
            "-c",
            "import json, sys, yaml; from heat.common import template_format as t; print(json.dumps(yaml.load(sys.stdin.read(), Loader=t.yaml_loader)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("Heat's python (run .ci/deps)");
    use tokio::io::AsyncWriteExt;
    heat.stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .await
        .unwrap();
    let out = heat.wait_with_output().await.unwrap();
    assert!(out.status.success());
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, v) in scalars.iter().enumerate() {
        let k = format!("k{i}");
        assert_eq!(ours["values"][&k], theirs["values"][&k], "{v}");
    }
    assert_eq!(ours, theirs);
}
