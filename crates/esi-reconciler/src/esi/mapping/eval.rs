//! Evaluating a [`Mapping`] against a config body.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::expr::{Condition, Mapping, PathStep};
use crate::esi::records::{OutputRef, Param, ParamValue, ResourceId};
use crate::esi::schema::Schemas;
use crate::limits::Budget;

/// The resource a mapping is evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub rtype: &'a str,
    pub body: &'a Map<String, Value>,
    pub version: u64,
}

/// What a config lookup found.
pub enum Lookup<'a> {
    Found(&'a Map<String, Value>),
    /// The config does not exist.
    Absent,
    /// The caller has not fetched it yet.
    NotLoaded,
}

/// Other resources' configs, by singular type and id.
pub trait Configs {
    fn lookup(&self, rtype: &str, id: &str) -> Lookup<'_>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Fetch this config and evaluate again.
    #[error("config of {} {} is needed", .0.resource_type, .0.resource_id)]
    NeedConfig(ResourceId),
    #[error("{rtype} {id} is referenced but has no config")]
    MissingReference { rtype: String, id: String },
    #[error("field {field} of {rtype} is not a reference in the schemas")]
    UnknownRelation { rtype: String, field: String },
    /// A mapping that concatenates or repeats more than the limit allows
    /// (a template and a config can each be written by anyone).
    #[error(transparent)]
    OverLimit(#[from] crate::limits::OverLimit),
}

/// A mapping's result: the param's value and the resources it depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    pub value: ParamValue,
    pub resources: Vec<ResourceId>,
}

impl Evaluated {
    fn literal(v: Value) -> Self {
        Self {
            value: ParamValue::Value(v),
            resources: vec![],
        }
    }
    /// The value as JSON, for conditions, concatenation and template ids.
    pub fn as_json(&self) -> Value {
        match &self.value {
            ParamValue::Value(v) => v.clone(),
            other => serde_json::to_value(Param {
                param: String::new(),
                value: other.clone(),
                resources: vec![],
            })
            .ok()
            .and_then(|p| p.get("value").cloned())
            .unwrap_or(Value::Null),
        }
    }
}

struct Ctx<'a, C: Configs + ?Sized> {
    subject: Subject<'a>,
    schemas: &'a Schemas,
    configs: &'a C,
    /// The param name, for the items of a list.
    param: &'a str,
    /// What the evaluation may still produce, shared with every other
    /// param of the job ([`crate::limits::Limits::eval_bytes`]).
    budget: &'a Budget,
}

/// Evaluates `mapping` for `subject` as param `param`.
pub fn evaluate<C: Configs + ?Sized>(
    mapping: &Mapping,
    param: &str,
    subject: Subject<'_>,
    schemas: &Schemas,
    configs: &C,
    budget: &Budget,
) -> Result<Evaluated, EvalError> {
    let ctx = Ctx {
        subject,
        schemas,
        configs,
        param,
        budget,
    };
    let current = Cursor {
        rtype: Some(subject.rtype),
        value: ValueRef::Object(subject.body),
    };
    ctx.eval(mapping, current)
}

/// Where evaluation stands: a value and, when it is a resource's body, its type.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    rtype: Option<&'a str>,
    value: ValueRef<'a>,
}

