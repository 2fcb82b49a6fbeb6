//! Orchestration engines: what the heat worker drives. An engine creates,
//! updates and deletes named stacks and reports their status and outputs.
//!
//! Engine calls are idempotent from the worker's side: creating a stack that
//! exists adopts it, updating a missing stack creates it, deleting a missing
//! stack succeeds. That is what lets a job be retried after any crash.

pub mod heat;
pub mod hot;
pub mod sim;
pub mod yaml;
pub mod yaml11;

use std::future::Future;

use serde_json::{Map, Value};

use crate::esi::records::StackOutput;

/// What the worker asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSpec {
    /// `{type}_{id}`.
    pub name: String,
    /// The rendered HOT template, parsed.
    pub template: Value,
    /// Stack parameters (the job's non-`jinja_*` params).
    pub parameters: Map<String, Value>,
    pub timeout_mins: u64,
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StackInfo {
    pub id: String,
    pub name: String,
    /// Heat's `{ACTION}_{IN_PROGRESS|COMPLETE|FAILED}`.
    pub status: String,
    pub reason: String,
    pub outputs: Vec<StackOutput>,
}

impl StackInfo {
    /// A stack that does not exist: deleting it is already done.
    pub fn gone(name: &str) -> StackInfo {
        StackInfo {
            id: String::new(),
            name: name.to_string(),
            status: "DELETE_COMPLETE".into(),
            reason: "Stack does not exist".into(),
            outputs: vec![],
        }
    }
    pub fn is_terminal(&self) -> bool {
        !self.status.ends_with("_IN_PROGRESS")
    }
    pub fn is_failed(&self) -> bool {
        self.status.ends_with("_FAILED")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine storage: {0}")]
    Storage(String),
    #[error("engine rejected the request: {0}")]
    Rejected(String),
    /// The engine could not be reached (after its own retries): worth
    /// asking again while the job's time lasts.
    #[error("engine unreachable: {0}")]
    Unavailable(String),
}

/// An orchestrator the worker can drive.
pub trait Engine: Send + Sync + 'static {
    /// Creates the stack, or adopts it if it exists.
    fn create_stack(
        &self,
        spec: &StackSpec,
    ) -> impl Future<Output = Result<StackInfo, EngineError>> + Send;
    /// Updates the stack, creating it if it is missing.
    fn update_stack(
        &self,
        spec: &StackSpec,
    ) -> impl Future<Output = Result<StackInfo, EngineError>> + Send;
    /// Deletes the stack; a missing stack is already deleted.
    fn delete_stack(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<StackInfo, EngineError>> + Send;
    /// The stack's current status, or `None` if it does not exist.
    fn get_stack(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StackInfo>, EngineError>> + Send;
}
