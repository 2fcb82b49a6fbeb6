//! The drills' resources, on the built-in catalog: the load-balancer story's
//! network, subnet and ports, plus N generated ports spread over generated
//! networks and subnets (one subnet each, 20 ports per network).

use serde_json::{Map, Value, json};

use crate::demo;
use esi_reconciler::engine::hot::stable_id;
use esi_reconciler::esi::keys::ResourceRef;

#[derive(Debug, Clone)]
pub struct Item {
    pub r: ResourceRef,
    pub body: Map<String, Value>,
}

#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// Networks and subnets (created first), then ports.
    pub items: Vec<Item>,
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

impl Scenario {
    pub fn generate(ports: usize) -> Scenario {
        let mut items = vec![
            Item {
                r: ResourceRef::new("networks", demo::NETWORK_ID),
                body: demo::network(),
            },
            Item {
                r: ResourceRef::new("subnets", demo::SUBNET_ID),
                body: demo::subnet(),
            },
            Item {
                r: ResourceRef::new("ports", demo::PORT_ID),
                body: demo::port(2),
            },
            Item {
                r: ResourceRef::new("ports", demo::PORT_B_ID),
                body: demo::port_b(2),
            },
        ];
        let networks = ports.div_ceil(20).max(1);
        for n in 0..networks {
            let net = stable_id("chaos-network", &n.to_string());
            let sub = stable_id("chaos-subnet", &n.to_string());
            items.push(Item { r: ResourceRef::new("networks", &net), body: obj(json!({"id": net, "name": format!("net-{n}"), "tenant_id": "chaos", "admin_state_up": true})) });
            items.push(Item {
                r: ResourceRef::new("subnets", &sub),
                body: obj(json!({"id": sub, "network_id": net, "tenant_id": "chaos", "cidr": format!("10.{}.{}.0/24", n / 256, n % 256), "enable_dhcp": false})),
            });
        }
        for p in 0..ports {
            let n = p / 20;
            let (net, sub) = (
                stable_id("chaos-network", &n.to_string()),
                stable_id("chaos-subnet", &n.to_string()),
            );
            let id = stable_id("chaos-port", &p.to_string());
            items.push(Item {
                r: ResourceRef::new("ports", &id),
                body: obj(json!({
                    "id": id, "name": format!("port-{p}"), "tenant_id": "chaos", "network_id": net,
                    "device_owner": "compute:nova", "device_id": format!("vm-{p}"), "admin_state_up": true, "attached": true,
                    "mac_address": format!("fa:16:3e:00:{:02x}:{:02x}", p / 256, p % 256),
                    "fixed_ips": [{"subnet_id": sub, "ip_address": format!("10.{}.{}.{}", n / 256, n % 256, 10 + p % 20)}],
                    "security_groups": [], "allowed_address_pairs": []
                })),
            });
        }
        Scenario { items }
    }

    /// The generated ports (not the story's), for drills that change some.
    pub fn ports(&self) -> Vec<&Item> {
        self.items
            .iter()
            .filter(|i| {
                i.r.plural == "ports"
                    && i.body["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("port-"))
            })
            .collect()
    }
}
