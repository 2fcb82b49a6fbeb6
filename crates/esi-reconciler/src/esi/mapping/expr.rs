//! Parsing mapping expressions: the compact string forms (`Pfield`, `C13`,
//! `Mnetwork:network_id:id`, `Ftype+field:attr`, `Oa:b`, `A…&…`, `V…`) and
//! the object forms (`{field, path}`, `{constant}`, `{version}`,
//! `{output_key, path}`, `{for_field, for_mapping}`, `{if_mapping, …}`).

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping {mapping}: {why}")]
pub struct MappingError {
    pub mapping: String,
    pub why: String,
}

/// One step through a reference.
#[derive(Debug, Clone, PartialEq)]
pub enum PathStep {
    /// A reference field of the current resource; its type comes from the schemas.
    Field(String),
    /// A reference of a given type whose id is field `id_field` of the current
    /// value (or the current value itself when `id_field` is empty).
    Typed { rtype: String, id_field: String },
}

#[derive(Debug, Clone)]
pub enum Condition {
    Equal(Mapping, Mapping),
    /// Matches like Python's `re.match`: anchored at the start.
    Regexp(Mapping, Regex),
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Condition::Equal(a, b), Condition::Equal(c, d)) => a == c && b == d,
            (Condition::Regexp(a, r), Condition::Regexp(b, s)) => {
                a == b && r.as_str() == s.as_str()
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// `P<field>`, `{field}`: a field of the current value.
    Property(String),
    /// `C<text>` (a string), `{constant: any}`.
    Constant(Value),
    /// `V…`, `{version}`: the config's version.
    Version,
    /// `M<type>:<field>:<output_key>`: an output of the resource `field` refers to.
    Output {
        rtype: String,
        field: String,
        output_key: String,
    },
    /// `F<type>+<field>:…:<attr>`: a field fetched through a chain of references.
    Fetch {
        hops: Vec<(String, String)>,
        attr: String,
    },
    /// `O<a>:<b>…`: a nested property.
    Nested(Vec<String>),
    /// `A<m1>&<m2>…`: string concatenation.
    Concat(Vec<Mapping>),
    /// `{field, path, ignore_missing}`.
    Field {
        field: String,
        path: Vec<PathStep>,
        ignore_missing: bool,
    },
    /// `{output_key, path, ignore_missing}`.
    OutputKey {
        output_key: String,
        path: Vec<PathStep>,
        ignore_missing: bool,
    },
    /// `{for_field, for_mapping}`: a list, one item per element of `over`.
    ForEach {
        over: Box<Mapping>,
        each: Box<Mapping>,
    },
    /// `{if_mapping, then_mapping, else_mapping}`.
    If {
        cond: Box<Condition>,
        then: Box<Mapping>,
        otherwise: Box<Mapping>,
    },
}

