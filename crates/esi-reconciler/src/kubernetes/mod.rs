//! The Kubernetes surface: the `EsiResource` custom resource that mirrors
//! each ESI resource for `kubectl`, and the mirror that keeps them current.

pub mod crd;
pub mod mirror;

pub use crd::{EsiResource, EsiResourceSpec, EsiResourceStatus};
