//! The etcd edge: connecting, mirroring a key range (list, then watch), and
//! running a private etcd server for the demo and the tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

pub mod client;
pub mod cluster;
pub mod embedded;
pub mod lease;
pub mod local_cluster;
pub mod mirror;
pub mod roles;
pub mod tls;
pub mod txn;

pub use client::{EtcdOptions, StoreError, connect, connect_checked, current_revision};
pub use cluster::{Etcd, MemberWatch};
pub use mirror::{Change, Kv, MirrorEvent};
