//! HOT parsing and the intrinsic functions: a rendered template, parsed
//! under the default limits, its outputs evaluated with its parameters'
//! defaults.
#![no_main]

use esi_reconciler::engine::hot::{self, Eval, Scope};
use esi_reconciler::limits::Limits;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    let Ok(t) = hot::parse(text, &limits) else {
        return;
    };
    let params = Map::new();
    let scope = Scope {
        stack: "fuzz",
        parameters: &params,
        declared: t.get("parameters").and_then(Value::as_object),
    };
    let mut eval = Eval::new(&scope, &limits);
    for o in t.get("outputs").and_then(Value::as_object).into_iter().flatten() {
        if eval.eval(o.1).is_err() {
            break;
        }
    }
    let _ = hot::resource_names(&t);
});
