//! A real OpenStack Keystone for tests: Debian's `python3-keystone`
//! (Keystone 22) served by Python's wsgiref on a free loopback port, sqlite
//! and fernet keys in a temp dir, bootstrapped with an `admin` user and
//! project (password [`PASSWORD`]), killed on drop.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::{eventually, free_port};

use super::DEBIAN_PYTHON as PYTHON;
pub const PASSWORD: &str = "s3cret-admin";
pub const REGION: &str = "RegionOne";

pub struct TestKeystone {
    pub port: u16,
    _dir: tempfile::TempDir,
    _child: Child,
    http: reqwest::Client,
}

impl TestKeystone {
    pub async fn start() -> TestKeystone {
        super::require_python_module("keystone", "python3-keystone");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("keystone.conf"),
            format!(
                "[DEFAULT]
log_file = {d}/keystone.log
[database]
connection = sqlite:///{d}/keystone.sqlite
[fernet_tokens]
key_repository = {d}/fernet-keys
[fernet_receipts]
key_repository = {d}/fernet-keys
[credential]
key_repository = {d}/credential-keys
"
            ),
        )
        .unwrap();
        let url = format!("http://127.0.0.1:{port}/v3");
        let owner = ["--keystone-user", "root", "--keystone-group", "root"];
        for args in [
            vec!["db_sync"],
            [&["fernet_setup"][..], &owner].concat(),
            [&["credential_setup"][..], &owner].concat(),
            vec![
                "bootstrap",
                "--bootstrap-password",
                PASSWORD,
                "--bootstrap-region-id",
                REGION,
                "--bootstrap-public-url",
                &url,
            ],
        ] {
            manage(dir.path(), &args).await;
        }
        std::fs::write(dir.path().join("serve.py"), SERVE).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.out")).unwrap();
        let child = Command::new(PYTHON)
            .arg(dir.path().join("serve.py"))
            .arg(dir.path().join("keystone.conf"))
            .arg(port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start keystone");
        let ks = TestKeystone {
            port,
            _dir: dir,
            _child: child,
            http: reqwest::Client::new(),
        };
        let http = ks.http.clone();
        eventually(Duration::from_secs(60), "Keystone to answer", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        ks
    }

    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.port)
    }

    /// An admin token and the admin user's id.
    async fn admin(&self) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/auth/tokens", self.auth_url()))
            .json(&json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "admin", "domain": {"id": "default"}, "password": PASSWORD}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "admin token");
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        (
            token,
            body["token"]["user"]["id"].as_str().unwrap().to_string(),
        )
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/{path}", self.auth_url()))
            .header("X-Auth-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "POST {path}");
        r.json().await.unwrap()
    }

    /// Puts Heat in the catalog: an `orchestration` service with a public
    /// endpoint at `url` in [`REGION`].
    pub async fn register_heat(&self, url: &str) {
        let (token, _) = self.admin().await;
        let svc = self
            .post(
                &token,
                "services",
                json!({"service": {"type": "orchestration", "name": "heat"}}),
            )
            .await;
        self.post(
            &token,
            "endpoints",
            json!({"endpoint": {"service_id": svc["service"]["id"], "interface": "public",
                "region_id": REGION, "url": url}}),
        )
        .await;
    }

    /// A new application credential of the admin user: (id, secret).
    pub async fn application_credential(&self, name: &str) -> (String, String) {
        let (token, user) = self.admin().await;
        let c = self
            .post(
                &token,
                &format!("users/{user}/application_credentials"),
                json!({"application_credential": {"name": name}}),
            )
            .await;
        let c = &c["application_credential"];
        (
            c["id"].as_str().unwrap().to_string(),
            c["secret"].as_str().unwrap().to_string(),
        )
    }
}

/// `keystone-manage` (its wrapper script is in another package).
async fn manage(dir: &Path, args: &[&str]) {
    let status = Command::new(PYTHON)
        .args([
            "-c",
            "import sys; from keystone.cmd.manage import main; sys.argv[0] = 'keystone-manage'; sys.exit(main())",
            "--config-file",
        ])
        .arg(dir.join("keystone.conf"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    // keystone-manage may print an eventlet traceback at interpreter exit
    // and still have done its work: its success is checked by what follows.
    let _ = status;
}

const SERVE: &str = r#"import os, sys
conf, port = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]                       # keystone parses the command line itself
os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf
from keystone.server.wsgi import initialize_public_application
app = initialize_public_application()
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Quiet(WSGIRequestHandler):
    def log_message(self, *a): pass
make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
"#;
