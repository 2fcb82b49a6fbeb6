//! serde types for every record of the ESI etcd protocol.
//!
//! Each record keeps the fields it does not know in `extra`, so reading and
//! writing a record never loses what another ESI component put there.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::keys::JobAction;

/// A JSON object.
pub type Object = Map<String, Value>;

/// Parses a record's value, naming the record kind in the error.
pub fn parse<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
) -> Result<T, RecordError> {
    // serde_json bounds nesting (128 levels) itself; size is ours to bound.
    let limit = crate::limits::Limits::current().record_bytes;
    if bytes.len() > limit {
        return Err(RecordError {
            kind,
            reason: format!(
                "{} bytes: {}",
                bytes.len(),
                crate::limits::OverLimit::record_bytes(limit)
            ),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| RecordError {
        kind,
        reason: e.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} record: {reason}")]
pub struct RecordError {
    pub kind: &'static str,
    pub reason: String,
}

/// A config body: an object in Gohan's dumps, a JSON-encoded string in the
/// raw watcher logs. Both are accepted; the form read is the form written.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub fields: Object,
    pub encoded_as_string: bool,
}

impl Body {
    pub fn new(fields: Object) -> Self {
        Self {
            fields,
            encoded_as_string: false,
        }
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.encoded_as_string {
            let text = serde_json::to_string(&self.fields).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        } else {
            self.fields.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Object(fields) => Ok(Body {
                fields,
                encoded_as_string: false,
            }),
            Value::String(text) => match serde_json::from_str(&text) {
                Ok(Value::Object(fields)) => Ok(Body {
                    fields,
                    encoded_as_string: true,
                }),
                Ok(_) => Err(serde::de::Error::custom(
                    "body string does not encode a JSON object",
                )),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "body string is not JSON: {e}"
                ))),
            },
            _ => Err(serde::de::Error::custom(
                "body must be an object or a JSON-encoded object",
            )),
        }
    }
}

/// `/config/v2.0/{plural}/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub body: Body,
    pub version: u64,
    #[serde(default)]
    pub marked_for_deletion: bool,
    #[serde(flatten)]
    pub extra: Object,
}

/// The body of `/config/v2.0/heat_templates/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatTemplate {
    pub id: String,
    pub handler: String,
    pub template_file: String,
    #[serde(default)]
    pub parameter_mappings: Object,
    #[serde(default)]
    pub watch: Value,
    #[serde(flatten)]
    pub extra: Object,
}

impl HeatTemplate {
    /// Reads a template out of a config record's body.
    pub fn from_config(record: &ConfigRecord) -> Result<Self, RecordError> {
        serde_json::from_value(Value::Object(record.body.fields.clone())).map_err(|e| RecordError {
            kind: "heat template",
            reason: e.to_string(),
        })
    }
}

/// A resource a param's value depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceId {
    pub resource_type: String,
    pub resource_id: String,
}

/// The value of a param of type `output_key`: an output of another
/// resource's heat stack, resolved by the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRef {
    pub output_key: String,
    pub resource_type: String,
    pub resource_id: String,
}

/// What a param carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// `"type": "value"`: a literal.
    Value(Value),
    /// `"type": "output_key"`: another resource's stack output.
    OutputKey(OutputRef),
    /// `"type": "list"`: a list of params.
    List(Vec<Param>),
}

/// A job param: `{"param", "type", "value", "resources"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawParam", into = "RawParam")]
pub struct Param {
    pub param: String,
    pub value: ParamValue,
    pub resources: Vec<ResourceId>,
}

#[derive(Serialize, Deserialize)]
struct RawParam {
    param: String,
    #[serde(rename = "type")]
    kind: String,
    value: Value,
    #[serde(default)]
    resources: Vec<ResourceId>,
}

