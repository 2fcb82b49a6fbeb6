//! Drafting a job: the reads the planner needs before it can decide whether
//! to issue one.
//!
//! The world keeps only summaries of configs (100k resources must fit in
//! memory), but a job's params come from the whole config body and from the
//! configs it references. So when a plan wants to issue a job, the config is
//! read at the revision the plan was made from, the template's mappings are
//! evaluated (reading each referenced config), and the result goes back into
//! the [`Observed`](super::Observed) view for a second, final plan. Whether
//! to issue, wait for a referenced resource, or give up is decided there and
//! only there; the executor writes what the plan carries.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::esi::job::{CompiledTemplate, build_params};
use crate::esi::keys::ResourceRef;
use crate::esi::mapping::eval::referenced;
use crate::esi::mapping::{Configs, EvalError, Lookup, Subject};
use crate::esi::records::{self, ConfigRecord, Param, ResourceId};
use crate::esi::schema::Schemas;
use crate::store::txn::Kv;

use super::bodies::Body;
use super::world::World;
use tokio::sync::RwLock;

/// Referenced configs one job may read: a template whose params reference
/// more resources than this is refused rather than read without end.
const MAX_REFERENCED_CONFIGS: usize = 256;

/// The parts of a job that come from reading etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDraft {
    /// The config's mod revision the draft was read at.
    pub config_rev: i64,
    /// The config body (the job's `resource_input`).
    pub body: Map<String, Value>,
    pub params: Vec<Param>,
    /// Other resources the params reference (their jobs go first).
    pub references: Vec<ResourceId>,
}

/// What drafting found.
#[derive(Debug, Clone, PartialEq)]
pub enum Draft {
    Ready(Arc<JobDraft>),
    /// The config is no longer the one the plan was made from.
    Stale,
    /// A referenced resource has no config (yet).
    MissingReference {
        rtype: String,
        id: String,
    },
    /// The job cannot be built from this config and template.
    Invalid(String),
}

/// Configs read while drafting, by `(type, id)`.
#[derive(Default)]
struct Fetched(HashMap<(String, String), Option<Body>>);

impl Configs for Fetched {
    fn lookup(&self, rtype: &str, id: &str) -> Lookup<'_> {
        match self.0.get(&(rtype.to_string(), id.to_string())) {
            Some(Some(b)) => Lookup::Found(b.as_ref()),
            Some(None) => Lookup::Absent,
            None => Lookup::NotLoaded,
        }
    }
}

/// Reads the config of `r` (a `rtype`) at `config_rev` and evaluates the
/// template's mappings over it, with the configs it references as `world`
/// knows them.
pub async fn draft(
    kv: &impl Kv,
    world: &RwLock<World>,
    template: &CompiledTemplate,
    r: &ResourceRef,
    rtype: &str,
    config_rev: i64,
) -> Result<Draft, etcd_client::Error> {
    let catalog = world.read().await.catalog().clone();
    let schemas = &catalog.schemas;
    // The one read a job needs: the world keeps no bodies (see `bodies`).
    let Some(record) = kv
        .read(&r.config_key())
        .await?
        .filter(|c| c.mod_rev == config_rev)
    else {
        return Ok(Draft::Stale);
    };
    let config: ConfigRecord = match records::parse("config", &record.value) {
        Ok(c) => c,
        Err(e) => return Ok(Draft::Invalid(e.to_string())),
    };
    let subject = Subject {
        rtype,
        body: &config.body.fields,
        version: config.version,
    };
    let mut fetched = Fetched::default();
    let params = loop {
        match build_params(template, subject, schemas, &fetched) {
            Ok(p) => break p,
            Err(EvalError::NeedConfig(rid)) => {
                if fetched.0.len() > MAX_REFERENCED_CONFIGS {
                    return Ok(Draft::Invalid(format!(
                        "template {} references more than {MAX_REFERENCED_CONFIGS} configs",
                        template.id
                    )));
                }
                let body = match referenced_config(kv, world, schemas, &rid).await? {
                    Ok(body) => body,
                    Err(why) => return Ok(Draft::Invalid(why)),
                };
                fetched.0.insert((rid.resource_type, rid.resource_id), body);
            }
            Err(EvalError::MissingReference { rtype, id }) => {
                return Ok(Draft::MissingReference { rtype, id });
            }
            Err(e) => return Ok(Draft::Invalid(format!("template {}: {e}", template.id))),
        }
    };
    let me = ResourceId {
        resource_type: rtype.to_string(),
        resource_id: r.id.clone(),
    };
    let references = referenced(&params)
        .into_iter()
        .filter(|d| *d != me)
        .collect();
    Ok(Draft::Ready(Arc::new(JobDraft {
        config_rev,
        body: config.body.fields,
        params,
        references,
    })))
}

/// The body of a referenced config, `None` if it has none; `Err` says why a
/// config that is there cannot be used. Kept in the world's
/// [`ConfigBodies`] at the revision the world knows, so the next job that
/// references it reads nothing.
async fn referenced_config(
    kv: &impl Kv,
    world: &RwLock<World>,
    schemas: &Schemas,
    rid: &ResourceId,
) -> Result<Result<Option<Body>, String>, etcd_client::Error> {
    let Some(plural) = schemas.plural_of(&rid.resource_type) else {
        return Ok(Ok(None));
    };
    let r = ResourceRef::new(plural, rid.resource_id.clone());
    let key = r.config_key();
    let known = {
        let w = world.read().await;
        let rev = w.config_rev(&r);
        (rev, rev.and_then(|rev| w.bodies().get(&key, rev)))
    };
    if let (_, Some(body)) = known {
        return Ok(Ok(Some(body)));
    }
    Ok(match kv.read(&key).await? {
        None => Ok(None),
        Some(rec) => match records::parse::<ConfigRecord>("config", &rec.value) {
            Ok(c) => {
                let body = Arc::new(c.body.fields);
                if known.0 == Some(rec.mod_rev) {
                    let bytes = rec.value.len();
                    let w = world.read().await;
                    w.bodies().keep(&key, rec.mod_rev, body.clone(), bytes);
                }
                Ok(Some(body))
            }
            Err(e) => Err(format!("{} {}: {e}", rid.resource_type, rid.resource_id)),
        },
    })
}
