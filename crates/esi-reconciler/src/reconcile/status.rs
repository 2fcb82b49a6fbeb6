//! Our own per-resource record, `/esi-reconciler/v1/resources/{plural}/{id}`:
//! backoff (attempts, next retry) and the last action, kept in etcd so a
//! restarted reconciler neither resets a backoff nor forgets what it did.

use serde::{Deserialize, Serialize};

use crate::esi::records::Object;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Failed attempts in a row for `version`.
    #[serde(default)]
    pub attempts: u32,
    /// The config version the attempts count for.
    #[serde(default)]
    pub version: u64,
    /// Unix time (ms) before which no retry is issued.
    #[serde(default)]
    pub next_retry_ms: u64,
    /// Mod revision of the `/state` record whose failure was last counted,
    /// so one failure is never counted twice.
    #[serde(default)]
    pub failure_revision: i64,
    #[serde(default)]
    pub last_action: String,
    #[serde(default)]
    pub last_action_ms: u64,
    #[serde(default)]
    pub last_error: String,
    #[serde(flatten)]
    pub extra: Object,
}
