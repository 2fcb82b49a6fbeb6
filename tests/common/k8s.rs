//! A private Kubernetes on loopback: the control plane of
//! tests/k8s/control-plane.sh (etcd and kube-apiserver), and the node of
//! tests/k8s/node.sh (controllers, scheduler, containerd and a kubelet)
//! that runs real pods. Both are torn down on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::outcome;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `export A=1 B=2` lines → pairs.
pub fn parse_exports(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect()
}

/// Runs `tests/k8s/{script}` with `args` and `env`, asserts it succeeded,
/// and returns what it exported (how these scripts hand their results on).
pub async fn k8s_script(
    script: &str,
    args: &[&std::ffi::OsStr],
    env: &HashMap<String, String>,
) -> HashMap<String, String> {
    let out = tokio::process::Command::new("bash")
        .arg(repo().join("tests/k8s").join(script))
        .args(args)
        .envs(env)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_exports(&String::from_utf8_lossy(&out.stdout))
}

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub tools: HashMap<String, String>,
    pub kubeconfig: PathBuf,
    pub server: String,
}

impl ControlPlane {
    pub async fn up() -> ControlPlane {
        let tools = k8s_script("build-tools.sh", &[], &HashMap::new()).await;
        let dir = tempfile::Builder::new()
            .prefix("esi-k8s-")
            .tempdir()
            .unwrap();
        let up = [std::ffi::OsStr::new("up"), dir.path().as_os_str()];
        let env = k8s_script("control-plane.sh", &up, &tools).await;
        ControlPlane {
            kubeconfig: dir.path().join("kubeconfig"),
            server: env["ESI_K8S_SERVER"].clone(),
            dir,
            tools,
        }
    }

    pub async fn run(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(&self.tools[tool])
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await
            .unwrap();
        outcome(&out)
    }

    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.run("ESI_KUBECTL", args).await
    }

    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }

    pub async fn helm(&self, args: &[&str]) -> (bool, String, String) {
        self.run("ESI_HELM", args).await
    }

    /// `helm template esi {chart}` with `flags` and each of `sets` as `--set`.
    pub async fn helm_template(
        &self,
        chart: &str,
        flags: &[&str],
        sets: &[&str],
    ) -> (bool, String, String) {
        let mut args = vec!["template", "esi", chart];
        args.extend(flags);
        args.extend(sets.iter().flat_map(|s| ["--set", s]));
        self.helm(&args).await
    }

    /// Waits until the API serves the CRD.
    pub async fn wait_crd_established(&self) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/esiresources.esi.reconciler.dev",
        ])
        .await;
    }

    /// Annotates the mirror `name` in namespace esi: how users steer it.
    pub async fn annotate(&self, name: &str, annotation: &str) {
        self.kubectl_ok(&["annotate", "esr", "-n", "esi", name, annotation])
            .await;
    }

    /// The names of the mirrors in namespace esi of type `rtype`, by label.
    pub async fn esr_names_of_type(&self, rtype: &str) -> String {
        let label = format!("esi.reconciler.dev/type={rtype}");
        self.kubectl_ok(&["get", "esr", "-n", "esi", "-l", &label, "-o", "name"])
            .await
    }

    /// The mirror `name` in `ns` as JSON, if it exists.
    pub async fn esr(&self, ns: &str, name: &str) -> Option<Value> {
        let (ok, out, _) = self
            .kubectl(&["get", "esr", "-n", ns, name, "-o", "json"])
            .await;
        if ok {
            serde_json::from_str(&out).ok()
        } else {
            None
        }
    }

    /// The row of `kubectl get esr -A` for the resource `id`, split into
    /// its columns, once its phase is Converged.
    pub async fn converged_row(&self, id: &str, within: std::time::Duration) -> Vec<String> {
        super::eventually(
            within,
            &format!("{id} Converged in kubectl get esr -A"),
            || async {
                let (_, out, _) = self.kubectl(&["get", "esr", "-A"]).await;
                out.lines()
                    .find(|l| l.contains(id))
                    .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .filter(|r| r.get(7).is_some_and(|p| p == "Converged"))
            },
        )
        .await
    }

    /// A kubeconfig for `token` against this apiserver.
    pub fn kubeconfig_for(&self, token: &str, path: &Path) {
        let admin = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
            .unwrap()
            .to_string();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: esi\ncurrent-context: x\n",
            self.server
        );
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo().join("tests/k8s/control-plane.sh"))
            .arg("down")
            .arg(self.dir.path())
            .output();
    }
}

/// One node for a [`ControlPlane`] (tests/k8s/node.sh): pods get their own
/// network namespaces on a bridge the script makes, and reach the host at
/// `gateway`. Taken down on drop (before its control plane, if declared
/// after it), mounts, cgroups and sysctls put back.
pub struct Node {
    dir: PathBuf,
    tools: HashMap<String, String>,
    /// The host's address on the pods' bridge.
    pub gateway: std::net::IpAddr,
}

impl Node {
    pub async fn up(cp: &ControlPlane) -> Node {
        let up = [std::ffi::OsStr::new("up"), cp.dir.path().as_os_str()];
        let env = k8s_script("node.sh", &up, &cp.tools).await;
        // Made before anything else can fail, so that drop takes it down.
        let mut node = Node {
            dir: cp.dir.path().to_path_buf(),
            tools: cp.tools.clone(),
            gateway: std::net::Ipv4Addr::UNSPECIFIED.into(),
        };
        node.gateway = env
            .get("ESI_NODE_GATEWAY")
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("node.sh up named no gateway: {env:?}"));
        node
    }

    /// Imports an OCI image tarball into the node's containerd.
    pub async fn load(&self, image: &Path) {
        let args = [
            std::ffi::OsStr::new("load"),
            self.dir.as_os_str(),
            image.as_os_str(),
        ];
        k8s_script("node.sh", &args, &self.tools).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo().join("tests/k8s/node.sh"))
            .arg("down")
            .arg(&self.dir)
            .envs(&self.tools)
            .output();
    }
}
