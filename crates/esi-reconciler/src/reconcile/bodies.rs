//! Config bodies that drafts read for the resources their params reference.
//!
//! Why a cache: the world keeps no config bodies (100k of them would not fit
//! the memory budget), but a network's body is read for each of the ports
//! on it. The world knows every config's mod revision, so a body kept at
//! that revision is the one a read would return: no read, and no way to use
//! an outdated body (a changed config has a new mod revision and misses).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// A config's body, shared by the drafts that reference it.
pub type Body = Arc<Map<String, Value>>;

/// Bodies kept at most; when full the cache starts over (the bodies in use
/// come back with one read each). Enough for the networks and subnets of
/// 100k ports (10,000 at the bench's 20 ports a network): at 4096 the
/// cache started over every few thousand drafts and read them again.
const CAPACITY: usize = 16_384;

/// Bytes of bodies kept at most (as read: configs may be large).
const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Kept {
    bodies: HashMap<String, (i64, Body, usize)>,
    bytes: usize,
}

#[derive(Default)]
pub struct ConfigBodies {
    kept: Mutex<Kept>,
}

impl ConfigBodies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body of the config at `key` if it is kept at `mod_rev`.
    pub fn get(&self, key: &str, mod_rev: i64) -> Option<Body> {
        self.lock()
            .bodies
            .get(key)
            .filter(|(rev, ..)| *rev == mod_rev)
            .map(|(_, b, _)| b.clone())
    }

    /// Keeps the body of the config at `key` as read at `mod_rev`, from a
    /// record of `bytes`.
    pub fn keep(&self, key: &str, mod_rev: i64, body: Body, bytes: usize) {
        let mut kept = self.lock();
        if let Some((.., old)) = kept.bodies.remove(key) {
            kept.bytes = kept.bytes.saturating_sub(old);
        }
        if kept.bodies.len() >= CAPACITY || kept.bytes.saturating_add(bytes) > MAX_BYTES {
            *kept = Kept::default();
        }
        if bytes > MAX_BYTES {
            return;
        }
        kept.bytes = kept.bytes.saturating_add(bytes);
        kept.bodies.insert(key.to_string(), (mod_rev, body, bytes));
    }

    pub fn len(&self) -> usize {
        self.lock().bodies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Body {
        Arc::new(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn a_body_is_found_only_at_the_revision_it_was_read_at() {
        let c = ConfigBodies::default();
        c.keep("/n", 7, body(json!({"id": "n"})), 10);
        assert_eq!(c.get("/n", 7).map(|b| b["id"].clone()), Some(json!("n")));
        // The world says the config changed since: read it again.
        assert!(c.get("/n", 9).is_none());
        assert!(c.get("/m", 7).is_none());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let c = ConfigBodies::default();
        for i in 0..CAPACITY {
            c.keep(&format!("/k{i}"), 1, body(json!({})), 2);
        }
        assert_eq!(c.len(), CAPACITY);
        c.keep("/k0", 2, body(json!({})), 2);
        assert_eq!(c.len(), CAPACITY, "a kept key is replaced in place");
        c.keep("/new", 1, body(json!({})), 2);
        assert_eq!(c.len(), 1);
        assert!(c.get("/new", 1).is_some());
        // Bytes bound it too: a body larger than the budget is not kept.
        c.keep("/huge", 1, body(json!({})), MAX_BYTES + 1);
        assert!(c.get("/huge", 1).is_none());
    }
}
