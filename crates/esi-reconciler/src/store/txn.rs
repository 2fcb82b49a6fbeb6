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
/// atomically; otherwise nothing is. Either way the keys in `read` come
/// back with the answer, as they were just before the writes.
///
/// Why reads ride along: a writer that would otherwise read a key before
/// or after its transaction (to learn what it claimed, or why a compare
/// failed) gets it in the same request, at the same revision. etcd does
/// the work of one request instead of two, and the value cannot have
/// changed between the read and the write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fenced {
    pub when: Vec<Cond>,
    pub then: Vec<Op>,
    pub read: Vec<String>,
    /// Which step of the protocol this is (`claim`, `issue_job`, …), for
    /// the count of transactions by kind in the metrics ("": other).
    pub kind: &'static str,
}

impl Fenced {
    pub fn new(when: Vec<Cond>, then: Vec<Op>) -> Self {
        Self {
            when,
            then,
            read: vec![],
            kind: "",
        }
    }

    /// Names the step of the protocol this transaction is.
    pub fn named(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Also returns these keys with the answer (see [`Committed::read`]).
    pub fn reading(mut self, keys: Vec<String>) -> Self {
        self.read = keys;
        self
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
        let reads = || {
            self.read
                .iter()
                .map(|k| TxnOp::get(k.as_str(), None))
                .collect::<Vec<_>>()
        };
        // Reads first: they see the keys as they were before the writes.
        let mut ops = reads();
        ops.extend(then);
        Txn::new().when(when).and_then(ops).or_else(reads())
    }
}

/// The records of `read` keys in a transaction's answer, in order.
fn records_read(resp: &etcd_client::TxnResponse, n: usize) -> Vec<Option<Record>> {
    resp.op_responses()
        .into_iter()
        .take(n)
        .map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(Record::of),
            _ => None,
        })
        .collect()
}

/// How a transaction ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Every condition held and the writes landed.
    pub succeeded: bool,
    /// The store's revision in the answer (the writes' revision on success).
    pub revision: i64,
    /// The [`Fenced::read`] keys as they were before the writes (or at
    /// `revision` when the compares failed), in order; `None`: absent.
    pub read: Vec<Option<Record>>,
}

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub mod_rev: i64,
    pub create_rev: i64,
    pub lease: i64,
}

impl Record {
    fn of(kv: &etcd_client::KeyValue) -> Self {
        Record {
            value: kv.value().to_vec(),
            mod_rev: kv.mod_revision(),
            create_rev: kv.create_revision(),
            lease: kv.lease(),
        }
    }
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
        Ok(resp.kvs().first().map(Record::of))
    }

    async fn commit(&self, txn: &Fenced) -> Result<Committed, etcd_client::Error> {
        self.stats().transaction(txn.kind);
        let resp = self.txn(txn.to_etcd()).await?;
        Ok(Committed {
            succeeded: resp.succeeded(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            read: records_read(&resp, txn.read.len()),
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
            let read = txn.read.iter().map(|k| s.keys.get(k).cloned()).collect();
            if !txn.when.iter().all(|c| Self::holds(&s.keys, c)) {
                return Committed {
                    succeeded: false,
                    revision: s.revision,
                    read,
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
                read,
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

    #[tokio::test]
    async fn reads_come_back_as_before_the_writes_either_way() {
        let kv = MemKv::new();
        let a = kv.seed("/a", "1");
        let t = Fenced::new(vec![Cond::Absent("/b".into())], vec![Op::put("/a", "2")])
            .reading(vec!["/a".into(), "/b".into()]);
        let done = kv.commit(&t).await.unwrap();
        assert!(done.succeeded);
        assert_eq!(
            done.read[0].as_ref().map(|r| (r.value.clone(), r.mod_rev)),
            Some((b"1".to_vec(), a))
        );
        assert_eq!(done.read[1], None);
        kv.seed("/b", "x");
        let failed = kv.commit(&t).await.unwrap();
        assert!(!failed.succeeded);
        assert_eq!(
            failed.read[0].as_ref().map(|r| r.value.clone()),
            Some(b"2".to_vec())
        );
        assert_eq!(
            failed.read[1].as_ref().map(|r| r.value.clone()),
            Some(b"x".to_vec())
        );
    }
}
