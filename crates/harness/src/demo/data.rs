//! The demo's data: project-authored templates, schemas and the resources of
//! the "Update Loadbalancer Interface" story (a network, its subnet and the
//! load balancer's user port `db3bff62-…`).

use serde_json::{Map, Value, json};

pub const NETWORK_TEMPLATE: &str = include_str!("assets/templates/network.json");
pub const SUBNET_TEMPLATE: &str = include_str!("assets/templates/subnet.json");
pub const PORT_TEMPLATE: &str = include_str!("assets/templates/port.json");

pub const TENANT: &str = "fe3a4a1a72c04479bb6c19c2c0ccba4c";
pub const NETWORK_ID: &str = "ce9a7a92-d11a-4fc6-8ae7-18061b62c98f";
pub const SUBNET_ID: &str = "6f5f33d6-2cfe-47c1-a91a-3f3d44972b1a";
pub const PORT_ID: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";

/// The demo's heat templates, as template bodies.
/// Writes the demo's templates to etcd as Gohan would; returns each id and
/// what was written.
pub async fn load_templates(
    client: &esi_reconciler::store::Etcd,
) -> Result<Vec<(String, esi_reconciler::gohan::Written)>, esi_reconciler::gohan::GohanError> {
    let mut out = vec![];
    for t in templates() {
        out.push(esi_reconciler::gohan::apply_template(client, t).await?);
    }
    Ok(out)
}

pub fn templates() -> Vec<Map<String, Value>> {
    [NETWORK_TEMPLATE, SUBNET_TEMPLATE, PORT_TEMPLATE]
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default()
        })
        .collect()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

pub fn network() -> Map<String, Value> {
    obj(json!({
        "id": NETWORK_ID, "name": "lb-user-net", "description": "network of the load balancer's user side",
        "tenant_id": TENANT, "admin_state_up": true, "shared": false, "subnets": [SUBNET_ID],
        "status": "ACTIVE", "orchestration_state": "CREATE_COMPLETE"
    }))
}

pub fn subnet() -> Map<String, Value> {
    obj(json!({
        "id": SUBNET_ID, "name": "lb-user-subnet", "tenant_id": TENANT, "network_id": NETWORK_ID,
        "cidr": "10.121.232.0/24", "gateway_ip": "10.121.232.1", "enable_dhcp": false,
        "allocation_pools": [{"start": "10.121.232.2", "end": "10.121.232.254"}],
        "status": "ACTIVE", "orchestration_state": "CREATE_COMPLETE"
    }))
}

/// The load balancer's user port at a stage of the story: 1 created
/// (detached), 2 attached, 3 its interface updated, 4 to be deleted.
pub fn port(stage: u32) -> Map<String, Value> {
    let (attached, admin_up, owner) = match stage {
        1 => (false, true, ""),
        2 => (true, true, "compute:nova"),
        _ => (true, false, "compute:nova"),
    };
    let (status, orch) = match stage {
        1 => ("PENDING_CREATE", "CREATE_IN_PROGRESS"),
        4 => ("PENDING_DELETE", "DELETE_IN_PROGRESS"),
        _ => ("PENDING_UPDATE", "UPDATE_IN_PROGRESS"),
    };
    obj(json!({
        "id": PORT_ID, "name": "load_balancer-user-port", "description": "", "tenant_id": TENANT,
        "network_id": NETWORK_ID, "device_id": "47531b14-72e9-439d-8949-fd941457ecde", "device_owner": owner,
        "mac_address": "fa:16:3e:90:8a:94", "admin_state_up": admin_up, "attached": attached,
        "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": "10.121.232.3"}],
        "security_groups": [], "allowed_address_pairs": [], "binding:vif_type": "vrouter",
        "status": status, "orchestration_state": orch, "operational_state": "INIT", "tags": {}
    }))
}

/// The load balancer's second user port (kept through the story).
pub const PORT_B_ID: &str = "a7e5822c-5c04-4c5f-a5ac-b0e0ad50159f";

/// The second port at a stage of the story: 1 created, 2 attached.
pub fn port_b(stage: u32) -> Map<String, Value> {
    let mut p = port(stage.min(2));
    p.insert("id".into(), json!(PORT_B_ID));
    p.insert("name".into(), json!("load_balancer-user-port-2"));
    p.insert("mac_address".into(), json!("fa:16:3e:4c:1d:07"));
    p.insert(
        "device_id".into(),
        json!("59a0a3e2-5c48-4cf0-a1a8-52e2c0d1a2b9"),
    );
    p.insert(
        "fixed_ips".into(),
        json!([{"subnet_id": SUBNET_ID, "ip_address": "10.121.232.4"}]),
    );
    p
}
