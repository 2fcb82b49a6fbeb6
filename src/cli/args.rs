//! Flags shared by every subcommand. Each has an environment fallback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use esi_reconciler::esi::Catalog;
use esi_reconciler::limits::Limits;
use esi_reconciler::store::client::TlsFiles;
use esi_reconciler::store::{EtcdOptions, connect, connect_checked};

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "ESI_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Timeout for connecting to etcd, in seconds.
    #[arg(long, env = "ESI_ETCD_CONNECT_TIMEOUT", default_value_t = 5)]
    pub etcd_connect_timeout: u64,
    /// Timeout for one etcd request, in seconds.
    #[arg(long, env = "ESI_ETCD_REQUEST_TIMEOUT", default_value_t = 10)]
    pub etcd_request_timeout: u64,
    /// etcd user name (enables authentication, with --etcd-password).
    #[arg(long, env = "ESI_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(long, env = "ESI_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate; enables TLS.
    #[arg(long, env = "ESI_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "ESI_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "ESI_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Also use every member etcd's member list names (checked every 30 s),
    /// besides --etcd-endpoints.
    #[arg(long, env = "ESI_ETCD_DISCOVER")]
    pub etcd_discover: bool,
}

impl EtcdArgs {
    pub fn options(&self) -> anyhow::Result<EtcdOptions> {
        let user = match (&self.etcd_user, &self.etcd_password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => anyhow::bail!("--etcd-user and --etcd-password go together"),
        };
        let tls = (self.etcd_ca.is_some() || self.etcd_cert.is_some()).then(|| TlsFiles {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        });
        Ok(EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            connect_timeout: Duration::from_secs(self.etcd_connect_timeout),
            request_timeout: Duration::from_secs(self.etcd_request_timeout),
            user,
            tls,
            discover: self.etcd_discover,
        })
    }

    /// Connects and checks etcd answers (for one-shot commands).
    pub async fn connect(&self) -> anyhow::Result<esi_reconciler::store::Etcd> {
        Ok(connect_checked(&self.options()?).await?)
    }

    /// Connects without waiting for etcd: a long-running process retries.
    pub async fn connect_lazily(&self) -> anyhow::Result<esi_reconciler::store::Etcd> {
        Ok(connect(&self.options()?).await?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// Gohan schema document (JSON, `{"schemas": [...]}`) naming the resource
    /// types, their plurals, reference fields and heat templates
    /// (`metadata.template_path`), as ESI's own. Default: the built-in demo
    /// schemas (network, subnet, port).
    #[arg(long, env = "ESI_SCHEMAS")]
    pub schemas: Option<PathBuf>,
    /// Template mappings (JSON, `{"heat_worker": {"<type>": <mapping>}}`):
    /// which heat template each resource uses, overriding the schemas'
    /// `metadata.template_path`. Default: those `template_path`s.
    #[arg(long, env = "ESI_TEMPLATE_MAPPINGS")]
    pub template_mappings: Option<PathBuf>,
}

impl CatalogArgs {
    pub fn load(&self) -> anyhow::Result<Arc<Catalog>> {
        Ok(Arc::new(
            Catalog::load(self.schemas.as_deref(), self.template_mappings.as_deref())
                .context("loading the catalog")?,
        ))
    }
}

/// `TYPE/ID`, where TYPE is a singular (`port`) or plural (`ports`).
pub fn parse_resource(
    catalog: &Catalog,
    s: &str,
) -> anyhow::Result<esi_reconciler::esi::ResourceRef> {
    let (t, id) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not TYPE/ID"))?;
    let plural = if catalog.schemas.singular_of(t).is_some() {
        t.to_string()
    } else {
        catalog
            .schemas
            .plural_of(t)
            .with_context(|| format!("unknown resource type {t:?}"))?
            .to_string()
    };
    anyhow::ensure!(!id.is_empty() && !id.contains('/'), "{s:?}: bad id");
    Ok(esi_reconciler::esi::ResourceRef::new(plural, id))
}

/// Bounds on what a record from etcd may cost to parse, render and evaluate
/// (see `src/limits.rs`). Over a limit, that one record or job fails with an
/// error naming the flag; the process goes on.
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Largest record read from etcd that is parsed, in bytes.
    #[arg(long, env = "ESI_MAX_RECORD_BYTES", default_value_t = Limits::default().record_bytes)]
    pub max_record_bytes: usize,
    /// Largest heat template, as stored and as rendered (scalars with YAML
    /// aliases expanded), in bytes.
    #[arg(long, env = "ESI_MAX_TEMPLATE_BYTES", default_value_t = Limits::default().template_bytes)]
    pub max_template_bytes: usize,
    /// YAML nodes a rendered template may hold, each alias counted as what
    /// it expands to.
    #[arg(long, env = "ESI_MAX_YAML_NODES", default_value_t = Limits::default().yaml_nodes)]
    pub max_yaml_nodes: usize,
    /// Deepest nesting of a template or an evaluated output.
    #[arg(long, env = "ESI_MAX_NESTING_DEPTH", default_value_t = Limits::default().nesting_depth)]
    pub max_nesting_depth: usize,
    /// Jinja fuel for one template render (instructions plus bytes output).
    #[arg(long, env = "ESI_MAX_RENDER_FUEL", default_value_t = Limits::default().render_fuel)]
    pub max_render_fuel: u64,
    /// Bytes one job's parameter mappings may copy, concatenate and repeat
    /// (all params together), and the sim engine's output functions for one
    /// stack.
    #[arg(long, env = "ESI_MAX_EVAL_BYTES", default_value_t = Limits::default().eval_bytes)]
    pub max_eval_bytes: usize,
}

impl LimitsArgs {
    /// The limits, installed as this process's (records parsed anywhere
    /// obey them).
    pub fn install(&self) -> anyhow::Result<Limits> {
        anyhow::ensure!(
            (8..=128).contains(&self.max_nesting_depth),
            "--max-nesting-depth must be 8 to 128 (ESI's templates nest 6 deep; JSON records \
             are read to 128, and deeper values risk the stack)"
        );
        let limits = Limits {
            record_bytes: self.max_record_bytes,
            template_bytes: self.max_template_bytes,
            yaml_nodes: self.max_yaml_nodes,
            nesting_depth: self.max_nesting_depth,
            render_fuel: self.max_render_fuel,
            eval_bytes: self.max_eval_bytes,
        };
        limits.install();
        Ok(limits)
    }
}
