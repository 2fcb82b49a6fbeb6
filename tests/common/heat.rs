//! A real OpenStack Heat for tests: Debian's `python3-heat` (Heat 19) as one
//! `heat-all` process (API and engine), no Keystone (the no-auth paste
//! pipeline), no message broker (`fake://` RPC inside the one process) and
//! sqlite, on a free loopback port in a temp dir, killed on drop.
//! Written from `../shared/recipes/heat/start-heat.sh`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::{eventually, free_port};

use super::DEBIAN_PYTHON as PYTHON;

pub struct TestHeat {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

/// The environment every test sends: the types Heat lacks (Contrail's,
/// ESI's own) become `OS::Heat::None`, which takes any properties.
pub const ENVIRONMENT: &str = "resource_registry:\n  \"OS::Contrail::*\": OS::Heat::None\n  \"OS::ContrailV2::*\": OS::Heat::None\n  \"ESI::*\": OS::Heat::None\n";

impl TestHeat {
    /// Starts Heat and waits until its API answers.
    pub async fn start() -> TestHeat {
        super::require_python_module("heat", "python3-heat");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        write_config(dir.path(), port);
        let sync = Command::new(PYTHON)
            .args([
                "-c",
                "import sys; from heat.cmd.manage import main; sys.exit(main())",
                "--config-file",
            ])
            .arg(dir.path().join("heat.conf"))
            .arg("db_sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(sync.success(), "heat-manage db_sync failed");
        let mut heat = TestHeat {
            port,
            dir,
            child: None,
            http: reqwest::Client::new(),
        };
        heat.spawn().await;
        heat
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("heat-all.out")).unwrap();
        let child = Command::new(PYTHON)
            .arg(self.dir.path().join("heat_all.py"))
            .arg("--config-file")
            .arg(self.dir.path().join("heat.conf"))
            // Caps Heat's fixed 1 s pauses at 0.05 s (see heat_all.py).
            .env("HEAT_FAST", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start heat-all");
        self.child = Some(child);
        let url = self.url();
        let http = self.http.clone();
        eventually(Duration::from_secs(60), "Heat's API to answer", || {
            let (url, http) = (url.clone(), http.clone());
            async move {
                let r = http.get(format!("{url}/stacks")).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }

    /// The orchestration endpoint of project `admin`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/admin", self.port)
    }

    /// Kills heat-all with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Sends `sig` to heat-all (SIGSTOP freezes it with its connections
    /// open, SIGCONT thaws it).
    pub fn signal(&self, sig: super::Signal) {
        if let Some(c) = &self.child {
            esi_harness::process::signal(c, sig);
        }
    }

    /// Starts heat-all again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Writes the test environment beside Heat's files and returns its path.
    pub fn environment_file(&self) -> PathBuf {
        let p = self.dir.path().join("environment.yaml");
        std::fs::write(&p, ENVIRONMENT).unwrap();
        p
    }

    /// `GET` under the endpoint, following Heat's redirect by name.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let mut url = format!("{}/{path}", self.url());
        for _ in 0..3 {
            let r = self
                .http
                .get(&url)
                .header("Accept", "application/json")
                .send()
                .await
                .ok()?;
            if r.status() == 302 {
                url = r.headers().get("location")?.to_str().ok()?.to_string();
                continue;
            }
            if r.status() != 200 {
                return None;
            }
            return r.json().await.ok();
        }
        None
    }

    /// Every stack Heat lists: `(name, status, id)`, sorted by name.
    pub async fn stacks(&self) -> Vec<(String, String, String)> {
        let v = self.get("stacks").await.expect("Heat lists stacks");
        let mut out: Vec<(String, String, String)> = v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["stack_name"].as_str().unwrap().to_string(),
                    s["stack_status"].as_str().unwrap().to_string(),
                    s["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// One stack as Heat shows it (`None`: no stack of that name).
    pub async fn stack(&self, name: &str) -> Option<Value> {
        self.get(&format!("stacks/{name}"))
            .await
            .map(|v| v["stack"].clone())
    }

    /// Stacks in every project, read from Heat's database (the API lists
    /// one project's): `(project, name, status)`.
    pub fn all_stacks(&self) -> Vec<(String, String, String)> {
        let out = std::process::Command::new(PYTHON)
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); [print(*r, sep='\\t') for r in c.execute('select tenant, name, action || \\'_\\' || status from stack where deleted_at is null')]",
            ])
            .arg(self.dir.path().join("heat.sqlite"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
            })
            .collect()
    }

    /// Heat's own log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("heat-all.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("env.d")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    // transport_url = fake:// works because API and engine share one
    // process; deferred_auth_method = password and the fake Keystone
    // client keep the engine from ever calling Keystone.
    std::fs::write(
        dir.join("heat.conf"),
        format!(
            "[DEFAULT]
log_file = {d}/heat.log
transport_url = fake://
rpc_response_timeout = 60
deferred_auth_method = password
keystone_backend = heat.engine.clients.os.keystone.fake_keystoneclient.FakeKeystoneClient
convergence_engine = false
num_engine_workers = 1
graceful_shutdown_timeout = 2
environment_dir = {d}/env.d
template_dir = {d}/templates
plugin_dirs = {d}/plugins
[heat_all]
enabled_services = api,engine
[heat_api]
bind_host = 127.0.0.1
bind_port = {port}
workers = 1
[database]
connection = sqlite:///{d}/heat.sqlite
[paste_deploy]
flavor = noauth
api_paste_config = {d}/api-paste.ini
"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("api-paste.ini"),
        "[pipeline:heat-api-noauth]
pipeline = faultwrap noauth context versionnegotiation apiv1app
[app:apiv1app]
paste.app_factory = heat.common.wsgi:app_factory
heat.app_factory = heat.api.openstack.v1:API
[filter:noauth]
paste.filter_factory = heat.common.noauth:filter_factory
[filter:context]
paste.filter_factory = heat.common.context:ContextMiddleware_filter_factory
[filter:versionnegotiation]
paste.filter_factory = heat.common.wsgi:filter_factory
heat.filter_factory = heat.api.openstack:version_negotiation_filter
[filter:faultwrap]
paste.filter_factory = heat.common.wsgi:filter_factory
heat.filter_factory = heat.api.openstack:faultwrap_filter
",
    )
    .unwrap();
    // This cloud has Heat and nothing else: parameters constrained to
    // Glance images or Nova flavors (ESI's vnf_instance template) would
    // fail validation with EndpointNotFound. A plugin replaces those
    // constraints with ones that accept any value, as the environment
    // replaces the resource types this cloud lacks.
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::write(
        dir.join("plugins/esi_test_constraints.py"),
        r#"from heat.engine import constraints


class AnyValue(constraints.BaseCustomConstraint):
    def validate(self, value, context, template=None):
        return True


def constraint_mapping():
    return {"glance.image": AnyValue, "nova.flavor": AnyValue}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("heat_all.py"),
        r#"import os, sys
from heat.cmd import all as heat_all          # monkey-patches eventlet on import
if os.environ.get("HEAT_FAST") == "1":        # test speed only
    import eventlet
    from heat.engine import scheduler, stack
    _sleep = scheduler.TaskRunner._sleep
    scheduler.TaskRunner._sleep = lambda self, w: _sleep(self, None if w is None else min(w, 0.05))
    class _Eventlet:                          # Stack.converge_stack: eventlet.sleep(1) per leaf
        def __getattr__(self, name): return getattr(eventlet, name)
        @staticmethod
        def sleep(s=0): eventlet.sleep(min(s, 0.05))
    stack.eventlet = _Eventlet()
sys.exit(heat_all.main())
"#,
    )
    .unwrap();
}
