//! `esi-reconciler demo`: the "Update Loadbalancer Interface" story on a
//! private etcd, told step by step on the terminal.
//!
//! The heat worker ships with a later release, so the demo records the
//! port's earlier history (created, then modified up to v3) the way the
//! worker would have, marks the port for deletion as Gohan does, and lets the
//! reconciler issue the `logical_delete` job.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use etcd_client::{Client, GetOptions};
use serde_json::{Value, json};

use esi_reconciler::demo;
use esi_reconciler::esi::Catalog;
use esi_reconciler::esi::keys::{JOBS_READY, ResourceRef, TEMPLATES};
use esi_reconciler::gohan;
use esi_reconciler::reconcile::controller::{Controller, ControllerConfig};
use esi_reconciler::store::embedded::EtcdProcess;
use esi_reconciler::store::{EtcdOptions, connect_checked};
use esi_reconciler::telemetry::Metrics;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this etcd instead of starting a private one (comma-separated endpoints).
    #[arg(long, env = "ESI_DEMO_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

fn step(n: usize, text: &str) {
    println!("\n[{n}] {text}");
}

async fn put_json(client: &Client, key: &str, v: &Value) -> anyhow::Result<()> {
    client
        .kv_client()
        .put(key, serde_json::to_vec(v)?, None)
        .await?;
    Ok(())
}

/// Records a converged resource as the heat worker leaves it.
async fn record_converged(
    client: &Client,
    r: &ResourceRef,
    rtype: &str,
    version: u64,
    worker_state: &str,
    stack_status: &str,
    outputs: Value,
) -> anyhow::Result<()> {
    put_json(
        client,
        &r.heat_stack_key(),
        &json!({"id": format!("{rtype}:{}", r.id), "stack_id": format!("{rtype}_{}", r.id), "stack_status": stack_status,
                "status_reason": format!("Stack {} completed successfully", stack_status.trim_end_matches("_COMPLETE")),
                "output": outputs, "tenant_id": demo::TENANT}),
    )
    .await?;
    put_json(
        client,
        &r.state_key(),
        &json!({"state": {"worker_state": worker_state, "orchestration_state": stack_status, "heat_outputs": outputs.to_string()},
                "version": version, "error": ""}),
    )
    .await
}

fn out(key: &str, value: &str, description: &str) -> Value {
    json!({"output_key": key, "output_value": value, "description": description})
}

async fn print_key(client: &Client, label: &str, key: &str) -> anyhow::Result<()> {
    let resp = client.kv_client().get(key, None).await?;
    println!("\n({label}) {key}");
    match resp.kvs().first() {
        None => println!("  (absent)"),
        Some(kv) => {
            let v: Value = serde_json::from_slice(kv.value())
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(kv.value()).into()));
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    println!("esi-reconciler demo: Update Loadbalancer Interface");
    let _etcd;
    let endpoints = match args.etcd_endpoints {
        Some(e) => e,
        None => {
            step(1, "starting a private etcd");
            let p = EtcdProcess::start()
                .await
                .context("starting etcd for the demo")?;
            println!(
                "    etcd at {} (data in {})",
                p.client_url,
                p.data_dir.display()
            );
            let url = p.client_url.clone();
            _etcd = p;
            vec![url]
        }
    };
    let client = connect_checked(&EtcdOptions::with_endpoints(endpoints)).await?;
    let catalog = Arc::new(Catalog::load(None, None)?);

    step(2, "Gohan loads the heat templates");
    for t in demo::templates() {
        let id = t
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let w = gohan::apply(&client, &format!("{TEMPLATES}{id}"), t, false).await?;
        println!("    heat_templates/{id}: {w}");
    }

    step(
        3,
        "history: network, subnet and the load balancer's user port were created, and the port modified to v3",
    );
    let net = ResourceRef::new("networks", demo::NETWORK_ID);
    let sub = ResourceRef::new("subnets", demo::SUBNET_ID);
    let port = ResourceRef::new("ports", demo::PORT_ID);
    gohan::apply(&client, &net.config_key(), demo::network(), false).await?;
    gohan::apply(&client, &sub.config_key(), demo::subnet(), false).await?;
    for stage in 1..=3 {
        gohan::apply(&client, &port.config_key(), demo::port(stage), false).await?;
    }
    record_converged(
        &client,
        &net,
        "network",
        1,
        "CREATE_COMPLETED",
        "CREATE_COMPLETE",
        json!([out("id", demo::NETWORK_ID, "network id")]),
    )
    .await?;
    record_converged(
        &client,
        &sub,
        "subnet",
        1,
        "CREATE_COMPLETED",
        "CREATE_COMPLETE",
        json!([out("id", demo::SUBNET_ID, "subnet id")]),
    )
    .await?;
    record_converged(
        &client,
        &port,
        "port",
        3,
        "MODIFY_COMPLETED",
        "UPDATE_COMPLETE",
        json!([out("id", demo::PORT_ID, "port id")]),
    )
    .await?;
    println!(
        "    network v1, subnet v1 CREATE_COMPLETED; port v3 MODIFY_COMPLETED (recorded as the heat worker leaves them)"
    );

    step(4, "Gohan marks port db3bff62 for deletion");
    let w = gohan::mark_deleted(&client, &port.config_key()).await?;
    println!("    ports/{}: {w}", demo::PORT_ID);

    step(
        5,
        "the reconciler runs: desired (v4, marked) differs from observed (v3): it issues a logical_delete job",
    );
    let metrics = Arc::new(Metrics::new());
    let controller = Controller::new(
        client.clone(),
        catalog,
        ControllerConfig::default(),
        metrics,
    );
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(controller.clone().run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let prefix = format!(
        "{JOBS_READY}logical_delete:heat_worker:port:{}:4:",
        demo::PORT_ID
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let job_key = loop {
        let resp = client
            .kv_client()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        if let Some(kv) = resp.kvs().first() {
            break kv.key_str()?.to_string();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no logical_delete job within {}s",
            args.timeout_secs
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("    {job_key}");
    let _ = stop_tx.send(true);
    let _ = runner.await;

    let job_id = job_key.trim_start_matches(JOBS_READY);
    println!("\nThe port's records at the seed's points:");
    print_key(&client, "1", &port.config_key()).await?;
    print_key(&client, "2", &format!("/jobs/all/{job_id}")).await?;
    println!(
        "\nPoints (3)-(5) (heat stack, job state, /state after the delete) are written by the heat worker,"
    );
    println!(
        "which `esi-reconciler worker` will provide; `esi-reconciler get` shows the port waiting for it."
    );
    Ok(())
}
