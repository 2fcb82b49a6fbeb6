//! The Helm chart for real: its pods run on a node (a kubelet, containerd
//! and runc) of a private Kubernetes on this machine, from an image built
//! from this repository without a registry (tests/k8s/image.sh), and drive
//! ESI's seed story on an etcd the pods reach through the node's bridge.
//! The same steps as README's "Installing with Helm".

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use esi_harness::chaos::cluster::Proxy;
use serde_json::{Value, json};

use common::k8s::{ControlPlane, Node, repo};
use common::*;

const NS: &str = "esi";
const SEED_PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";

/// The binary the image carries: `ESI_IMAGE_BINARY` (a release build, as
/// README builds it), else the one this test run built.
fn image_binary() -> PathBuf {
    std::env::var_os("ESI_IMAGE_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_esi-reconciler")))
}

/// Builds the image as README says: tests/k8s/image.sh BINARY OUT.tar.
async fn build_image(out: &Path) {
    let done = tokio::process::Command::new("bash")
        .arg(repo().join("tests/k8s/image.sh"))
        .arg(image_binary())
        .arg(out)
        .output()
        .await
        .unwrap();
    let (ok, _, err) = outcome(&done);
    assert!(ok, "image.sh: {err}");
}

/// A new port: the seed's port config under a new id, version 1, live.
async fn new_port(etcd: &TestEtcd, id: &str) {
    let mut cfg = read_json(seed_records().join("1_config.json"))["value"].clone();
    cfg["body"]["id"] = json!(id);
    cfg["version"] = json!(1);
    cfg["marked_for_deletion"] = json!(false);
    etcd.put_json(&format!("/config/v2.0/ports/{id}"), &cfg)
        .await;
}

