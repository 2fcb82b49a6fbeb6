//! Fenced writes as data: every writer of the ESI protocol (the reconciler,
//! the worker, the gohan stand-in, the harness) says *what must still hold*
//! and *what to write* with these types, and one function turns them into
//! an etcd transaction.
//!
//! Why not etcd-client's `Compare`/`TxnOp` directly: they cannot be read
//! back, so a transaction built with them can only be tested against a
//! running etcd. These can be inspected, printed, and applied to the
//! in-memory [`mem::MemKv`] that unit tests use (with etcd's semantics for
//! revisions), while integration tests keep running against a real etcd.

use std::future::Future;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::Etcd;

/// A condition a transaction holds to: each one fences on something read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key was last modified at `rev` (0: the key does not exist).
    ModRev(String, i64),
    /// The key was created at `rev`: the same incarnation of the key as the
    /// one read (a claim fences on its `working/` key this way).
    CreateRev(String, i64),
    /// The key is bound to this lease.
    Lease(String, i64),
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Present(String),
    /// No key starts with this prefix.
    NoneUnder(String),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        /// Bound to this lease (0 or `None`: no lease).
        lease: Option<i64>,
    },
    Delete(String),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete(key.into())
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete(key) => key,
        }
    }
}

/// One transaction: all of `when` holds, then all of `then` is written,
/// atomically; otherwise nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fenced {
    pub when: Vec<Cond>,
    pub then: Vec<Op>,
}

impl Fenced {
    pub fn new(when: Vec<Cond>, then: Vec<Op>) -> Self {
        Self { when, then }
    }

    /// The etcd transaction this describes.
    pub fn to_etcd(&self) -> Txn {
        let when: Vec<Compare> = self
            .when
            .iter()
            .map(|c| match c {
                Cond::ModRev(k, rev) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev),
                Cond::CreateRev(k, rev) => {
                    Compare::create_revision(k.as_str(), CompareOp::Equal, *rev)
                }
                Cond::Lease(k, lease) => Compare::lease(k.as_str(), CompareOp::Equal, *lease),
                Cond::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Cond::Present(k) => Compare::create_revision(k.as_str(), CompareOp::Greater, 0),
                Cond::NoneUnder(p) => {
                    Compare::create_revision(p.as_str(), CompareOp::Equal, 0).with_prefix()
                }
            })
            .collect();
        let then: Vec<TxnOp> = self
            .then
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    lease
                        .filter(|l| *l != 0)
                        .map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete(key) => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        Txn::new().when(when).and_then(then)
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Every condition held and the writes landed.
    pub succeeded: bool,
    /// The store's revision in the answer (the writes' revision on success).
    pub revision: i64,
}

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub lease: i64,
}

/// What a writer needs of the store: read one key, commit one fenced
/// transaction. [`Etcd`] is the real one; [`mem::MemKv`] is for unit tests.
pub trait Kv: Send + Sync {
    fn read(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Record>, etcd_client::Error>> + Send;
    fn commit(
        &self,
        txn: &Fenced,
    ) -> impl Future<Output = Result<Committed, etcd_client::Error>> + Send;
}

impl<T: Kv> Kv for &T {
    fn read(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Record>, etcd_client::Error>> + Send {
        (**self).read(key)
    }
    fn commit(
        &self,
        txn: &Fenced,
    ) -> impl Future<Output = Result<Committed, etcd_client::Error>> + Send {
        (**self).commit(txn)
    }
}

impl Kv for Etcd {
    async fn read(&self, key: &str) -> Result<Option<Record>, etcd_client::Error> {
        let resp = self.get(key, None).await?;
        Ok(resp.kvs().first().map(|kv| Record {
            value: kv.value().to_vec(),
            mod_rev: kv.mod_revision(),
            create_rev: kv.create_revision(),
            lease: kv.lease(),
        }))
    }

    async fn commit(&self, txn: &Fenced) -> Result<Committed, etcd_client::Error> {
        let resp = self.txn(txn.to_etcd()).await?;
        Ok(Committed {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        })
    }
}

/// An in-memory key space with etcd's revision rules, for unit tests of
/// writers: one revision per successful transaction that writes, mod and
/// create revisions per key, compares as etcd evaluates them.
#[cfg(test)]
pub mod mem {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct State {
        revision: i64,
        keys: BTreeMap<String, Record>,
        committed: Vec<Fenced>,
    }

