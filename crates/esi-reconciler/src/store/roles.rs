//! Least privilege in etcd: what the reconciler and the worker may read and
//! write, as etcd RBAC key-range permissions, and the `etcdctl` lines that
//! create them (`esi-reconciler etcd-roles`).
//!
//! The split follows who owns which records in the ESI protocol
//! (`esi::keys`): Gohan owns `/config`, the reconciler (ESI's Job Manager)
//! owns the job queue and its own `/esi-reconciler` records, the worker owns
//! its claims, `/esi-worker/…` and `/state`. Each process may read what it
//! plans or acts from, and write only what it owns, so a stolen worker
//! credential cannot change a desired config and a stolen reconciler
//! credential cannot forge what a worker observed. Two writes cross the
//! line, on purpose and documented where they happen: the reconciler writes
//! `/state` when a worker died after its stack finished (the design's
//! "complete /state"), and `--purge-deleted` does Gohan's clean-up, so only
//! with that flag does the reconciler's role get Gohan's write access.
//!
//! One read is wider than the reconciler needs: its single list-and-watch
//! spans `/config/` … `/state0`, and etcd checks a range request against the
//! whole range, so the grant covers every key in that span, including other
//! systems' (`/gohan/…`, or `/registry/…` if Kubernetes shared this etcd).
//! Keep ESI's etcd to ESI.

use std::fmt::Write as _;

use crate::engine::sim;
use crate::esi::keys::{
    CONFIG, HEAT_STACKS, JOB_STATE, JOBS, JOBS_ALL, JOBS_FINISHED, JOBS_READY, JOBS_WORKING, STATE,
    WATCH_END, WATCH_START,
};

/// The key every process reads to learn the store's revision
/// ([`crate::store::current_revision`]).
pub const REVISION_PROBE: &str = "/esi-reconciler/v1/probe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    fn etcdctl(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "readwrite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Every key that starts with this.
    Prefix(&'static str),
    /// `[start, end)`.
    Range(&'static str, &'static str),
    /// This one key.
    Exact(&'static str),
}

/// One permission of a role, and why the process needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    pub keys: Keys,
    pub why: &'static str,
}

const fn grant(access: Access, keys: Keys, why: &'static str) -> Grant {
    Grant { access, keys, why }
}

/// The reconciler's permissions. `purge_deleted`: it also removes a
/// deleted resource's config and stack record (`run --purge-deleted`).
pub fn reconciler(purge_deleted: bool) -> Vec<Grant> {
    use Access::*;
    let mut g = vec![
        grant(
            Read,
            Keys::Range(WATCH_START, WATCH_END),
            "its one list and watch of everything it plans from: configs, templates, jobs, worker records, /state",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(JOBS),
            "the job queue it manages: issue, release, withdraw, requeue and finish jobs",
        ),
        grant(
            ReadWrite,
            Keys::Prefix("/esi-reconciler/"),
            "its own records: backoff status per resource, replica membership",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(STATE),
            "completing /state from a finished stack when the worker died before writing it",
        ),
    ];
    if purge_deleted {
        g.push(grant(
            ReadWrite,
            Keys::Prefix(CONFIG),
            "--purge-deleted: removing the config of a deleted resource (Gohan's clean-up)",
        ));
        g.push(grant(
            ReadWrite,
            Keys::Prefix(HEAT_STACKS),
            "--purge-deleted: removing the stack record of a deleted resource (Gohan's clean-up)",
        ));
    }
    g
}

/// The heat worker's permissions.
pub fn worker() -> Vec<Grant> {
    use Access::*;
    vec![
        grant(
            Read,
            Keys::Prefix(CONFIG),
            "heat templates, and the configs a job's params refer to",
        ),
        grant(
            Read,
            Keys::Prefix(JOBS_ALL),
            "a claim checks that the job is still in /jobs/all",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(JOBS_READY),
            "watching ready jobs; a claim takes one, a shutdown gives it back",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(JOBS_WORKING),
            "its claims, under its lease",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(JOBS_FINISHED),
            "marking jobs finished",
        ),
        grant(ReadWrite, Keys::Prefix(STATE), "each job's result"),
        grant(
            ReadWrite,
            Keys::Prefix(JOB_STATE),
            "progress of the job it runs",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(HEAT_STACKS),
            "its record of each stack",
        ),
        grant(
            ReadWrite,
            Keys::Prefix(sim::PREFIX),
            "the simulated engine's stacks (--engine sim only)",
        ),
        grant(
            Read,
            Keys::Exact(REVISION_PROBE),
            "learning the store's revision (restored-store detection)",
        ),
    ]
}

/// How a process proves who it is to etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAuth {
    /// A password (`--etcd-user`/`--etcd-password`).
    Password,
    /// The client certificate's common name is the user (etcd
    /// `--client-cert-auth`); the user has no password.
    Certificate,
}

/// One role with one user of the same name.
pub struct RoleSpec<'a> {
    pub name: &'a str,
    pub grants: Vec<Grant>,
    /// Shell variable holding the password, for [`UserAuth::Password`].
    pub password_var: &'a str,
}

