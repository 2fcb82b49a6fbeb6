//! One unit of work (a job, a reconcile) that panics must not take its
//! process, its slot or its claim with it. Input is bounded and checked so
//! that nothing from etcd should reach a panic; this is the net under that,
//! and every catch is counted, so a bug shows as a metric, not a stuck
//! resource.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Runs `work`, turning a panic into `Err(message)`.
pub async fn catch<T>(work: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|p| message(&*p))
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let r = catch(async {
            let v: Vec<u8> = vec![];
            #[allow(clippy::indexing_slicing)]
            v[3]
        })
        .await;
        assert!(r.unwrap_err().contains("index out of bounds"));
        let r: Result<(), _> = catch(async { std::panic::panic_any(5_u8) }).await;
        assert_eq!(r.unwrap_err(), "panic with a non-text payload");
    }
}
