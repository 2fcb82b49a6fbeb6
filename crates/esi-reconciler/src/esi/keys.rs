//! Every key form of the ESI etcd protocol, parsed and formatted in one place.
//!
//! Keys carry a resource's *plural* (`ports`) while jobs carry its *singular*
//! (`port`); translating between the two needs the Gohan schemas, so this
//! module keeps whichever form the key has and leaves the mapping to
//! [`crate::esi::Schemas`].

use std::fmt;

/// `/config/v2.0/` — desired configs written by Gohan.
pub const CONFIG: &str = "/config/v2.0/";
/// `/config/v2.0/heat_templates/` — heat templates, also written by Gohan.
pub const TEMPLATES: &str = "/config/v2.0/heat_templates/";
/// `/state/v2.0/` — what the worker reports per resource.
pub const STATE: &str = "/state/v2.0/";
/// `/esi-worker/heat_stacks/v2.0/` — the worker's record of each heat stack.
pub const HEAT_STACKS: &str = "/esi-worker/heat_stacks/v2.0/";
/// `/esi-worker/job_state/v2.0/` — progress of the job the worker runs.
pub const JOB_STATE: &str = "/esi-worker/job_state/v2.0/";
/// `/jobs/` — the job queue, with sub-prefixes per job status.
pub const JOBS: &str = "/jobs/";
pub const JOBS_ALL: &str = "/jobs/all/";
pub const JOBS_WAITING: &str = "/jobs/waiting/";
pub const JOBS_READY: &str = "/jobs/ready/";
pub const JOBS_WORKING: &str = "/jobs/working/";
pub const JOBS_FINISHED: &str = "/jobs/finished/";
/// `/esi-reconciler/v1/resources/` — our own per-resource bookkeeping
/// (backoff, last action). Lives in etcd so a restart does not reset it.
pub const RECONCILER: &str = "/esi-reconciler/v1/resources/";
/// `/esi-reconciler/v1/members/{replica}` — one key per live reconciler
/// replica, under its lease: the membership resources are shared over.
pub const MEMBERS: &str = "/esi-reconciler/v1/members/";

/// The key range that holds everything the reconciler watches, in one
/// contiguous span: `/config/` .. `/state0`. One list and one watch over it
/// give a single, revision-ordered view of configs, jobs, worker records,
/// state and our own records. Keys of other systems inside the span
/// (`/gohan/…`, `/esi-worker/config/…`) are ignored when parsed.
pub const WATCH_START: &str = "/config/";
pub const WATCH_END: &str = "/state0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {0:?} is not an ESI key the reconciler knows")]
    Unknown(String),
    #[error("job id {id:?} is malformed: {why}")]
    BadJobId { id: String, why: &'static str },
    #[error("unknown job action {0:?} (expected create, modify or logical_delete)")]
    BadAction(String),
}

/// A resource as keys name it: its plural and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    pub plural: String,
    pub id: String,
}

impl ResourceRef {
    pub fn new(plural: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            plural: plural.into(),
            id: id.into(),
        }
    }
    fn under(&self, prefix: &str) -> String {
        format!("{prefix}{}/{}", self.plural, self.id)
    }

    /// A 64-bit hash of the resource, the same in every process and
    /// version: what the phase book is keyed by and the resync is sliced
    /// by. One-shot hashes (no streaming state to set up): the resync and
    /// the phase gauges hash every resource every few seconds.
    pub fn stable_hash(&self) -> u64 {
        use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
        xxh3_64_with_seed(self.id.as_bytes(), xxh3_64(self.plural.as_bytes()))
    }
    pub fn config_key(&self) -> String {
        self.under(CONFIG)
    }
    pub fn state_key(&self) -> String {
        self.under(STATE)
    }
    pub fn heat_stack_key(&self) -> String {
        self.under(HEAT_STACKS)
    }
    pub fn job_state_key(&self) -> String {
        self.under(JOB_STATE)
    }
    pub fn reconciler_key(&self) -> String {
        self.under(RECONCILER)
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.plural, self.id)
    }
}

/// What a job asks the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobAction {
    Create,
    Modify,
    LogicalDelete,
}

