//! A bounded YAML loader: parser events straight to JSON, under a budget.
//!
//! Templates are written by anyone with access to `/esi-worker/templates` or
//! to a config's template choice, so the loader trusts nothing:
//! - every node (scalar, sequence, mapping) is charged against
//!   [`Limits::yaml_nodes`] and every scalar's bytes against
//!   [`Limits::template_bytes`], and an alias is charged the whole size of
//!   the node it repeats. Nine levels of ten aliases each is 10⁹ nodes; this
//!   stops it at the budget, before anything is copied, as `serde_yaml`'s
//!   repetition limit and saphyr's budget do. Anchors are charged too, since
//!   the loader keeps a copy of each;
//! - nesting deeper than [`Limits::nesting_depth`] is refused (deep JSON
//!   values also overflow the stack when dropped);
//! - only the first document is read.
//!
//! Scalars, tags and merge keys are read as Heat reads them (YAML 1.1,
//! PyYAML's safe loader: see [`super::yaml11`]). A repeated key wins over
//! the earlier one, as PyYAML does: one reference template declares a
//! parameter twice.

use std::collections::HashMap;

use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use super::yaml11::{self, Tagged};
use crate::limits::{Limits, OverLimit};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("{0}")]
    Syntax(String),
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

/// Flow collections in the key position of a flow mapping (`{{…`, `{a, {…`,
/// `{? [` …) that may be open at once. yaml-rust2's parser takes time
/// exponential in how deep those nest (20 levels take milliseconds, 40 would
/// take hours; found by fuzzing), before any event reaches the node budget.
/// No template writes a collection as a key; nested values (`{a: {b: [c]}}`)
/// and nested sequences are not counted.
const MAX_FLOW_KEY_CHAIN: usize = 8;

/// Refuses text whose flow collections nest as keys deeper than
/// [`MAX_FLOW_KEY_CHAIN`], in one linear pass. Quoted scalars and comments
/// are skipped; a bracket inside a block scalar may be counted, and a `:`
/// not followed by a blank keeps the key position, which can only refuse
/// more.
fn check_flow_keys(text: &str) -> Result<(), YamlError> {
    struct Open {
        mapping: bool,
        /// In a mapping: what comes next is a key.
        at_key: bool,
        /// It was itself opened at a key position.
        counted: bool,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut chain = 0usize;
    let mut chars = text.chars().peekable();
    let mut prev_blank = true;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                while let Some(q) = chars.next() {
                    if q == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '#' if prev_blank => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        break;
                    }
                }
            }
            '{' | '[' => {
                let counted = open.last().is_some_and(|o| o.mapping && o.at_key);
                if counted {
                    chain = chain.saturating_add(1);
                    if chain > MAX_FLOW_KEY_CHAIN {
                        return Err(YamlError::Syntax(format!(
                            "flow collections nested as keys more than {MAX_FLOW_KEY_CHAIN} deep \
                             (YAML parsing of that takes exponential time)"
                        )));
                    }
                }
                open.push(Open {
                    mapping: c == '{',
                    at_key: c == '{',
                    counted,
                });
            }
            '}' | ']' if open.pop().is_some_and(|o| o.counted) => {
                chain = chain.saturating_sub(1);
            }
            ',' => {
                if let Some(o) = open.last_mut() {
                    o.at_key = o.mapping;
                }
            }
            ':' if chars.peek().is_none_or(|n| n.is_whitespace()) => {
                if let Some(o) = open.last_mut() {
                    o.at_key = false;
                }
            }
            _ => {}
        }
        prev_blank = c.is_whitespace();
    }
    Ok(())
}

/// The first document of `text` as JSON (`Value::Null` for an empty text).
pub fn load(text: &str, limits: &Limits) -> Result<Value, YamlError> {
    if text.len() > limits.template_bytes {
        return Err(OverLimit::template_bytes("rendered template", limits.template_bytes).into());
    }
    check_flow_keys(text)?;
    let mut b = Builder {
        limits,
        used: Size::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        doc: None,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| YamlError::Syntax(e.to_string()))?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentEnd if b.doc.is_some() => break,
            other => b.on_event(other).map_err(|e| match e {
                YamlError::Syntax(s) => {
                    YamlError::Syntax(format!("{s} at line {} column {}", mark.line(), mark.col()))
                }
                over => over,
            })?,
        }
    }
    Ok(b.doc.unwrap_or(Value::Null))
}

