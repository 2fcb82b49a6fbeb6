//! The level-triggered reconciler, as a pipeline of small stages:
//! the [`world`] mirrors etcd, [`observed`] views one resource, [`plan`]
//! decides (pure; [`draft`] reads what a due job needs and [`decide`] plans
//! again with it), [`execute`] spells the plan as fenced transactions, and
//! the [`controller`] runs it all with a deduplicating [`queue`].

pub mod action;
pub mod backoff;
pub mod bodies;
pub mod decide;
pub mod draft;
pub mod execute;
pub mod membership;
pub mod observed;
pub mod plan;
pub mod status;
pub mod world;

pub use action::Action;
pub use observed::Observed;
pub use plan::{Phase, Plan, plan};
pub use world::World;
pub mod controller;
pub mod once;
pub mod phase_book;
pub mod queue;
pub mod report;
pub mod snapshot;
pub mod sparse;