impl JobAction {
    pub const ALL: [JobAction; 3] = [
        JobAction::Create,
        JobAction::Modify,
        JobAction::LogicalDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Create => "create",
            JobAction::Modify => "modify",
            JobAction::LogicalDelete => "logical_delete",
        }
    }

    /// The `/state` `worker_state` a successful job of this action leaves.
    pub fn completed_state(self) -> &'static str {
        match self {
            JobAction::Create => "CREATE_COMPLETED",
            JobAction::Modify => "MODIFY_COMPLETED",
            JobAction::LogicalDelete => "DELETE_COMPLETED",
        }
    }

    /// The `/state` `worker_state` a failed job of this action leaves.
    pub fn failed_state(self) -> &'static str {
        match self {
            JobAction::Create => "CREATE_FAILED",
            JobAction::Modify => "MODIFY_FAILED",
            JobAction::LogicalDelete => "DELETE_FAILED",
        }
    }

    /// The Heat stack status of this action's stack work failing.
    pub fn stack_failed(self) -> &'static str {
        match self {
            JobAction::Create => "CREATE_FAILED",
            JobAction::Modify => "UPDATE_FAILED",
            JobAction::LogicalDelete => "DELETE_FAILED",
        }
    }

    /// The Heat stack status that means this action's stack work is done.
    pub fn stack_complete(self) -> &'static str {
        match self {
            JobAction::Create => "CREATE_COMPLETE",
            JobAction::Modify => "UPDATE_COMPLETE",
            JobAction::LogicalDelete => "DELETE_COMPLETE",
        }
    }
}

impl std::str::FromStr for JobAction {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "create" => Ok(JobAction::Create),
            "modify" => Ok(JobAction::Modify),
            "logical_delete" => Ok(JobAction::LogicalDelete),
            other => Err(KeyError::BadAction(other.to_string())),
        }
    }
}

impl fmt::Display for JobAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job id: `{action}:{handler}:{type}:{id}:{version}:{rand5}`.
///
/// The resource id is parsed from both ends so an id that itself contains
/// `:` still round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    pub action: JobAction,
    pub handler: String,
    /// The resource's singular type name (`port`).
    pub resource_type: String,
    pub resource_id: String,
    pub version: u64,
    pub suffix: String,
}

impl JobId {
    /// The key prefix shared by every job of one (action, handler, type, id):
    /// used as a range fence so two reconcilers never issue the same job.
    pub fn resource_prefix(action: JobAction, handler: &str, rtype: &str, rid: &str) -> String {
        format!("{JOBS_ALL}{action}:{handler}:{rtype}:{rid}:")
    }

    /// `{type}:{id}:{version}`, the job's `job_name`.
    pub fn job_name(&self) -> String {
        format!(
            "{}:{}:{}",
            self.resource_type, self.resource_id, self.version
        )
    }

    pub fn key(&self, status_prefix: &str) -> String {
        format!("{status_prefix}{self}")
    }

    /// The job's key under one status sub-prefix of `/jobs/`.
    pub fn slot_key(&self, slot: JobSlot) -> String {
        self.key(slot.prefix())
    }
}

impl std::str::FromStr for JobId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = |why| KeyError::BadJobId {
            id: s.to_string(),
            why,
        };
        let mut head = s.splitn(4, ':');
        let action: JobAction = head.next().ok_or_else(|| bad("no action"))?.parse()?;
        let handler = head
            .next()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no handler"))?;
        let rtype = head
            .next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no resource type"))?;
        let rest = head.next().ok_or_else(|| bad("no resource id"))?;
        let mut tail = rest.rsplitn(3, ':');
        let suffix = tail.next().ok_or_else(|| bad("no random suffix"))?;
        let version = tail.next().ok_or_else(|| bad("no version"))?;
        let rid = tail
            .next()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| bad("no resource id"))?;
        let version = version
            .parse()
            .map_err(|_| bad("version is not a number"))?;
        Ok(JobId {
            action,
            handler: handler.to_string(),
            resource_type: rtype.to_string(),
            resource_id: rid.to_string(),
            version,
            suffix: suffix.to_string(),
        })
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}:{}",
            self.action,
            self.handler,
            self.resource_type,
            self.resource_id,
            self.version,
            self.suffix
        )
    }
}

/// Which status sub-prefix of `/jobs/` a job key lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobSlot {
    All,
    Waiting,
    Ready,
    Working,
    Finished,
}

impl JobSlot {
    pub fn prefix(self) -> &'static str {
        match self {
            JobSlot::All => JOBS_ALL,
            JobSlot::Waiting => JOBS_WAITING,
            JobSlot::Ready => JOBS_READY,
            JobSlot::Working => JOBS_WORKING,
            JobSlot::Finished => JOBS_FINISHED,
        }
    }
}

/// Any key the reconciler understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsiKey {
    Config(ResourceRef),
    Template(String),
    State(ResourceRef),
    HeatStack(ResourceRef),
    JobState(ResourceRef),
    Job(JobSlot, JobId),
    Reconciler(ResourceRef),
}

