//! The CRD, the mirror and the Helm chart against a real kube-apiserver
//! (built from Go modules by tests/k8s/build-tools.sh and started on
//! loopback by tests/k8s/control-plane.sh).

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::k8s::{ControlPlane, repo};
use common::*;

/// A reconciler process that mirrors into Kubernetes through `kubeconfig`.
fn reconciler_with_kube(etcd: &str, kubeconfig: &Path, extra: &[&str]) -> Proc {
    let mut args = reconciler_args(etcd, ANY_PORT);
    args.extend(["--mirror-namespace".to_string(), "esi".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::launch(
        Launch::new(env!("CARGO_BIN_EXE_esi-reconciler"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig.display().to_string())
            .unset("ESI_NO_MIRROR"),
    )
}

const NET: &str = "ce9a7a92-d11a-4fc6-8ae7-18061b62c98f";
const NET2: &str = "168c1535-9001-49c7-bb05-21844570a83c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_on_a_real_apiserver() {
    let cp = ControlPlane::up().await;
    let within = Duration::from_secs(60);
    // The CRD is accepted (a structural schema) and established.
    cp.kubectl_ok(&[
        "apply",
        "-f",
        repo().join("crds/esiresource.yaml").to_str().unwrap(),
    ])
    .await;
    cp.wait_crd_established().await;
    cp.kubectl_ok(&["create", "namespace", "esi"]).await;

    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    for (k, v) in gohan_step("05_load_balancer", "CreateNetwork1_01")
        .into_iter()
        .chain(gohan_step("05_load_balancer", "CreateNetwork2_01"))
    {
        etcd.put_json(&k, &v).await;
    }
    let _r = reconciler_with_kube(
        &etcd.url(),
        &cp.kubeconfig,
        &["--backoff-base-ms", "600000"],
    );
    let fail = format!("network_{NET2}");
    let _w = spawn_args(&worker_args(
        &etcd.url(),
        ANY_PORT,
        &["--sim-latency-ms", "50", "--sim-fail", &fail],
    ));

    // The mirror appears, converged, and `kubectl get esr` shows its columns.
    let name = format!("network-{NET}");
    eventually(within, "the network's mirror converged", || async {
        let o = cp.esr("esi", &name).await?;
        (o["status"]["phase"] == "Converged" && o["status"]["observedVersion"] == 1).then_some(())
    })
    .await;
    let table = cp.kubectl_ok(&["get", "esr", "-n", "esi"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "TYPE", "ID", "DESIRED", "VERSION", "OBSERVED", "PHASE", "ATTEMPTS", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[1..8],
        ["network", NET, "Present", "1", "1", "Converged", "0"],
        "{table}"
    );
    let o = cp.esr("esi", &name).await.unwrap();
    assert_eq!(o["spec"]["tenant"], "fe3a4a1a72c04479bb6c19c2c0ccba4c");
    let ready = o["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True");
    assert!(ready["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
    let by_label = cp.esr_names_of_type("network").await;
    assert_eq!(by_label.lines().count(), 2, "{by_label}");
    let none = cp.esr_names_of_type("port").await;
    assert!(none.trim().is_empty());

    // Paused: a new config version is not acted on until unpaused.
    cp.annotate(&name, "esi.reconciler.dev/paused=true").await;
    eventually(within, "the pause to be seen", || async {
        let o = cp.esr("esi", &name).await?;
        (o["status"]["phase"] == "Paused").then_some(())
    })
    .await;
    let mut cfg = gohan_step("05_load_balancer", "CreateNetwork1_01")[0]
        .1
        .clone();
    cfg["body"]["name"] = json!("renamed");
    // A new config version for the paused network: the mirror shows it
    // desired, and no job is issued for it.
    let bump_paused = async |cfg: &mut Value, version: u64| {
        cfg["version"] = json!(version);
        etcd.put_json(&format!("/config/v2.0/networks/{NET}"), cfg)
            .await;
        eventually(
            within,
            "the paused mirror to show the new version",
            || async {
                let o = cp.esr("esi", &name).await?;
                (o["spec"]["desiredVersion"] == version && o["status"]["phase"] == "Paused")
                    .then_some(())
            },
        )
        .await;
        let jobs = format!("/jobs/all/modify:heat_worker:network:{NET}:{version}:");
        assert!(
            etcd.keys(&jobs).await.is_empty(),
            "a paused resource got a job"
        );
    };
    let modified = async |version: u64| {
        let key = format!("/state/v2.0/networks/{NET}");
        wait_state(&etcd, &key, version, "MODIFY_COMPLETED", within).await;
    };
    bump_paused(&mut cfg, 2).await;
    cp.annotate(&name, "esi.reconciler.dev/paused-").await;
    modified(2).await;

    // Paused again, then its mirror deleted by hand: nothing is left that
    // says "paused", so the resource is not paused any more.
    cp.annotate(&name, "esi.reconciler.dev/paused=true").await;
    bump_paused(&mut cfg, 3).await;
    cp.kubectl_ok(&["delete", "esr", "-n", "esi", &name]).await;
    modified(3).await;
    eventually(
        within,
        "the mirror back, unpaused and converged",
        || async {
            let o = cp.esr("esi", &name).await?;
            (o["status"]["phase"] == "Converged" && o["spec"]["desiredVersion"] == 3).then_some(())
        },
    )
    .await;

    // Failing, backing off for 10 minutes; retry-now retries at once.
    let failing = format!("network-{NET2}");
    eventually(within, "the failing network to back off", || async {
        let o = cp.esr("esi", &failing).await?;
        (o["status"]["phase"] == "BackingOff" && o["status"]["attempts"] == 1).then_some(())
    })
    .await;
    let issued_before = etcd
        .get_json(&format!("/esi-reconciler/v1/resources/networks/{NET2}"))
        .await
        .unwrap();
    assert!(issued_before["next_retry_ms"].as_u64().unwrap() > 0);
    cp.annotate(&failing, "esi.reconciler.dev/retry-now=now")
        .await;
    let rec = Recorder::start(&etcd, "/jobs/all/").await;
    eventually(within, "a retry job after retry-now", || async {
        (!rec
            .revs(true, |k| k.contains(&format!(":network:{NET2}:1:")))
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    eventually(within, "the retry-now annotation to be removed", || async {
        let o = cp.esr("esi", &failing).await?;
        o["metadata"]["annotations"]
            .get("esi.reconciler.dev/retry-now")
            .is_none()
            .then_some(())
    })
    .await;

    // Events are recorded for actions (published on the mirror's next round).
    eventually(within, "Reconciled and RetryRequested events", || async {
        let (_, out, _) = cp
            .kubectl(&["get", "events.events.k8s.io", "-n", "esi", "-o", "json"])
            .await;
        let events: Value = serde_json::from_str(&out).ok()?;
        let reasons: Vec<&str> = events["items"]
            .as_array()?
            .iter()
            .filter_map(|e| e["reason"].as_str())
            .collect();
        (reasons.contains(&"Reconciled") && reasons.contains(&"RetryRequested")).then_some(())
    })
    .await;

    // A resource gone from etcd loses its mirror.
    for p in [
        "/config/v2.0/networks/",
        "/state/v2.0/networks/",
        "/esi-worker/heat_stacks/v2.0/networks/",
        "/esi-reconciler/v1/resources/networks/",
    ] {
        etcd.client.delete(format!("{p}{NET}"), None).await.unwrap();
    }
    eventually(within, "the mirror to be deleted", || async {
        cp.esr("esi", &name).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_its_service_account_suffices() {
    let cp = ControlPlane::up().await;
    let within = Duration::from_secs(60);
    let chart = repo().join("charts/esi-reconciler");
    let chart = chart.to_str().unwrap();
    let (ok, out, err) = cp.helm(&["lint", chart]).await;
    assert!(ok, "helm lint: {out}{err}");
    let (ok, rendered, err) = cp
        .helm_template(
            chart,
            &["-n", "esi", "--set-json", "limits.evalBytes=4194304"],
            &[
                "etcd.tlsSecret=etcd-tls",
                "reconciler.etcd.clientCertSecret=reconciler-etcd-cert",
                "worker.etcd.credentialsSecret=worker-etcd-user",
                "limits.yamlNodes=50000",
                "serviceMonitor.enabled=true",
            ],
        )
        .await;
    assert!(ok, "helm template: {err}");
    // Each component carries its own etcd identity, and only its own.
    let deployment = |component: &str| {
        rendered
            .split("\n---")
            .find(|d| {
                d.contains("kind: Deployment")
                    && d.contains(&format!("name: esi-esi-reconciler-{component}\n"))
            })
            .unwrap_or_else(|| panic!("no {component} Deployment in:\n{rendered}"))
            .to_string()
    };
    let (rec, work) = (deployment("reconciler"), deployment("worker"));
    assert!(
        rec.contains("secretName: reconciler-etcd-cert")
            && rec.contains("/etc/esi/etcd-client/tls.key")
    );
    assert!(!work.contains("reconciler-etcd-cert") && !work.contains("ESI_ETCD_CERT"));
    assert!(
        work.contains("name: worker-etcd-user, key: password") && !rec.contains("worker-etcd-user")
    );
    for d in [&rec, &work] {
        assert!(
            d.contains("ESI_MAX_YAML_NODES") && d.contains("\"50000\""),
            "{d}"
        );
        // A large number from JSON or a values file (a float to Helm) stays
        // an integer the binary can parse.
        assert!(d.contains("\"4194304\"") && !d.contains("e+06"), "{d}");
    }
    for want in [
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "allowPrivilegeEscalation: false",
        "type: RuntimeDefault",
        "kind: PodDisruptionBudget",
        "kind: ServiceMonitor",
        "path: /readyz",
        "automountServiceAccountToken: false",
        "/etc/esi/etcd-tls/ca.crt",
    ] {
        assert!(rendered.contains(want), "rendered chart lacks {want:?}");
    }
    // The worker on OpenStack Heat: Keystone credentials from a Secret's
    // clouds.yaml (where osauth looks), the environment from a ConfigMap.
    let (ok, heat, err) = cp
        .helm_template(
            chart,
            &[],
            &[
                "worker.engine=heat",
                "worker.heat.cloudsSecret=openstack",
                "worker.heat.cloud=prod",
                "worker.heat.environmentConfigMap=heat-env",
            ],
        )
        .await;
    assert!(ok, "helm template (heat): {err}");
    for want in [
        "--engine=heat",
        "--heat-auth=keystone",
        "--heat-environment=/etc/esi/heat/environment.yaml",
        "name: OS_CLOUD",
        "mountPath: /etc/openstack",
        "secretName: openstack",
        "configMap: {name: heat-env}",
    ] {
        assert!(heat.contains(want), "the heat worker lacks {want:?}");
    }
    assert!(!heat.contains("--sim-latency-ms") && !heat.contains("--heat-url"));
    let (ok, _, err) = cp
        .helm_template(
            chart,
            &[],
            &["worker.engine=heat", "worker.heat.auth=token"],
        )
        .await;
    assert!(
        !ok && err.contains("heat/auth"),
        "values.schema.json did not reject auth=token: {err}"
    );
    let (ok, _, err) = cp.helm_template(chart, &[], &["worker.slots=0"]).await;
    assert!(
        !ok && err.contains("slots"),
        "values.schema.json did not reject slots=0: {err}"
    );

    let etcd = TestEtcd::start().await;
    let (ok, out, err) = cp
        .helm(&[
            "install",
            "esi",
            chart,
            "-n",
            "esi",
            "--create-namespace",
            "--set",
            &format!("etcd.endpoints={}", etcd.url()),
            "--wait=false",
        ])
        .await;
    assert!(ok, "helm install: {out}{err}");
    cp.wait_crd_established().await;
    for kind in [
        "deployment/esi-esi-reconciler-reconciler",
        "deployment/esi-esi-reconciler-worker",
        "serviceaccount/esi-esi-reconciler",
        "role/esi-esi-reconciler",
        "rolebinding/esi-esi-reconciler",
        "poddisruptionbudget/esi-esi-reconciler-reconciler",
    ] {
        cp.kubectl_ok(&["get", "-n", "esi", kind]).await;
    }

    // The chart's ServiceAccount may do no more than the mirror needs.
    let can = cp
        .kubectl_ok(&[
            "auth",
            "can-i",
            "--list",
            "-n",
            "esi",
            "--as",
            "system:serviceaccount:esi:esi-esi-reconciler",
        ])
        .await;
    let allowed: Vec<&str> = can
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| !r.starts_with('['))
        .collect();
    let expected = [
        "esiresources.esi.reconciler.dev",
        "esiresources.esi.reconciler.dev/status",
        "events.events.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    ];
    for r in &allowed {
        assert!(
            expected.contains(r),
            "the service account may access {r}:\n{can}"
        );
    }
    assert!(
        allowed.contains(&"esiresources.esi.reconciler.dev")
            && allowed.contains(&"events.events.k8s.io"),
        "{can}"
    );

    // Run the reconciler out of cluster as that ServiceAccount (TokenRequest),
    // against an etcd holding the seed's records, with a worker.
    let token = cp
        .kubectl_ok(&[
            "create",
            "token",
            "-n",
            "esi",
            "esi-esi-reconciler",
            "--duration=1h",
        ])
        .await;
    let sa_kubeconfig = cp.dir.path().join("sa.kubeconfig");
    cp.kubeconfig_for(token.trim(), &sa_kubeconfig);
    load_seed_world(&etcd).await;
    let _r = reconciler_with_kube(&etcd.url(), &sa_kubeconfig, &[]);
    let _w = spawn_args(&worker_args(
        &etcd.url(),
        ANY_PORT,
        &["--sim-latency-ms", "50"],
    ));
    let port = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";
    let row = cp.converged_row(port, within).await;
    assert_eq!(
        &row[2..9],
        ["port", port, "Absent", "4", "4", "Converged", "0"],
        "{row:?}"
    );
    // Events were written with the ServiceAccount's rights too (they are
    // sent apart from the status, so they may come a moment later).
    eventually(within, "an Event in namespace esi", || async {
        let (_, out, _) = cp
            .kubectl(&["get", "events.events.k8s.io", "-n", "esi", "-o", "name"])
            .await;
        (!out.trim().is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_apiserver_does_not_block_reconciling() {
    let etcd = TestEtcd::start().await;
    load_reference_templates(&etcd).await;
    for (k, v) in gohan_step("05_load_balancer", "CreateNetwork1_01") {
        etcd.put_json(&k, &v).await;
    }
    // A kubeconfig whose apiserver is not there.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let dead = format!("https://127.0.0.1:{}", free_port());
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {dead}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"),
    )
    .unwrap();
    let _r = reconciler_with_kube(&etcd.url(), &kubeconfig, &[]);
    let _w = spawn_args(&worker_args(
        &etcd.url(),
        ANY_PORT,
        &["--sim-latency-ms", "50"],
    ));
    wait_state(
        &etcd,
        &format!("/state/v2.0/networks/{NET}"),
        1,
        "CREATE_COMPLETED",
        Duration::from_secs(30),
    )
    .await;
}