    #[derive(Default)]
    pub struct MemKv {
        state: Mutex<State>,
    }

    impl MemKv {
        pub fn new() -> Self {
            Self::default()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Writes `key` outside any transaction (setting up a case); returns
        /// its mod revision.
        pub fn seed(&self, key: &str, value: impl Into<Vec<u8>>) -> i64 {
            self.apply(&Fenced::new(vec![], vec![Op::put(key, value)]))
                .revision
        }

        pub fn value(&self, key: &str) -> Option<Vec<u8>> {
            self.lock().keys.get(key).map(|r| r.value.clone())
        }

        pub fn mod_rev(&self, key: &str) -> i64 {
            self.lock().keys.get(key).map(|r| r.mod_rev).unwrap_or(0)
        }

        pub fn keys(&self) -> Vec<String> {
            self.lock().keys.keys().cloned().collect()
        }

        /// The transactions that succeeded, in order.
        pub fn committed(&self) -> Vec<Fenced> {
            self.lock().committed.clone()
        }

        fn holds(keys: &BTreeMap<String, Record>, c: &Cond) -> bool {
            let get = |k: &String| keys.get(k);
            match c {
                Cond::ModRev(k, rev) => get(k).map(|r| r.mod_rev).unwrap_or(0) == *rev,
                Cond::CreateRev(k, rev) => get(k).map(|r| r.create_rev).unwrap_or(0) == *rev,
                Cond::Lease(k, lease) => get(k).map(|r| r.lease).unwrap_or(0) == *lease,
                Cond::Absent(k) => get(k).is_none(),
                Cond::Present(k) => get(k).is_some(),
                Cond::NoneUnder(p) => !keys.keys().any(|k| k.starts_with(p.as_str())),
            }
        }

        fn apply(&self, txn: &Fenced) -> Committed {
            let mut s = self.lock();
            if !txn.when.iter().all(|c| Self::holds(&s.keys, c)) {
                return Committed {
                    succeeded: false,
                    revision: s.revision,
                };
            }
            if !txn.then.is_empty() {
                s.revision += 1;
            }
            let rev = s.revision;
            for op in &txn.then {
                match op {
                    Op::Put { key, value, lease } => {
                        let create_rev = s.keys.get(key).map(|r| r.create_rev).unwrap_or(rev);
                        s.keys.insert(
                            key.clone(),
                            Record {
                                value: value.clone(),
                                mod_rev: rev,
                                create_rev,
                                lease: lease.unwrap_or(0),
                            },
                        );
                    }
                    Op::Delete(key) => {
                        s.keys.remove(key);
                    }
                }
            }
            s.committed.push(txn.clone());
            Committed {
                succeeded: true,
                revision: rev,
            }
        }
    }

    impl Kv for MemKv {
        async fn read(&self, key: &str) -> Result<Option<Record>, etcd_client::Error> {
            Ok(self.lock().keys.get(key).cloned())
        }

        async fn commit(&self, txn: &Fenced) -> Result<Committed, etcd_client::Error> {
            Ok(self.apply(txn))
        }
    }

    #[tokio::test]
    async fn compares_follow_etcds_rules() {
        let kv = MemKv::new();
        let a = kv.seed("/a", "1");
        // A missing key has mod revision 0, as in etcd.
        let t = Fenced::new(
            vec![Cond::ModRev("/b".into(), 0), Cond::ModRev("/a".into(), a)],
            vec![Op::put("/b", "2")],
        );
        assert!(kv.commit(&t).await.unwrap().succeeded);
        // The same fence again fails: /b now exists.
        assert!(!kv.commit(&t).await.unwrap().succeeded);
        let t = Fenced::new(vec![Cond::NoneUnder("/a".into())], vec![Op::delete("/a")]);
        assert!(!kv.commit(&t).await.unwrap().succeeded);
        assert_eq!(kv.keys(), vec!["/a".to_string(), "/b".to_string()]);
        // A rewrite keeps the create revision, a delete and re-put does not.
        kv.seed("/a", "3");
        let r = kv.read("/a").await.unwrap().unwrap();
        assert_eq!(r.create_rev, a);
        assert!(r.mod_rev > a);
    }
}