impl TryFrom<RawParam> for Param {
    type Error = String;
    fn try_from(raw: RawParam) -> Result<Self, String> {
        let value = match raw.kind.as_str() {
            "value" => ParamValue::Value(raw.value),
            "output_key" => ParamValue::OutputKey(
                serde_json::from_value(raw.value)
                    .map_err(|e| format!("param {}: {e}", raw.param))?,
            ),
            "list" => ParamValue::List(
                serde_json::from_value(raw.value)
                    .map_err(|e| format!("param {}: {e}", raw.param))?,
            ),
            other => return Err(format!("param {}: unknown type {other:?}", raw.param)),
        };
        Ok(Param {
            param: raw.param,
            value,
            resources: raw.resources,
        })
    }
}

impl From<Param> for RawParam {
    fn from(p: Param) -> Self {
        let (kind, value) = match p.value {
            ParamValue::Value(v) => ("value", v),
            ParamValue::OutputKey(o) => {
                ("output_key", serde_json::to_value(o).unwrap_or(Value::Null))
            }
            ParamValue::List(items) => ("list", serde_json::to_value(items).unwrap_or(Value::Null)),
        };
        RawParam {
            param: p.param,
            kind: kind.to_string(),
            value,
            resources: p.resources,
        }
    }
}

/// The job document, second element of `/jobs/all/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub job_name: String,
    pub handler: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version: u64,
    pub is_first: bool,
    pub is_last: bool,
    pub on_failure: String,
    pub dependency: Vec<String>,
    pub resource_input: Value,
    pub params: Vec<Param>,
    #[serde(flatten)]
    pub extra: Object,
}

impl Job {
    pub fn action(&self) -> Option<JobAction> {
        self.action.parse().ok()
    }
}

/// `/jobs/all/{id}`: the JSON array `[handler, job, retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope(pub String, pub Job, pub u64);

/// One output of a heat stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackOutput {
    pub output_key: String,
    #[serde(default)]
    pub output_value: Value,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub extra: Object,
}

/// `/esi-worker/heat_stacks/v2.0/{plural}/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatStack {
    pub id: String,
    #[serde(default)]
    pub stack_id: String,
    pub stack_status: String,
    #[serde(default)]
    pub status_reason: String,
    #[serde(default)]
    pub output: Vec<StackOutput>,
    #[serde(default)]
    pub tenant_id: String,
    #[serde(flatten)]
    pub extra: Object,
}

/// `/esi-worker/job_state/v2.0/{plural}/{id}`: `{}` while the job runs,
/// then the stack's outputs and status.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_outputs: Option<Vec<StackOutput>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration_state: Option<String>,
    #[serde(flatten)]
    pub extra: Object,
}

impl JobState {
    /// What a worker records when the stack reached a final status.
    pub fn finished(outputs: Vec<StackOutput>, orchestration_state: &str) -> Self {
        JobState {
            heat_outputs: Some(outputs),
            orchestration_state: Some(orchestration_state.to_string()),
            extra: Object::new(),
        }
    }
}

/// The `state` object inside a `/state` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    pub worker_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestration_state: Option<String>,
    /// The stack outputs, as a JSON-encoded string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_outputs: Option<String>,
    #[serde(flatten)]
    pub extra: Object,
}

/// `/state/v2.0/{plural}/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    pub state: WorkerState,
    pub version: u64,
    #[serde(default)]
    pub error: String,
    #[serde(flatten)]
    pub extra: Object,
}

impl StateRecord {
    /// The `/state` a worker writes when a job ends: the stack's status and
    /// outputs (as a JSON-encoded string, as ESI's worker writes them).
    pub fn finished(
        worker_state: &str,
        orchestration_state: &str,
        outputs: &[StackOutput],
        version: u64,
        error: &str,
    ) -> Self {
        StateRecord {
            state: WorkerState {
                worker_state: worker_state.to_string(),
                orchestration_state: Some(orchestration_state.to_string()),
                heat_outputs: Some(serde_json::to_string(outputs).unwrap_or_else(|_| "[]".into())),
                extra: Object::new(),
            },
            version,
            error: error.to_string(),
            extra: Object::new(),
        }
    }

    /// A failed job leaves `…_FAILED` or a non-empty error.
    pub fn is_failed(&self) -> bool {
        !self.error.is_empty() || self.state.worker_state.ends_with("_FAILED")
    }
}

