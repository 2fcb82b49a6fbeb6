//! The etcd edge: connecting, mirroring a key range (list, then watch), and
//! running a private etcd server for the demo and the tests.

pub mod client;
pub mod embedded;
pub mod mirror;

pub use client::{EtcdOptions, StoreError, connect, connect_checked, current_revision};
pub use mirror::{Change, Kv, MirrorEvent};
