//! The `parameter_mappings` language: `[mapping, body]` as JSON, the
//! mapping parsed and evaluated against the body with ESI's schema.
#![no_main]

use std::sync::LazyLock;

use esi_reconciler::esi::Catalog;
use esi_reconciler::esi::mapping::{Configs, Lookup, Mapping, Subject, evaluate};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::load(None, None).expect("embedded catalog"));

/// Every other resource has the body under test as its config.
struct Same<'a>(&'a serde_json::Map<String, Value>);
impl Configs for Same<'_> {
    fn lookup(&self, _: &str, _: &str) -> Lookup<'_> {
        Lookup::Found(self.0)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Array(pair)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (Some(m), Some(Value::Object(body))) = (pair.first(), pair.get(1)) else {
        return;
    };
    let Ok(mapping) = Mapping::parse(m) else {
        return;
    };
    for t in CATALOG.schemas.types().take(4) {
        let subject = Subject {
            rtype: &t.singular,
            body,
            version: 3,
        };
        let budget = esi_reconciler::limits::Budget::eval();
        let _ = evaluate(
            &mapping,
            "p",
            subject,
            &CATALOG.schemas,
            &Same(body),
            &budget,
        );
    }
});
