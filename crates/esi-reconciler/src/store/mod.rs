//! The etcd edge: connecting to a cluster, mirroring a key range (list,
//! then watch), and writing fenced transactions.

pub mod client;
pub mod cluster;
pub mod lease;
pub mod mirror;
pub mod roles;
pub mod tls;
pub mod txn;

pub use client::{EtcdOptions, StoreError, connect, connect_checked, current_revision};
pub use cluster::{Etcd, MemberWatch};
pub use mirror::{Change, Kv, MirrorEvent};
