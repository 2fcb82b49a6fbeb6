//! The ESI etcd protocol: key layout, record types, Gohan schemas, and the
//! mapping engine that turns a config into a heat worker job.
//!
//! Everything here is pure: no I/O, no clocks. The reconciler and the CLI use
//! these types to speak the protocol byte for byte (the key forms are in `keys`, the records in `records`).

pub mod catalog;
pub mod job;
pub mod keys;
pub mod mapping;
pub mod records;
pub mod schema;

pub use catalog::Catalog;
pub use keys::{EsiKey, JobAction, JobId, KeyError, ResourceRef};
pub use records::{
    ConfigRecord, HeatStack, HeatTemplate, Job, JobEnvelope, JobState, Param, StateRecord,
};
pub use schema::Schemas;
