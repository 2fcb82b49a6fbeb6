//! What Heat's orchestration API v1 sends and expects, as pure functions:
//! the request bodies the engine builds and the answers it reads. Kept apart
//! from the HTTP calls so every shape Heat was seen to answer is a table test.
//!
//! Everything here reads an answer from a server we do not control: no
//! indexing, no panics, and a specific error for every shape we cannot use.

use serde_json::{Map, Value, json};

use crate::engine::{StackInfo, StackSpec};
use crate::esi::records::StackOutput;

/// A Heat error answer: `{"code", "title", "error": {"type", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeatFault {
    pub status: u16,
    /// Heat's exception class (`StackExists`, `EntityNotFound`, …), empty
    /// when the body was not Heat's JSON (a proxy's page, a redirect).
    pub kind: String,
    pub message: String,
}

impl std::fmt::Display for HeatFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind.is_empty(), self.message.is_empty()) {
            (true, true) => write!(f, "HTTP {}", self.status),
            (true, false) => write!(f, "HTTP {}: {}", self.status, self.message),
            (false, _) => write!(f, "HTTP {} {}: {}", self.status, self.kind, self.message),
        }
    }
}

/// Reads an error answer; any body is accepted (a proxy in front of Heat
/// answers HTML), and only the first line of free text is kept.
pub fn fault(status: u16, body: &[u8]) -> HeatFault {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let kind = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let message = error
        .and_then(|e| e.get("message"))
        .or_else(|| parsed.as_ref().and_then(|v| v.get("explanation")))
        .or_else(|| parsed.as_ref().and_then(|v| v.get("message")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| parsed.as_ref().map(|_| String::new()))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .to_string()
        });
    HeatFault {
        status,
        kind,
        message: crate::limits::clip_message(&message),
    }
}

/// The body of `POST /stacks` (create). Rollback is disabled so that a
/// failed create stays `CREATE_FAILED` for the worker to see and recover,
/// as ESI's worker expects, instead of Heat deleting it.
pub fn create_body(
    spec: &StackSpec,
    environment: &Map<String, Value>,
    files: &Map<String, Value>,
) -> Value {
    let mut body = update_body(spec, environment, files);
    if let Some(o) = body.as_object_mut() {
        o.insert("stack_name".into(), Value::String(spec.name.clone()));
    }
    body
}

/// The body of `PUT /stacks/{name}/{id}` (update, and recovery of a FAILED
/// stack). PUT replaces the template *and* the environment, so the
/// environment is sent every time (a missing `resource_registry` fails
/// validation of Contrail types).
pub fn update_body(
    spec: &StackSpec,
    environment: &Map<String, Value>,
    files: &Map<String, Value>,
) -> Value {
    let mut body = json!({
        "template": spec.template,
        "parameters": spec.parameters,
        "environment": environment,
        "files": files,
        "disable_rollback": true,
    });
    // Heat refuses 0; a missing timeout is Heat's own default.
    if spec.timeout_mins > 0
        && let Some(o) = body.as_object_mut()
    {
        o.insert("timeout_mins".into(), json!(spec.timeout_mins));
    }
    body
}

/// The id in a create answer: `{"stack": {"id": …, "links": […]}}`.
pub fn created_id(body: &Value) -> Result<String, String> {
    body.get("stack")
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "the create answer has no stack id".to_string())
}

/// A stack as `GET /stacks/{name}/{id}` shows it. Outputs are kept only
/// once the stack is `*_COMPLETE`: before that Heat may show values of a
/// half-made stack, and ESI's records carry the outputs of a finished one.
pub fn stack_info(body: &Value) -> Result<StackInfo, String> {
    let s = body
        .get("stack")
        .and_then(Value::as_object)
        .ok_or("the answer has no stack object")?;
    let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    let id = text("id");
    let status = text("stack_status");
    if id.is_empty() || status.is_empty() {
        return Err("the stack has no id or no stack_status".into());
    }
    let outputs = if status.ends_with("_COMPLETE") && !status.starts_with("DELETE") {
        outputs(s.get("outputs"))?
    } else {
        vec![]
    };
    Ok(StackInfo {
        id: id.to_string(),
        name: text("stack_name").to_string(),
        status: status.to_string(),
        reason: crate::limits::clip_message(text("stack_status_reason")),
        outputs,
    })
}

/// Heat's output list, each entry as Heat wrote it (`output_error` and any
/// other field kept): ESI's `heat_stacks` record carries them unchanged.
fn outputs(v: Option<&Value>) -> Result<Vec<StackOutput>, String> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|o| {
                serde_json::from_value::<StackOutput>(o.clone())
                    .map_err(|e| format!("a stack output is not {{output_key, output_value}}: {e}"))
            })
            .collect(),
        Some(_) => Err("the stack's outputs are not a list".into()),
    }
}