impl EsiKey {
    /// Parses a key. `Ok(None)` means the key is inside the watched span but
    /// belongs to somebody else (Gohan locks, the worker's config copies):
    /// ignore it. `Err` means it looks like ours but is malformed: report it.
    pub fn parse(key: &str) -> Result<Option<EsiKey>, KeyError> {
        if let Some(id) = key.strip_prefix(TEMPLATES) {
            return Ok(nonempty(id).map(|id| EsiKey::Template(id.to_string())));
        }
        let resource = |rest: &str| -> Option<ResourceRef> {
            let (plural, id) = rest.split_once('/')?;
            (!plural.is_empty() && !id.is_empty() && !id.contains('/'))
                .then(|| ResourceRef::new(plural, id))
        };
        for (prefix, make) in [
            (CONFIG, EsiKey::Config as fn(ResourceRef) -> EsiKey),
            (STATE, EsiKey::State),
            (HEAT_STACKS, EsiKey::HeatStack),
            (JOB_STATE, EsiKey::JobState),
            (RECONCILER, EsiKey::Reconciler),
        ] {
            if let Some(rest) = key.strip_prefix(prefix) {
                return match resource(rest) {
                    Some(r) => Ok(Some(make(r))),
                    None => Err(KeyError::Unknown(key.to_string())),
                };
            }
        }
        for slot in [
            JobSlot::All,
            JobSlot::Waiting,
            JobSlot::Ready,
            JobSlot::Working,
            JobSlot::Finished,
        ] {
            if let Some(id) = key.strip_prefix(slot.prefix()) {
                return Ok(Some(EsiKey::Job(slot, id.parse()?)));
            }
        }
        Ok(None)
    }
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The first key after every key with this prefix, for range requests.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if let Some(next) = last.checked_add(1) {
            end.push(next);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip() {
        for id in [
            "logical_delete:heat_worker:port:db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc:4:ajjld",
            "create:heat_worker:network:ce9a7a92:1:4pxn8",
            "modify:heat_worker:load_balancer_interface:a:b:c:12:zzzzz",
        ] {
            let parsed: JobId = id.parse().unwrap();
            assert_eq!(parsed.to_string(), id);
        }
        let j: JobId = "modify:heat_worker:lb:a:b:c:12:zzzzz".parse().unwrap();
        assert_eq!((j.resource_id.as_str(), j.version), ("a:b:c", 12));
    }

    #[test]
    fn malformed_job_ids_say_why() {
        for (id, why) in [
            ("explode:heat_worker:port:x:1:abcde", "action"),
            (
                "create:heat_worker:port:x:one:abcde",
                "version is not a number",
            ),
            ("create:heat_worker:port", "no resource id"),
            ("create::port:x:1:abcde", "no handler"),
        ] {
            let err = id.parse::<JobId>().unwrap_err().to_string();
            assert!(err.contains(why), "{id}: {err}");
        }
    }

    #[test]
    fn keys_parse_into_their_kind() {
        let r = ResourceRef::new("ports", "p1");
        assert_eq!(
            EsiKey::parse("/config/v2.0/ports/p1"),
            Ok(Some(EsiKey::Config(r.clone())))
        );
        assert_eq!(
            EsiKey::parse("/state/v2.0/ports/p1"),
            Ok(Some(EsiKey::State(r.clone())))
        );
        assert_eq!(
            EsiKey::parse(&r.heat_stack_key()),
            Ok(Some(EsiKey::HeatStack(r.clone())))
        );
        assert_eq!(
            EsiKey::parse(&r.job_state_key()),
            Ok(Some(EsiKey::JobState(r.clone())))
        );
        assert_eq!(
            EsiKey::parse(&r.reconciler_key()),
            Ok(Some(EsiKey::Reconciler(r.clone())))
        );
        assert_eq!(
            EsiKey::parse("/config/v2.0/heat_templates/port"),
            Ok(Some(EsiKey::Template("port".into())))
        );
        assert!(matches!(
            EsiKey::parse("/jobs/ready/create:heat_worker:port:p1:1:abcde"),
            Ok(Some(EsiKey::Job(JobSlot::Ready, _)))
        ));
        assert_eq!(EsiKey::parse("/gohan/cluster/lock/x"), Ok(None));
        assert_eq!(EsiKey::parse("/esi-worker/config/v2.0/ports/p1"), Ok(None));
        assert!(EsiKey::parse("/config/v2.0/ports").is_err());
        assert!(EsiKey::parse("/jobs/all/bogus").is_err());
    }

    #[test]
    fn watch_span_covers_every_prefix() {
        for p in [
            CONFIG,
            TEMPLATES,
            STATE,
            HEAT_STACKS,
            JOB_STATE,
            JOBS_ALL,
            JOBS_WORKING,
            RECONCILER,
        ] {
            assert!((WATCH_START..WATCH_END).contains(&p), "{p}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/jobs/"), b"/jobs0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
