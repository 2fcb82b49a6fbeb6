//! esi-reconciler: a level-triggered reconciler for ESI, the etcd-based
//! orchestration system. See README.md for the architecture.

pub mod bench;
pub mod chaos;
pub mod clock;
pub mod demo;
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

/// `../shared` beside the repository (or `ESI_SHARED_DIR`): the reference
/// corpus and seed records that tests read.
#[cfg(test)]
pub(crate) fn shared_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("ESI_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.join("esi-reference").is_dir(),
        "{} has no esi-reference/: tests need ../shared beside the repository (or ESI_SHARED_DIR)",
        dir.display()
    );
    dir
}
