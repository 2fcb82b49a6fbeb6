//! The harness around esi-reconciler: what runs it for demonstration,
//! measurement and fault drills, and what the tests share. None of it is in
//! the product library (`esi_reconciler`): a reconciler or worker process
//! never needs a private etcd, a plot or a temporary directory.
//!
//! - [`etcd`]: private etcd servers (one process, or a local cluster of
//!   members) on free ports in temporary directories;
//! - [`demo`]: the "Update Loadbalancer Interface" story (`esi-reconciler demo`);
//! - [`bench`]: the benchmark and its plot (`esi-reconciler bench`);
//! - [`chaos`]: the fault drills (`esi-reconciler chaos`);
//! - [`scrape`]: reading the health and metrics endpoints of a process.

pub mod bench;
pub mod chaos;
pub mod converge;
pub mod demo;
pub mod etcd;
pub mod process;
pub mod scrape;
