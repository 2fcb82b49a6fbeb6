//! A cluster-aware etcd client: every request goes to a healthy member, a
//! request that failed on its way is retried on another, and a store that
//! went back in time (restored from a snapshot) or was replaced is noticed.
//!
//! Why not `etcd_client::Client` with all endpoints: its balancer keeps
//! sending to a dead member and nothing retries (etcd-client issues #12 and
//! #39 leave cluster handling to the caller). Go's clientv3 is the model:
//! one connection per member, members health-checked, retry-safe requests
//! retried elsewhere, watches re-established on a live member.
//!
//! **What is retried.** A request whose answer was lost may still be
//! applied, even much later: a frozen member that thaws serves what sat in
//! its socket. So only requests that are safe to apply twice, at any time,
//! are retried after a failure that leaves it open (a timeout, a member
//! found down mid-request, "leader changed"): reads; transactions, because
//! every transaction this product sends compares the revisions (or
//! versions) it was planned from, so a late or second copy fails its
//! compares and the caller re-plans; lease grants (an extra lease expires
//! on its own), renewals and revokes. Plain puts and deletes are retried
//! only when the request surely never left (the connection could not be
//! made); otherwise the caller gets the error. Retries go to another member,
//! with backoff, until the request timeout is spent.
//!
//! **Revision regressions.** etcd's revision never decreases and its raft
//! term never decreases while a cluster lives. A linearizable answer whose
//! revision (or term) is below what this process had seen *before it sent
//! the request*, or from another cluster id, means the store was restored
//! or replaced. Comparing with the floor taken at send time (not with the
//! running maximum) keeps concurrent answers that arrive out of order from
//! looking like a regression. A regression bumps the [`Etcd::epoch`]; every
//! view built from etcd (mirrors, the worker's lease and ready jobs, the
//! reconciler's membership) subscribes to it and starts again from scratch.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, DeleteOptions, DeleteResponse, GetOptions, GetResponse, LeaseGrantResponse,
    LeaseRevokeResponse, LeaseTimeToLiveOptions, LeaseTimeToLiveResponse, PutOptions, PutResponse,
    ResponseHeader, StatusResponse, Txn, TxnResponse, WatchOptions, WatchStream,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::client::{EtcdOptions, StoreError, describe, member_client};

/// How far a member's revision − applied index gap may grow before it
/// counts as a restore (see `saw_raft_index`).
const RESTORE_GAP: i128 = 16;

/// How often a member found down is checked (to bring it back soon).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A healthy member is checked every this many intervals: requests that
/// fail mark a member down at once, so this only catches a member that
/// hangs while nothing is sent to it, and keeps an idle process quiet.
const HEALTHY_EVERY: u64 = 3;
/// How often members are discovered with `--etcd-discover`.
const DISCOVER_INTERVAL: Duration = Duration::from_secs(30);

/// Counters of the etcd layer, registered by each process's metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Requests moved to another member after one failed.
    pub failovers: Counter,
    /// Requests sent again after a failure (on any member).
    pub retries: Counter,
    /// Restored or replaced stores detected.
    pub resets: Counter,
    /// Members that answered their last health check.
    pub healthy_members: Gauge,
    /// Members known.
    pub members: Gauge,
    /// Transactions sent, by what they do ([`Fenced::kind`](super::txn::Fenced::kind)).
    pub transactions: Family<WriteKind, Counter>,
    /// Requests made, by kind (`get`, `txn`, `lease grant`, …; a retry
    /// counts in `retries`, not again here).
    pub requests: Family<RequestKind, Counter>,
}

/// The label of a request: what the client asked of etcd.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestKind {
    pub request: &'static str,
}

/// The label of a transaction: which step of the protocol it is.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteKind {
    pub kind: String,
}

impl StoreStats {
    fn request(&self, request: &'static str) {
        self.requests.get_or_create(&RequestKind { request }).inc();
    }

    /// Counts one transaction of `kind` ("" counts as "other").
    pub fn transaction(&self, kind: &str) {
        let kind = if kind.is_empty() { "other" } else { kind };
        self.transactions
            .get_or_create(&WriteKind { kind: kind.into() })
            .inc();
    }
}

