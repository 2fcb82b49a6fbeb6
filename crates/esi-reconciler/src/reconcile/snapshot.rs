//! A one-shot, consistent view of etcd: the world at one revision, for the
//! CLI's `get` and `plan` (which must not wait for a watch).

use std::sync::Arc;

use crate::store::Etcd;
use tokio::sync::mpsc;

use crate::esi::Catalog;
use crate::esi::keys::{
    CONFIG, HEAT_STACKS, JOB_STATE, JOBS, RECONCILER, STATE, WATCH_END, WATCH_START,
};
use crate::store::StoreError;
use crate::store::mirror::{self, MirrorOptions, Reflector, Step};

use super::world::World;

pub fn mirror_options(page_size: i64) -> MirrorOptions {
    MirrorOptions {
        start: WATCH_START.to_string(),
        end: WATCH_END.to_string(),
        page_size,
        list_prefixes: [CONFIG, RECONCILER, HEAT_STACKS, JOB_STATE, JOBS, STATE]
            .map(String::from)
            .to_vec(),
        from: None,
        unlisted: false,
    }
}

/// Lists everything the reconciler watches, at one pinned revision.
pub async fn load(
    client: &Etcd,
    catalog: Arc<Catalog>,
    page_size: i64,
) -> Result<World, StoreError> {
    let (tx, mut rx) = mpsc::channel(16);
    let c = client.clone();
    let opts = mirror_options(page_size);
    let lister = tokio::spawn(async move { mirror::list(&c, &opts, &tx).await });
    let mut reflector = Reflector::new(move || World::new(catalog.clone()));
    let mut world = None;
    while let Some(ev) = rx.recv().await {
        if let Step::Replace {
            view: mut w,
            revision,
            ..
        } = reflector.step(ev)
        {
            w.revision = revision;
            world = Some(w);
        }
    }
    lister
        .await
        .map_err(|e| StoreError::Etcd(etcd_client::Error::WatchError(e.to_string())))??;
    world.ok_or_else(|| {
        StoreError::Etcd(etcd_client::Error::WatchError(
            "the list ended before it was complete".into(),
        ))
    })
}
