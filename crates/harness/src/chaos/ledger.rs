//! Everything that happened in etcd during a drill, from a watch that
//! resumes across etcd restarts, and the invariants checked over it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use esi_reconciler::store::mirror::{self, MirrorEvent, MirrorOptions};
use esi_reconciler::store::{Change, Etcd};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Mutex;

use esi_reconciler::esi::keys::{EsiKey, JobSlot};

#[derive(Debug, Clone)]
pub struct Entry {
    pub rev: i64,
    pub at: Instant,
    pub put: bool,
    /// The key's first version (a creation).
    pub created: bool,
    pub key: String,
    pub value: Vec<u8>,
}

impl Entry {
    fn from_change(c: Change) -> Entry {
        let at = Instant::now();
        match c {
            Change::Put(kv) => Entry {
                rev: kv.mod_revision,
                at,
                put: true,
                created: kv.create_revision == kv.mod_revision,
                key: kv.key,
                value: kv.value,
            },
            Change::Delete { key, revision } => Entry {
                rev: revision,
                at,
                put: false,
                created: false,
                key,
                value: vec![],
            },
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    entries: Arc<Mutex<Vec<Entry>>>,
    gaps: Arc<Mutex<Vec<String>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Ledger {
    /// Records every change after `from`, from the store's mirror (which
    /// resumes across member failures and etcd restarts).
    pub fn start(client: Etcd, from: i64) -> Ledger {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let (e, g) = (entries.clone(), gaps.clone());
        let task = tokio::spawn(async move {
            let mut events = mirror::stream(client, MirrorOptions::prefix("/").after(from));
            while let Some(ev) = events.next().await {
                match ev {
                    MirrorEvent::Changes { changes, .. } => {
                        let mut out = e.lock().await;
                        out.extend(changes.into_iter().map(Entry::from_change));
                    }
                    MirrorEvent::ListStart { revision, .. } => g.lock().await.push(format!(
                        "history before revision {revision} was compacted or restored away"
                    )),
                    _ => {}
                }
            }
        });
        Ledger {
            entries,
            gaps,
            task: Arc::new(task),
        }
    }

    pub async fn entries(&self) -> Vec<Entry> {
        self.entries.lock().await.clone()
    }

    pub async fn gaps(&self) -> Vec<String> {
        self.gaps.lock().await.clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// What the invariants found.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Jobs created during the window.
    pub actions: usize,
    /// (type, id, version, action) that had two jobs at once.
    pub duplicates: Vec<String>,
    pub violations: Vec<String>,
}

/// Checks: never two live jobs for one (type, id, version, action); no
/// `/state` version decreased; no `/config` write but the driver's own.
pub fn check(entries: &[Entry], own_config_revs: &HashSet<i64>) -> Findings {
    let mut f = Findings::default();
    let mut live: HashMap<(String, String, u64, String), HashSet<String>> = HashMap::new();
    let mut state_versions: HashMap<String, u64> = HashMap::new();
    for e in entries {
        match EsiKey::parse(&e.key) {
            Ok(Some(EsiKey::Job(JobSlot::All, id))) => {
                let tuple = (
                    id.resource_type.clone(),
                    id.resource_id.clone(),
                    id.version,
                    id.action.to_string(),
                );
                let set = live.entry(tuple).or_default();
                if e.put {
                    if e.created {
                        f.actions += 1;
                    }
                    set.insert(id.to_string());
                    if set.len() > 1 {
                        f.duplicates.push(format!(
                            "{} {} v{} {}: {:?}",
                            id.resource_type, id.resource_id, id.version, id.action, set
                        ));
                    }
                } else {
                    set.remove(&id.to_string());
                }
            }
            Ok(Some(EsiKey::State(r))) if e.put => {
                let v = serde_json::from_slice::<Value>(&e.value)
                    .ok()
                    .and_then(|v| v["version"].as_u64());
                if let Some(v) = v {
                    let prev = state_versions.insert(r.to_string(), v).unwrap_or(0);
                    if v < prev {
                        f.violations
                            .push(format!("/state of {r} went from v{prev} to v{v}"));
                    }
                }
            }
            Ok(Some(EsiKey::Config(r))) if !own_config_revs.contains(&e.rev) => {
                f.violations.push(format!(
                    "/config of {r} was {} by someone else (revision {})",
                    if e.put { "changed" } else { "deleted" },
                    e.rev
                ));
            }
            _ => {}
        }
    }
    f
}
