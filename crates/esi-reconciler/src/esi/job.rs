//! Building the job the Job Manager would issue for a resource: params from
//! the template's `parameter_mappings`, the config body as `resource_input`,
//! and the unfinished jobs of referenced resources as `dependency`.

use rand::seq::IndexedRandom;
use serde_json::{Map, Value};

use super::keys::{JobAction, JobId};
use super::mapping::{Configs, EvalError, Mapping, MappingError, Subject, evaluate};
use super::records::{HeatTemplate, Job, JobEnvelope, Param};
use super::schema::Schemas;

/// A heat template with its mappings parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTemplate {
    pub id: String,
    pub handler: String,
    pub template_file: String,
    pub mappings: Vec<(String, Mapping)>,
}

impl CompiledTemplate {
    pub fn compile(t: &HeatTemplate) -> Result<Self, MappingError> {
        let mappings = t
            .parameter_mappings
            .iter()
            .map(|(name, m)| {
                Mapping::parse(m)
                    .map(|m| (name.clone(), m))
                    .map_err(|e| MappingError {
                        mapping: format!("{name}: {}", e.mapping),
                        why: e.why,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            id: t.id.clone(),
            handler: t.handler.clone(),
            template_file: t.template_file.clone(),
            mappings,
        })
    }
}

/// Evaluates every mapping of `template` for `subject`.
pub fn build_params<C: Configs + ?Sized>(
    template: &CompiledTemplate,
    subject: Subject<'_>,
    schemas: &Schemas,
    configs: &C,
) -> Result<Vec<Param>, EvalError> {
    // One budget for the whole job: a template of many params must not
    // cost more than one param may.
    let budget = crate::limits::Budget::eval();
    template
        .mappings
        .iter()
        .map(|(name, m)| {
            let e = evaluate(m, name, subject, schemas, configs, &budget)?;
            Ok(Param {
                param: name.clone(),
                value: e.value,
                resources: e.resources,
            })
        })
        .collect()
}

/// What a job is for.
#[derive(Debug, Clone)]
pub struct JobSpec<'a> {
    pub action: JobAction,
    pub handler: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub version: u64,
    pub body: &'a Map<String, Value>,
}

/// A fresh job id with a random 5-character suffix, as the Job Manager makes.
pub fn new_job_id(spec: &JobSpec<'_>) -> JobId {
    JobId {
        action: spec.action,
        handler: spec.handler.to_string(),
        resource_type: spec.resource_type.to_string(),
        resource_id: spec.resource_id.to_string(),
        version: spec.version,
        suffix: random_suffix(),
    }
}

pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..5)
        .filter_map(|_| ALPHABET.choose(&mut rng).map(|&b| char::from(b)))
        .collect()
}

/// The `/jobs/all/{id}` value: `[handler, job, 0]`.
pub fn envelope(
    id: &JobId,
    spec: &JobSpec<'_>,
    params: Vec<Param>,
    dependency: Vec<String>,
) -> JobEnvelope {
    let job = Job {
        id: id.to_string(),
        job_name: id.job_name(),
        handler: spec.handler.to_string(),
        action: spec.action.as_str().to_string(),
        resource_type: spec.resource_type.to_string(),
        resource_id: spec.resource_id.to_string(),
        version: spec.version,
        is_first: true,
        is_last: true,
        on_failure: "fail".to_string(),
        dependency,
        resource_input: Value::Object(spec.body.clone()),
        params,
        extra: Map::new(),
    };
    JobEnvelope(spec.handler.to_string(), job, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_five_lowercase_alphanumerics() {
        for _ in 0..100 {
            let s = random_suffix();
            assert_eq!(s.len(), 5);
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            );
        }
    }

    #[test]
    fn envelope_matches_the_protocol_shape() {
        let body = serde_json::json!({"id": "p1"});
        let spec = JobSpec {
            action: JobAction::Modify,
            handler: "heat_worker",
            resource_type: "port",
            resource_id: "p1",
            version: 2,
            body: body.as_object().unwrap(),
        };
        let id = new_job_id(&spec);
        let env = envelope(&id, &spec, vec![], vec!["dep".into()]);
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(v[0], "heat_worker");
        assert_eq!(v[2], 0);
        assert_eq!(v[1]["job_name"], "port:p1:2");
        assert_eq!(v[1]["id"], id.to_string());
        assert_eq!(v[1]["action"], "modify");
        assert_eq!(v[1]["on_failure"], "fail");
        assert_eq!(v[1]["resource_input"], body);
    }
}