impl StoreStats {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "etcd_failovers",
            "etcd requests moved to another member after a failure",
            self.failovers.clone(),
        );
        registry.register(
            "etcd_retries",
            "etcd requests sent again after a failure",
            self.retries.clone(),
        );
        registry.register(
            "etcd_store_resets",
            "etcd stores found restored or replaced (revision or raft term went back, or a new cluster id); each causes a relist",
            self.resets.clone(),
        );
        registry.register(
            "etcd_members_healthy",
            "etcd members that answered their last health check",
            self.healthy_members.clone(),
        );
        registry.register("etcd_members", "etcd members known", self.members.clone());
        registry.register(
            "etcd_requests",
            "etcd requests made, by kind (unary calls; watches are streams)",
            self.requests.clone(),
        );
        registry.register(
            "etcd_transactions",
            "etcd transactions sent, by the step of the protocol they are (failed compares included)",
            self.transactions.clone(),
        );
    }
}

/// One etcd member: its endpoint, its own connection, its health.
struct Member {
    endpoint: String,
    /// Connected lazily: with authentication, connecting needs the member up.
    client: tokio::sync::Mutex<Option<Client>>,
    healthy: AtomicBool,
    /// Bumped each time the member is found down, so watches and requests
    /// on it can move at once.
    down: watch::Sender<u64>,
    /// From the configured endpoints (kept), or discovered (may go).
    configured: bool,
    /// It has answered a status check once: a connection it closes later
    /// is a restart or a network fault, not a TLS rejection.
    answered: AtomicBool,
}

impl Member {
    fn new(endpoint: String, configured: bool) -> Arc<Member> {
        Arc::new(Member {
            endpoint,
            client: tokio::sync::Mutex::new(None),
            healthy: AtomicBool::new(true),
            down: watch::channel(0).0,
            configured,
            answered: AtomicBool::new(false),
        })
    }
}

/// What the process has seen of the store, for regression checks.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    cluster_id: u64,
    revision: i64,
    raft_term: u64,
    /// The store epoch these were seen in: an answer to a request sent in
    /// an older epoch (before a reset) is ignored, so a late answer from
    /// the old store can neither reset again nor raise the new floor.
    epoch: u64,
}

struct Inner {
    opts: EtcdOptions,
    members: RwLock<Vec<Arc<Member>>>,
    /// Index into `members` of the member requests go to.
    current: AtomicUsize,
    seen: Mutex<Seen>,
    /// Each member's lowest revision − applied index gap, and whether the
    /// last check found it jumped (by member id), see `saw_raft_index`.
    raft_index: Mutex<std::collections::HashMap<u64, (i128, bool)>>,
    epoch: watch::Sender<u64>,
    stats: StoreStats,
    discover: bool,
    /// Why the last attempt to reach any member failed, for messages.
    last_error: Mutex<String>,
}

/// A request's target: a member and its connection.
struct Target {
    member: Arc<Member>,
    client: Client,
}

/// An etcd cluster, as one handle. Cheap to clone; clones share
/// connections, health and the regression guard.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

/// A watch on one member. `member_down` resolves when that member is found
/// unhealthy, so the holder can resume on another.
pub struct MemberWatch {
    pub stream: WatchStream,
    pub endpoint: String,
    pub down: MemberDown,
}

/// Tells when one member is found down.
pub struct MemberDown(watch::Receiver<u64>);

impl MemberDown {
    /// Resolves when the member is found down.
    pub async fn wait(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Answers that carry a response header.
pub trait Headed {
    fn header(&self) -> Option<&ResponseHeader>;
}

macro_rules! headed {
    ($($t:ty),*) => {$(
        impl Headed for $t {
            fn header(&self) -> Option<&ResponseHeader> {
                <$t>::header(self)
            }
        }
    )*};
}
headed!(
    etcd_client::CompactionResponse,
    GetResponse,
    PutResponse,
    DeleteResponse,
    TxnResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse
);

/// Whether the request surely never reached a server: the connection
/// could not be made.
pub fn never_sent(e: &etcd_client::Error) -> bool {
    let text = match e {
        etcd_client::Error::TransportError(t) => t.to_string(),
        etcd_client::Error::GRpcStatus(s) => {
            let mut t = s.message().to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(s);
            while let Some(e) = src {
                t.push(' ');
                t.push_str(&e.to_string());
                src = e.source();
            }
            t
        }
        _ => return false,
    };
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("error trying to connect")
}

/// Whether a failed request may be sent again (on another member): the
/// request did not reach a working member, or the member could not serve it.
pub fn is_retryable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => true,
            Code::Unknown => {
                let m = s.message();
                m.contains("transport")
                    || m.contains("connection")
                    || m.contains("leader")
                    || m.contains("timed out")
                    || m.contains("h2 protocol")
            }
            _ => {
                let m = s.message();
                m.contains("no leader") || m.contains("leader changed")
            }
        },
        _ => false,
    }
}

