//! Test harness: a real etcd per test (free ports, temp dir, killed on
//! drop), the reference corpus, and polling with deadlines.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use esi_reconciler::store::Etcd;
use etcd_client::GetOptions;
use serde_json::Value;
use tokio::process::Command;

pub mod heat;
pub mod k8s;
pub mod keystone;
pub mod pki;

pub use esi_harness::etcd::embedded::EtcdProcess;
use esi_reconciler::store::{EtcdOptions, connect};

/// `../shared` beside the repository, or `ESI_SHARED_DIR`.
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("ESI_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.join("esi-reference").is_dir(),
        "{} has no esi-reference/: tests need ../shared beside the repository (or ESI_SHARED_DIR)",
        dir.display()
    );
    dir
}

/// `../shared/esi-reference`.
pub fn reference() -> PathBuf {
    shared().join("esi-reference")
}

pub fn seed_records() -> PathBuf {
    shared().join("seed/records")
}

/// The value of the seed's record `name` (the file also holds its key).
pub fn seed_value(name: &str) -> Value {
    read_json(seed_records().join(name))["value"].clone()
}

pub fn read_json(path: impl AsRef<std::path::Path>) -> Value {
    let p = path.as_ref();
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

pub struct TestEtcd {
    pub process: EtcdProcess,
    pub client: Etcd,
}

impl TestEtcd {
    pub async fn start() -> Self {
        let process = EtcdProcess::start()
            .await
            .expect("etcd must be installed (apt-get install etcd-server)");
        let client = connect(&EtcdOptions::with_endpoints(vec![
            process.client_url.clone(),
        ]))
        .await
        .unwrap();
        Self { process, client }
    }

    /// An etcd serving clients over TLS with `pki`'s server certificate;
    /// `admin` is the client side this harness uses (root once
    /// authentication is on).
    pub async fn start_tls(
        pki: &pki::Pki,
        client_cert_auth: bool,
        admin: &esi_reconciler::store::client::TlsFiles,
    ) -> Self {
        let process = EtcdProcess::start_tls(pki.server(client_cert_auth), admin)
            .await
            .expect("etcd with TLS");
        let mut opts = EtcdOptions::with_endpoints(vec![process.client_url.clone()]);
        opts.tls = Some(admin.clone());
        let client = connect(&opts).await.unwrap();
        Self { process, client }
    }

    pub fn url(&self) -> String {
        self.process.client_url.clone()
    }

    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.client.put(key, value, None).await.unwrap();
    }

    pub async fn put_json(&self, key: &str, value: &Value) {
        self.put(key, serde_json::to_vec(value).unwrap()).await;
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.client
            .get(key, None)
            .await
            .unwrap()
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
    }

    pub async fn get_json(&self, key: &str) -> Option<Value> {
        self.get(key)
            .await
            .map(|v| serde_json::from_slice(&v).unwrap())
    }

    /// Keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let resp = self
            .client
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect()
    }

    pub async fn wipe(&self) {
        self.client
            .delete("/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
    }
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The binary under test as a child process, killed on drop; its logs
/// (at `warn`) go to the test's stderr.
pub struct Proc {
    process: Launched,
}

impl std::ops::Deref for Proc {
    type Target = Launched;
    fn deref(&self) -> &Launched {
        &self.process
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Launched {
        &mut self.process
    }
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::launch(Launch::new(env!("CARGO_BIN_EXE_esi-reconciler")).args(args))
    }

    /// Starts `launch` with its stderr on the test's.
    pub fn launch(launch: Launch) -> Proc {
        let process = launch
            .stderr(Stderr::Inherit)
            .spawn()
            .expect("spawn esi-reconciler");
        Proc { process }
    }

    pub async fn sigkill(&mut self) {
        self.process.kill().await;
    }

    pub fn signal(&self, sig: Signal) {
        self.process.signal(sig);
    }
}

pub use esi_harness::process::{Launch, Launched, Signal, Stderr};

/// Runs the binary to completion and returns (status, stdout, stderr).
pub async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_esi-reconciler"))
        .args(args)
        .output()
        .await
        .expect("run esi-reconciler");
    outcome(&out)
}

