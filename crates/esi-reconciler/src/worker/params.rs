//! Resolving a job's params to values: literals as they are, `output_key`
//! from the referenced resource's heat stack record, lists item by item.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::cache::{Cache, Parsed};

use crate::esi::keys::ResourceRef;
use crate::esi::records::{self, HeatStack, OutputRef, Param, ParamValue};

/// A heat stack record as the cache keeps it.
pub fn parse_stack(value: &[u8]) -> Parsed<HeatStack> {
    records::parse::<HeatStack>("heat stack", value)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
use crate::esi::schema::Schemas;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("param {param}: {resource_type} {resource_id} has no heat stack record yet")]
    NoStack {
        param: String,
        resource_type: String,
        resource_id: String,
    },
    #[error("param {param}: the stack of {resource_type} {resource_id} has no output {output_key}")]
    NoOutput {
        param: String,
        resource_type: String,
        resource_id: String,
        output_key: String,
    },
    #[error("param {param}: unknown resource type {0}", .resource_type)]
    UnknownType {
        param: String,
        resource_type: String,
    },
    #[error("param {param}: {reason}")]
    Bad { param: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Looks up each referenced heat stack record once per job, in the
/// worker's cache of stack records.
pub struct Resolver<'a> {
    cache: &'a Cache<HeatStack>,
    schemas: &'a Schemas,
    /// Each referenced stack, by `(type, id)` (`None`: no record).
    stacks: HashMap<(String, String), Option<Referenced>>,
}

/// A referenced stack record: its key, the mod revision it was read at, and
/// the record.
type Referenced = (String, i64, Arc<HeatStack>);

impl<'a> Resolver<'a> {
    pub fn new(cache: &'a Cache<HeatStack>, schemas: &'a Schemas) -> Self {
        Self {
            cache,
            schemas,
            stacks: HashMap::new(),
        }
    }

    /// The stack records the params were resolved from, with the mod
    /// revisions they were read at.
    pub fn used(&self) -> Vec<(String, i64)> {
        self.stacks
            .values()
            .flatten()
            .map(|(key, rev, _)| (key.clone(), *rev))
            .collect()
    }

    /// Every param by name, resolved.
    pub async fn resolve_all(
        &mut self,
        params: &[Param],
    ) -> Result<Map<String, Value>, ResolveError> {
        let mut out = Map::new();
        for p in params {
            let v = self.resolve(p).await?;
            out.insert(p.param.clone(), v);
        }
        Ok(out)
    }

    async fn resolve(&mut self, p: &Param) -> Result<Value, ResolveError> {
        match &p.value {
            ParamValue::Value(v) => Ok(v.clone()),
            ParamValue::OutputKey(o) => self.output(&p.param, o).await,
            ParamValue::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(Box::pin(self.resolve(item)).await?);
                }
                Ok(Value::Array(out))
            }
        }
    }

    async fn output(&mut self, param: &str, o: &OutputRef) -> Result<Value, ResolveError> {
        let key = (o.resource_type.clone(), o.resource_id.clone());
        if !self.stacks.contains_key(&key) {
            let plural = self.schemas.plural_of(&o.resource_type).ok_or_else(|| {
                ResolveError::UnknownType {
                    param: param.to_string(),
                    resource_type: o.resource_type.clone(),
                }
            })?;
            let r = ResourceRef::new(plural, o.resource_id.clone());
            let stack_key = r.heat_stack_key();
            let stack = match self.cache.get(&stack_key).await? {
                None => None,
                Some((rev, parsed)) => {
                    let stack = parsed.map_err(|reason| ResolveError::Bad {
                        param: param.to_string(),
                        reason,
                    })?;
                    Some((stack_key, rev, stack))
                }
            };
            self.stacks.insert(key.clone(), stack);
        }
        let stack = self
            .stacks
            .get(&key)
            .and_then(Option::as_ref)
            .map(|(_, _, s)| s)
            .ok_or_else(|| ResolveError::NoStack {
                param: param.to_string(),
                resource_type: o.resource_type.clone(),
                resource_id: o.resource_id.clone(),
            })?;
        stack
            .output
            .iter()
            .find(|out| out.output_key == o.output_key)
            .map(|out| out.output_value.clone())
            .ok_or_else(|| ResolveError::NoOutput {
                param: param.to_string(),
                resource_type: o.resource_type.clone(),
                resource_id: o.resource_id.clone(),
                output_key: o.output_key.clone(),
            })
    }
}

/// `heat_timeout` in minutes: a number or a numeric string.
pub fn timeout_mins(params: &Map<String, Value>) -> Option<u64> {
    match params.get("heat_timeout")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Splits resolved params into the Jinja context (every param, so templates
/// see their `jinja_*` values) and the stack parameters (the others, minus
/// `heat_timeout`).
pub fn split(resolved: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let stack = resolved
        .iter()
        .filter(|(k, _)| !k.starts_with("jinja_") && k.as_str() != "heat_timeout")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (resolved.clone(), stack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_jinja_from_stack_parameters() {
        let m = json!({"jinja_a": 1, "name": "n", "heat_timeout": "13"})
            .as_object()
            .unwrap()
            .clone();
        let (ctx, stack) = split(&m);
        assert_eq!(ctx.len(), 3);
        assert_eq!(Value::Object(stack), json!({"name": "n"}));
        assert_eq!(timeout_mins(&m), Some(13));
        assert_eq!(
            timeout_mins(&json!({"heat_timeout": 5}).as_object().unwrap().clone()),
            Some(5)
        );
        assert_eq!(timeout_mins(&Map::new()), None);
    }
}