#[derive(Clone, Copy)]
enum ValueRef<'a> {
    Object(&'a Map<String, Value>),
    Other(&'a Value),
}

impl<'a> ValueRef<'a> {
    fn get(&self, field: &str) -> Value {
        match self {
            ValueRef::Object(o) => o.get(field).cloned().unwrap_or(Value::Null),
            ValueRef::Other(Value::Object(o)) => o.get(field).cloned().unwrap_or(Value::Null),
            ValueRef::Other(_) => Value::Null,
        }
    }
    fn whole(&self) -> Value {
        match self {
            ValueRef::Object(o) => Value::Object((*o).clone()),
            ValueRef::Other(v) => (*v).clone(),
        }
    }
}

/// Where a reference led: the resource and its body, or nowhere.
enum Hop<'a> {
    To(ResourceId, &'a Map<String, Value>),
    /// The reference field is null or empty.
    Unset,
    /// The referenced config is absent and the mapping ignores that.
    Missing,
}

fn param_size(p: &ParamValue) -> usize {
    match p {
        ParamValue::Value(v) => crate::limits::json_size(v),
        ParamValue::OutputKey(_) => 64,
        ParamValue::List(l) => l
            .iter()
            .fold(2, |n: usize, x| n.saturating_add(param_size(&x.value))),
    }
}

impl<'a, C: Configs + ?Sized> Ctx<'a, C> {
    fn spend(&self, bytes: usize) -> Result<(), EvalError> {
        Ok(self.budget.spend(bytes)?)
    }

    /// A literal result, charged what it copies.
    fn copied(&self, v: Value) -> Result<Evaluated, EvalError> {
        self.budget.spend_on(&v)?;
        Ok(Evaluated::literal(v))
    }

    fn eval(&self, m: &Mapping, cur: Cursor<'a>) -> Result<Evaluated, EvalError> {
        match m {
            Mapping::Property(f) => self.copied(cur.value.get(f)),
            Mapping::Constant(c) => self.copied(c.clone()),
            Mapping::Version => Ok(Evaluated::literal(Value::from(self.subject.version))),
            Mapping::Nested(path) => {
                // Walked by reference: only what the path ends at is copied.
                let mut segs = path.iter();
                let Some(first) = segs.next() else {
                    return self.copied(cur.value.whole());
                };
                let mut v = match cur.value {
                    ValueRef::Object(o) => o.get(first),
                    ValueRef::Other(x) => x.get(first),
                };
                for seg in segs {
                    v = v.and_then(|x| x.get(seg));
                }
                self.copied(v.cloned().unwrap_or(Value::Null))
            }
            Mapping::Output {
                rtype,
                field,
                output_key,
            } => match id_of(&cur.value.get(field)) {
                Some(id) => {
                    let target = ResourceId {
                        resource_type: rtype.clone(),
                        resource_id: id,
                    };
                    Ok(Evaluated {
                        value: output(output_key, target.clone()),
                        resources: vec![target],
                    })
                }
                None => Ok(Evaluated::literal(Value::Null)),
            },
            Mapping::Fetch { hops, attr } => {
                let steps: Vec<PathStep> = hops
                    .iter()
                    .map(|(t, f)| PathStep::Typed {
                        rtype: t.clone(),
                        id_field: f.clone(),
                    })
                    .collect();
                self.follow_field(cur, &steps, attr, false)
            }
            Mapping::Field {
                field,
                path,
                ignore_missing,
            } => self.follow_field(cur, path, field, *ignore_missing),
            Mapping::OutputKey {
                output_key,
                path,
                ignore_missing,
            } => {
                let (end, visited) = self.follow(cur, path, *ignore_missing)?;
                match end {
                    Some(Hop::To(target, _)) => Ok(Evaluated {
                        value: output(output_key, target),
                        resources: visited,
                    }),
                    Some(Hop::Missing) => Ok(Evaluated::literal(Value::String(String::new()))),
                    _ => Ok(Evaluated {
                        value: ParamValue::Value(Value::Null),
                        resources: visited,
                    }),
                }
            }
            Mapping::Concat(parts) => {
                let mut text = String::new();
                let mut resources = Vec::new();
                for p in parts {
                    let e = self.eval(p, cur)?;
                    let before = text.len();
                    match e.as_json() {
                        Value::String(s) => text.push_str(&s),
                        Value::Null => {}
                        other => text.push_str(&other.to_string()),
                    }
                    self.spend(text.len().saturating_sub(before))?;
                    resources.extend(e.resources);
                }
                Ok(Evaluated {
                    value: ParamValue::Value(Value::String(text)),
                    resources,
                })
            }
            Mapping::If {
                cond,
                then,
                otherwise,
            } => {
                let chosen = if self.holds(cond, cur)? {
                    then
                } else {
                    otherwise
                };
                self.eval(chosen, cur)
            }
            Mapping::ForEach { over, each } => {
                // `for_field` may be a `{field, path}`: the list is read at
                // the path's end, and the job depends on what it went through.
                let over = self.eval(over, cur)?;
                let items = match over.as_json() {
                    Value::Array(items) => items,
                    Value::Null => vec![],
                    Value::String(s) if s.is_empty() => vec![],
                    single => vec![single],
                };
                let mut list = Vec::with_capacity(items.len());
                let mut resources = over.resources;
                for item in &items {
                    let e = self.eval(
                        each,
                        Cursor {
                            rtype: None,
                            value: ValueRef::Other(item),
                        },
                    )?;
                    // Each item repeats the param's name.
                    self.spend(param_size(&e.value).saturating_add(self.param.len()))?;
                    resources.extend(e.resources);
                    list.push(Param {
                        param: self.param.to_string(),
                        value: e.value,
                        resources: vec![],
                    });
                }
                Ok(Evaluated {
                    value: ParamValue::List(list),
                    resources,
                })
            }
        }
    }

    fn holds(&self, cond: &Condition, cur: Cursor<'a>) -> Result<bool, EvalError> {
        Ok(match cond {
            Condition::Equal(a, b) => self.eval(a, cur)?.as_json() == self.eval(b, cur)?.as_json(),
            Condition::Regexp(a, re) => match self.eval(a, cur)?.as_json() {
                Value::String(s) => re.is_match(&s),
                _ => false,
            },
        })
    }

    /// Follows `path` and reads `field` at its end.
    fn follow_field(
        &self,
        cur: Cursor<'a>,
        path: &[PathStep],
        field: &str,
        ignore_missing: bool,
    ) -> Result<Evaluated, EvalError> {
        let (end, resources) = self.follow(cur, path, ignore_missing)?;
        let value = match end {
            Some(Hop::To(_, body)) => body.get(field).cloned().unwrap_or(Value::Null),
            // ESI: an absent target that may be missing reads as "", and
            // the job depends on nothing of the path.
            Some(Hop::Missing) => return Ok(Evaluated::literal(Value::String(String::new()))),
            Some(Hop::Unset) => Value::Null,
            None => cur.value.get(field),
        };
        self.budget.spend_on(&value)?;
        Ok(Evaluated {
            value: ParamValue::Value(value),
            resources,
        })
    }

    /// Walks a reference path, returning where it ended and every resource
    /// it went through.
    fn follow(
        &self,
        cur: Cursor<'a>,
        path: &[PathStep],
        ignore_missing: bool,
    ) -> Result<(Option<Hop<'a>>, Vec<ResourceId>), EvalError> {
        let mut here = cur;
        let mut visited = Vec::new();
        let mut end = None;
        for step in path {
            let (rtype, id) = match step {
                PathStep::Field(f) => {
                    let from = here.rtype.unwrap_or(self.subject.rtype);
                    let rtype = self.schemas.relation(from, f).ok_or_else(|| {
                        EvalError::UnknownRelation {
                            rtype: from.to_string(),
                            field: f.clone(),
                        }
                    })?;
                    (rtype.to_string(), id_of(&here.value.get(f)))
                }
                PathStep::Typed { rtype, id_field } if id_field.is_empty() => {
                    (rtype.clone(), id_of(&here.value.whole()))
                }
                PathStep::Typed { rtype, id_field } => {
                    (rtype.clone(), id_of(&here.value.get(id_field)))
                }
            };
            let Some(id) = id else {
                end = Some(Hop::Unset);
                break;
            };
            let rid = ResourceId {
                resource_type: rtype.clone(),
                resource_id: id.clone(),
            };
            match self.configs.lookup(&rtype, &id) {
                Lookup::Found(body) => {
                    visited.push(rid.clone());
                    here = Cursor {
                        rtype: Some(self.schema_type(&rtype)),
                        value: ValueRef::Object(body),
                    };
                    end = Some(Hop::To(rid, body));
                }
                Lookup::NotLoaded => return Err(EvalError::NeedConfig(rid)),
                Lookup::Absent if ignore_missing => {
                    end = Some(Hop::Missing);
                    break;
                }
                Lookup::Absent => return Err(EvalError::MissingReference { rtype, id }),
            }
        }
        Ok((end, visited))
    }

    fn schema_type(&self, rtype: &str) -> &'a str {
        self.schemas
            .by_singular(rtype)
            .map(|t| t.singular.as_str())
            .unwrap_or("")
    }
}

