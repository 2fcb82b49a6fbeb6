//! Resource types, plurals and reference fields, read from a Gohan schema
//! document (the format of `esi-reference/schemas.json`) rather than from a
//! hand-written list, so a deployment's own schemas drive the reconciler.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema document {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("schema document {path} is not a Gohan schema document: {reason}")]
    Parse { path: String, reason: String },
}

/// One resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeInfo {
    pub singular: String,
    pub plural: String,
    /// Reference fields: field name → the singular type it points to.
    /// Array fields whose items are references are included.
    pub relations: HashMap<String, String>,
    /// `metadata.template_path`: the mapping that chooses the type's heat
    /// template, as ESI reads it (absent: the type has no template).
    pub template_path: Option<Value>,
}

/// Every resource type of a deployment.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    by_singular: HashMap<String, TypeInfo>,
    plural_to_singular: HashMap<String, String>,
    /// Each type's depth in the reference graph, by plural (see
    /// [`Schemas::depth`]).
    depth: HashMap<String, u32>,
}

#[derive(Deserialize)]
struct Document {
    schemas: Vec<RawSchema>,
}

#[derive(Deserialize)]
struct RawSchema {
    id: String,
    #[serde(default)]
    singular: Option<String>,
    #[serde(default)]
    plural: Option<String>,
    #[serde(default)]
    schema: Value,
    #[serde(default)]
    metadata: Value,
}

impl Schemas {
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SchemaError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Document = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut schemas = Schemas::default();
        for raw in doc.schemas {
            let singular = raw.singular.unwrap_or_else(|| raw.id.clone());
            let plural = raw.plural.unwrap_or_else(|| format!("{singular}s"));
            let mut relations = HashMap::new();
            if let Some(props) = raw.schema.get("properties").and_then(Value::as_object) {
                for (field, prop) in props {
                    let target = prop
                        .get("relation")
                        .or_else(|| prop.get("items").and_then(|i| i.get("relation")))
                        .and_then(Value::as_str);
                    if let Some(target) = target {
                        relations.insert(field.clone(), target.to_string());
                    }
                }
            }
            schemas
                .plural_to_singular
                .insert(plural.clone(), singular.clone());
            schemas.by_singular.insert(
                singular.clone(),
                TypeInfo {
                    singular,
                    plural,
                    relations,
                    template_path: raw
                        .metadata
                        .get("template_path")
                        .filter(|v| !v.is_null())
                        .cloned(),
                },
            );
        }
        if schemas.by_singular.is_empty() {
            return Err("it defines no schemas".into());
        }
        schemas.depth = depths(&schemas.by_singular);
        Ok(schemas)
    }

    /// How far `plural`'s type is from the types it references: 0 for a
    /// type that references none, otherwise one more than the deepest type
    /// it references, not counting references back into a cycle it is on
    /// (they cannot order it). Work queued in this order reaches a network
    /// before the subnets and ports that reference it.
    pub fn depth(&self, plural: &str) -> u32 {
        self.depth.get(plural).copied().unwrap_or(0)
    }

    pub fn by_singular(&self, singular: &str) -> Option<&TypeInfo> {
        self.by_singular.get(singular)
    }

    pub fn singular_of(&self, plural: &str) -> Option<&str> {
        self.plural_to_singular.get(plural).map(String::as_str)
    }

    pub fn plural_of(&self, singular: &str) -> Option<&str> {
        self.by_singular.get(singular).map(|t| t.plural.as_str())
    }

    /// The type a reference field of `singular` points to.
    pub fn relation(&self, singular: &str, field: &str) -> Option<&str> {
        self.by_singular
            .get(singular)?
            .relations
            .get(field)
            .map(String::as_str)
    }

    pub fn types(&self) -> impl Iterator<Item = &TypeInfo> {
        self.by_singular.values()
    }
}