/// The pods of the release, by component, as `kubectl get pods -o json`
/// items.
async fn pods(cp: &ControlPlane, component: &str) -> Vec<Value> {
    let label = format!("app.kubernetes.io/instance=esi,app.kubernetes.io/component={component}");
    let out = cp
        .kubectl_ok(&["get", "pods", "-n", NS, "-l", &label, "-o", "json"])
        .await;
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// Waits until `component` has exactly `n` pods, all Ready, none of them
/// named in `not`; returns their names.
async fn ready_pods(cp: &ControlPlane, component: &str, n: usize, not: &[String]) -> Vec<String> {
    eventually(
        Duration::from_secs(180),
        &format!("{n} {component} pods Ready (not {not:?})"),
        || async {
            let ps = pods(cp, component).await;
            let names: Vec<String> = ps.iter().map(name).collect();
            (ps.len() == n && ps.iter().all(ready) && !names.iter().any(|p| not.contains(p)))
                .then_some(names)
        },
    )
    .await
}

/// The pod says `must_say` (within a minute), and every line it logged is a
/// JSON object with a level and a message.
async fn assert_json_logs(cp: &ControlPlane, pod: &str, must_say: &str) {
    let logs = eventually(
        Duration::from_secs(60),
        &format!("{pod} logging {must_say:?}"),
        || async {
            let (_, logs, _) = cp.kubectl(&["logs", "-n", NS, pod]).await;
            logs.contains(must_say).then_some(logs)
        },
    )
    .await;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{pod} logged a line that is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["message"].is_string(),
            "{pod}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_real_node() {
    let within = Duration::from_secs(120);
    let cp = ControlPlane::up().await;
    // Declared after the control plane: dropped (torn down) before it.
    let node = Node::up(&cp).await;
    let image = cp.dir.path().join("esi-reconciler-image.tar");
    build_image(&image).await;
    node.load(&image).await;

    // ESI's etcd and the API server, where the pods reach the host.
    let etcd = TestEtcd::start().await;
    let to_etcd = Proxy::start_on(node.gateway, etcd.process.client_port())
        .await
        .unwrap();
    let api_port: u16 = cp.server.rsplit(':').next().unwrap().parse().unwrap();
    let to_api = Proxy::start_on(node.gateway, api_port).await.unwrap();
    let jobs = Recorder::start(&etcd, "/jobs/all/").await;
    load_seed_world(&etcd).await;

    let chart = repo().join("charts/esi-reconciler");
    let chart = chart.to_str().unwrap();
    let endpoints = format!("etcd.endpoints=http://{}:{}", node.gateway, to_etcd.port());
    // No kube-proxy on this node: the API server's Service address leads
    // nowhere, so the pods are told where it is (the chart's extraEnv).
    let api_env = json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": node.gateway.to_string()},
        {"name": "KUBERNETES_SERVICE_PORT", "value": to_api.port().to_string()},
    ])
    .to_string();
    let api_env = format!("reconciler.extraEnv={api_env}");
    let worker_env = r#"worker.extraEnv=[{"name":"ESI_TEST_MARK","value":"extra"}]"#;
    let (ok, out, err) = cp
        .helm(&[
            "install",
            "esi",
            chart,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &endpoints,
            "--set",
            "worker.sim.latencyMs=50",
            "--set-json",
            &api_env,
            "--set-json",
            worker_env,
            "--wait",
            "--timeout=180s",
        ])
        .await;
    assert!(ok, "helm install: {out}{err}");
    // The chart's 3 reconciler replicas and its worker, Ready through
    // their probes.
    let reconcilers = ready_pods(&cp, "reconciler", 3, &[]).await;
    let workers = ready_pods(&cp, "worker", 1, &[]).await;
    let env = cp
        .kubectl_ok(&[
            "get",
            "pod",
            "-n",
            NS,
            &workers[0],
            "-o",
            "jsonpath={.spec.containers[0].env}",
        ])
        .await;
    assert!(
        env.contains("ESI_TEST_MARK"),
        "worker.extraEnv not set: {env}"
    );

    // The seed story converges, mirrored by the pods with their
    // ServiceAccount (nothing else writes EsiResources here).
    let row = cp.converged_row(SEED_PORT, within).await;
    assert_eq!(
        &row[2..8],
        ["port", SEED_PORT, "Absent", "4", "4", "Converged"],
        "{row:?}"
    );
    assert_json_logs(&cp, &workers[0], "worker starting").await;
    for r in &reconcilers {
        assert_json_logs(&cp, r, "mirroring resources into EsiResources").await;
    }

    // A reconciler pod deleted: a new one replaces it, and new work
    // converges with no job issued twice.
    let victim = reconcilers[0].clone();
    cp.kubectl_ok(&["delete", "pod", "-n", NS, &victim, "--wait=false"])
        .await;
    let now = ready_pods(&cp, "reconciler", 3, std::slice::from_ref(&victim)).await;
    let replacement = now
        .iter()
        .find(|p| !reconcilers.contains(p))
        .expect("a replacement pod");
    assert_json_logs(&cp, replacement, "registered as a reconciler replica").await;
    for i in 0..6 {
        new_port(&etcd, &format!("0000000{i}-aaaa-4bbb-8ccc-000000000001")).await;
    }
    for i in 0..6 {
        let id = format!("0000000{i}-aaaa-4bbb-8ccc-000000000001");
        let row = cp.converged_row(&id, within).await;
        assert_eq!(&row[4..6], ["Present", "1"], "{row:?}");
    }

    // The seed's job and the six ports' jobs, each once.
    let jobs_before = jobs.jobs_created().await;
    assert!(jobs_before >= 7, "{jobs_before} jobs");

    // helm upgrade with a changed value rolls the pods; the story stays
    // converged (the new pods issue no job for it) and new work converges.
    let before = pods(&cp, "reconciler").await;
    let (ok, out, err) = cp
        .helm(&[
            "upgrade",
            "esi",
            chart,
            "-n",
            NS,
            "--reuse-values",
            "--set",
            "reconciler.concurrency=8",
            "--wait",
            "--timeout=180s",
        ])
        .await;
    assert!(ok, "helm upgrade: {out}{err}");
    let old: Vec<String> = before.iter().map(name).collect();
    let rolled = ready_pods(&cp, "reconciler", 3, &old).await;
    for r in &rolled {
        let args = cp
            .kubectl_ok(&[
                "get",
                "pod",
                "-n",
                NS,
                r,
                "-o",
                "jsonpath={.spec.containers[0].args}",
            ])
            .await;
        assert!(args.contains("--concurrency=8"), "{r}: {args}");
    }
    cp.converged_row(SEED_PORT, within).await;
    new_port(&etcd, "00000010-aaaa-4bbb-8ccc-000000000001").await;
    cp.converged_row("00000010-aaaa-4bbb-8ccc-000000000001", within)
        .await;
    assert_eq!(
        jobs.jobs_created().await,
        jobs_before + 1,
        "after the roll, only the new port's job"
    );
    let dups = jobs.duplicate_jobs().await;
    assert!(dups.is_empty(), "jobs issued twice: {dups:?}");

    // helm uninstall: the release's objects go, the CRD stays (Helm does
    // not delete CRDs).
    let (ok, out, err) = cp
        .helm(&["uninstall", "esi", "-n", NS, "--wait", "--timeout=120s"])
        .await;
    assert!(ok, "helm uninstall: {out}{err}");
    eventually(within, "no object of the release left", || async {
        let out = cp
            .kubectl_ok(&[
                "get",
                "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,configmaps",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/instance=esi",
                "-o",
                "name",
            ])
            .await;
        out.trim().is_empty().then_some(())
    })
    .await;
    cp.kubectl_ok(&["get", "crd", "esiresources.esi.reconciler.dev"])
        .await;
    let left = cp.kubectl_ok(&["get", "esr", "-n", NS, "-o", "name"]).await;
    assert!(
        !left.trim().is_empty(),
        "the EsiResources are data, kept with the CRD"
    );
}

/// The image image.sh builds has the layout charts/Dockerfile declares:
/// the same binary path, user, entrypoint, command and ports.
#[tokio::test]
async fn the_image_has_the_dockerfiles_layout() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    build_image(&tar).await;
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(untar.success());
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        layout.join("blobs/sha256").join(hex)
    };
    let index = read_json(layout.join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = read_json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let config = &config["config"];

    let dockerfile = std::fs::read_to_string(repo().join("charts/Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let line = |word: &str| {
        last_stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{word} ")))
            .unwrap_or_else(|| panic!("no {word} in the Dockerfile's last stage"))
            .trim()
            .to_string()
    };
    let exec_form = |word: &str| serde_json::from_str::<Value>(&line(word)).unwrap();
    assert_eq!(config["User"], json!(line("USER")));
    assert_eq!(config["Entrypoint"], exec_form("ENTRYPOINT"));
    assert_eq!(config["Cmd"], exec_form("CMD"));
    let ports: Vec<String> = line("EXPOSE")
        .split_whitespace()
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    for p in &ports {
        assert!(
            config["ExposedPorts"].get(p).is_some(),
            "{p} not exposed: {config}"
        );
    }
    // The binary where the Dockerfile copies it, executable, in the layer.
    let dest = line("COPY").rsplit(' ').next().unwrap().to_string();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let listing = std::process::Command::new("tar")
        .arg("-tvzf")
        .arg(&layer)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let entry = listing
        .lines()
        .find(|l| l.ends_with(dest.trim_start_matches('/')))
        .unwrap_or_else(|| panic!("{dest} not in the image:\n{listing}"));
    assert!(entry.starts_with("-rwxr-xr-x"), "{entry}");
}
