//! The Kubernetes surface: the `EsiResource` custom resource that mirrors
//! each ESI resource for `kubectl`, and the mirror that keeps them current.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::arithmetic_side_effects
    )
)]
pub mod crd;
pub mod mirror;

pub use crd::{EsiResource, EsiResourceSpec, EsiResourceStatus};
