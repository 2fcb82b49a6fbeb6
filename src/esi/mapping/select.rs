//! Which heat template a resource uses: `template_mappings.json` maps a
//! handler and a resource type to a mapping whose value is the template id,
//! sometimes conditionally (a DHCP port has none: no job).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::eval::{Configs, EvalError, Lookup, Subject, evaluate};
use super::expr::{Mapping, MappingError};
use crate::esi::schema::Schemas;

/// Handler → resource type → template id mapping.
#[derive(Debug, Clone, Default)]
pub struct TemplateMappings {
    by_type: HashMap<String, (String, Mapping)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateMappingsError {
    #[error("cannot read template mappings {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template mappings {path}: {reason}")]
    Parse { path: String, reason: String },
}

/// What template selection decided for a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// Use this template with this handler.
    Template { handler: String, template: String },
    /// The type has a mapping, and it says: no template for this resource.
    None,
    /// No handler knows this type: the reconciler leaves it alone.
    Unmapped,
}

struct NoConfigs;
impl Configs for NoConfigs {
    fn lookup(&self, _: &str, _: &str) -> Lookup<'_> {
        Lookup::Absent
    }
}

impl TemplateMappings {
    pub fn load(path: &Path) -> Result<Self, TemplateMappingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateMappingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| TemplateMappingsError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    /// `{"heat_worker": {"port": <mapping>, …}, …}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_type = HashMap::new();
        for (handler, types) in doc {
            let types = types
                .as_object()
                .ok_or_else(|| format!("handler {handler}: expected an object of types"))?;
            for (rtype, m) in types {
                let m = Mapping::parse(m)
                    .map_err(|e: MappingError| format!("{handler}/{rtype}: {e}"))?;
                by_type.insert(rtype.clone(), (handler.clone(), m));
            }
        }
        Ok(Self { by_type })
    }

    /// Every type maps to the template of the same name, with the
    /// `heat_worker` handler: the default when no mappings file is given.
    pub fn identity<'a>(types: impl IntoIterator<Item = &'a str>) -> Self {
        let by_type = types
            .into_iter()
            .map(|t| {
                (
                    t.to_string(),
                    (
                        "heat_worker".to_string(),
                        Mapping::Constant(Value::String(t.to_string())),
                    ),
                )
            })
            .collect();
        Self { by_type }
    }

    pub fn choose(
        &self,
        rtype: &str,
        body: &Map<String, Value>,
        version: u64,
        schemas: &Schemas,
    ) -> Result<TemplateChoice, EvalError> {
        let Some((handler, m)) = self.by_type.get(rtype) else {
            return Ok(TemplateChoice::Unmapped);
        };
        let e = evaluate(
            m,
            "template",
            Subject {
                rtype,
                body,
                version,
            },
            schemas,
            &NoConfigs,
            &crate::limits::Budget::eval(),
        )?;
        Ok(match e.as_json() {
            Value::String(t) if !t.is_empty() => TemplateChoice::Template {
                handler: handler.clone(),
                template: t,
            },
            _ => TemplateChoice::None,
        })
    }

    pub fn is_mapped(&self, rtype: &str) -> bool {
        self.by_type.contains_key(rtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reference_mappings_choose_templates() {
        let dir = crate::shared_dir().join("esi-reference");
        let tm = TemplateMappings::load(&dir.join("template_mappings.json")).unwrap();
        let schemas = Schemas::load(&dir.join("schemas.json")).unwrap();
        let choose = |t: &str, body: Value| {
            tm.choose(t, body.as_object().unwrap(), 1, &schemas)
                .unwrap()
        };
        let tpl = |t: &str| TemplateChoice::Template {
            handler: "heat_worker".into(),
            template: t.into(),
        };
        assert_eq!(
            choose("port", json!({"device_owner": "compute:nova"})),
            tpl("port")
        );
        assert_eq!(
            choose("port", json!({"device_owner": "network:dhcp"})),
            TemplateChoice::None
        );
        assert_eq!(
            choose("port", json!({"device_owner": "network:empty"})),
            TemplateChoice::None
        );
        assert_eq!(choose("firewall", json!({})), tpl("firewall_config"));
        assert_eq!(
            choose("ese_device", json!({"existing": "existing"})),
            tpl("ese_device_existing")
        );
        assert_eq!(
            choose("static_route", json!({"service_type": "aws"})),
            tpl("static_route_aws")
        );
        assert_eq!(choose("vnf_template", json!({})), TemplateChoice::Unmapped);
    }

    #[test]
    fn bad_mapping_files_say_where() {
        let e = TemplateMappings::parse(r#"{"heat_worker": {"port": "Xbad"}}"#).unwrap_err();
        assert!(e.contains("heat_worker/port"), "{e}");
        assert!(TemplateMappings::parse("[]").is_err());
    }
}