/// A finished process as (status, stdout, stderr), the form tests match on.
pub fn outcome(out: &std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `get -o json` against `etcd_url` with the reference catalog.
pub fn get_json_args(etcd_url: &str) -> Vec<String> {
    let mut a = vec![
        "get".to_string(),
        "-o".into(),
        "json".into(),
        "--etcd-endpoints".into(),
        etcd_url.into(),
    ];
    a.extend(reference_catalog_args());
    a
}

/// Reference-catalog flags.
pub fn reference_catalog_args() -> Vec<String> {
    let r = reference();
    vec![
        "--schemas".into(),
        r.join("schemas.json").display().to_string(),
        "--template-mappings".into(),
        r.join("template_mappings.json").display().to_string(),
    ]
}

/// GET `http://{addr}{path}`; returns (status, body), or None if unreachable.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    esi_harness::scrape::fetch(addr, path).await
}

/// The value of a Prometheus sample line `name{labels} value` (labels as written).
#[allow(unused_imports)]
pub use esi_harness::scrape::sample as metric;

/// A loopback TCP proxy that can cut every connection (the drills' proxy).
#[allow(unused_imports)]
pub use esi_harness::chaos::cluster::Proxy as TcpProxy;

/// A metrics port for processes whose metrics a test does not read: the
/// OS picks it at bind time, so it can never be taken in between.
#[allow(dead_code)]
pub const ANY_PORT: u16 = 0;

/// A port free now, for a process whose address the test needs to know.
pub fn free_port() -> u16 {
    esi_harness::etcd::embedded::free_port().unwrap()
}

/// `run` arguments against `etcd`, with the reference catalog.
pub fn reconciler_args(etcd: &str, metrics_port: u16) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    a.extend(reference_catalog_args());
    a
}

