//! The demo: its data (project-authored schemas' templates, the story's
//! resources) and the story itself.

pub mod data;
pub mod story;

pub use data::*;
