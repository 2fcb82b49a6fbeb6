//! `get` and `plan`: what the reconciler sees, read from etcd at one
//! revision. Neither writes anything.

use clap::{Args, ValueEnum};

use esi_reconciler::clock::now_ms;
use esi_reconciler::esi::ResourceRef;
use esi_reconciler::reconcile::Phase;
use esi_reconciler::reconcile::membership;
use esi_reconciler::reconcile::report::{self, Report};
use esi_reconciler::reconcile::snapshot;
use tokio::sync::RwLock;

use super::args::{CatalogArgs, EtcdArgs, parse_resource};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Only this type (singular or plural).
    #[arg(long = "type")]
    pub rtype: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// One resource, as TYPE/ID; default: every resource that is not converged.
    pub resource: Option<String>,
}

fn cell(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let catalog = args.catalog.load()?;
    let client = args.etcd.connect().await?;
    let world = RwLock::new(snapshot::load(&client, catalog.clone(), 1000).await?);
    let want = args
        .rtype
        .as_deref()
        .map(|t| catalog.schemas.singular_of(t).unwrap_or(t).to_string());
    let rows: Vec<Report> = report::all(&client, &world, now_ms())
        .await?
        .into_iter()
        .filter(|r| want.as_ref().is_none_or(|t| &r.rtype == t))
        .collect();
    let world = world.into_inner();
    // Who acts on each resource: the replica that owns it among those
    // registered now ("-": no reconciler runs).
    let members = membership::list_members(&client).await?;
    let owner = |r: &Report| -> Option<String> {
        let plural = catalog.schemas.plural_of(&r.rtype)?;
        membership::owner_among(&members, &ResourceRef::new(plural, r.id.clone())).map(String::from)
    };
    match args.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("owner".into(), serde_json::json!(owner(r)));
                    }
                    v
                })
                .collect();
            let invalid: Vec<_> = world
                .unparsed()
                .iter()
                .map(|(k, why)| serde_json::json!({"key": k, "reason": why}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"revision": world.revision, "replicas": members, "resources": rows, "invalid_keys": invalid})
                )?
            );
        }
        Output::Table => {
            let mut t = vec![
                [
                    "TYPE",
                    "ID",
                    "DESIRED",
                    "VERSION",
                    "OBSERVED",
                    "PHASE",
                    "LAST-ACTION",
                    "ATTEMPTS",
                    "OWNER",
                    "MESSAGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for r in &rows {
                t.push(vec![
                    r.rtype.clone(),
                    r.id.clone(),
                    r.desired.to_string(),
                    cell(r.desired_version),
                    match (&r.observed_version, &r.worker_state) {
                        (Some(v), Some(w)) => format!("v{v} {w}"),
                        _ => "-".into(),
                    },
                    r.phase.to_string(),
                    if r.last_action.is_empty() {
                        "-".into()
                    } else {
                        r.last_action.clone()
                    },
                    r.attempts.to_string(),
                    cell(owner(r)),
                    message(r),
                ]);
            }
            print!("{}", table(&t));
            if !world.unparsed().is_empty() {
                println!();
                let mut t = vec![vec!["INVALID KEY".to_string(), "REASON".to_string()]];
                t.extend(
                    world
                        .unparsed()
                        .iter()
                        .map(|(k, why)| vec![k.clone(), why.clone()]),
                );
                print!("{}", table(&t));
            }
            eprintln!(
                "{} resource(s) at etcd revision {}",
                rows.len(),
                world.revision
            );
        }
    }
    Ok(())
}

pub async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let catalog = args.catalog.load()?;
    let client = args.etcd.connect().await?;
    let world = RwLock::new(snapshot::load(&client, catalog.clone(), 1000).await?);
    let revision = world.read().await.revision;
    let reports: Vec<Report> = match &args.resource {
        Some(s) => {
            let r = parse_resource(&catalog, s)?;
            vec![
                Report::of(&client, &world, &r, now_ms())
                    .await?
                    .ok_or_else(|| {
                        anyhow::anyhow!("nothing recorded for {r} (at revision {revision})")
                    })?,
            ]
        }
        None => report::all(&client, &world, now_ms())
            .await?
            .into_iter()
            .filter(|r| {
                !r.next.is_empty() || r.phase != esi_reconciler::reconcile::Phase::Converged
            })
            .collect(),
    };
    for r in &reports {
        println!("{} {}", r.rtype, r.id);
        println!("  desired:  {} v{}", r.desired, cell(r.desired_version));
        println!(
            "  observed: /state {} {}, stack {}",
            r.observed_version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "-".into()),
            cell(r.worker_state.as_ref()),
            cell(r.stack_status.as_ref())
        );
        println!("  phase:    {} ({})", r.phase, r.message);
        if r.next.is_empty() {
            println!("  next:     nothing to do");
        }
        for n in &r.next {
            println!("  next:     {n}");
        }
    }
    if reports.is_empty() {
        println!("every resource is converged (etcd revision {revision})");
    }
    Ok(())
}

/// The table's last column: the error, or why a pending resource waits
/// (planned live: a wait is not written to etcd).
fn message(r: &Report) -> String {
    if r.last_error.is_empty() && r.phase == Phase::Pending {
        r.message.clone()
    } else {
        r.last_error.clone()
    }
}
