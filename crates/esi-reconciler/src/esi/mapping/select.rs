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

    /// The mappings ESI itself uses: each schema's `metadata.template_path`,
    /// with the `heat_worker` handler. Types without one have no template.
    pub fn from_schemas(schemas: &Schemas) -> Result<Self, String> {
        let mut by_type = HashMap::new();
        for t in schemas.types() {
            if let Some(path) = &t.template_path {
                let m = Mapping::parse(path).map_err(|e: MappingError| {
                    format!("schema {}: metadata.template_path: {e}", t.singular)
                })?;
                by_type.insert(t.singular.clone(), ("heat_worker".to_string(), m));
            }
        }
        Ok(Self { by_type })
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

    /// ESI has no mappings file: its schemas carry `template_path`. The
    /// choices made from them are the ones the extracted file makes.
    #[test]
    fn schema_template_paths_choose_what_the_mappings_file_does() {
        let dir = crate::shared_dir().join("esi-reference");
        let file = TemplateMappings::load(&dir.join("template_mappings.json")).unwrap();
        let schemas = Schemas::load(&dir.join("schemas.json")).unwrap();
        let from_schemas = TemplateMappings::from_schemas(&schemas).unwrap();
        let bodies = [
            json!({}),
            json!({"device_owner": "compute:nova"}),
            json!({"device_owner": "network:dhcp"}),
            json!({"existing": "existing", "service_type": "aws"}),
            json!({"existing": "", "service_type": "gcp"}),
        ];
        let mut compared = 0;
        for t in schemas.types() {
            for b in &bodies {
                let b = b.as_object().unwrap();
                let want = file.choose(&t.singular, b, 1, &schemas);
                let got = from_schemas.choose(&t.singular, b, 1, &schemas);
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{}", t.singular);
                compared += 1;
            }
        }
        assert!(compared > 100 && from_schemas.by_type.len() >= 31);
        let bad =
            Schemas::parse(r#"{"schemas": [{"id": "x", "metadata": {"template_path": "Qnope"}}]}"#)
                .unwrap();
        let e = TemplateMappings::from_schemas(&bad).unwrap_err();
        assert!(e.contains("schema x: metadata.template_path"), "{e}");
    }

    #[test]
    fn bad_mapping_files_say_where() {
        let e = TemplateMappings::parse(r#"{"heat_worker": {"port": "Xbad"}}"#).unwrap_err();
        assert!(e.contains("heat_worker/port"), "{e}");
        assert!(TemplateMappings::parse("[]").is_err());
    }
}
