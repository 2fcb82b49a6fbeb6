//! Rendering a heat template's `template_file` (Jinja + HOT YAML) with the
//! job's resolved params, as the ESI heat worker does.

use minijinja::{Environment, UndefinedBehavior, Value as JinjaValue};
use serde_json::{Map, Value};

use crate::engine::hot;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: jinja: {reason}")]
    Jinja { template: String, reason: String },
    #[error("template {template}: {source}")]
    Hot {
        template: String,
        source: hot::HotError,
    },
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Missing params render as empty, like Jinja's default; the templates
    // guard optional parts with `{% if %}`.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Python string methods the templates call (`ip.split('/')`).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// Renders `source` with `context` (param name → value) to HOT text.
pub fn render_text(
    template: &str,
    source: &str,
    context: &Map<String, Value>,
) -> Result<String, RenderError> {
    environment()
        .render_str(source, JinjaValue::from(minijinja::value::Serde(context)))
        .map_err(|e| RenderError::Jinja {
            template: template.to_string(),
            reason: format!("{e:#}"),
        })
}

/// Renders and parses the result as a HOT document.
pub fn render(
    template: &str,
    source: &str,
    context: &Map<String, Value>,
) -> Result<Value, RenderError> {
    let text = render_text(template, source, context)?;
    hot::parse(&text).map_err(|source| RenderError::Hot {
        template: template.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_loops_conditions_and_python_methods() {
        let src = "heat_template_version: 2013-05-23\nresources:\n{% for ip in jinja_ips %}  ip_{{ loop.index0 }}:\n    type: X\n    properties: {prefix: {{ ip.split('/')[0] }}, id: {{ 'ip_' + (loop.index0|string) }}}\n{% endfor %}{% if jinja_flag %}  flagged: {type: Y}\n{% endif %}";
        let ctx = json!({"jinja_ips": ["10.0.0.1/24", "10.0.0.2/24"], "jinja_flag": false})
            .as_object()
            .unwrap()
            .clone();
        let t = render("t", src, &ctx).unwrap();
        assert_eq!(
            t["resources"]["ip_1"]["properties"],
            json!({"prefix": "10.0.0.2", "id": "ip_1"})
        );
        assert!(t["resources"].get("flagged").is_none());
    }

    #[test]
    fn errors_name_the_template() {
        let e = render("port", "{% for %}", &Map::new())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("template port: jinja"), "{e}");
        let e = render("port", "not: [hot", &Map::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("template port") && e.contains("YAML"), "{e}");
    }
}
