//! etcd as production runs it: TLS with client certificates, authentication
//! with one user per process, and the least-privilege roles
//! `esi-reconciler etcd-roles` prints. Also: what an operator is told when
//! TLS is set up wrong.

mod common;

use std::time::Duration;

use common::pki::{ClientCert, Pki};
use common::*;
use esi_reconciler::store::client::TlsFiles;

/// `get` against `url` with `tls` (and extra flags): (ok, stderr).
async fn get_with(url: &str, tls: &TlsFiles, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "get".to_string(),
        "--etcd-endpoints".into(),
        url.to_string(),
        "--etcd-connect-timeout".into(),
        "2".into(),
        "--etcd-request-timeout".into(),
        "3".into(),
    ];
    if let Some(ca) = &tls.ca {
        args.extend(["--etcd-ca".into(), ca.display().to_string()]);
    }
    if let (Some(c), Some(k)) = (&tls.cert, &tls.key) {
        args.extend(["--etcd-cert".into(), c.display().to_string()]);
        args.extend(["--etcd-key".into(), k.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(reference_catalog_args());
    let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    (ok, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_name_their_cause() {
    let pki = Pki::new();
    let good = pki.client("anyone", ClientCert::Good);
    let etcd = TestEtcd::start_tls(&pki, true, &good).await;
    let url = etcd.url();

    let (ok, err) = get_with(&url, &good, &[]).await;
    assert!(ok, "a good certificate: {err}");

    let old = pki.client("old", ClientCert::V1);
    let cases: Vec<(&str, String, TlsFiles, Vec<&str>)> = vec![
        (
            "no client certificate",
            url.clone(),
            TlsFiles {
                cert: None,
                key: None,
                ..good.clone()
            },
            vec!["client certificate"],
        ),
        (
            "wrong CA",
            url.clone(),
            TlsFiles {
                ca: Some(pki.file("other-ca.crt")),
                ..good.clone()
            },
            vec!["--etcd-ca"],
        ),
        (
            "name mismatch",
            url.replace("127.0.0.1", "localhost"),
            good.clone(),
            vec!["localhost"],
        ),
        (
            "X.509 v1 client certificate",
            url.clone(),
            old.clone(),
            vec!["v1"],
        ),
        (
            "plain HTTP to a TLS port",
            url.replace("https://", "http://"),
            good.clone(),
            vec!["https://"],
        ),
    ];
    let mut problems = vec![];
    for (what, url, tls, expect) in cases {
        if what.contains("v1") && !pki.is_v1(tls.cert.as_deref().unwrap()) {
            eprintln!("--- {what}: this openssl makes no v1 certificate; case skipped");
            continue;
        }
        let (ok, err) = get_with(&url, &tls, &[]).await;
        eprintln!("--- {what}:\n{err}");
        if ok {
            problems.push(format!("{what}: succeeded"));
        }
        for e in expect {
            if !err.contains(e) {
                problems.push(format!("{what}: no {e:?} in: {err}"));
            }
        }
        if err.contains("transport error: transport error") {
            problems.push(format!("{what}: {err}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The certificate flavour of the roles script runs on a real etcd too
    // (users without passwords, named by their certificates' CN).
    create_roles(&url, &good, &["--auth", "certificate"], &[]).await;
    let mut c = etcd.client.client().await.unwrap();
    for user in ["esi-reconciler", "esi-worker"] {
        let roles = c.user_get(user).await.unwrap().roles().to_vec();
        assert_eq!(roles, vec![user.to_string()]);
    }
    let worker = c.role_get("esi-worker").await.unwrap();
    assert_eq!(
        worker.permissions().len(),
        esi_reconciler::store::roles::worker().len()
    );
}

/// `--etcd-*` flags for `tls`, and a user and password when given.
fn etcd_flags(tls: &TlsFiles, user: Option<(&str, &str)>) -> Vec<String> {
    let mut a = vec![];
    for (flag, path) in [
        ("--etcd-ca", &tls.ca),
        ("--etcd-cert", &tls.cert),
        ("--etcd-key", &tls.key),
    ] {
        if let Some(p) = path {
            a.extend([flag.to_string(), p.display().to_string()]);
        }
    }
    if let Some((u, p)) = user {
        a.extend([
            "--etcd-user".to_string(),
            u.to_string(),
            "--etcd-password".into(),
            p.into(),
        ]);
    }
    a
}

/// Runs `esi-reconciler etcd-roles ARGS | sh` as root (by certificate).
async fn create_roles(url: &str, root: &TlsFiles, args: &[&str], env: &[(&str, &str)]) {
    let (ok, script, err) = cli(&[&["etcd-roles"], args].concat()).await;
    assert!(ok, "{err}");
    let mut sh = tokio::process::Command::new("sh");
    sh.arg("-c")
        .arg(&script)
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", url)
        .env("ETCDCTL_CACERT", root.ca.as_ref().unwrap())
        .env("ETCDCTL_CERT", root.cert.as_ref().unwrap())
        .env("ETCDCTL_KEY", root.key.as_ref().unwrap());
    for (k, v) in env {
        sh.env(k, v);
    }
    let out = sh.output().await.expect("sh and etcdctl");
    assert!(
        out.status.success(),
        "the etcd-roles script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client of `url` as `tls` (and `user`), for probing permissions.
async fn client_as(
    url: &str,
    tls: &TlsFiles,
    user: Option<(&str, &str)>,
) -> esi_reconciler::store::Etcd {
    let mut opts = esi_reconciler::store::EtcdOptions::with_endpoints(vec![url.to_string()]);
    opts.tls = Some(tls.clone());
    opts.user = user.map(|(u, p)| (u.to_string(), p.to_string()));
    opts.request_timeout = Duration::from_secs(5);
    esi_reconciler::store::connect(&opts).await.unwrap()
}

/// Writes the `plural` config of a recorded Gohan step (logical network
/// scenario) and waits for its `/state` to record the create.
async fn create_and_converge(etcd: &TestEtcd, step: &str, plural: &str) {
    let configs = gohan_step("00_logical_network", step);
    for (k, v) in &configs {
        etcd.put_json(k, v).await;
    }
    let state = configs
        .iter()
        .find(|(k, _)| k.starts_with(&format!("/config/v2.0/{plural}/")))
        .map(|(k, _)| k.replace("/config/", "/state/"))
        .unwrap_or_else(|| panic!("no {plural} in {step}"));
    wait_state(etcd, &state, 1, "CREATE_COMPLETED", Duration::from_secs(60)).await;
}

fn denied(r: Result<impl std::fmt::Debug, etcd_client::Error>) -> bool {
    matches!(&r, Err(e) if e.to_string().contains("permission denied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_story_runs_on_tls_and_auth_with_least_privilege() {
    const PORT: &str = "db3bff62-cf93-48ce-8d6b-cfb2f7fd7dfc";
    const RECONCILER_PASSWORD: &str = "reconciler-secret";
    let pki = Pki::new();
    let root = pki.client("root", ClientCert::Good);
    let mut etcd = TestEtcd::start_tls(&pki, true, &root).await;
    let url = etcd.url();
    create_roles(
        &url,
        &root,
        &["--enable-auth"],
        &[
            ("ETCD_ROOT_PASSWORD", "root-secret"),
            ("ESI_RECONCILER_ETCD_PASSWORD", RECONCILER_PASSWORD),
            ("ESI_WORKER_ETCD_PASSWORD", "worker-secret"),
        ],
    )
    .await;
    // Root still writes (by its certificate's CN): the seed's world.
    load_seed_world(&etcd).await;

    // The reconciler authenticates with its password (its certificate's CN
    // is no user); the worker by its certificate's CN.
    let recon_tls = pki.client("reconciler-host", ClientCert::Good);
    let recon_user = Some(("esi-reconciler", RECONCILER_PASSWORD));
    let worker_tls = pki.client("esi-worker", ClientCert::Good);
    let mut args = reconciler_args(&url, ANY_PORT);
    args.extend(etcd_flags(&recon_tls, recon_user));
    let mut reconciler = spawn_args(&args);
    let mut args = worker_args(&url, ANY_PORT, &["--sim-latency-ms", "50"]);
    args.extend(etcd_flags(&worker_tls, None));
    let mut worker = spawn_args(&args);

    // The seed's logical delete runs to the end.
    wait_state(
        &etcd,
        &format!("/state/v2.0/ports/{PORT}"),
        4,
        "DELETE_COMPLETED",
        Duration::from_secs(60),
    )
    .await;
    // And a network created now converges too.
    create_and_converge(&etcd, "CreateNetwork_01", "networks").await;
    // etcd restarts: it forgets every auth token it issued. The reconciler
    // (password) takes a new one and goes on: a subnet created after the
    // restart converges.
    etcd.process.restart().await.unwrap();
    create_and_converge(&etcd, "CreateSubnet_01", "subnets").await;

    // What each process may not do, it cannot.
    let as_worker = client_as(&url, &worker_tls, None).await;
    assert!(denied(
        as_worker
            .put("/config/v2.0/networks/evil", "{}", None)
            .await
    ));
    assert!(denied(
        as_worker
            .put(
                "/jobs/all/create:heat_worker:network:evil:1:aaaaa",
                "[]",
                None
            )
            .await
    ));
    assert!(denied(
        as_worker
            .put("/esi-reconciler/v1/resources/ports/evil", "{}", None)
            .await
    ));
    let as_reconciler = client_as(&url, &recon_tls, recon_user).await;
    for key in [
        "/esi-worker/heat_stacks/v2.0/ports/evil",
        "/esi-worker/job_state/v2.0/ports/evil",
        "/config/v2.0/ports/evil",
    ] {
        assert!(
            denied(as_reconciler.put(key, "{}", None).await),
            "the reconciler could write {key}"
        );
    }
    // ... while what they must do, they can (the story above did it all).
    assert!(
        as_worker
            .put("/state/v2.0/ports/probe", "{}", None)
            .await
            .is_ok()
    );
    assert!(!etcd.keys("/esi-reconciler/v1/members/").await.is_empty());
    assert!(reconciler.child.try_wait().unwrap().is_none());
    assert!(worker.child.try_wait().unwrap().is_none());
    worker.sigkill().await;
    reconciler.sigkill().await;
}