struct Builder<'a> {
    limits: &'a Limits,
    /// What was produced so far, aliases expanded.
    used: Size,
    stack: Vec<Frame>,
    /// Anchor id → (value, its size, its depth).
    anchors: HashMap<usize, (Value, Size, usize)>,
    doc: Option<Value>,
}

/// Nodes and scalar bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    fn since(self, start: Size) -> Size {
        Size {
            nodes: self.nodes.saturating_sub(start.nodes),
            bytes: self.bytes.saturating_sub(start.bytes),
        }
    }
}

struct Frame {
    anchor: usize,
    /// `used` when the collection started, to size it for its anchor.
    start: Size,
    /// The deepest of its children so far (a scalar is 0 deep).
    deepest: usize,
    kind: Collection,
}

enum Collection {
    Seq(Vec<Value>),
    Map {
        entries: Map<String, Value>,
        /// The key read, waiting for its value.
        key: Option<Key>,
        /// Values of `<<` keys, in order.
        merges: Vec<Value>,
    },
}

enum Key {
    Text(String),
    /// A plain `<<`: YAML 1.1's merge key, which PyYAML (and so Heat) reads.
    Merge,
}

/// A mapping with its `<<` merges applied as PyYAML applies them: merged
/// entries first (of a list of mappings, the first wins), then the
/// mapping's own keys over them.
fn merged(
    entries: Map<String, Value>,
    merges: Vec<Value>,
) -> Result<Map<String, Value>, YamlError> {
    if merges.is_empty() {
        return Ok(entries);
    }
    let not_mapping =
        || YamlError::Syntax("expected a mapping or list of mappings for merging".into());
    let mut sources: Vec<Map<String, Value>> = Vec::new();
    for m in merges {
        match m {
            Value::Object(o) => sources.push(o),
            Value::Array(list) => {
                let mut maps = list
                    .into_iter()
                    .map(|v| match v {
                        Value::Object(o) => Ok(o),
                        _ => Err(not_mapping()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                maps.reverse();
                sources.extend(maps);
            }
            _ => return Err(not_mapping()),
        }
    }
    let mut out = Map::new();
    for (k, v) in sources.into_iter().flatten().chain(entries) {
        out.insert(k, v);
    }
    Ok(out)
}

impl Builder<'_> {
    fn charge(&mut self, n: Size) -> Result<(), YamlError> {
        self.used.nodes = self.used.nodes.saturating_add(n.nodes);
        self.used.bytes = self.used.bytes.saturating_add(n.bytes);
        if self.used.nodes > self.limits.yaml_nodes {
            return Err(OverLimit::yaml_nodes(self.limits.yaml_nodes).into());
        }
        if self.used.bytes > self.limits.template_bytes {
            return Err(OverLimit::template_bytes(
                "template text (aliases expanded)",
                self.limits.template_bytes,
            )
            .into());
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) -> Result<(), YamlError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let size = Size {
                    nodes: 1,
                    bytes: text.len(),
                };
                self.charge(size)?;
                let plain = style == TScalarStyle::Plain;
                let tagged = match &tag {
                    None => Tagged::Implicit,
                    Some(t) => yaml11::tagged(&t.handle, &t.suffix).map_err(YamlError::Syntax)?,
                };
                if plain && tagged == Tagged::Implicit && text == "<<" && self.merge_key() {
                    return Ok(());
                }
                let v = yaml11::scalar(text, plain, tagged).map_err(YamlError::Syntax)?;
                self.push(v, anchor, size, 0)
            }
            Event::SequenceStart(anchor, _) => self.open(anchor, Collection::Seq(Vec::new())),
            Event::MappingStart(anchor, _) => self.open(
                anchor,
                Collection::Map {
                    entries: Map::new(),
                    key: None,
                    merges: Vec::new(),
                },
            ),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(f) = self.stack.pop() else {
                    return Err(YamlError::Syntax("unbalanced collection end".into()));
                };
                let size = self.used.since(f.start);
                let v = match f.kind {
                    Collection::Seq(items) => Value::Array(items),
                    Collection::Map {
                        entries, merges, ..
                    } => Value::Object(merged(entries, merges)?),
                };
                self.push(v, f.anchor, size, f.deepest.saturating_add(1))
            }
            Event::Alias(id) => {
                let Some(&(_, size, depth)) = self.anchors.get(&id) else {
                    return Err(YamlError::Syntax(format!(
                        "alias to an unknown anchor ({id})"
                    )));
                };
                // An alias nests what it repeats where it stands.
                if self.stack.len().saturating_add(depth) > self.limits.nesting_depth {
                    return Err(OverLimit::nesting("template", self.limits.nesting_depth).into());
                }
                // Charged its expanded size before anything is copied.
                self.charge(size)?;
                let v = self.anchors.get(&id).map(|(v, _, _)| v.clone());
                self.push(v.unwrap_or(Value::Null), 0, size, depth)
            }
            _ => Ok(()),
        }
    }

    /// Takes a plain `<<` as the merge key when a mapping waits for a key.
    fn merge_key(&mut self) -> bool {
        match self.stack.last_mut() {
            Some(Frame {
                kind: Collection::Map {
                    key: key @ None, ..
                },
                ..
            }) => {
                *key = Some(Key::Merge);
                true
            }
            _ => false,
        }
    }

    fn open(&mut self, anchor: usize, kind: Collection) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.nesting_depth {
            return Err(OverLimit::nesting("template", self.limits.nesting_depth).into());
        }
        let start = self.used;
        self.charge(Size { nodes: 1, bytes: 0 })?;
        self.stack.push(Frame {
            anchor,
            start,
            deepest: 0,
            kind,
        });
        Ok(())
    }

    fn push(&mut self, v: Value, anchor: usize, size: Size, depth: usize) -> Result<(), YamlError> {
        if anchor > 0 {
            // The copy kept for aliases costs what the node does.
            self.charge(size)?;
            self.anchors.insert(anchor, (v.clone(), size, depth));
        }
        if let Some(parent) = self.stack.last_mut() {
            parent.deepest = parent.deepest.max(depth);
        }
        match self.stack.last_mut() {
            None => {
                if self.doc.is_none() {
                    self.doc = Some(v);
                }
            }
            Some(Frame {
                kind: Collection::Seq(items),
                ..
            }) => items.push(v),
            Some(Frame {
                kind:
                    Collection::Map {
                        entries,
                        key,
                        merges,
                    },
                ..
            }) => match key.take() {
                None => *key = Some(Key::Text(key_text(v))),
                Some(Key::Text(k)) => {
                    entries.insert(k, v);
                }
                Some(Key::Merge) => merges.push(v),
            },
        }
        Ok(())
    }
}

