//! esi-reconciler: a level-triggered reconciler for ESI, the etcd-based
//! orchestration system. See the README's "Architecture" for the map.

// Everything read from etcd, Heat or Kubernetes is untrusted: no indexing,
// slicing or arithmetic that could panic on it, anywhere in the product.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]

pub mod clock;
pub mod engine;
pub mod esi;
pub mod gohan;
pub mod kubernetes;
pub mod limits;
pub mod panic_guard;
pub mod reconcile;
pub mod store;
pub mod telemetry;
pub mod worker;

/// The repository's root (this crate is `crates/esi-reconciler` in it).
#[cfg(test)]
pub(crate) fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared` beside the repository (or `ESI_SHARED_DIR`): the reference
/// corpus and seed records that tests read.
#[cfg(test)]
pub(crate) fn shared_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("ESI_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"));
    assert!(
        dir.join("esi-reference").is_dir(),
        "{} has no esi-reference/: tests need ../shared beside the repository (or ESI_SHARED_DIR)",
        dir.display()
    );
    dir
}
