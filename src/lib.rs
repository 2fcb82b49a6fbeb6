//! esi-reconciler: a level-triggered reconciler for ESI, the etcd-based
//! orchestration system. See README.md for the architecture.

pub mod demo;
pub mod esi;
pub mod gohan;
pub mod reconcile;
pub mod store;
pub mod telemetry;
