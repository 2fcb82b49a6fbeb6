//! Heat Orchestration Templates: parsing the rendered YAML, and evaluating
//! the intrinsic functions an output uses (`get_param`, `get_resource`,
//! `get_attr`, `str_replace`, `list_join`) the way the simulated engine
//! needs to produce outputs.

use serde_json::{Map, Number, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotError {
    #[error("rendered template is not YAML: {0}")]
    Yaml(String),
    #[error("rendered template is not a HOT document: {0}")]
    Shape(&'static str),
}

/// A plain scalar as YAML's core schema reads it.
fn scalar(text: String, plain: bool) -> Value {
    if !plain {
        return Value::String(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(r)),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(text),
    }
}

fn key_text(k: Value) -> String {
    match k {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Builds JSON straight from parser events. Unlike yaml-rust2's own loader
/// it lets a repeated key win over the earlier one, as PyYAML (and so Heat)
/// does: one reference template declares a parameter twice.
#[derive(Default)]
struct JsonBuilder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Value>,
    docs: Vec<Value>,
}

enum Frame {
    Seq(usize, Vec<Value>),
    Map(usize, Map<String, Value>, Option<String>),
}

impl JsonBuilder {
    fn push(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Frame::Seq(_, items)) => items.push(v),
            Some(Frame::Map(_, map, key)) => match key.take() {
                None => *key = Some(key_text(v)),
                Some(k) => {
                    map.insert(k, v);
                }
            },
        }
    }
}

impl MarkedEventReceiver for JsonBuilder {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                self.push(scalar(text, style == TScalarStyle::Plain), anchor)
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(anchor, vec![])),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(anchor, Map::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(anchor, items)) => self.push(Value::Array(items), anchor),
                Some(Frame::Map(anchor, map, _)) => self.push(Value::Object(map), anchor),
                None => {}
            },
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.push(v, 0);
            }
            _ => {}
        }
    }
}

/// Parses a rendered template into JSON and checks it looks like HOT.
pub fn parse(text: &str) -> Result<Value, HotError> {
    let mut builder = JsonBuilder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| HotError::Yaml(e.to_string()))?;
    let doc = builder
        .docs
        .into_iter()
        .next()
        .ok_or(HotError::Shape("empty document"))?;
    let obj = doc
        .as_object()
        .ok_or(HotError::Shape("top level is not a mapping"))?;
    if !obj.contains_key("heat_template_version") {
        return Err(HotError::Shape("no heat_template_version"));
    }
    if let Some(r) = obj.get("resources")
        && !r.is_object()
        && !r.is_null()
    {
        return Err(HotError::Shape("resources is not a mapping"));
    }
    Ok(doc)
}

/// A stable, UUID-shaped id for `resource` of `stack` (FNV-1a, so it is the
/// same on every run and every machine).
pub fn stable_id(stack: &str, resource: &str) -> String {
    let h = |seed: u64| {
        let mut x: u64 = 0xcbf29ce484222325 ^ seed;
        for b in stack.bytes().chain([0]).chain(resource.bytes()) {
            x ^= b as u64;
            x = x.wrapping_mul(0x100000001b3);
        }
        x
    };
    let (a, b) = (h(1), h(2));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// What an output's intrinsic functions can see.
pub struct Scope<'a> {
    pub stack: &'a str,
    pub parameters: &'a Map<String, Value>,
    /// The template's parameter declarations, for defaults.
    pub declared: Option<&'a Map<String, Value>>,
}

