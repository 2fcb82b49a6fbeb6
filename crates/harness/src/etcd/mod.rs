//! Private etcd servers for the demo, the bench, the drills and the tests:
//! one process ([`embedded`]) or a cluster of members ([`local_cluster`]),
//! on free loopback ports, in temporary directories removed afterwards.

pub mod embedded;
pub mod local_cluster;
