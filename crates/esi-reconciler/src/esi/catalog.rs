//! What the reconciler knows about a deployment before it reads etcd: the
//! Gohan schemas and the template mappings.

use std::path::Path;

use super::mapping::TemplateMappings;
use super::mapping::select::TemplateMappingsError;
use super::schema::{SchemaError, Schemas};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Schemas(#[from] SchemaError),
    #[error(transparent)]
    Mappings(#[from] TemplateMappingsError),
    #[error("built-in {0} are broken: {1}")]
    BuiltIn(&'static str, String),
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub schemas: Schemas,
    pub mappings: TemplateMappings,
}

/// The schema document the demo is written for: project-authored, modelled
/// on ESI's networks, subnets and ports, with their `template_path`s.
pub const DEFAULT_SCHEMAS: &str = include_str!("assets/schemas.json");

impl Catalog {
    /// Loads the schemas and, if given, a mappings file. Without one,
    /// templates are chosen as ESI chooses them: by each schema's
    /// `metadata.template_path` (a mappings file overrides them all).
    pub fn load(schemas: Option<&Path>, mappings: Option<&Path>) -> Result<Self, CatalogError> {
        let schemas = match schemas {
            Some(p) => Schemas::load(p)?,
            None => {
                Schemas::parse(DEFAULT_SCHEMAS).map_err(|e| CatalogError::BuiltIn("schemas", e))?
            }
        };
        let mappings = match mappings {
            Some(p) => TemplateMappings::load(p)?,
            None => TemplateMappings::from_schemas(&schemas).map_err(|reason| {
                CatalogError::Mappings(TemplateMappingsError::Parse {
                    path: "the schemas' metadata.template_path".into(),
                    reason,
                })
            })?,
        };
        Ok(Self { schemas, mappings })
    }
}