fn output(key: &str, target: ResourceId) -> ParamValue {
    ParamValue::OutputKey(OutputRef {
        output_key: key.to_string(),
        resource_type: target.resource_type,
        resource_id: target.resource_id,
    })
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every resource a set of params depends on.
pub fn referenced(params: &[Param]) -> BTreeSet<ResourceId> {
    params
        .iter()
        .flat_map(|p| p.resources.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Fixed(HashMap<(String, String), Map<String, Value>>);
    impl Configs for Fixed {
        fn lookup(&self, rtype: &str, id: &str) -> Lookup<'_> {
            match self.0.get(&(rtype.to_string(), id.to_string())) {
                Some(b) => Lookup::Found(b),
                None if id == "unloaded" => Lookup::NotLoaded,
                None => Lookup::Absent,
            }
        }
    }

    fn schemas() -> Schemas {
        Schemas::parse(
            r#"{"schemas": [
              {"id": "port", "plural": "ports", "schema": {"properties": {
                  "network_id": {"relation": "network"}, "device_id": {"relation": "vm"}}}},
              {"id": "vm", "plural": "vms", "schema": {"properties": {"template_id": {"relation": "template"}}}},
              {"id": "template", "plural": "templates"},
              {"id": "subnet", "plural": "subnets"},
              {"id": "network", "plural": "networks"}]}"#,
        )
        .unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn run(mapping: Value, body: Value) -> Result<Evaluated, EvalError> {
        let configs = Fixed(HashMap::from([
            (
                ("vm".into(), "vm1".into()),
                obj(json!({"id": "vm1", "ip": "10.0.0.1", "template_id": "t1", "subnets": ["s1"]})),
            ),
            (
                ("template".into(), "t1".into()),
                obj(json!({"id": "t1", "creds": {"u": "x"}})),
            ),
            (("subnet".into(), "s1".into()), obj(json!({"id": "s1"}))),
        ]));
        let body = obj(body);
        let m = Mapping::parse(&mapping).unwrap();
        evaluate(
            &m,
            "p",
            Subject {
                rtype: "port",
                body: &body,
                version: 7,
            },
            &schemas(),
            &configs,
            &Budget::eval(),
        )
    }

    fn rid(t: &str, i: &str) -> ResourceId {
        ResourceId {
            resource_type: t.into(),
            resource_id: i.into(),
        }
    }

    #[test]
    fn literal_forms() {
        let body = json!({"id": "p1", "name": "n", "nested": {"a": {"b": 5}}, "kind": "x"});
        let cases = [
            (json!("Pname"), json!("n")),
            (json!("Pmissing"), Value::Null),
            (json!("C13"), json!("13")),
            (json!({"constant": 13}), json!(13)),
            (json!("Vauto_filled"), json!(7)),
            (json!({"version": "auto_filled"}), json!(7)),
            (json!("Onested:a:b"), json!(5)),
            (json!("ACpre_&Pkind"), json!("pre_x")),
        ];
        for (m, want) in cases {
            let got = run(m.clone(), body.clone()).unwrap();
            assert_eq!(got, Evaluated::literal(want), "{m}");
        }
    }

    #[test]
    fn references_are_followed_and_recorded() {
        let body = json!({"id": "p1", "device_id": "vm1", "network_id": "n1"});
        let got = run(
            json!({"field": "creds", "path": ["device_id", "template_id"]}),
            body.clone(),
        )
        .unwrap();
        assert_eq!(got.value, ParamValue::Value(json!({"u": "x"})));
        assert_eq!(got.resources, vec![rid("vm", "vm1"), rid("template", "t1")]);
        let got = run(json!("Fvm+device_id:template+template_id:id"), body.clone()).unwrap();
        assert_eq!(got.as_json(), json!("t1"));
        let got = run(json!("Mnetwork:network_id:id"), body.clone()).unwrap();
        assert_eq!(got.resources, vec![rid("network", "n1")]);
        assert!(matches!(got.value, ParamValue::OutputKey(ref o) if o.resource_id == "n1"));
        let got = run(
            json!({"path": ["device_id"], "output_key": "server_id"}),
            body,
        )
        .unwrap();
        assert_eq!(got.resources, vec![rid("vm", "vm1")]);
    }

    #[test]
    fn missing_and_unloaded_references() {
        let e = run(
            json!({"field": "ip", "path": ["device_id"]}),
            json!({"device_id": "nope"}),
        )
        .unwrap_err();
        assert_eq!(
            e,
            EvalError::MissingReference {
                rtype: "vm".into(),
                id: "nope".into()
            }
        );
        // ignore_missing: an absent target is "", with no resources (the
        // path's earlier hops included), for a field and for an output.
        for m in [
            json!({"field": "ip", "path": [{"type": "vm", "id": "device_id"}], "ignore_missing": true}),
            json!({"output_key": "ip", "path": [{"type": "vm", "id": "device_id"}], "ignore_missing": true}),
        ] {
            let got = run(m.clone(), json!({"device_id": "nope"})).unwrap();
            assert_eq!(got, Evaluated::literal(json!("")), "{m}");
        }
        let e = run(
            json!({"field": "ip", "path": ["device_id"]}),
            json!({"device_id": "unloaded"}),
        )
        .unwrap_err();
        assert!(matches!(e, EvalError::NeedConfig(_)));
        let got = run(
            json!({"field": "ip", "path": ["device_id"]}),
            json!({"device_id": null}),
        )
        .unwrap();
        assert_eq!(got, Evaluated::literal(Value::Null));
        let e = run(json!({"field": "ip", "path": ["no_such_ref"]}), json!({})).unwrap_err();
        assert!(matches!(e, EvalError::UnknownRelation { .. }));
    }

    /// `for_field` given as `{field, path}` iterates the list found at the
    /// end of the path; the job depends on the path and on each item.
    #[test]
    fn for_field_at_the_end_of_a_path() {
        let m = json!({"for_field": {"field": "subnets", "path": [{"type": "vm", "id": "device_id"}], "ignore_missing": true},
                       "for_mapping": {"path": [{"type": "subnet", "id": ""}], "output_key": "id"}});
        let got = run(m.clone(), json!({"device_id": "vm1"})).unwrap();
        assert_eq!(got.resources, vec![rid("vm", "vm1"), rid("subnet", "s1")]);
        let ParamValue::List(items) = &got.value else {
            panic!("{got:?}")
        };
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0].value, ParamValue::OutputKey(o) if o.resource_id == "s1"));
        // The path's target absent (and allowed to be): no items, no resources.
        let got = run(m, json!({"device_id": "nope"})).unwrap();
        assert_eq!(got.value, ParamValue::List(vec![]));
        assert!(got.resources.is_empty());
    }

    #[test]
    fn lists_and_conditions() {
        let m = json!({"for_mapping": {"path": [{"type": "subnet", "id": "subnet_id"}], "output_key": "id"}, "for_field": "fixed_ips"});
        let got = run(
            m,
            json!({"fixed_ips": [{"subnet_id": "s1", "ip_address": "1"}]}),
        )
        .unwrap();
        assert_eq!(got.resources, vec![rid("subnet", "s1")]);
        let ParamValue::List(items) = got.value else {
            panic!()
        };
        assert_eq!(items.len(), 1);
        assert!(items[0].resources.is_empty());
        assert_eq!(items[0].param, "p");

        let m = json!({"for_mapping": {"path": [{"type": "vm", "id": ""}], "output_key": "id"}, "for_field": "vms"});
        let got = run(m, json!({"vms": ["vm1"]})).unwrap();
        assert_eq!(got.resources, vec![rid("vm", "vm1")]);

        let m = json!({"if_mapping": {"regexp": [{"field": "owner"}, {"constant": "network:dhcp|network:empty"}]},
                       "then_mapping": {"constant": null}, "else_mapping": {"constant": "port"}});
        assert_eq!(
            run(m.clone(), json!({"owner": "network:dhcp"}))
                .unwrap()
                .as_json(),
            Value::Null
        );
        assert_eq!(
            run(m.clone(), json!({"owner": "compute:nova"}))
                .unwrap()
                .as_json(),
            json!("port")
        );
        assert_eq!(
            run(m, json!({"owner": "xnetwork:dhcp"})).unwrap().as_json(),
            json!("port")
        );
        let m = json!({"if_mapping": {"equal": [{"field": "owner"}, {"constant": "gw"}]},
                       "then_mapping": {"field": "ip", "path": [{"type": "vm", "id": "device_id"}]}, "else_mapping": {"constant": null}});
        let got = run(m, json!({"owner": "gw", "device_id": "vm1"})).unwrap();
        assert_eq!(
            (got.as_json(), got.resources),
            (json!("10.0.0.1"), vec![rid("vm", "vm1")])
        );
    }

    #[test]
    fn concatenation_and_repetition_stay_within_the_budget() {
        let schemas = schemas();
        let big = "x".repeat(1 << 20);
        let body = json!({"big": big, "items": vec![1; 100_000]})
            .as_object()
            .unwrap()
            .clone();
        let subject = Subject {
            rtype: "network",
            body: &body,
            version: 1,
        };
        // Fifty copies of a 1 MiB field.
        let concat = Mapping::parse(&json!(format!("A{}", vec!["Pbig"; 50].join("&")))).unwrap();
        let e = evaluate(
            &concat,
            "p",
            subject,
            &schemas,
            &Fixed(HashMap::new()),
            &Budget::eval(),
        )
        .unwrap_err();
        assert!(matches!(e, EvalError::OverLimit(_)), "{e}");
        // A 1 MiB constant for each of 100,000 items.
        let each = json!({"for_field": "items", "for_mapping": {"constant": big}});
        let e = evaluate(
            &Mapping::parse(&each).unwrap(),
            "p",
            subject,
            &schemas,
            &Fixed(HashMap::new()),
            &Budget::eval(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--max-eval-bytes"), "{e}");
        // Many params of one job share one budget: fifty params each
        // copying the 1 MiB field run out as one param would.
        let copy = Mapping::parse(&json!("Pbig")).unwrap();
        let shared = Budget::eval();
        let spent: Result<Vec<_>, _> = (0..50)
            .map(|_| {
                evaluate(
                    &copy,
                    "p",
                    subject,
                    &schemas,
                    &Fixed(HashMap::new()),
                    &shared,
                )
            })
            .collect();
        assert!(matches!(spent, Err(EvalError::OverLimit(_))));
        // What fits, evaluates.
        let fits = Mapping::parse(&json!("APbig")).unwrap();
        assert!(
            evaluate(
                &fits,
                "p",
                subject,
                &schemas,
                &Fixed(HashMap::new()),
                &Budget::eval()
            )
            .is_ok()
        );
    }
}