impl Mapping {
    pub fn parse(v: &Value) -> Result<Mapping, MappingError> {
        let err = |why: &str| MappingError {
            mapping: v.to_string(),
            why: why.to_string(),
        };
        match v {
            Value::String(s) => parse_compact(s).map_err(|why| err(&why)),
            Value::Object(o) => {
                let path = || -> Result<Vec<PathStep>, MappingError> {
                    match o.get("path") {
                        None => Ok(vec![]),
                        Some(Value::Array(steps)) => steps
                            .iter()
                            .map(|s| parse_step(s).map_err(|w| err(&w)))
                            .collect(),
                        Some(_) => Err(err("path must be a list")),
                    }
                };
                let ignore_missing = o
                    .get("ignore_missing")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if let Some(c) = o.get("constant") {
                    return Ok(Mapping::Constant(c.clone()));
                }
                if o.contains_key("version") {
                    return Ok(Mapping::Version);
                }
                if let Some(cond) = o.get("if_mapping") {
                    let then = o
                        .get("then_mapping")
                        .ok_or_else(|| err("if_mapping without then_mapping"))?;
                    let otherwise = o
                        .get("else_mapping")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default()));
                    let otherwise = if otherwise.as_object().is_some_and(|m| m.is_empty()) {
                        Mapping::Constant(Value::Null)
                    } else {
                        Mapping::parse(&otherwise)?
                    };
                    return Ok(Mapping::If {
                        cond: Box::new(parse_condition(cond).map_err(|w| err(&w))?),
                        then: Box::new(Mapping::parse(then)?),
                        otherwise: Box::new(otherwise),
                    });
                }
                if let Some(over) = o.get("for_field") {
                    let each = o
                        .get("for_mapping")
                        .ok_or_else(|| err("for_field without for_mapping"))?;
                    let over = match over {
                        Value::String(f) => Mapping::Property(f.clone()),
                        other => Mapping::parse(other)?,
                    };
                    return Ok(Mapping::ForEach {
                        over: Box::new(over),
                        each: Box::new(Mapping::parse(each)?),
                    });
                }
                if let Some(key) = o.get("output_key") {
                    let key = key
                        .as_str()
                        .ok_or_else(|| err("output_key must be a string"))?;
                    return Ok(Mapping::OutputKey {
                        output_key: key.to_string(),
                        path: path()?,
                        ignore_missing,
                    });
                }
                if let Some(field) = o.get("field") {
                    let field = field
                        .as_str()
                        .ok_or_else(|| err("field must be a string"))?;
                    let path = path()?;
                    if path.is_empty() {
                        return Ok(Mapping::Property(field.to_string()));
                    }
                    return Ok(Mapping::Field {
                        field: field.to_string(),
                        path,
                        ignore_missing,
                    });
                }
                Err(err("unknown mapping object"))
            }
            Value::Null => Ok(Mapping::Constant(Value::Null)),
            _ => Err(err("a mapping is a string or an object")),
        }
    }
}

fn parse_compact(s: &str) -> Result<Mapping, String> {
    let mut chars = s.chars();
    let kind = chars.next().ok_or("empty mapping")?;
    let rest = chars.as_str();
    match kind {
        'P' => Ok(Mapping::Property(rest.to_string())),
        'C' => Ok(Mapping::Constant(Value::String(rest.to_string()))),
        'V' => Ok(Mapping::Version),
        'M' => {
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.as_slice() {
                [t, f, k] if !t.is_empty() && !f.is_empty() && !k.is_empty() => {
                    Ok(Mapping::Output {
                        rtype: t.to_string(),
                        field: f.to_string(),
                        output_key: k.to_string(),
                    })
                }
                _ => Err("expected M<type>:<field>:<output_key>".into()),
            }
        }
        'F' => {
            let mut parts: Vec<&str> = rest.split(':').collect();
            let attr = parts
                .pop()
                .filter(|a| !a.is_empty())
                .ok_or("F mapping without attribute")?;
            if parts.is_empty() {
                return Err("F mapping without a reference".into());
            }
            let hops = parts
                .iter()
                .map(|p| match p.split_once('+') {
                    Some((t, f)) if !t.is_empty() && !f.is_empty() => {
                        Ok((t.to_string(), f.to_string()))
                    }
                    _ => Err(format!("F hop {p:?} is not <type>+<field>")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Mapping::Fetch {
                hops,
                attr: attr.to_string(),
            })
        }
        'O' => {
            let path: Vec<String> = rest.split(':').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err("O mapping with an empty segment".into());
            }
            Ok(Mapping::Nested(path))
        }
        'A' => {
            let parts = rest
                .split('&')
                .map(parse_compact)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Mapping::Concat(parts))
        }
        other => Err(format!("unknown mapping form {other:?}")),
    }
}

fn parse_step(v: &Value) -> Result<PathStep, String> {
    match v {
        Value::String(f) => Ok(PathStep::Field(f.clone())),
        Value::Object(o) => {
            let rtype = o
                .get("type")
                .and_then(Value::as_str)
                .ok_or("path step without type")?;
            let id = o
                .get("id")
                .and_then(Value::as_str)
                .ok_or("path step without id")?;
            Ok(PathStep::Typed {
                rtype: rtype.to_string(),
                id_field: id.to_string(),
            })
        }
        _ => Err("a path step is a field name or {type, id}".into()),
    }
}

