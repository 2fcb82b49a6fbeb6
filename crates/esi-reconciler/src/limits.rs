//! Bounds on everything a process reads from etcd and then parses, renders or
//! evaluates. Anyone who can write a config or a heat template can write a
//! hostile one: a record of hundreds of megabytes, a YAML alias bomb, a Jinja
//! loop that never ends, a `str_replace` that doubles its text at every
//! level. Each limit turns such input into a clear error for that one record
//! or job instead of a process that runs out of memory or time.
//!
//! The defaults are far above anything ESI's own templates and records need
//! (all 47 reference templates render within 20 KiB, 4,000 YAML nodes and
//! 20,000 units of fuel: `tests/render_templates.rs`) and far below what
//! would hurt a worker (a job at every limit costs tens of MiB: the worker
//! stayed under 60 MiB against each of `tests/hostile_input.rs`'s attacks).

use std::sync::OnceLock;

/// The limits in force; see each field's flag in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest record (any value read from etcd) that is parsed at all.
    pub record_bytes: usize,
    /// Largest heat template source, and largest rendered template text.
    pub template_bytes: usize,
    /// YAML nodes a rendered template may produce, each alias counted as
    /// the nodes it expands to (what stops alias bombs).
    pub yaml_nodes: usize,
    /// Deepest nesting of a template (YAML) or an evaluated value.
    pub nesting_depth: usize,
    /// Jinja fuel for rendering one template: instructions run plus bytes
    /// produced (64 to a unit), as minijinja counts them.
    pub render_fuel: u64,
    /// Bytes one job's `parameter_mappings` may copy, concatenate and repeat
    /// (all its params together), and an intrinsic-function evaluation
    /// (`get_param`, `str_replace`, `list_join`, …) for one stack's outputs.
    pub eval_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_bytes: 4 << 20,
            template_bytes: 1 << 20,
            yaml_nodes: 200_000,
            nesting_depth: 64,
            render_fuel: 1_000_000,
            eval_bytes: 4 << 20,
        }
    }
}

static INSTALLED: OnceLock<Limits> = OnceLock::new();

/// Longest error message written into a record (`/state` `error`, our
/// status's `last_error`). A Jinja error quotes its template line, which a
/// hostile one-line template makes a megabyte long; a record that size would
/// be refused by etcd and leave the resource retrying forever.
pub const MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MESSAGE_BYTES`] at a character boundary, saying so.
pub fn clip_message(message: &str) -> String {
    if message.len() <= MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    let head = message.get(..end).unwrap_or_default();
    format!("{head}… ({} bytes cut)", message.len().saturating_sub(end))
}

impl Limits {
    /// Makes `self` the limits of this process (the first call wins; a
    /// process installs its flags once, at start).
    pub fn install(self) {
        let _ = INSTALLED.set(self);
    }

    /// The installed limits, or the defaults.
    pub fn current() -> Limits {
        INSTALLED.get().copied().unwrap_or_default()
    }
}

/// Bytes an evaluation may still produce, shared by everything one job (or
/// one stack's outputs) evaluates, so that many small mappings cannot add
/// up to what one may not.
#[derive(Debug)]
pub struct Budget {
    left: std::cell::Cell<usize>,
    limit: usize,
}

impl Budget {
    /// [`Limits::eval_bytes`] of the installed limits.
    pub fn eval() -> Budget {
        Budget::new(Limits::current().eval_bytes)
    }

    pub fn new(limit: usize) -> Budget {
        Budget {
            left: std::cell::Cell::new(limit),
            limit,
        }
    }

    /// Takes `bytes` from the budget, or says which limit they would pass.
    pub fn spend(&self, bytes: usize) -> Result<(), OverLimit> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(OverLimit::eval_bytes(self.limit)),
        }
    }

    /// Takes what `v` takes as JSON.
    pub fn spend_on(&self, v: &serde_json::Value) -> Result<(), OverLimit> {
        self.spend(json_size(v))
    }
}

/// About how many bytes `v` takes as JSON (at least one), without building
/// the text.
pub fn json_size(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len().saturating_add(2),
        Value::Array(a) => a
            .iter()
            .fold(2, |n: usize, x| n.saturating_add(json_size(x))),
        Value::Object(o) => o.iter().fold(2, |n: usize, (k, x)| {
            n.saturating_add(k.len()).saturating_add(json_size(x))
        }),
    }
}

/// A value over one of the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds the limit of {limit} {unit} (flag --{flag})")]
pub struct OverLimit {
    pub what: &'static str,
    pub limit: u64,
    pub unit: &'static str,
    pub flag: &'static str,
}

impl OverLimit {
    pub fn record_bytes(limit: usize) -> Self {
        Self::new("record", limit, "bytes", "max-record-bytes")
    }
    pub fn template_bytes(what: &'static str, limit: usize) -> Self {
        Self::new(what, limit, "bytes", "max-template-bytes")
    }
    pub fn yaml_nodes(limit: usize) -> Self {
        Self::new(
            "template (aliases expanded)",
            limit,
            "YAML nodes",
            "max-yaml-nodes",
        )
    }
    pub fn nesting(what: &'static str, limit: usize) -> Self {
        Self::new(what, limit, "levels of nesting", "max-nesting-depth")
    }
    pub fn render_fuel(limit: u64) -> Self {
        OverLimit {
            what: "rendering the template",
            limit,
            unit: "units of fuel",
            flag: "max-render-fuel",
        }
    }
    pub fn eval_bytes(limit: usize) -> Self {
        Self::new(
            "evaluating the template's mappings or outputs",
            limit,
            "bytes",
            "max-eval-bytes",
        )
    }

    fn new(what: &'static str, limit: usize, unit: &'static str, flag: &'static str) -> Self {
        OverLimit {
            what,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            unit,
            flag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_clipped_on_a_character_boundary() {
        assert_eq!(clip_message("short"), "short");
        let long = "é".repeat(MESSAGE_BYTES);
        let clipped = clip_message(&long);
        assert!(clipped.len() < MESSAGE_BYTES + 40, "{}", clipped.len());
        assert!(clipped.ends_with(&format!("({} bytes cut)", long.len() - MESSAGE_BYTES)));
    }
}
