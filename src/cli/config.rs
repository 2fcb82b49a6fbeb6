//! `config apply` / `config delete` and `templates load`: writing `/config`
//! the way Gohan does, for operators and deployments without Gohan.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use esi_reconciler::esi::keys::{CONFIG, EsiKey};
use esi_reconciler::esi::{Catalog, HeatTemplate};
use esi_reconciler::gohan;

use super::args::{CatalogArgs, EtcdArgs, parse_resource};

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Create or update configs from a JSON file: a `{"type", "body"}` object,
    /// a `{"key", "value"}` record as Gohan stores it, or a list of either.
    Apply {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        catalog: CatalogArgs,
        /// The JSON file (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Mark a config for deletion (its version is bumped).
    Delete {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        catalog: CatalogArgs,
        /// TYPE/ID, e.g. port/db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc.
        resource: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TemplatesCommand {
    /// Load every `*.json` heat template in a directory into etcd.
    Load {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Directory of templates: each file a template body
        /// (`{id, handler, template_file, parameter_mappings}`) or a
        /// `{"key", "value"}` record as Gohan stores it.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// One config to write: its key, body and deletion mark.
#[derive(Debug, PartialEq)]
pub struct ConfigInput {
    pub key: String,
    pub body: Map<String, Value>,
    pub marked: bool,
}

/// Reads config inputs out of any of the accepted shapes.
/// Reads config inputs out of any of the accepted shapes. Stored records of
/// other keys (a Gohan dump may hold `/jobs/…` too) are skipped and listed;
/// a file with no config at all is an error.
pub fn config_inputs(
    catalog: &Catalog,
    doc: &Value,
) -> anyhow::Result<(Vec<ConfigInput>, Vec<String>)> {
    let items: Vec<&Value> = match doc {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let mut inputs = vec![];
    let mut skipped = vec![];
    for (i, item) in items.into_iter().enumerate() {
        if let Some(key) = item.get("key").and_then(Value::as_str)
            && !matches!(EsiKey::parse(key), Ok(Some(EsiKey::Config(_))))
        {
            skipped.push(key.to_string());
            continue;
        }
        inputs.push(config_input(catalog, item).with_context(|| format!("item {i}"))?);
    }
    anyhow::ensure!(
        !inputs.is_empty(),
        "no /config records (skipped: {})",
        skipped.join(", ")
    );
    Ok((inputs, skipped))
}

fn body_of(v: &Value) -> anyhow::Result<Map<String, Value>> {
    match v {
        Value::Object(o) => Ok(o.clone()),
        Value::String(s) => match serde_json::from_str(s)? {
            Value::Object(o) => Ok(o),
            _ => anyhow::bail!("body string does not encode an object"),
        },
        _ => anyhow::bail!("body must be an object"),
    }
}

fn config_input(catalog: &Catalog, item: &Value) -> anyhow::Result<ConfigInput> {
    if let (Some(key), Some(value)) = (item.get("key").and_then(Value::as_str), item.get("value")) {
        let body = body_of(value.get("body").context("value has no body")?)?;
        let marked = value
            .get("marked_for_deletion")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Ok(ConfigInput {
            key: key.to_string(),
            body,
            marked,
        });
    }
    let t = item
        .get("type")
        .and_then(Value::as_str)
        .context("expected {\"type\", \"body\"} or {\"key\", \"value\"}")?;
    let body = body_of(item.get("body").context("no body")?)?;
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .context("body has no string id")?;
    let r = parse_resource(catalog, &format!("{t}/{id}"))?;
    let marked = item
        .get("marked_for_deletion")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ConfigInput {
        key: r.config_key(),
        body,
        marked,
    })
}

pub async fn config(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Apply {
            etcd,
            catalog,
            file,
        } => {
            let catalog = catalog.load()?;
            let (inputs, skipped) = config_inputs(&catalog, &read_json(&file)?)?;
            for key in skipped {
                eprintln!("skipped {key}: not a /config key");
            }
            let client = etcd.connect().await?;
            for i in inputs {
                let w = gohan::apply(&client, &i.key, i.body, i.marked).await?;
                println!("{}: {w}", i.key.trim_start_matches(CONFIG));
            }
        }
        ConfigCommand::Delete {
            etcd,
            catalog,
            resource,
        } => {
            let catalog = catalog.load()?;
            let r = parse_resource(&catalog, &resource)?;
            let client = etcd.connect().await?;
            let w = gohan::mark_deleted(&client, &r.config_key()).await?;
            println!("{r}: {w}");
        }
    }
    Ok(())
}

/// A template file's body, from either accepted shape.
pub fn template_body(doc: &Value) -> anyhow::Result<Map<String, Value>> {
    let body = match doc.get("value") {
        Some(v) => body_of(v.get("body").context("value has no body")?)?,
        None => match doc.get("body") {
            Some(b) => body_of(b)?,
            None => body_of(doc)?,
        },
    };
    let t: HeatTemplate =
        serde_json::from_value(Value::Object(body.clone())).context("not a heat template")?;
    esi_reconciler::esi::job::CompiledTemplate::compile(&t)
        .context("its parameter_mappings do not parse")?;
    Ok(body)
}

pub async fn templates(cmd: TemplatesCommand) -> anyhow::Result<()> {
    let TemplatesCommand::Load { etcd, dir } = cmd;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no *.json templates in {}",
        dir.display()
    );
    let mut bodies = vec![];
    for f in &files {
        let body = template_body(&read_json(f)?).with_context(|| format!("{}", f.display()))?;
        bodies.push(body);
    }
    let client = etcd.connect().await?;
    for body in bodies {
        let (id, w) = gohan::apply_template(&client, body).await?;
        println!("heat_templates/{id}: {w}");
    }
    Ok(())
}