fn timed_out(what: &str, after: Duration) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
        "{what}: no answer within {after:?}"
    )))
}

impl Etcd {
    /// A handle on the cluster behind `opts.endpoints`. Nothing is
    /// connected yet; `opts.discover` adds the members `MemberList` names.
    pub fn new(opts: EtcdOptions) -> Result<Etcd, StoreError> {
        let discover = opts.discover;
        if let Some(tls) = &opts.tls {
            for f in [&tls.ca, &tls.cert, &tls.key].into_iter().flatten() {
                super::client::read(f)?;
            }
            super::tls::check_files(tls).map_err(StoreError::Tls)?;
            if let Some(plain) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Tls(format!(
                    "TLS is configured (--etcd-ca/--etcd-cert) but endpoint {plain} is \
                     plain http://: use https:// endpoints"
                )));
            }
        }
        if opts.endpoints.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        let mut seen_eps = std::collections::HashSet::new();
        let members: Vec<Arc<Member>> = opts
            .endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty() && seen_eps.insert(e.clone()))
            .map(|e| Member::new(e, true))
            .collect();
        if members.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        let stats = StoreStats::default();
        stats.members.set(members.len() as i64);
        stats.healthy_members.set(members.len() as i64);
        let etcd = Etcd {
            inner: Arc::new(Inner {
                opts,
                members: RwLock::new(members),
                current: AtomicUsize::new(0),
                seen: Mutex::new(Seen::default()),
                raft_index: Mutex::new(Default::default()),
                epoch: watch::channel(0).0,
                stats,
                discover,
                last_error: Mutex::new(String::new()),
            }),
        };
        // The health loop holds only a weak reference: it ends with the
        // last handle.
        let weak = Arc::downgrade(&etcd.inner);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(health_loop(weak));
        }
        Ok(etcd)
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.inner.opts
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Increases each time the store is found restored or replaced.
    pub fn epoch(&self) -> u64 {
        *self.inner.epoch.borrow()
    }

    /// Notified on every epoch change.
    pub fn subscribe_resets(&self) -> watch::Receiver<u64> {
        self.inner.epoch.subscribe()
    }

    /// The endpoints known, with their health.
    pub fn members(&self) -> Vec<(String, bool)> {
        self.members_snapshot()
            .iter()
            .map(|m| (m.endpoint.clone(), m.healthy.load(Ordering::Relaxed)))
            .collect()
    }

    fn members_snapshot(&self) -> Vec<Arc<Member>> {
        self.inner
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The member to use now: the current one if healthy, else the next
    /// healthy one (a failover), else the next one in turn (nothing is
    /// known to work; keep trying them all).
    fn pick(&self, avoid: Option<&str>) -> Arc<Member> {
        let members = self.members_snapshot();
        let n = members.len().max(1);
        let cur = self
            .inner
            .current
            .load(Ordering::Relaxed)
            .checked_rem(n)
            .unwrap_or(0);
        let usable =
            |m: &Member| m.healthy.load(Ordering::Relaxed) && Some(m.endpoint.as_str()) != avoid;
        if let Some(m) = members.get(cur)
            && usable(m)
        {
            return m.clone();
        }
        for step in 1..=n {
            let i = cur.wrapping_add(step).checked_rem(n).unwrap_or(0);
            if let Some(m) = members.get(i)
                && usable(m)
            {
                self.inner.current.store(i, Ordering::Relaxed);
                self.inner.stats.failovers.inc();
                return m.clone();
            }
        }
        // None healthy: rotate through all, skipping the one that just failed.
        let i = cur.wrapping_add(1).checked_rem(n).unwrap_or(0);
        self.inner.current.store(i, Ordering::Relaxed);
        members
            .get(i)
            .or_else(|| members.first())
            .cloned()
            .expect("at least one member")
    }

    async fn connect_member(&self, m: &Member) -> Result<Client, etcd_client::Error> {
        let mut slot = m.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = member_client(&self.inner.opts, &m.endpoint).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn target(
        &self,
        avoid: Option<&str>,
    ) -> Result<Target, (Arc<Member>, etcd_client::Error)> {
        let member = self.pick(avoid);
        match self.connect_member(&member).await {
            Ok(client) => Ok(Target { member, client }),
            Err(e) => Err((member, e)),
        }
    }

    /// `describe`, plus the TLS cause and what to check when TLS explains
    /// the failure.
    fn explain(&self, m: &Member, e: &etcd_client::Error) -> String {
        let d = describe(e);
        let first_contact = !m.answered.load(Ordering::Relaxed);
        match super::tls::explain(e, self.inner.opts.tls.as_ref(), &m.endpoint, first_contact) {
            Some(cause) => format!("{cause} ({d})"),
            None => d,
        }
    }

    fn mark_down(&self, m: &Member, why: &str) {
        if m.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(endpoint = %m.endpoint, reason = %why, "etcd member unreachable; using the others");
            m.down.send_modify(|g| *g = g.wrapping_add(1));
        }
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = if why.contains(&m.endpoint) {
            why.to_string()
        } else {
            format!("{}: {why}", m.endpoint)
        };
    }

    /// Sends a request, retrying on another member while it fails in a way
    /// that makes sending it again safe, until the request timeout is spent.
    /// `linearizable`: the answer's revision must not be below what was seen
    /// before sending (see the module doc). `idempotent`: the request may be
    /// applied twice, or late, without harm (see the module doc).
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        linearizable: bool,
        idempotent: bool,
        f: F,
    ) -> Result<T, etcd_client::Error>
    where
        T: Headed,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.inner.stats.request(what);
        let total = self.inner.opts.request_timeout;
        let deadline = crate::clock::deadline_in(total).into_std();
        let mut delay = Duration::from_millis(25);
        let mut avoid: Option<String> = None;
        loop {
            let floor = self.seen();
            let (member, result) = match self.target(avoid.as_deref()).await {
                Ok(t) => {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    let mut down = t.member.down.subscribe();
                    let r = tokio::select! {
                        r = tokio::time::timeout(left, f(t.client)) => match r {
                            Ok(r) => r,
                            Err(_) => Err(timed_out(what, total)),
                        },
                        // Found down by the health check meanwhile: move now.
                        Ok(()) = down.changed() => Err(etcd_client::Error::GRpcStatus(
                            tonic::Status::unavailable("member found down"))),
                    };
                    (t.member, r)
                }
                Err((m, e)) => (m, Err(e)),
            };
            match result {
                Ok(resp) => {
                    if let Some(h) = resp.header() {
                        self.observe(floor, h, linearizable, &member.endpoint);
                    }
                    return Ok(resp);
                }
                Err(e)
                    if is_retryable(&e)
                        && (idempotent || never_sent(&e))
                        && Instant::now()
                            .checked_add(delay)
                            .is_some_and(|t| t < deadline) =>
                {
                    self.mark_down(&member, &self.explain(&member, &e));
                    self.inner.stats.retries.inc();
                    tracing::debug!(endpoint = %member.endpoint, what, error = %describe(&e), "etcd request failed; retrying on another member");
                    avoid = Some(member.endpoint.clone());
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    if is_retryable(&e) {
                        self.mark_down(&member, &self.explain(&member, &e));
                    }
                    return Err(e);
                }
            }
        }
    }

    fn seen(&self) -> Seen {
        *self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks an answer against what was seen before it was asked for.
    fn observe(&self, floor: Seen, h: &ResponseHeader, linearizable: bool, endpoint: &str) {
        let (cluster, rev, term) = (h.cluster_id(), h.revision(), h.raft_term());
        let reason = if floor.cluster_id != 0 && cluster != 0 && cluster != floor.cluster_id {
            Some(format!(
                "cluster id changed from {:x} to {cluster:x}",
                floor.cluster_id
            ))
        } else if linearizable && rev > 0 && rev < floor.revision {
            Some(format!(
                "revision went back from {} to {rev}",
                floor.revision
            ))
        } else if linearizable && term > 0 && term < floor.raft_term {
            Some(format!(
                "raft term went back from {} to {term}",
                floor.raft_term
            ))
        } else {
            None
        };
        let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.epoch != floor.epoch {
            return;
        }
        match reason {
            Some(reason) => self.reset(&mut seen, &reason, endpoint, (cluster, rev, term)),
            None => {
                if seen.cluster_id == 0 {
                    seen.cluster_id = cluster;
                }
                seen.revision = seen.revision.max(rev);
                seen.raft_term = seen.raft_term.max(term);
            }
        }
    }

    /// The store was restored or replaced: a new epoch whose floor is what
    /// the new store answered.
    fn reset(&self, seen: &mut Seen, reason: &str, endpoint: &str, now: (u64, i64, u64)) {
        tracing::warn!(
            endpoint,
            previous_revision = seen.revision,
            revision = now.1,
            %reason,
            "etcd store was restored or replaced: dropping every view of it and listing again"
        );
        *seen = Seen {
            cluster_id: now.0,
            revision: now.1,
            raft_term: now.2,
            epoch: seen.epoch.wrapping_add(1),
        };
        self.inner
            .raft_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.inner.stats.resets.inc();
        self.inner.epoch.send_replace(seen.epoch);
    }

    /// A member's revision minus its applied raft index, from its status.
    /// Every revision is one applied raft entry, and some entries write no
    /// revision (elections, leases, compactions), so over a member's life
    /// this gap never grows. A store restored from a snapshot keeps the
    /// snapshot's revision but starts its raft log again near zero: the gap
    /// jumps up and stays up. That tells a restore even when the restored
    /// store has grown past every revision we saw and its term is back
    /// where ours was, which the answers' revisions and terms cannot. Two
    /// checks in a row must show it, so a status read while entries apply
    /// cannot pass for one.
    fn saw_raft_index(&self, s: &StatusResponse, endpoint: &str) {
        let Some(h) = s.header() else { return };
        let member = h.member_id();
        let gap = i128::from(h.revision()).saturating_sub(i128::from(s.raft_applied_index()));
        let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        let jumped_from = {
            let mut map = self
                .inner
                .raft_index
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let entry = map.entry(member).or_insert((gap, false));
            let (low, suspect) = *entry;
            if gap <= low.saturating_add(RESTORE_GAP) {
                *entry = (low.min(gap), false);
                None
            } else if !suspect {
                // Once: wait for the next check to confirm.
                entry.1 = true;
                None
            } else {
                Some(low)
            }
        };
        if let Some(low) = jumped_from {
            let reason = format!(
                "member {member:x}'s revision is now {gap} ahead of its applied raft index (was {low}): its raft log started again"
            );
            self.reset(
                &mut seen,
                &reason,
                endpoint,
                (h.cluster_id(), h.revision(), h.raft_term()),
            );
        }
    }

    /// Records a revision the store was seen at through a watch: the floor a
    /// later linearizable answer is checked against. Without it, a process
    /// that mostly watches (and wrote last long ago) would take a store
    /// restored to a point between its last write and its last watched
    /// change for the same store.
    pub fn saw_revision(&self, revision: i64) {
        let mut seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.revision = seen.revision.max(revision);
    }

    /// Asks a member for the current revision with a linearizable read,
    /// which also detects a regression. Used by watchers whose stream
    /// shows a revision below their own.
    pub async fn check_store(&self) -> Result<i64, etcd_client::Error> {
        crate::store::current_revision(self).await
    }

    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, etcd_client::Error> {
        let key = key.into();
        // A header carries the store's current revision even for a read
        // pinned to an older one, so every read is checked.
        self.call("get", true, true, |mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.get(k, o).await }
        })
        .await
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: Option<PutOptions>,
    ) -> Result<PutResponse, etcd_client::Error> {
        let (key, value) = (key.into(), value.into());
        self.call("put", true, false, |mut c| {
            let (k, v, o) = (key.clone(), value.clone(), opts.clone());
            async move { c.put(k, v, o).await }
        })
        .await
    }

    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, etcd_client::Error> {
        let key = key.into();
        self.call("delete", true, false, |mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.delete(k, o).await }
        })
        .await
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.call("txn", true, true, |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, etcd_client::Error> {
        self.call("lease grant", true, true, |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, etcd_client::Error> {
        self.call("lease revoke", true, true, |mut c| async move {
            c.lease_revoke(id).await
        })
        .await
    }

    /// The lease's remaining TTL in seconds (≤ 0: gone).
    pub async fn lease_ttl(&self, id: i64) -> Result<i64, etcd_client::Error> {
        let r = self
            .call("lease ttl", true, true, |mut c| async move {
                c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new()))
                    .await
            })
            .await?;
        Ok(r.ttl())
    }

    /// Renews a lease once, on whichever member answers. `Ok(ttl)`, where
    /// a TTL ≤ 0 means the lease is gone.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, etcd_client::Error> {
        struct Ttl(i64, Option<ResponseHeader>);
        impl Headed for Ttl {
            fn header(&self) -> Option<&ResponseHeader> {
                self.1.as_ref()
            }
        }
        // A keep-alive's header is filled by the member that took it, which
        // may lag the leader: not compared with the floor.
        let r = self
            .call("lease keep-alive", false, true, |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                match stream.message().await {
                    // etcd-client reports a lease etcd no longer has as an
                    // error: that is an answer (TTL 0), not a failure.
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                        Ok(Ttl(0, None))
                    }
                    Err(e) => Err(e),
                    Ok(Some(r)) => Ok(Ttl(r.ttl(), r.header().cloned())),
                    Ok(None) => Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                        "keep-alive stream ended",
                    ))),
                }
            })
            .await?;
        Ok(r.0)
    }

    /// Starts a watch on a healthy member, moving on while members fail.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<WatchOptions>,
    ) -> Result<MemberWatch, etcd_client::Error> {
        let key = key.into();
        let deadline = crate::clock::deadline_in(self.inner.opts.request_timeout).into_std();
        let mut avoid: Option<String> = None;
        loop {
            let (member, r) = match self.target(avoid.as_deref()).await {
                Ok(t) => {
                    let mut wc = t.client.watch_client();
                    let r = tokio::time::timeout(
                        self.inner.opts.request_timeout,
                        wc.watch(key.clone(), opts.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(timed_out("watch", self.inner.opts.request_timeout)));
                    (t.member, r)
                }
                Err((m, e)) => (m, Err(e)),
            };
            match r {
                Ok(stream) => {
                    return Ok(MemberWatch {
                        stream,
                        endpoint: member.endpoint.clone(),
                        down: MemberDown(member.down.subscribe()),
                    });
                }
                Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                    self.mark_down(&member, &self.explain(&member, &e));
                    self.inner.stats.retries.inc();
                    avoid = Some(member.endpoint.clone());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks the member behind a broken watch down, so the next request
    /// and the next watch go elsewhere until a health check finds it well.
    pub fn watch_failed(&self, endpoint: &str, why: &str) {
        if let Some(m) = self
            .members_snapshot()
            .into_iter()
            .find(|m| m.endpoint == endpoint)
        {
            self.mark_down(&m, why);
        }
    }

    /// Compacts the store's history up to `revision` (physically: wait
    /// until it is applied).
    pub async fn compact(&self, revision: i64) -> Result<(), etcd_client::Error> {
        self.call("compact", true, true, |mut c| async move {
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        })
        .await
        .map(|_| ())
    }

    /// The status of the member requests go to now.
    pub async fn status(&self) -> Result<StatusResponse, etcd_client::Error> {
        let t = self.target(None).await.map_err(|(_, e)| e)?;
        let mut mc = t.client.maintenance_client();
        mc.status().await
    }

    /// A connection to a healthy member, for operations this layer does not
    /// wrap (maintenance, auth administration). Not retried.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        self.target(None)
            .await
            .map(|t| t.client)
            .map_err(|(_, e)| e)
    }

    /// Checks that some member answers a read, so a command fails fast with
    /// a clear message instead of on its first real request.
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = GetOptions::new().with_count_only().with_limit(1);
        self.get(crate::esi::keys::CONFIG, Some(probe))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unreachable {
                endpoints: self.inner.opts.endpoints.join(","),
                reason: {
                    let last = self
                        .inner
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    // The last member failure carries the explained cause
                    // (without the endpoint again when there is only one).
                    let endpoints = self.inner.opts.endpoints.join(",");
                    let last = last
                        .strip_prefix(&format!("{endpoints}: "))
                        .map(str::to_string)
                        .unwrap_or(last);
                    let d = describe(&e);
                    if last.is_empty() {
                        d
                    } else if last.contains(&d) {
                        last
                    } else {
                        format!("{d}; last failure: {last}")
                    }
                },
            })
    }
}