impl Scope<'_> {
    fn param(&self, name: &str) -> Value {
        self.parameters
            .get(name)
            .cloned()
            .or_else(|| {
                self.declared
                    .and_then(|d| d.get(name))
                    .and_then(|p| p.get("default"))
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }
}

/// Evaluates a HOT value, resolving intrinsic functions.
pub fn eval(v: &Value, scope: &Scope<'_>) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 => {
            let (f, arg) = m.iter().next().expect("one entry");
            match f.as_str() {
                "get_param" => match arg {
                    Value::String(name) => scope.param(name),
                    Value::Array(path) => {
                        let mut cur = path
                            .first()
                            .and_then(Value::as_str)
                            .map(|n| scope.param(n))
                            .unwrap_or(Value::Null);
                        for seg in &path[1..] {
                            cur = match seg {
                                Value::String(k) => cur.get(k).cloned().unwrap_or(Value::Null),
                                Value::Number(n) => n
                                    .as_u64()
                                    .and_then(|i| cur.get(i as usize).cloned())
                                    .unwrap_or(Value::Null),
                                _ => Value::Null,
                            };
                        }
                        cur
                    }
                    _ => Value::Null,
                },
                "get_resource" => arg
                    .as_str()
                    .map(|r| Value::String(stable_id(scope.stack, r)))
                    .unwrap_or(Value::Null),
                "get_attr" => {
                    let parts: Vec<String> = arg
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|p| eval(p, scope))
                                .map(|p| {
                                    p.as_str()
                                        .map(str::to_string)
                                        .unwrap_or_else(|| p.to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    match parts.as_slice() {
                        [r, attr, ..] if attr == "fq_name" => Value::Array(vec![
                            "default-domain".into(),
                            "sim".into(),
                            Value::String(format!("{}-{r}", scope.stack)),
                        ]),
                        [r, rest @ ..] => Value::String(format!(
                            "{}:{}",
                            stable_id(scope.stack, r),
                            rest.join(".")
                        )),
                        [] => Value::Null,
                    }
                }
                "str_replace" => {
                    let template = eval(&arg["template"], scope);
                    let mut text = template
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| template.to_string());
                    if let Some(params) = arg["params"].as_object() {
                        for (k, pv) in params {
                            let pv = eval(pv, scope);
                            let s = pv
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| pv.to_string());
                            text = text.replace(k.as_str(), &s);
                        }
                    }
                    Value::String(text)
                }
                "list_join" => {
                    let sep = arg.get(0).and_then(Value::as_str).unwrap_or("");
                    let items: Vec<String> = arg
                        .get(1)
                        .map(|l| eval(l, scope))
                        .and_then(|l| l.as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect();
                    Value::String(items.join(sep))
                }
                _ => Value::Object(m.iter().map(|(k, v)| (k.clone(), eval(v, scope))).collect()),
            }
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), eval(v, scope))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| eval(x, scope)).collect()),
        other => other.clone(),
    }
}

/// The template's resource names.
pub fn resource_names(template: &Value) -> Vec<String> {
    template
        .get("resources")
        .and_then(Value::as_object)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_hot_and_rejects_what_is_not() {
        let t = parse("heat_template_version: 2013-05-23\nresources:\n  a:\n    type: X\n    properties: {n: 3, ok: true}\n").unwrap();
        assert_eq!(t["heat_template_version"], json!("2013-05-23"));
        assert_eq!(
            t["resources"]["a"]["properties"],
            json!({"n": 3, "ok": true})
        );
        assert!(parse("a: [").is_err());
        assert!(parse("- 1").is_err());
        assert!(parse("resources: {}").is_err());
        // A repeated key wins over the earlier one, as in PyYAML.
        let t =
            parse("heat_template_version: x\nparameters:\n  a: {default: 1}\n  a: {default: 2}\n")
                .unwrap();
        assert_eq!(t["parameters"]["a"]["default"], json!(2));
        let t = parse("heat_template_version: x\nv: [1, 2.5, '3', ~, yes, true]\n").unwrap();
        assert_eq!(t["v"], json!([1, 2.5, "3", null, "yes", true]));
    }

    #[test]
    fn evaluates_output_functions() {
        let params = json!({"name": "n1", "list": [{"ip": "1.2.3.4"}]})
            .as_object()
            .unwrap()
            .clone();
        let declared = json!({"mac": {"type": "string", "default": "fe:ff"}})
            .as_object()
            .unwrap()
            .clone();
        let s = Scope {
            stack: "port_p1",
            parameters: &params,
            declared: Some(&declared),
        };
        assert_eq!(eval(&json!({"get_param": "name"}), &s), json!("n1"));
        assert_eq!(eval(&json!({"get_param": "mac"}), &s), json!("fe:ff"));
        assert_eq!(
            eval(&json!({"get_param": ["list", 0, "ip"]}), &s),
            json!("1.2.3.4")
        );
        let id = eval(&json!({"get_resource": "vmi"}), &s);
        assert_eq!(id, json!(stable_id("port_p1", "vmi")));
        assert_ne!(id, json!(stable_id("port_p2", "vmi")));
        assert_eq!(
            eval(
                &json!({"str_replace": {"template": "%n%-x", "params": {"%n%": {"get_param": "name"}}}}),
                &s
            ),
            json!("n1-x")
        );
        assert_eq!(
            eval(
                &json!({"list_join": ["/", ["a", {"get_param": "name"}]]}),
                &s
            ),
            json!("a/n1")
        );
        assert!(eval(&json!({"get_attr": ["vmi", "fq_name"]}), &s).is_array());
    }
}
