//! Every key parser: ESI keys, job ids, job actions.
#![no_main]

use esi_reconciler::esi::keys::{EsiKey, JobAction, JobId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = EsiKey::parse(s);
    if let Ok(id) = s.parse::<JobId>() {
        // What parses must print back to a key that parses to the same id.
        let again: JobId = id.to_string().parse().expect("a job id's text parses");
        assert_eq!(again, id);
    }
    let _ = s.parse::<JobAction>();
});
