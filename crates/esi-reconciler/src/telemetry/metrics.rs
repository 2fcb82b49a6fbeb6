//! The reconciler's Prometheus metrics.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub actions: Family<KindLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
    pub queue_depth: Gauge,
    pub backoffs: Counter,
    pub watch_restarts: Counter,
    pub relists: Counter,
    pub resources: Family<PhaseLabel, Gauge>,
    pub invalid_records: Gauge,
    pub revision: Gauge<i64, AtomicI64>,
    pub replica_members: Gauge,
    pub owned_resources: Gauge,
    pub handovers: Counter,
    pub reconcile_panics: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Adds the etcd layer's counters (failovers, retries, store resets).
    pub fn with_store(mut self, stats: &crate::store::cluster::StoreStats) -> Self {
        stats.register(&mut self.registry);
        self
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("esi_reconciler");
        let m = Metrics {
            reconciles: Family::default(),
            actions: Family::default(),
            errors: Family::default(),
            queue_depth: Gauge::default(),
            backoffs: Counter::default(),
            watch_restarts: Counter::default(),
            relists: Counter::default(),
            resources: Family::default(),
            invalid_records: Gauge::default(),
            revision: Gauge::default(),
            replica_members: Gauge::default(),
            owned_resources: Gauge::default(),
            handovers: Counter::default(),
            reconcile_panics: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconcile_panics",
            "Reconciles that panicked (a bug): each resource is retried with backoff",
            m.reconcile_panics.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, by result",
            m.reconciles.clone(),
        );
        registry.register(
            "actions",
            "Actions applied to etcd, by kind",
            m.actions.clone(),
        );
        registry.register("errors", "Errors, by reason", m.errors.clone());
        registry.register(
            "queue_depth",
            "Resources waiting to be reconciled",
            m.queue_depth.clone(),
        );
        registry.register(
            "backoffs",
            "Failed attempts that started a backoff",
            m.backoffs.clone(),
        );
        registry.register(
            "watch_restarts",
            "Times the etcd watch was re-established",
            m.watch_restarts.clone(),
        );
        registry.register(
            "relists",
            "Full lists of etcd (start-up and after compaction)",
            m.relists.clone(),
        );
        registry.register(
            "resources",
            "Resources this replica owns, by phase",
            m.resources.clone(),
        );
        registry.register(
            "replica_members",
            "Reconciler replicas registered (sharing the resources)",
            m.replica_members.clone(),
        );
        registry.register(
            "owned_resources",
            "Resources this replica owns and acts on",
            m.owned_resources.clone(),
        );
        registry.register(
            "handovers",
            "Resources this replica took over from a replica that left",
            m.handovers.clone(),
        );
        registry.register(
            "invalid_records",
            "Records that do not parse, reported and left untouched",
            m.invalid_records.clone(),
        );
        registry.register(
            "revision",
            "etcd revision the reconciler has caught up with",
            m.revision.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn reconciled(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn action(&self, kind: &str) {
        self.actions
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The heat worker's Prometheus metrics.
pub struct WorkerMetrics {
    pub registry: Registry,
    pub claimed: Counter,
    pub jobs: Family<ResultLabel, Counter>,
    pub in_flight: Gauge,
    pub ready_jobs: Gauge,
    pub claim_conflicts: Counter,
    pub lease_lost: Counter,
    pub job_panics: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Adds the etcd layer's counters (failovers, retries, store resets).
    pub fn with_store(mut self, stats: &crate::store::cluster::StoreStats) -> Self {
        stats.register(&mut self.registry);
        self
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("esi_worker");
        let m = WorkerMetrics {
            registry: Registry::default(),
            claimed: Counter::default(),
            jobs: Family::default(),
            in_flight: Gauge::default(),
            ready_jobs: Gauge::default(),
            claim_conflicts: Counter::default(),
            lease_lost: Counter::default(),
            job_panics: Counter::default(),
        };
        registry.register(
            "job_panics",
            "Jobs whose task panicked (a bug): each was failed with the panic in /state",
            m.job_panics.clone(),
        );
        registry.register("claimed", "Jobs claimed", m.claimed.clone());
        registry.register("jobs", "Jobs ended, by result", m.jobs.clone());
        registry.register("in_flight", "Jobs running", m.in_flight.clone());
        registry.register(
            "ready_jobs",
            "Ready jobs seen and not yet taken",
            m.ready_jobs.clone(),
        );
        registry.register(
            "claim_conflicts",
            "Claims lost to another worker or a withdrawn job",
            m.claim_conflicts.clone(),
        );
        registry.register(
            "lease_lost",
            "Times the lease behind the claims was lost",
            m.lease_lost.clone(),
        );
        WorkerMetrics { registry, ..m }
    }

    pub fn finished(&self, result: &str) {
        self.jobs
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