/// [`Schemas::depth`] of every type, by plural. A reference to a type that
/// reaches back (a network listing its subnets, each subnet naming its
/// network) is not counted; every other reference makes a type one deeper
/// than the type it references.
fn depths(types: &HashMap<String, TypeInfo>) -> HashMap<String, u32> {
    // Which types each reaches through references (schemas have tens of
    // types: a search from each is cheap).
    let reach: HashMap<&str, std::collections::HashSet<&str>> = types
        .keys()
        .map(|t| {
            let mut seen = std::collections::HashSet::new();
            let mut todo = vec![t.as_str()];
            while let Some(cur) = todo.pop() {
                for next in types
                    .get(cur)
                    .into_iter()
                    .flat_map(|i| i.relations.values())
                {
                    if seen.insert(next.as_str()) {
                        todo.push(next.as_str());
                    }
                }
            }
            (t.as_str(), seen)
        })
        .collect();
    let reaches = |a: &str, b: &str| reach.get(a).is_some_and(|r| r.contains(b));
    let mut depth: HashMap<&str, u32> = types.keys().map(|s| (s.as_str(), 0)).collect();
    // Longest path over the edges that leave a cycle: they form a DAG, so
    // this settles within one round per type.
    for _ in 0..types.len() {
        let mut changed = false;
        for t in types.values() {
            let d = t
                .relations
                .values()
                .filter(|u| !reaches(u, &t.singular))
                .filter_map(|u| depth.get(u.as_str()))
                .max()
                .map_or(0, |d| d.saturating_add(1));
            if depth.get(t.singular.as_str()).is_some_and(|old| *old < d) {
                depth.insert(&t.singular, d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    types
        .values()
        .map(|t| {
            let d = depth.get(t.singular.as_str()).copied().unwrap_or(0);
            (t.plural.clone(), d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_orders_referenced_types_first_and_survives_cycles() {
        let s = Schemas::parse(
            r#"{"schemas": [
                {"id": "port", "plural": "ports", "schema": {"properties": {
                    "network_id": {"relation": "network"},
                    "subnet_ids": {"type": "array", "items": {"relation": "subnet"}},
                    "peer_id": {"relation": "port"}}}},
                {"id": "subnet", "plural": "subnets", "schema": {"properties": {
                    "network_id": {"relation": "network"}}}},
                {"id": "network", "plural": "networks"},
                {"id": "a", "plural": "as", "schema": {"properties": {"b": {"relation": "b"}}}},
                {"id": "b", "plural": "bs", "schema": {"properties": {"a": {"relation": "a"}}}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(s.depth("networks"), 0);
        assert_eq!(s.depth("subnets"), 1);
        assert_eq!(s.depth("ports"), 2, "its reference to itself aside");
        assert_eq!(
            (s.depth("as"), s.depth("bs")),
            (0, 0),
            "references within a cycle are not counted"
        );
        assert_eq!(s.depth("unknown"), 0);
        // The built-in schemas: a network lists its subnets and a subnet
        // names its network; ports come after both.
        let builtin = Schemas::parse(crate::esi::catalog::DEFAULT_SCHEMAS).unwrap();
        assert_eq!(builtin.depth("networks"), builtin.depth("subnets"));
        assert!(builtin.depth("ports") > builtin.depth("networks"));
    }

    #[test]
    fn reads_types_plurals_and_relations() {
        let s = Schemas::parse(
            r#"{"schemas": [
                {"id": "port", "singular": "port", "plural": "ports", "schema": {"properties": {
                    "network_id": {"type": "string", "relation": "network"},
                    "port_ids": {"type": "array", "items": {"type": "string", "relation": "port"}},
                    "name": {"type": "string"}}}},
                {"id": "network", "plural": "networks"}]}"#,
        )
        .unwrap();
        assert_eq!(s.plural_of("port"), Some("ports"));
        assert_eq!(s.singular_of("networks"), Some("network"));
        assert_eq!(s.relation("port", "network_id"), Some("network"));
        assert_eq!(s.relation("port", "port_ids"), Some("port"));
        assert_eq!(s.relation("port", "name"), None);
    }

    #[test]
    fn rejects_documents_that_are_not_schemas() {
        assert!(Schemas::parse("{}").unwrap_err().contains("schemas"));
        assert!(
            Schemas::parse(r#"{"schemas": []}"#)
                .unwrap_err()
                .contains("no schemas")
        );
    }

    #[test]
    fn reads_the_reference_schemas() {
        let p = crate::shared_dir().join("esi-reference/schemas.json");
        let s = Schemas::load(&p).unwrap();
        assert_eq!(
            s.plural_of("load_balancer_interface"),
            Some("load_balancer_interfaces")
        );
        assert_eq!(
            s.relation("load_balancer_interface", "load_balancer_id"),
            Some("load_balancer")
        );
        assert_eq!(
            s.relation("vnf_instance", "vnf_template_id"),
            Some("vnf_template")
        );
    }
}
