//! Jinja rendering of params into a template: `source\0params-json`, with
//! the default limits, then the result parsed as HOT.
#![no_main]

use esi_reconciler::limits::Limits;
use esi_reconciler::worker::render;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0);
    let Some(Ok(source)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let context = match parts.next().map(serde_json::from_slice::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    };
    let _ = render::render("fuzz", source, &context, &Limits::default());
});
