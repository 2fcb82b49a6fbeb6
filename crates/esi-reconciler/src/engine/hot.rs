//! Heat Orchestration Templates: parsing the rendered YAML, and evaluating
//! the intrinsic functions an output uses (`get_param`, `get_resource`,
//! `get_attr`, `str_replace`, `list_join`) the way the simulated engine
//! needs to produce outputs.

use serde_json::{Map, Value};

use super::yaml::{self, YamlError};
use crate::limits::{Budget, Limits, OverLimit};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HotError {
    #[error("rendered template is not YAML: {0}")]
    Yaml(String),
    #[error("rendered template is not a HOT document: {0}")]
    Shape(&'static str),
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

impl From<YamlError> for HotError {
    fn from(e: YamlError) -> Self {
        match e {
            YamlError::Syntax(s) => HotError::Yaml(s),
            YamlError::OverLimit(o) => HotError::OverLimit(o),
        }
    }
}

/// Parses a rendered template into JSON and checks it looks like HOT.
pub fn parse(text: &str, limits: &Limits) -> Result<Value, HotError> {
    let doc = yaml::load(text, limits)?;
    if doc.is_null() {
        return Err(HotError::Shape("empty document"));
    }
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

/// A stable, UUID-shaped id for `resource` of `stack`: two FNV-1a hashes
/// (so it is the same on every run and every machine) laid out as a v4
/// UUID's bits. The layout is pinned by a test: ids already in use (sim
/// stacks, Kubernetes mirror names) must not change.
pub fn stable_id(stack: &str, resource: &str) -> String {
    let h = |seed: u64| {
        let mut x: u64 = 0xcbf29ce484222325 ^ seed;
        for b in stack.bytes().chain([0]).chain(resource.bytes()) {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x100000001b3);
        }
        x
    };
    let (a, b) = (u128::from(h(1)), u128::from(h(2)));
    // 48 bits of `a`, the version nibble, 12 more bits of `a`; the variant
    // nibble, 12 bits of `b`'s top, then `b`'s low 48 bits.
    let bits = (a >> 16) << 80
        | 0x4000 << 64
        | (a & 0xfff) << 64
        | 0x8000 << 48
        | (b >> 52) << 48
        | (b & 0xffff_ffff_ffff);
    uuid::Builder::from_random_bytes(bits.to_be_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// What an output's intrinsic functions can see.
pub struct Scope<'a> {
    pub stack: &'a str,
    pub parameters: &'a Map<String, Value>,
    /// The template's parameter declarations, for defaults.
    pub declared: Option<&'a Map<String, Value>>,
}

impl Scope<'_> {
    fn param(&self, name: &str) -> Option<&Value> {
        self.parameters.get(name).or_else(|| {
            self.declared
                .and_then(|d| d.get(name))
                .and_then(|p| p.get("default"))
        })
    }
}

/// Evaluates a HOT value, resolving intrinsic functions, within
/// [`Limits::eval_bytes`] and [`Limits::nesting_depth`]: `str_replace` and
/// `list_join` can multiply their input at every level of nesting.
pub fn eval(v: &Value, scope: &Scope<'_>, limits: &Limits) -> Result<Value, OverLimit> {
    Eval::new(scope, limits).eval(v)
}

/// An evaluation budget shared by several values (a stack's outputs).
pub struct Eval<'a, 's> {
    scope: &'a Scope<'s>,
    limits: &'a Limits,
    budget: Budget,
}

/// A value as text, the way Heat joins and replaces non-strings.
fn text_of(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

impl<'a, 's> Eval<'a, 's> {
    pub fn new(scope: &'a Scope<'s>, limits: &'a Limits) -> Self {
        Eval {
            scope,
            limits,
            budget: Budget::new(limits.eval_bytes),
        }
    }

    /// Evaluates `v`, spending from the shared budget.
    pub fn eval(&mut self, v: &Value) -> Result<Value, OverLimit> {
        self.value(v, 0)
    }

    fn spend(&mut self, bytes: usize) -> Result<(), OverLimit> {
        self.budget.spend(bytes)
    }

    /// Charges a produced value its whole size as JSON.
    fn produced(&mut self, v: Value) -> Result<Value, OverLimit> {
        self.budget.spend_on(&v)?;
        Ok(v)
    }

    /// Copies `v`, charged before the copy is made.
    fn copy_of(&mut self, v: Option<&Value>) -> Result<Value, OverLimit> {
        let v = v.unwrap_or(&Value::Null);
        self.budget.spend_on(v)?;
        Ok(v.clone())
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<Value, OverLimit> {
        if depth > self.limits.nesting_depth {
            return Err(OverLimit::nesting(
                "evaluating the template's outputs",
                self.limits.nesting_depth,
            ));
        }
        let next = depth.saturating_add(1);
        match v {
            Value::Object(m) => match m.iter().next() {
                Some((f, arg)) if m.len() == 1 => self.function(f, arg, next, m),
                _ => self.object(m, next),
            },
            Value::Array(a) => {
                // Each item was charged as it was made.
                let items = a
                    .iter()
                    .map(|x| self.value(x, next))
                    .collect::<Result<_, _>>()?;
                self.spend(2)?;
                Ok(Value::Array(items))
            }
            other => self.produced(other.clone()),
        }
    }

    fn object(&mut self, m: &Map<String, Value>, depth: usize) -> Result<Value, OverLimit> {
        let mut out = Map::new();
        for (k, v) in m {
            self.spend(k.len())?;
            out.insert(k.clone(), self.value(v, depth)?);
        }
        self.spend(2)?;
        Ok(Value::Object(out))
    }

    fn function(
        &mut self,
        f: &str,
        arg: &Value,
        depth: usize,
        whole: &Map<String, Value>,
    ) -> Result<Value, OverLimit> {
        let scope = self.scope;
        let v = match f {
            // Walked by reference; only what the path ends at is copied,
            // and charged before it is.
            "get_param" => {
                let found = match arg {
                    Value::String(name) => scope.param(name),
                    Value::Array(path) => {
                        let mut cur = path
                            .first()
                            .and_then(Value::as_str)
                            .and_then(|n| scope.param(n));
                        for seg in path.iter().skip(1) {
                            cur = cur.and_then(|c| match seg {
                                Value::String(k) => c.get(k),
                                Value::Number(n) => n
                                    .as_u64()
                                    .and_then(|i| usize::try_from(i).ok())
                                    .and_then(|i| c.get(i)),
                                _ => None,
                            });
                        }
                        cur
                    }
                    _ => None,
                };
                return self.copy_of(found);
            }
            "get_resource" => arg
                .as_str()
                .map(|r| Value::String(stable_id(scope.stack, r)))
                .unwrap_or(Value::Null),
            "get_attr" => {
                let mut parts = Vec::new();
                for p in arg.as_array().map(Vec::as_slice).unwrap_or_default() {
                    parts.push(text_of(&self.value(p, depth)?));
                }
                match parts.as_slice() {
                    [r, attr, ..] if attr == "fq_name" => Value::Array(vec![
                        "default-domain".into(),
                        "sim".into(),
                        Value::String(format!("{}-{r}", scope.stack)),
                    ]),
                    [r, rest @ ..] => {
                        Value::String(format!("{}:{}", stable_id(scope.stack, r), rest.join(".")))
                    }
                    [] => Value::Null,
                }
            }
            "str_replace" => {
                let template = self.value(arg.get("template").unwrap_or(&Value::Null), depth)?;
                let mut text = text_of(&template);
                if let Some(params) = arg.get("params").and_then(Value::as_object) {
                    for (k, pv) in params {
                        let with = text_of(&self.value(pv, depth)?);
                        // Sized before it is built: each match grows the
                        // text by the difference.
                        let matches = text.matches(k.as_str()).count();
                        let grown = matches.saturating_mul(with.len().saturating_sub(k.len()));
                        self.spend(grown)?;
                        text = text.replace(k.as_str(), &with);
                    }
                }
                Value::String(text)
            }
            "list_join" => {
                let sep = arg.get(0).and_then(Value::as_str).unwrap_or("");
                let list = match arg.get(1) {
                    Some(l) => self.value(l, depth)?,
                    None => Value::Null,
                };
                let items: Vec<String> = list
                    .as_array()
                    .map(|l| l.iter().map(text_of).collect())
                    .unwrap_or_default();
                self.spend(sep.len().saturating_mul(items.len()))?;
                Value::String(items.join(sep))
            }
            _ => return self.object(whole, depth),
        };
        self.produced(v)
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
        let t = parse("heat_template_version: 2013-05-23\nresources:\n  a:\n    type: X\n    properties: {n: 3, ok: true}\n", &Limits::default()).unwrap();
        assert_eq!(t["heat_template_version"], json!("2013-05-23"));
        assert_eq!(
            t["resources"]["a"]["properties"],
            json!({"n": 3, "ok": true})
        );
        assert!(parse("a: [", &Limits::default()).is_err());
        assert!(parse("- 1", &Limits::default()).is_err());
        assert!(parse("resources: {}", &Limits::default()).is_err());
        // A repeated key wins over the earlier one, as in PyYAML.
        let t = parse(
            "heat_template_version: x\nparameters:\n  a: {default: 1}\n  a: {default: 2}\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(t["parameters"]["a"]["default"], json!(2));
        let t = parse(
            "heat_template_version: x\nv: [1, 2.5, '3', ~, yes, true]\n",
            &Limits::default(),
        )
        .unwrap();
        // YAML 1.1, as Heat reads it: `yes` is true.
        assert_eq!(t["v"], json!([1, 2.5, "3", null, true, true]));
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
        let eval = |v: &Value, s: &Scope<'_>| eval(v, s, &Limits::default()).unwrap();
        assert_eq!(eval(&json!({"get_param": "name"}), &s), json!("n1"));
        assert_eq!(eval(&json!({"get_param": "mac"}), &s), json!("fe:ff"));
        assert_eq!(
            eval(&json!({"get_param": ["list", 0, "ip"]}), &s),
            json!("1.2.3.4")
        );
        let id = eval(&json!({"get_resource": "vmi"}), &s);
        assert_eq!(id, json!(stable_id("port_p1", "vmi")));
        // The ids in use stay what they were.
        assert_eq!(
            stable_id("port_p1", "vmi"),
            "31fd98c8-670b-45db-82a2-0b1be1ef06aa"
        );
        assert_eq!(
            stable_id("chaos-network", "0"),
            "a7468b6c-788f-4943-8cd2-0407d977131a"
        );
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

    #[test]
    fn output_functions_stay_within_their_budget() {
        let params = Map::new();
        let s = Scope {
            stack: "x",
            parameters: &params,
            declared: None,
        };
        // Each level multiplies the text by ten.
        let mut v = json!("xx");
        for _ in 0..12 {
            v = json!({"str_replace": {"template": v, "params": {"x": "xxxxxxxxxx"}}});
        }
        let e = eval(&v, &s, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("--max-eval-bytes"), "{e}");
        // A large parameter, referenced many times: each copy is charged.
        let declared = json!({"big": {"default": vec!["item"; 40_000]}})
            .as_object()
            .unwrap()
            .clone();
        let big = Scope {
            stack: "x",
            parameters: &params,
            declared: Some(&declared),
        };
        let many = json!(vec![json!({"get_param": "big"}); 40_000]);
        let e = eval(&many, &big, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("--max-eval-bytes"), "{e}");
        assert_eq!(
            eval(&json!({"get_param": ["big", 3]}), &big, &Limits::default()),
            Ok(json!("item"))
        );
        // An empty path, deep nesting: errors or values, never panics.
        assert_eq!(
            eval(&json!({"get_param": []}), &s, &Limits::default()),
            Ok(Value::Null)
        );
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        assert!(eval(&deep, &s, &Limits::default()).is_err());
    }
}
