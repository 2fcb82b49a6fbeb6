//! `EsiResource` (group `esi.reconciler.dev`, `v1alpha1`, short name `esr`):
//! one per ESI resource, spec = identity and desired state, status = what the
//! reconciler observed and did. The CRD is generated from these types
//! (`esi-reconciler crd`) and checked into `crds/`.

// `printcolumn(...)` is repeated once per column by design; clippy reads the
// repeated `type_ = "string"` as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Label carrying the resource's type, for `kubectl get esr -l`.
pub const TYPE_LABEL: &str = "esi.reconciler.dev/type";
/// Label marking mirrors this reconciler manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "esi-reconciler";
/// `"true"`: take no action for this resource (phase Paused).
pub const PAUSED_ANNOTATION: &str = "esi.reconciler.dev/paused";
/// Any value: clear the resource's backoff and retry now (removed once handled).
pub const RETRY_NOW_ANNOTATION: &str = "esi.reconciler.dev/retry-now";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "esi-reconciler";

/// Whether the resource should exist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Desired {
    Present,
    Absent,
}

/// Identity and desired state of an ESI resource, from its `/config` record.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "esi.reconciler.dev",
    version = "v1alpha1",
    kind = "EsiResource",
    plural = "esiresources",
    shortname = "esr",
    category = "esi",
    namespaced,
    status = "EsiResourceStatus",
    derive = "PartialEq",
    doc = "An ESI resource as esi-reconciler sees it: desired state from /config, observed state from the heat worker's records.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "ID", type_ = "string", json_path = ".spec.id"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.desired"),
    printcolumn(
        name = "Version",
        type_ = "integer",
        json_path = ".spec.desiredVersion"
    ),
    printcolumn(
        name = "Observed",
        type_ = "integer",
        json_path = ".status.observedVersion"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EsiResourceSpec {
    /// The ESI resource type (singular), e.g. `port`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The ESI resource id.
    pub id: String,
    /// The tenant owning the resource, when its config names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `Present`, or `Absent` once the config is marked for deletion.
    pub desired: Desired,
    /// The config's version. (Signed: Kubernetes knows `int64`, not `uint64`.)
    pub desired_version: i64,
}

/// A condition, in the shape Kubernetes API conventions use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` (converged) or `Synced` (the reconciler could plan it).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// What the reconciler observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EsiResourceStatus {
    /// Version of the `/state` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_version: Option<i64>,
    /// The heat stack's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_status: Option<String>,
    /// The worker state of `/state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_state: Option<String>,
    /// Pending, Progressing, Converged, BackingOff, Failed, Invalid, Orphaned or Paused.
    pub phase: String,
    /// What the resource waits for, or what is wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Failed attempts in a row.
    pub attempts: i32,
    /// When the next retry is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_action: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The CRD as YAML, for `crds/` and the Helm chart.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let v = serde_json::to_value(EsiResource::crd()).unwrap_or(Value::Null);
    let mut out = String::from("# Generated by `esi-reconciler crd`; do not edit.\n");
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    let _ = emitter.dump(&to_yaml(&v));
    out.push('\n');
    out.replacen("---\n", "", 1)
}

fn to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(o) => {
            let mut h = yaml_rust2::yaml::Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_the_names_columns_and_status() {
        let crd = EsiResource::crd();
        assert_eq!(crd.spec.group, "esi.reconciler.dev");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["esr".to_string()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Type", "ID", "Desired", "Version", "Observed", "Phase", "Attempts", "Age"
            ]
        );
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn committed_crd_is_current() {
        let path = crate::repo_root().join("crds/esiresource.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{} is stale: run `esi-reconciler crd > crds/esiresource.yaml`",
            path.display()
        );
        let chart = crate::repo_root().join("charts/esi-reconciler/crds/esiresource.yaml");
        let in_chart = std::fs::read_to_string(&chart).unwrap_or_default();
        assert!(
            in_chart == crd_yaml(),
            "{} is stale: copy crds/esiresource.yaml there",
            chart.display()
        );
    }
}