/// A shell script of `etcdctl` commands creating `roles` with `auth`, and
/// with `enable_auth`, the root user and `auth enable` first. Quoted so it
/// can be piped to `sh` with the admin's `ETCDCTL_*` variables set.
pub fn etcdctl_script(roles: &[RoleSpec<'_>], auth: UserAuth, enable_auth: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# etcd roles and users for esi-reconciler (least privilege).\n\
         # Run as an etcd admin, with ETCDCTL_ENDPOINTS (and ETCDCTL_CACERT,\n\
         # ETCDCTL_CERT, ETCDCTL_KEY or ETCDCTL_USER) set for that admin.\n\
         set -eu\nexport ETCDCTL_API=3"
    );
    if enable_auth {
        let _ = writeln!(
            s,
            "\n# Authentication itself: a root user, then auth on.\n\
             etcdctl user add root --new-user-password=\"${{ETCD_ROOT_PASSWORD:?set ETCD_ROOT_PASSWORD}}\"\n\
             etcdctl user grant-role root root"
        );
    }
    for role in roles {
        let _ = writeln!(s, "\n# {}", role.name);
        let _ = writeln!(s, "etcdctl role add {}", role.name);
        for g in &role.grants {
            let _ = writeln!(s, "#   {}", g.why);
            let keys = match g.keys {
                Keys::Prefix(p) => format!("--prefix '{p}'"),
                Keys::Range(a, b) => format!("'{a}' '{b}'"),
                Keys::Exact(k) => format!("'{k}'"),
            };
            let _ = writeln!(
                s,
                "etcdctl role grant-permission {} {} {keys}",
                role.name,
                g.access.etcdctl()
            );
        }
        match auth {
            UserAuth::Password => {
                let _ = writeln!(
                    s,
                    "etcdctl user add {} --new-user-password=\"${{{var}:?set {var}}}\"",
                    role.name,
                    var = role.password_var
                );
            }
            UserAuth::Certificate => {
                let _ = writeln!(
                    s,
                    "# its client certificate's CN must be {}\netcdctl user add {} --no-password",
                    role.name, role.name
                );
            }
        }
        let _ = writeln!(s, "etcdctl user grant-role {} {}", role.name, role.name);
    }
    if enable_auth {
        let _ = writeln!(s, "\netcdctl auth enable");
    }
    s
}

/// Whether `grants` let a process write `key`.
pub fn may_write(grants: &[Grant], key: &str) -> bool {
    grants
        .iter()
        .any(|g| g.access == Access::ReadWrite && covers(g.keys, key))
}

/// Whether `grants` let a process read `key`.
pub fn may_read(grants: &[Grant], key: &str) -> bool {
    grants.iter().any(|g| covers(g.keys, key))
}

fn covers(keys: Keys, key: &str) -> bool {
    match keys {
        Keys::Prefix(p) => key.starts_with(p),
        Keys::Range(a, b) => key >= a && key < b,
        Keys::Exact(k) => key == k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esi::keys::RECONCILER;

    #[test]
    fn each_process_writes_only_what_it_owns() {
        let r = reconciler(false);
        let w = worker();
        // The worker never changes desired state or the queue's source of truth.
        for key in [
            "/config/v2.0/networks/n",
            "/config/v2.0/heat_templates/t",
            "/jobs/all/create:heat_worker:network:n:1:abcde",
            "/jobs/waiting/create:heat_worker:network:n:1:abcde",
            "/esi-reconciler/v1/resources/networks/n",
        ] {
            assert!(!may_write(&w, key), "worker may write {key}");
        }
        // The reconciler never forges what a worker observed, nor configs.
        for key in [
            "/esi-worker/heat_stacks/v2.0/networks/n",
            "/esi-worker/job_state/v2.0/networks/n",
            "/config/v2.0/networks/n",
            "/~esi-sim/v1/stacks/network_n",
        ] {
            assert!(!may_write(&r, key), "reconciler may write {key}");
        }
        // What each must do is allowed.
        assert!(may_write(&r, "/jobs/ready/x") && may_write(&r, RECONCILER));
        assert!(may_read(&r, "/esi-worker/heat_stacks/v2.0/networks/n"));
        assert!(may_read(&r, "/state/v2.0/networks/n") && !may_read(&r, "/state0"));
        assert!(may_write(&w, "/jobs/working/x") && may_write(&w, "/state/v2.0/networks/n"));
        assert!(may_read(&w, REVISION_PROBE) && !may_write(&w, REVISION_PROBE));
        // Purging adds exactly Gohan's clean-up.
        let p = reconciler(true);
        assert!(may_write(&p, "/config/v2.0/networks/n"));
        assert!(may_write(&p, "/esi-worker/heat_stacks/v2.0/networks/n"));
        assert!(!may_write(&p, "/esi-worker/job_state/v2.0/networks/n"));
    }

    #[test]
    fn the_script_quotes_keys_and_never_holds_a_password() {
        let s = etcdctl_script(
            &[RoleSpec {
                name: "esi-worker",
                grants: worker(),
                password_var: "ESI_WORKER_ETCD_PASSWORD",
            }],
            UserAuth::Password,
            true,
        );
        assert!(s.contains(
            "etcdctl role grant-permission esi-worker readwrite --prefix '/jobs/working/'"
        ));
        assert!(s.contains("--new-user-password=\"${ESI_WORKER_ETCD_PASSWORD:?"));
        assert!(s.trim_end().ends_with("etcdctl auth enable"));
        let c = etcdctl_script(
            &[RoleSpec {
                name: "esi-worker",
                grants: worker(),
                password_var: "X",
            }],
            UserAuth::Certificate,
            false,
        );
        assert!(c.contains("etcdctl user add esi-worker --no-password"));
        assert!(!c.contains("auth enable"));
    }
}
