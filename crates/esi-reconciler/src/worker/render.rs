//! Rendering a heat template's `template_file` (Jinja + HOT YAML) with the
//! job's resolved params, as the ESI heat worker does.

use minijinja::{Environment, UndefinedBehavior, Value as JinjaValue};
use serde_json::{Map, Value};

use crate::engine::hot;
use crate::limits::{Limits, OverLimit};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: jinja: {reason}")]
    Jinja { template: String, reason: String },
    #[error("template {template}: {source}")]
    OverLimit { template: String, source: OverLimit },
    #[error("template {template}: {source}")]
    Hot {
        template: String,
        source: hot::HotError,
    },
}

fn environment(limits: &Limits) -> Environment<'static> {
    let mut env = Environment::new();
    // Instructions run and bytes produced: what stops endless loops and
    // output that doubles at every step.
    env.set_fuel(Some(limits.render_fuel));
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
    limits: &Limits,
) -> Result<String, RenderError> {
    let over = |source| RenderError::OverLimit {
        template: template.to_string(),
        source,
    };
    if source.len() > limits.template_bytes {
        return Err(over(OverLimit::template_bytes(
            "template source",
            limits.template_bytes,
        )));
    }
    let jinja = |e: minijinja::Error| RenderError::Jinja {
        template: template.to_string(),
        reason: format!("{e:#}"),
    };
    let env = environment(limits);
    let compiled = env.template_from_str(source).map_err(jinja)?;
    // Written into a buffer that refuses to grow past the limit, so output
    // is stopped as it is produced rather than measured afterwards.
    let mut out = Bounded {
        text: Vec::new(),
        limit: limits.template_bytes,
        over: false,
    };
    let rendered =
        compiled.render_captured_to(JinjaValue::from(minijinja::value::Serde(context)), &mut out);
    if out.over {
        return Err(over(OverLimit::template_bytes(
            "rendered template",
            limits.template_bytes,
        )));
    }
    match rendered {
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
            Err(over(OverLimit::render_fuel(limits.render_fuel)))
        }
        Err(e) => Err(jinja(e)),
        Ok(_) => String::from_utf8(out.text).map_err(|e| RenderError::Jinja {
            template: template.to_string(),
            reason: format!("rendered text is not UTF-8: {e}"),
        }),
    }
}

/// A writer that holds at most `limit` bytes and fails past them.
struct Bounded {
    text: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len().saturating_add(buf.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("rendered template over its limit"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders and parses the result as a HOT document.
pub fn render(
    template: &str,
    source: &str,
    context: &Map<String, Value>,
    limits: &Limits,
) -> Result<Value, RenderError> {
    let text = render_text(template, source, context, limits)?;
    hot::parse(&text, limits).map_err(|source| RenderError::Hot {
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
        let t = render("t", src, &ctx, &Limits::default()).unwrap();
        assert_eq!(
            t["resources"]["ip_1"]["properties"],
            json!({"prefix": "10.0.0.2", "id": "ip_1"})
        );
        assert!(t["resources"].get("flagged").is_none());
    }

    #[test]
    fn errors_name_the_template() {
        let e = render("port", "{% for %}", &Map::new(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("template port: jinja"), "{e}");
        let e = render("port", "not: [hot", &Map::new(), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("template port") && e.contains("YAML"), "{e}");
    }

    #[test]
    fn endless_or_exploding_templates_run_out_of_fuel() {
        let limits = Limits {
            render_fuel: 1_000_000,
            ..Limits::default()
        };
        for src in [
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}x{% endmacro %}{{ f(40) }}",
            "{{ 'x' * 90000000 }}",
        ] {
            let e = render("bomb", src, &Map::new(), &limits).unwrap_err();
            assert!(matches!(e, RenderError::OverLimit { .. }), "{src}: {e}");
            assert!(e.to_string().contains("--max-render-fuel"), "{e}");
        }
        // Output is stopped as it grows past the template limit.
        let small = Limits {
            template_bytes: 1000,
            ..Limits::default()
        };
        let e = render(
            "wide",
            "{% for i in range(5000) %}x{% endfor %}",
            &Map::new(),
            &small,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--max-template-bytes"), "{e}");
    }
}