/// The value of `/jobs/waiting/{id}` and `/jobs/ready/{id}`: the handler
/// name as a raw string, not JSON-quoted.
pub fn queue_value(handler: &str) -> String {
    handler.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_accepts_object_and_string_and_keeps_its_form() {
        let obj: ConfigRecord =
            serde_json::from_value(json!({"body": {"id": "a"}, "version": 2})).unwrap();
        assert!(!obj.body.encoded_as_string);
        assert!(!obj.marked_for_deletion);
        let s: ConfigRecord = serde_json::from_value(
            json!({"body": "{\"id\":\"a\"}", "version": 2, "marked_for_deletion": true}),
        )
        .unwrap();
        assert!(s.body.encoded_as_string);
        assert_eq!(s.body.fields, obj.body.fields);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["body"],
            json!("{\"id\":\"a\"}")
        );
        assert_eq!(
            serde_json::to_value(&obj).unwrap()["body"],
            json!({"id": "a"})
        );
    }

    #[test]
    fn bad_bodies_are_rejected_with_a_reason() {
        for bad in [
            json!({"body": 3, "version": 1}),
            json!({"body": "[1]", "version": 1}),
            json!({"body": "{", "version": 1}),
        ] {
            let e = serde_json::from_value::<ConfigRecord>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("body"), "{e}");
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let v = json!({"state": {"worker_state": "X", "extra_inner": 1}, "version": 3, "error": "", "extra_outer": [1]});
        let s: StateRecord = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let c = json!({"body": {"id": "x"}, "version": 1, "marked_for_deletion": false, "gohan_meta": "m"});
        let r: ConfigRecord = serde_json::from_value(c.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), c);
    }

    #[test]
    fn params_of_every_type_round_trip() {
        let v = json!([
            {"param": "a", "type": "value", "value": "13", "resources": []},
            {"param": "b", "type": "output_key", "value": {"output_key": "id", "resource_type": "network", "resource_id": "n"},
             "resources": [{"resource_type": "network", "resource_id": "n"}]},
            {"param": "c", "type": "list", "value": [{"param": "c", "type": "value", "value": 1, "resources": []}], "resources": []}
        ]);
        let ps: Vec<Param> = serde_json::from_value(v.clone()).unwrap();
        assert!(matches!(ps[1].value, ParamValue::OutputKey(_)));
        assert!(matches!(ps[2].value, ParamValue::List(ref l) if l.len() == 1));
        assert_eq!(serde_json::to_value(&ps).unwrap(), v);
        let bad = json!({"param": "x", "type": "weird", "value": 1, "resources": []});
        assert!(
            serde_json::from_value::<Param>(bad)
                .unwrap_err()
                .to_string()
                .contains("unknown type")
        );
    }

    #[test]
    fn seed_records_parse() {
        let seed = crate::shared_dir().join("seed/records");
        let read = |n: &str| {
            let kv: Value = serde_json::from_slice(&std::fs::read(seed.join(n)).unwrap()).unwrap();
            serde_json::to_vec(&kv["value"]).unwrap()
        };
        let c: ConfigRecord = parse("config", &read("1_config.json")).unwrap();
        assert_eq!((c.version, c.marked_for_deletion), (4, true));
        let j: JobEnvelope = parse("job", &read("2_job.json")).unwrap();
        assert_eq!(j.1.action(), Some(JobAction::LogicalDelete));
        assert_eq!(j.1.params.len(), 18);
        let h: HeatStack = parse("heat stack", &read("3_heat_stack.json")).unwrap();
        assert_eq!(h.stack_status, "DELETE_COMPLETE");
        let js: JobState = parse("job state", &read("4_job_state.json")).unwrap();
        assert_eq!(js.orchestration_state.as_deref(), Some("DELETE_COMPLETE"));
        let s: StateRecord = parse("state", &read("5_state.json")).unwrap();
        assert_eq!(s.state.worker_state, "DELETE_COMPLETED");
        // A round trip through our types keeps every field.
        let raw: Value = serde_json::from_slice(&read("2_job.json")).unwrap();
        assert_eq!(serde_json::to_value(&j).unwrap(), raw);
    }
}
