//! Template selection: an arbitrary config body for every mapped type.
#![no_main]

use std::sync::LazyLock;

use esi_reconciler::esi::Catalog;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::load(None, None).expect("embedded catalog"));

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for t in CATALOG.schemas.types() {
        let _ = CATALOG
            .mappings
            .choose(&t.singular, &body, 1, &CATALOG.schemas);
    }
});
