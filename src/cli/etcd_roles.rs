//! `esi-reconciler etcd-roles`: prints the `etcdctl` lines that create the
//! least-privilege roles and users of the reconciler and the worker.

use clap::{Args, ValueEnum};

use esi_reconciler::store::roles::{self, RoleSpec, UserAuth};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthKind {
    /// Users with passwords (`--etcd-user`, `--etcd-password`).
    Password,
    /// Users without passwords, named by their client certificate's CN
    /// (etcd `--client-cert-auth`).
    Certificate,
}

#[derive(Debug, Clone, Args)]
pub struct EtcdRolesArgs {
    /// The reconciler's role and user name.
    #[arg(long, default_value = "esi-reconciler")]
    pub reconciler_user: String,
    /// The worker's role and user name.
    #[arg(long, default_value = "esi-worker")]
    pub worker_user: String,
    /// How the processes authenticate.
    #[arg(long, value_enum, default_value_t = AuthKind::Password)]
    pub auth: AuthKind,
    /// The reconciler runs with --purge-deleted: it also gets write access to
    /// configs and stack records (Gohan's clean-up).
    #[arg(long)]
    pub purge_deleted: bool,
    /// Also create the root user (password from $ETCD_ROOT_PASSWORD) and turn
    /// authentication on, for an etcd that has none yet.
    #[arg(long)]
    pub enable_auth: bool,
}

pub fn etcd_roles(a: EtcdRolesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.reconciler_user != a.worker_user,
        "the reconciler and the worker need different users"
    );
    let specs = [
        RoleSpec {
            name: &a.reconciler_user,
            grants: roles::reconciler(a.purge_deleted),
            password_var: "ESI_RECONCILER_ETCD_PASSWORD",
        },
        RoleSpec {
            name: &a.worker_user,
            grants: roles::worker(),
            password_var: "ESI_WORKER_ETCD_PASSWORD",
        },
    ];
    for s in &specs {
        anyhow::ensure!(
            !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "user name {:?}: use letters, digits, '-', '_' and '.'",
            s.name
        );
    }
    let auth = match a.auth {
        AuthKind::Password => UserAuth::Password,
        AuthKind::Certificate => UserAuth::Certificate,
    };
    print!("{}", roles::etcdctl_script(&specs, auth, a.enable_auth));
    Ok(())
}
