//! Every reference heat template renders, with representative params, into
//! a HOT document whose required parameters the job supplies, within limits
//! far below the defaults (the margin `src/limits.rs` promises).

mod common;

use serde_json::{Map, Value, json};

use common::{read_json, reference};
use esi_reconciler::engine::hot::{self, Scope};
use esi_reconciler::limits::Limits;
use esi_reconciler::worker::params;
use esi_reconciler::worker::render;

/// A value of the shape each `jinja_*` param has in the recorded jobs and
/// the templates (lists where a template loops, CIDRs where it splits).
fn representative(name: &str) -> Value {
    match name {
        "jinja_fixed_ips" => {
            json!([{"subnet_id": "s-1", "ip_address": "10.0.0.3"}, {"subnet_id": "s-2", "ip_address": "10.0.1.3"}])
        }
        "jinja_subnets" => json!(["subnet-1-id", "subnet-2-id"]),
        "jinja_port_ids" => json!(["port-1-id", "port-2-id"]),
        "jinja_vrids" => json!([10, 11]),
        "jinja_common_service_numbers" => json!([1, 2]),
        "jinja_primary_uplink_ip" | "jinja_secondary_uplink_ip" => json!("169.254.0.1/30"),
        "jinja_attached" => json!(true),
        "jinja_device_owner" => json!("compute:nova"),
        "jinja_slot_number" => json!(1),
        "jinja_type" => json!("guarantee"),
        "jinja_vrf_config" => json!("set routing-instances vrf-1 vrf-target target:65000:1"),
        "jinja_vlan_id" | "jinja_service_number" => json!(100),
        other => json!(format!("{}-value", other.trim_start_matches("jinja_"))),
    }
}

#[test]
fn all_reference_templates_render() {
    let dir = reference().join("heat_templates");
    let mut rendered = 0;
    let mut problems = vec![];
    let d = Limits::default();
    // 50x below the default template bytes, nodes and fuel.
    let tight = Limits {
        record_bytes: d.record_bytes / 10,
        template_bytes: 20 << 10,
        yaml_nodes: 4000,
        nesting_depth: 16,
        render_fuel: 20_000,
        eval_bytes: d.eval_bytes / 10,
    };
    for entry in std::fs::read_dir(dir).unwrap() {
        let v = read_json(entry.unwrap().path());
        let body = &v["value"]["body"];
        let id = body["id"].as_str().unwrap();
        let mappings = body["parameter_mappings"].as_object().unwrap();
        let resolved: Map<String, Value> = mappings
            .keys()
            .map(|k| {
                let v = if k.starts_with("jinja_") {
                    representative(k)
                } else if k == "heat_timeout" {
                    json!("13")
                } else {
                    json!(format!("{k}-value"))
                };
                (k.clone(), v)
            })
            .collect();
        let (context, stack_params) = params::split(&resolved);
        let hot = match render::render(
            id,
            body["template_file"].as_str().unwrap(),
            &context,
            &tight,
        ) {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("{id}: {e}"));
                continue;
            }
        };
        assert!(
            !hot::resource_names(&hot).is_empty(),
            "{id}: rendered with no resources"
        );
        // Heat rejects a stack missing a parameter that has no default.
        for (p, decl) in hot["parameters"].as_object().cloned().unwrap_or_default() {
            if decl.get("default").is_none() && !stack_params.contains_key(&p) {
                problems.push(format!("{id}: parameter {p} has no default and no mapping"));
            }
        }
        // Every output evaluates (the simulated engine's outputs).
        let declared = hot["parameters"].as_object().cloned();
        let scope = Scope {
            stack: &format!("{id}_x"),
            parameters: &stack_params,
            declared: declared.as_ref(),
        };
        for (k, o) in hot["outputs"].as_object().cloned().unwrap_or_default() {
            let out = hot::eval(&o["value"], &scope, &tight).unwrap();
            assert!(
                !out.is_null() || o["value"].is_null(),
                "{id}: output {k} evaluated to null"
            );
        }
        rendered += 1;
    }
    assert!(
        problems.is_empty(),
        "{} template(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(rendered, 47);
}