/// `worker` arguments against `etcd` (sim engine), with the reference catalog.
pub fn worker_args(etcd: &str, metrics_port: u16, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "worker".to_string(),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    a.extend(reference_catalog_args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub fn spawn_args(args: &[String]) -> Proc {
    Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A reconciler and a worker (sim engine, plus `worker_extra` flags) on
/// `etcd`, with the reference catalog and metrics ports nobody reads.
#[allow(dead_code)]
pub fn spawn_reconciler_and_worker(etcd: &str, worker_extra: &[&str]) -> (Proc, Proc) {
    (
        spawn_args(&reconciler_args(etcd, ANY_PORT)),
        spawn_args(&worker_args(etcd, ANY_PORT, worker_extra)),
    )
}

/// Loads these reference heat templates (`port`, `network`, …).
pub async fn load_reference_templates_named(etcd: &TestEtcd, names: &[&str]) {
    for t in names {
        let v = read_json(reference().join(format!("heat_templates/{t}.json")));
        etcd.put_json(v["key"].as_str().unwrap(), &v["value"]).await;
    }
}

/// Loads the 47 reference heat templates.
pub async fn load_reference_templates(etcd: &TestEtcd) {
    for entry in std::fs::read_dir(reference().join("heat_templates")).unwrap() {
        let v = read_json(entry.unwrap().path());
        etcd.put_json(v["key"].as_str().unwrap(), &v["value"]).await;
    }
}

/// The `/config` records of one recorded Gohan step.
pub fn gohan_step(scenario: &str, step: &str) -> Vec<(String, Value)> {
    read_json(
        reference()
            .join("scenarios")
            .join(scenario)
            .join("01_Gohan")
            .join(format!("{step}.json")),
    )
    .as_array()
    .unwrap()
    .iter()
    .filter(|r| r["key"].as_str().unwrap().starts_with("/config/"))
    .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"].clone()))
    .collect()
}

/// One recorded change: (revision, is_put, key, value).
pub type Recorded = (i64, bool, String, Vec<u8>);

/// Every put and delete under `prefix` from now on, with its revision.
pub struct Recorder {
    events: std::sync::Arc<tokio::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(etcd: &TestEtcd, prefix: &str) -> Recorder {
        use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
        use esi_reconciler::store::{Change, current_revision};
        use futures::StreamExt;
        // The history from now on, through the product's own mirror.
        let now = current_revision(&etcd.client).await.unwrap();
        let mut stream = mirror::stream(
            etcd.client.clone(),
            MirrorOptions::prefix(prefix).after(now),
        );
        let events = std::sync::Arc::new(tokio::sync::Mutex::new(vec![]));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let MirrorEvent::Changes { changes, .. } = ev else {
                    continue;
                };
                let mut e = sink.lock().await;
                e.extend(changes.into_iter().map(|c| match c {
                    Change::Put(kv) => (kv.mod_revision, true, kv.key, kv.value),
                    Change::Delete { key, revision } => (revision, false, key, vec![]),
                }));
            }
        });
        Recorder { events, task }
    }

    /// (revision, is_put, key, value) in order.
    pub async fn events(&self) -> Vec<Recorded> {
        self.events.lock().await.clone()
    }

    /// Revisions of puts (or deletes) of keys satisfying `f`.
    pub async fn revs(&self, put: bool, f: impl Fn(&str) -> bool) -> Vec<i64> {
        self.events()
            .await
            .into_iter()
            .filter(|(_, p, k, _)| *p == put && f(k))
            .map(|(r, ..)| r)
            .collect()
    }

    /// Of a recorder on `/jobs/all/`: the keys each job was created under,
    /// by `type/id v<version> <action> by <handler>`.
    async fn job_keys(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut created: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (_, put, key, _) in self.events().await {
            if !put {
                continue;
            }
            let id: esi_reconciler::esi::JobId = key
                .trim_start_matches("/jobs/all/")
                .parse()
                .unwrap_or_else(|e| panic!("a job key that does not parse: {key}: {e:?}"));
            let job = format!(
                "{}/{} v{} {} by {}",
                id.resource_type, id.resource_id, id.version, id.action, id.handler
            );
            let keys = created.entry(job).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        created
    }

    /// The jobs created under more than one key. A job key ends in a random
    /// suffix, so a second key for the same job is a duplicate: what
    /// fencing must never let through.
    pub async fn duplicate_jobs(&self) -> Vec<(String, Vec<String>)> {
        self.job_keys()
            .await
            .into_iter()
            .filter(|(_, k)| k.len() > 1)
            .collect()
    }

    /// How many distinct jobs were created.
    pub async fn jobs_created(&self) -> usize {
        self.job_keys().await.len()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `/state` record's (version, worker_state), for comparing as one.
fn version_and_worker_state(state: &Value) -> (Option<u64>, Option<&str>) {
    (
        state["version"].as_u64(),
        state["state"]["worker_state"].as_str(),
    )
}

/// Waits until `/state` of `key` is at `version` with `worker_state`.
pub async fn wait_state(
    etcd: &TestEtcd,
    key: &str,
    version: u64,
    worker_state: &str,
    within: Duration,
) -> Value {
    eventually(
        within,
        &format!("{key} at v{version} {worker_state}"),
        || async {
            let v = etcd.get_json(key).await?;
            (version_and_worker_state(&v) == (Some(version), Some(worker_state))).then_some(v)
        },
    )
    .await
}

/// Asserts `/state` of `key` is at `version` with `worker_state` now, for
/// a record already settled (no waiting, unlike [`wait_state`]).
pub async fn assert_state(etcd: &TestEtcd, key: &str, version: u64, worker_state: &str) -> Value {
    let state = etcd
        .get_json(key)
        .await
        .unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(
        version_and_worker_state(&state),
        (Some(version), Some(worker_state)),
        "{key}: {state}"
    );
    state
}

/// A job's params by name, as (type, value, resources as a sorted set).
pub fn params_as_sets(job: &Value) -> std::collections::BTreeMap<String, Value> {
    job["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut res: Vec<String> = p["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.to_string())
                .collect();
            res.sort();
            res.dedup();
            (
                p["param"].as_str().unwrap().to_string(),
                serde_json::json!([p["type"], p["value"], res]),
            )
        })
        .collect()
}

/// Loads what the heat worker recorded at one step (heat stacks and `/state`;
/// not `job_state`, which the worker removes when a job ends).
pub async fn load_worker_results(etcd: &TestEtcd, scenario: &str, step: &str) {
    let path = reference()
        .join("scenarios")
        .join(scenario)
        .join("03_HeatWorker")
        .join(format!("{step}.json"));
    for r in read_json(path).as_array().unwrap() {
        let key = r["key"].as_str().unwrap();
        if !key.starts_with("/esi-worker/job_state/") {
            etcd.put_json(key, &r["value"]).await;
        }
    }
}

/// Debian's Python: a python3 earlier on PATH (pyenv, a venv) cannot
/// import Debian's OpenStack packages.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Panics with what to run when Debian's `package` (Python `module`) is
/// missing: a test needing a real component says so, never skips.
pub fn require_python_module(module: &str, package: &str) {
    assert!(
        std::process::Command::new(DEBIAN_PYTHON)
            .args(["-c", &format!("import {module}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{module} is not installed: run .ci/deps (it installs Debian's {package})"
    );
}

/// The seed port's logical delete `job` ([handler, job, 0]) is the seed's:
/// the same params as sets (their order is not kept) and the same fields.
pub fn assert_seed_job(job: &Value) {
    let want = seed_value("2_job.json");
    assert_eq!(
        params_as_sets(&job[1]),
        params_as_sets(&want[1]),
        "params differ from the seed's job"
    );
    for f in [
        "action",
        "version",
        "job_name",
        "resource_input",
        "dependency",
        "handler",
        "is_first",
        "is_last",
        "on_failure",
    ] {
        assert_eq!(job[1][f], want[1][f], "{f}");
    }
}

/// The seed port's records equal the seed's: (3) its heat stack record and
/// (5) its `/state` as they stand, and (4) the last job state the worker
/// wrote (it removes it at the job's end), from `rec`, a recorder that
/// watched `/esi-worker/job_state/`.
pub async fn assert_seed_port_records(etcd: &TestEtcd, rec: &Recorder) {
    const PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";
    for (key, record) in [
        (
            format!("/esi-worker/heat_stacks/v2.0/ports/{PORT}"),
            "3_heat_stack.json",
        ),
        (format!("/state/v2.0/ports/{PORT}"), "5_state.json"),
    ] {
        assert_eq!(
            etcd.get_json(&key).await.unwrap(),
            seed_value(record),
            "{key}"
        );
    }
    let job_state_key = format!("/esi-worker/job_state/v2.0/ports/{PORT}");
    let last: Value = rec
        .events()
        .await
        .iter()
        .filter(|(_, put, k, _)| *put && *k == job_state_key)
        .map(|(.., v)| serde_json::from_slice(v).unwrap())
        .next_back()
        .expect("the worker wrote the port's job state");
    assert_eq!(last, seed_value("4_job_state.json"), "{job_state_key}");
}

/// The seed's world: the port, network and subnet templates; the converged
/// network and subnet the port references; the seed's config of port
/// `db3bff62-…` (v4, marked for deletion) and its state and stack at v3.
pub async fn load_seed_world(etcd: &TestEtcd) {
    const LB: &str = "05_load_balancer";
    for t in ["port", "network", "subnet"] {
        let v = read_json(reference().join(format!("heat_templates/{t}.json")));
        etcd.put_json(v["key"].as_str().unwrap(), &v["value"]).await;
    }
    for step in ["CreateNetwork1_01", "CreateSubnet1_01"] {
        for (k, v) in gohan_step(LB, step) {
            etcd.put_json(&k, &v).await;
        }
        load_worker_results(etcd, LB, step).await;
    }
    let cfg = read_json(seed_records().join("1_config.json"));
    etcd.put_json(cfg["key"].as_str().unwrap(), &cfg["value"])
        .await;
    load_worker_results(etcd, LB, "CreateLoadbalancer_17").await;
}