fn key_text(k: Value) -> String {
    match k {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small(nodes: usize, depth: usize) -> Limits {
        Limits {
            yaml_nodes: nodes,
            nesting_depth: depth,
            ..Limits::default()
        }
    }

    /// `levels` levels of anchors, each a list of ten aliases of the one
    /// before: 10^levels nodes once expanded.
    fn alias_bomb(levels: usize) -> String {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..levels {
            let prev = format!("*a{}", i - 1);
            s += &format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", "));
        }
        s
    }

    /// Merge keys as PyYAML applies them (checked against Heat 19's loader).
    #[test]
    fn merge_keys() {
        let l = Limits::default();
        let got = load(
            "base: &b {a: 1, b: 2}\nmore: &m {b: 3, c: 4}\nx:\n  <<: *b\n  b: 9\ny:\n  <<: [*b, *m]\nq: {'<<': 1}\n",
            &l,
        )
        .unwrap();
        assert_eq!(got["x"], json!({"a": 1, "b": 9}));
        assert_eq!(got["y"], json!({"b": 2, "c": 4, "a": 1}));
        assert_eq!(got["q"], json!({"<<": 1}), "a quoted << is a key");
        for bad in ["x:\n  <<: 1\n", "x:\n  <<: [1]\n"] {
            assert!(load(bad, &l).is_err(), "{bad}");
        }
    }

    #[test]
    fn alias_bombs_stop_at_the_node_budget() {
        let e = load(&alias_bomb(9), &Limits::default()).unwrap_err();
        assert!(matches!(e, YamlError::OverLimit(_)), "{e}");
        assert!(e.to_string().contains("--max-yaml-nodes"), "{e}");
        // A few levels fit, and expand as YAML says.
        let v = load(&alias_bomb(3), &Limits::default()).unwrap();
        assert_eq!(v["a2"].as_array().unwrap().len(), 10);
        assert_eq!(v["a2"][9][9][9], json!("x"));
    }

    #[test]
    fn the_budget_counts_every_node_and_alias() {
        // 1 mapping + 2 keys + a 3-item list (4 nodes), its anchor's copy
        // (4) and an alias of it (4).
        let text = "k: &l [1, 2, 3]\nm: *l\n";
        assert!(load(text, &small(15, 64)).is_ok());
        assert!(load(text, &small(14, 64)).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(100);
        let e = load(&deep, &small(1_000_000, 64)).unwrap_err();
        assert!(e.to_string().contains("--max-nesting-depth"), "{e}");
        // Far deeper, the parser's own recursion limit answers first.
        assert!(load(&"[".repeat(100_000), &small(1_000_000, 64)).is_err());
        let ok = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(load(&ok, &small(100, 64)).is_ok());
    }

    #[test]
    fn aliases_cannot_nest_deeper_than_the_limit() {
        // A 40-deep anchor, aliased 40 levels down: 80 deep in all.
        let deep = format!("{}x{}", "[".repeat(40), "]".repeat(40));
        let text = format!("a: &d {deep}\nb: {}*d{}\n", "[".repeat(40), "]".repeat(40));
        let e = load(&text, &small(1_000_000, 64)).unwrap_err();
        assert!(e.to_string().contains("--max-nesting-depth"), "{e}");
        // Shallow enough, it loads.
        let text = format!("a: &d {deep}\nb: [[*d]]\n");
        assert!(load(&text, &small(1_000_000, 64)).is_ok());
    }

    #[test]
    fn flow_collections_nested_as_keys_are_refused_before_parsing() {
        // Found by fuzzing: exponential in the parser, 387 bytes ran for
        // longer than the fuzzer's 10 s.
        for (open, close) in [
            ("{", "}"),
            ("{[", "]}"),
            ("[{", "}]"),
            ("{a, ", "}"),
            ("{a: b, ", "}"),
            ("{? ", "}"),
        ] {
            let text = format!("a:\n  {}x{}\n", open.repeat(40), close.repeat(40));
            let start = std::time::Instant::now();
            let e = load(&text, &Limits::default()).unwrap_err();
            assert!(e.to_string().contains("exponential"), "{e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(1));
        }
        // Nested flow values, quoted brackets and comments are fine.
        let ok = format!(
            "a: {}x{}\nb: '{{{{{{{{{{{{{{{{{{{{'\nc: \"[[[[[[[[[[[[\" # {{{{{{{{{{{{{{{{\n",
            "{k: ".repeat(30),
            "}".repeat(30)
        );
        assert!(load(&ok, &Limits::default()).is_ok(), "{ok}");
        assert!(load("a: {{x: 1}: 2}\n", &Limits::default()).is_ok());
    }

    #[test]
    fn bad_yaml_and_unknown_aliases_are_errors() {
        assert!(matches!(
            load("a: [1", &Limits::default()),
            Err(YamlError::Syntax(_))
        ));
        assert!(load("a: *nope", &Limits::default()).is_err());
    }

    #[test]
    fn later_keys_win_and_only_the_first_document_counts() {
        let v = load("a: 1\na: 2\n---\nb: 3\n", &Limits::default()).unwrap();
        assert_eq!(v, json!({"a": 2}));
    }

    #[test]
    fn aliases_of_a_long_scalar_are_charged_its_bytes() {
        let big = "x".repeat(1000);
        let text = format!("a: &a {big}\nb: [{}]\n", vec!["*a"; 2000].join(", "));
        let e = load(&text, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("--max-template-bytes"), "{e}");
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let limits = Limits {
            template_bytes: 10,
            ..Limits::default()
        };
        let e = load("a: 1234567890", &limits).unwrap_err();
        assert!(e.to_string().contains("--max-template-bytes"), "{e}");
    }
}
