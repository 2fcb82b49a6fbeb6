//! The `parameter_mappings` language of ESI heat templates, and template
//! selection (which uses the same language).
//!
//! A mapping is parsed once into a [`Mapping`] tree ([`expr`]) and then
//! evaluated against a config body ([`eval`]). Evaluation is pure: when it
//! needs another resource's config that the caller has not supplied, it says
//! so ([`EvalError::NeedConfig`]) and the caller fetches it and retries.

pub mod eval;
pub mod expr;
pub mod select;

pub use eval::{Configs, EvalError, Evaluated, Lookup, Subject, evaluate};
pub use expr::{Mapping, MappingError, PathStep};
pub use select::TemplateMappings;