fn parse_condition(v: &Value) -> Result<Condition, String> {
    let pair = |x: &Value| -> Result<(Mapping, Mapping), String> {
        match x.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((
                Mapping::parse(a).map_err(|e| e.why)?,
                Mapping::parse(b).map_err(|e| e.why)?,
            )),
            _ => Err("a condition compares exactly two mappings".into()),
        }
    };
    if let Some(x) = v.get("equal") {
        let (a, b) = pair(x)?;
        return Ok(Condition::Equal(a, b));
    }
    if let Some(x) = v.get("regexp") {
        let (a, b) = pair(x)?;
        let pattern = match b {
            Mapping::Constant(Value::String(p)) => p,
            _ => return Err("regexp pattern must be a constant string".into()),
        };
        let re = Regex::new(&format!("^(?:{pattern})")).map_err(|e| format!("bad regexp: {e}"))?;
        return Ok(Condition::Regexp(a, re));
    }
    Err("if_mapping needs equal or regexp".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_compact_form() {
        let cases = [
            ("Pid", Mapping::Property("id".into())),
            ("C13", Mapping::Constant(json!("13"))),
            ("Vauto_filled", Mapping::Version),
            (
                "Mnetwork:network_id:id",
                Mapping::Output {
                    rtype: "network".into(),
                    field: "network_id".into(),
                    output_key: "id".into(),
                },
            ),
            (
                "Fa+a_id:b+b_id:attr",
                Mapping::Fetch {
                    hops: vec![("a".into(), "a_id".into()), ("b".into(), "b_id".into())],
                    attr: "attr".into(),
                },
            ),
            (
                "Oprimary:ip",
                Mapping::Nested(vec!["primary".into(), "ip".into()]),
            ),
            (
                "ACx_&Py",
                Mapping::Concat(vec![
                    Mapping::Constant(json!("x_")),
                    Mapping::Property("y".into()),
                ]),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Mapping::parse(&json!(text)).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_forms_with_a_reason() {
        for bad in [
            json!(""),
            json!("Xfoo"),
            json!("Mnetwork:id"),
            json!("Fattr"),
            json!("Fa:b"),
            json!(3),
            json!({"foo": 1}),
        ] {
            assert!(Mapping::parse(&bad).is_err(), "{bad}");
        }
        let e = Mapping::parse(&json!({"if_mapping": {"regexp": [{"field": "a"}, {"constant": "("}]}, "then_mapping": {"constant": 1}}))
            .unwrap_err();
        assert!(e.why.contains("regexp"), "{e}");
    }

    #[test]
    fn parses_object_forms() {
        let m = Mapping::parse(&json!({"for_mapping": {"path": [{"type": "port", "id": ""}], "output_key": "id"}, "for_field": "port_ids"}))
            .unwrap();
        assert!(matches!(m, Mapping::ForEach { .. }));
        let m = Mapping::parse(&json!({"field": "credentials", "path": ["a_id", "b_id"]})).unwrap();
        assert!(matches!(m, Mapping::Field { ref path, .. } if path.len() == 2));
        assert_eq!(
            Mapping::parse(&json!({"field": "x"})).unwrap(),
            Mapping::Property("x".into())
        );
        assert_eq!(
            Mapping::parse(&json!({"version": "auto_filled"})).unwrap(),
            Mapping::Version
        );
    }

    #[test]
    fn every_reference_mapping_parses() {
        let dir = crate::shared_dir().join("esi-reference/heat_templates");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let v: Value =
                serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
            for (name, m) in v["value"]["body"]["parameter_mappings"]
                .as_object()
                .unwrap()
            {
                Mapping::parse(m).unwrap_or_else(|e| panic!("{name}: {e}"));
                n += 1;
            }
        }
        assert!(n > 800, "{n}");
    }
}