/// Checks members found down each second and healthy ones every third: a
/// member is healthy when it answers its status within the connect timeout
/// and knows a leader. Also adds the members `MemberList` names when
/// discovery is on.
async fn health_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_discover: Option<Instant> = None;
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        // The first round checks every member.
        let all = round.is_multiple_of(HEALTHY_EVERY);
        round = round.wrapping_add(1);
        let Some(inner) = inner.upgrade() else { return };
        let etcd = Etcd { inner };
        let members = etcd.members_snapshot();
        let timeout = etcd
            .inner
            .opts
            .connect_timeout
            .clamp(Duration::from_millis(200), Duration::from_secs(2));
        let checks = members.iter().map(|m| {
            let etcd = etcd.clone();
            async move {
                if !all && m.healthy.load(Ordering::Relaxed) {
                    return true;
                }
                let r = tokio::time::timeout(timeout, async {
                    let c = etcd.connect_member(m).await?;
                    c.maintenance_client().status().await
                })
                .await;
                if let Ok(Ok(s)) = &r {
                    etcd.saw_raft_index(s, &m.endpoint);
                    m.answered.store(true, Ordering::Relaxed);
                }
                match r {
                    Ok(Ok(s)) if s.leader() != 0 => {
                        if !m.healthy.swap(true, Ordering::Relaxed) {
                            tracing::info!(endpoint = %m.endpoint, "etcd member healthy again");
                        }
                        true
                    }
                    Ok(Ok(_)) => {
                        etcd.mark_down(m, "member has no leader");
                        false
                    }
                    Ok(Err(e)) => {
                        etcd.mark_down(m, &etcd.explain(m, &e));
                        false
                    }
                    Err(_) => {
                        etcd.mark_down(m, &format!("no status answer within {timeout:?}"));
                        false
                    }
                }
            }
        });
        let healthy = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|h| *h)
            .count();
        etcd.inner.stats.healthy_members.set(healthy as i64);
        etcd.inner.stats.members.set(members.len() as i64);
        if etcd.inner.discover && last_discover.is_none_or(|t| t.elapsed() >= DISCOVER_INTERVAL) {
            last_discover = Some(Instant::now());
            discover(&etcd).await;
        }
    }
}

/// Adds the client URLs `MemberList` names and drops discovered members
/// the cluster no longer lists (configured endpoints always stay).
async fn discover(etcd: &Etcd) {
    let Ok(client) = etcd.client().await else {
        return;
    };
    let mut cc = client.cluster_client();
    let list = match cc.member_list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %describe(&e), "member discovery failed");
            return;
        }
    };
    let urls: Vec<String> = list
        .members()
        .iter()
        .flat_map(|m| {
            m.client_urls()
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
        })
        .collect();
    let mut members = etcd
        .inner
        .members
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let before = members.len();
    members.retain(|m| m.configured || urls.contains(&m.endpoint));
    for u in urls {
        if !members.iter().any(|m| m.endpoint == u) {
            tracing::info!(endpoint = %u, "discovered etcd member");
            members.push(Member::new(u, false));
        }
    }
    if members.len() != before {
        etcd.inner.current.store(0, Ordering::Relaxed);
    }
}