/// The files an environment refers to, as `python-heatclient` sends them:
/// a `resource_registry` entry whose value is not a Heat type (`OS::…`) is a
/// template file, read relative to the environment's folder and sent under
/// the name the registry uses.
pub fn registry_files(environment: &Map<String, Value>) -> Vec<String> {
    let mut found = vec![];
    let mut walk = |m: &Map<String, Value>| {
        for v in m.values() {
            if let Some(s) = v.as_str()
                && !s.contains("::")
                && !s.is_empty()
            {
                found.push(s.to_string());
            }
        }
    };
    if let Some(reg) = environment
        .get("resource_registry")
        .and_then(Value::as_object)
    {
        walk(reg);
        // Per-resource overrides: `resources: {name: {Type: file}}`.
        for per in reg
            .get("resources")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|r| r.values())
            .filter_map(Value::as_object)
        {
            walk(per);
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_from_heat_and_from_anything_else() {
        let cases: &[(u16, &str, &str, &str)] = &[
            (
                409,
                r#"{"code": 409, "title": "Conflict", "error": {"type": "StackExists", "traceback": null, "message": "The Stack (t1) already exists."}}"#,
                "StackExists",
                "The Stack (t1) already exists.",
            ),
            (
                404,
                r#"{"code": 404, "error": {"type": "EntityNotFound", "message": "The Stack (t2) could not be found."}}"#,
                "EntityNotFound",
                "The Stack (t2) could not be found.",
            ),
            (
                302,
                r#"{"message": "The resource was found at <a>", "code": "302 Found"}"#,
                "",
                "The resource was found at <a>",
            ),
            (
                502,
                "\n  <html>Bad Gateway</html>\nmore",
                "",
                "<html>Bad Gateway</html>",
            ),
            (500, "", "", ""),
            (400, r#"{"error": 3}"#, "", ""),
        ];
        for (status, body, kind, message) in cases {
            let f = fault(*status, body.as_bytes());
            assert_eq!(
                (f.kind.as_str(), f.message.as_str()),
                (*kind, *message),
                "{body}"
            );
        }
        assert_eq!(fault(500, b"").to_string(), "HTTP 500");
    }

    fn spec(timeout_mins: u64) -> StackSpec {
        StackSpec {
            name: "port_p1".into(),
            template: json!({"heat_template_version": "2015-10-15"}),
            parameters: json!({"a": 1}).as_object().cloned().unwrap(),
            timeout_mins,
        }
    }

    #[test]
    fn bodies_carry_environment_every_time_and_no_zero_timeout() {
        let env = json!({"resource_registry": {"OS::ContrailV2::*": "OS::Heat::None"}});
        let env = env.as_object().unwrap();
        let c = create_body(&spec(5), env, &Map::new());
        assert_eq!(c["stack_name"], "port_p1");
        assert_eq!(c["timeout_mins"], 5);
        assert_eq!(c["disable_rollback"], true);
        assert_eq!(
            c["environment"]["resource_registry"]["OS::ContrailV2::*"],
            "OS::Heat::None"
        );
        let u = update_body(&spec(0), env, &Map::new());
        assert!(u.get("stack_name").is_none());
        assert!(u.get("timeout_mins").is_none());
        assert_eq!(u["environment"], c["environment"]);
    }

    #[test]
    fn stack_answers() {
        let seen = json!({"stack": {"stack_name": "t1", "id": "225c", "stack_status": "CREATE_COMPLETE",
            "stack_status_reason": "Stack CREATE completed successfully",
            "outputs": [{"output_key": "o", "description": "d", "output_value": "x"},
                        {"output_key": "e", "output_value": null, "output_error": "boom"}]}});
        let i = stack_info(&seen).unwrap();
        assert_eq!(
            (i.id.as_str(), i.name.as_str(), i.status.as_str()),
            ("225c", "t1", "CREATE_COMPLETE")
        );
        assert_eq!(i.outputs.len(), 2);
        assert_eq!(i.outputs[0].output_value, "x");
        assert_eq!(i.outputs[1].extra["output_error"], "boom");

        let mut running = seen.clone();
        running["stack"]["stack_status"] = json!("CREATE_IN_PROGRESS");
        assert!(
            stack_info(&running).unwrap().outputs.is_empty(),
            "outputs only when complete"
        );
        let mut failed = seen.clone();
        failed["stack"]["stack_status"] = json!("UPDATE_FAILED");
        assert!(stack_info(&failed).unwrap().outputs.is_empty());

        for bad in [
            json!({}),
            json!({"stack": []}),
            json!({"stack": {"id": "x"}}),
            json!({"stack": {"id": "x", "stack_status": "CREATE_COMPLETE", "outputs": {"a": 1}}}),
            json!({"stack": {"id": "x", "stack_status": "CREATE_COMPLETE", "outputs": [{"output_value": 1}]}}),
        ] {
            assert!(stack_info(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            created_id(&json!({"stack": {"id": "abc", "links": []}})).unwrap(),
            "abc"
        );
        assert!(created_id(&json!({"stack": {"id": ""}})).is_err());
    }

    #[test]
    fn registry_files_are_the_non_type_entries() {
        let env = json!({"resource_registry": {
            "OS::ContrailV2::*": "OS::Heat::None",
            "My::Port": "port.yaml",
            "resources": {"vmi": {"OS::Foo": "vmi.yaml", "OS::Bar": "OS::Heat::None"}}}});
        assert_eq!(
            registry_files(env.as_object().unwrap()),
            ["port.yaml", "vmi.yaml"]
        );
        assert!(registry_files(&Map::new()).is_empty());
    }
}
