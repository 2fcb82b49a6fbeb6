//! Writing `/config` the way Gohan does: every change bumps `version`, a
//! delete only sets `marked_for_deletion` (the record goes once the delete
//! completed). Used by `config apply`, `config delete`, `templates load` and
//! the demo. Each write is a transaction fenced on the record it read.

use crate::store::Etcd;
use crate::store::txn::{Cond, Fenced, Kv, Op};
use serde_json::{Map, Value};

use crate::esi::records::{self, Body, ConfigRecord, RecordError};

#[derive(Debug, thiserror::Error)]
pub enum GohanError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{key}: the existing record is invalid ({source}); fix or delete it by hand")]
    Invalid { key: String, source: RecordError },
    #[error("{0}: no config to delete")]
    NotFound(String),
    #[error("{0}: changed concurrently too many times")]
    Contended(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created { version: u64 },
    Updated { from: u64, to: u64 },
    Unchanged { version: u64 },
    Marked { version: u64 },
    AlreadyMarked { version: u64 },
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Created { version } => write!(f, "created (v{version})"),
            Written::Updated { from, to } => write!(f, "updated (v{from} -> v{to})"),
            Written::Unchanged { version } => write!(f, "unchanged (v{version})"),
            Written::Marked { version } => write!(f, "marked for deletion (v{version})"),
            Written::AlreadyMarked { version } => {
                write!(f, "already marked for deletion (v{version})")
            }
        }
    }
}

async fn read(client: &Etcd, key: &str) -> Result<Option<(ConfigRecord, i64)>, GohanError> {
    let resp = client.get(key, None).await?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => {
            let rec = records::parse::<ConfigRecord>("config", kv.value()).map_err(|source| {
                GohanError::Invalid {
                    key: key.to_string(),
                    source,
                }
            })?;
            Ok(Some((rec, kv.mod_revision())))
        }
    }
}

async fn write_fenced(
    client: &Etcd,
    key: &str,
    rev: i64,
    rec: &ConfigRecord,
) -> Result<bool, GohanError> {
    let value = serde_json::to_vec(rec).unwrap_or_default();
    let txn = Fenced::new(
        vec![Cond::ModRev(key.to_string(), rev)],
        vec![Op::put(key, value)],
    )
    .named("gohan");
    Ok(client.commit(&txn).await?.succeeded)
}

/// Creates or updates the config at `key` with `body`; `marked` marks it
/// for deletion instead. An identical, unmarked body is left unchanged.
pub async fn apply(
    client: &Etcd,
    key: &str,
    body: Map<String, Value>,
    marked: bool,
) -> Result<Written, GohanError> {
    for _ in 0..10 {
        let current = read(client, key).await?;
        let (next, rev, written) = match current {
            None => {
                let rec = ConfigRecord {
                    body: Body::new(body.clone()),
                    version: 1,
                    marked_for_deletion: marked,
                    extra: Map::new(),
                };
                (rec, 0, Written::Created { version: 1 })
            }
            Some((cur, rev)) => {
                if cur.body.fields == body && cur.marked_for_deletion == marked {
                    return Ok(if marked {
                        Written::AlreadyMarked {
                            version: cur.version,
                        }
                    } else {
                        Written::Unchanged {
                            version: cur.version,
                        }
                    });
                }
                let to = cur.version.saturating_add(1);
                let written = if marked && !cur.marked_for_deletion {
                    Written::Marked { version: to }
                } else {
                    Written::Updated {
                        from: cur.version,
                        to,
                    }
                };
                let rec = ConfigRecord {
                    body: Body {
                        fields: body.clone(),
                        encoded_as_string: cur.body.encoded_as_string,
                    },
                    version: to,
                    marked_for_deletion: marked,
                    extra: cur.extra,
                };
                (rec, rev, written)
            }
        };
        if write_fenced(client, key, rev, &next).await? {
            return Ok(written);
        }
    }
    Err(GohanError::Contended(key.to_string()))
}

/// Marks the config at `key` for deletion, bumping its version.
pub async fn mark_deleted(client: &Etcd, key: &str) -> Result<Written, GohanError> {
    let Some((cur, _)) = read(client, key).await? else {
        return Err(GohanError::NotFound(key.to_string()));
    };
    apply(client, key, cur.body.fields, true).await
}

/// Creates or updates a heat template from its body (its `id` names it);
/// returns the id and what was written.
pub async fn apply_template(
    client: &Etcd,
    body: Map<String, Value>,
) -> Result<(String, Written), GohanError> {
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let key = format!("{}{id}", crate::esi::keys::TEMPLATES);
    let written = apply(client, &key, body, false).await?;
    Ok((id, written))
}
