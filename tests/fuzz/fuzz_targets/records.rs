//! Records as the reconciler meets them: `key\0value\0key\0value…` put into
//! a world with ESI's schema, then every resource observed and planned.
//! Covers key parsing, every record kind (config, state, stack, job,
//! status, template), mapping evaluation and template selection as the
//! world does them, and `plan`.
#![no_main]

use std::sync::{Arc, LazyLock};

use esi_reconciler::esi::Catalog;
use esi_reconciler::reconcile::observed::Observed;
use esi_reconciler::reconcile::plan::plan;
use esi_reconciler::reconcile::world::World;
use esi_reconciler::store::Change;
use esi_reconciler::store::mirror::Kv;
use libfuzzer_sys::fuzz_target;

static CATALOG: LazyLock<Arc<Catalog>> =
    LazyLock::new(|| Arc::new(Catalog::load(None, None).expect("embedded catalog")));

fuzz_target!(|data: &[u8]| {
    let mut world = World::new(CATALOG.clone());
    let mut parts = data.split(|&b| b == 0);
    let mut rev = 0;
    while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
        rev += 1;
        let kv = Kv {
            key: String::from_utf8_lossy(key).into_owned(),
            value: value.to_vec(),
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        };
        if value.is_empty() {
            world.apply(&Change::Delete {
                key: kv.key,
                revision: rev,
            });
        } else {
            world.apply(&Change::Put(kv));
        }
    }
    let refs: Vec<_> = world.resources().map(|(r, _)| r.clone()).collect();
    for r in refs {
        if let Some(o) = Observed::from_world(&world, &r, 1_700_000_000_000) {
            let _ = plan(&o);
        }
    }
});
