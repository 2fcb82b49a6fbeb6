//! Launching our own processes (`esi-reconciler run`, `worker`, …) for the
//! drills, the bench and the tests: one launcher, so every one of them is
//! killed with its owner, can be frozen and thawed, stops gracefully, and
//! says where its last words went when it dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub use rustix::process::Signal;

/// Where a process's stderr goes.
#[derive(Debug, Clone)]
pub enum Stderr {
    Null,
    Inherit,
    /// A log file (created; its tail explains a death).
    File(PathBuf),
}

/// A process to start.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stderr: Stderr,
}

impl Launch {
    /// `binary` with logs at `warn` and no Kubernetes mirror (no process
    /// of a drill or test should find the machine's kubeconfig).
    pub fn new(binary: impl AsRef<Path>) -> Self {
        Launch {
            binary: binary.as_ref().to_path_buf(),
            args: vec![],
            env: vec![
                ("ESI_LOG_LEVEL".into(), "warn".into()),
                ("ESI_NO_MIRROR".into(), "true".into()),
            ],
            stderr: Stderr::Null,
        }
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves `key` unset (e.g. `ESI_NO_MIRROR`, for a process that should
    /// mirror into Kubernetes).
    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn stderr(mut self, to: Stderr) -> Self {
        self.stderr = to;
        self
    }

    pub fn spawn(&self) -> std::io::Result<Launched> {
        let (stderr, log) = match &self.stderr {
            Stderr::Null => (Stdio::null(), None),
            Stderr::Inherit => (Stdio::inherit(), None),
            Stderr::File(p) => (Stdio::from(std::fs::File::create(p)?), Some(p.clone())),
        };
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Launched { child, log })
    }
}

/// A running process, killed when dropped.
pub struct Launched {
    pub child: Child,
    /// Its stderr, when it goes to a file.
    pub log: Option<PathBuf>,
}

impl Launched {
    /// Sends `sig` while it runs (`Signal::STOP` freezes it with its
    /// connections open, `Signal::CONT` thaws it).
    pub fn signal(&self, sig: Signal) {
        signal(&self.child, sig);
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.signal(Signal::TERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    /// How it exited, with the end of its log, if it has.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(format!("exited ({status}): {}", self.tail()))
    }

    /// The last lines of its log ("" without one).
    pub fn tail(&self) -> String {
        self.log.as_deref().map(tail).unwrap_or_default()
    }

    /// Waits until it serves `/readyz` with 200 on `addr`; fails with its
    /// last words if it exits first or is not ready `within`.
    pub async fn wait_ready(&mut self, addr: &str, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(exit) = self.exited() {
                return Err(exit);
            }
            if matches!(crate::scrape::fetch(addr, "/readyz").await, Some((200, _))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "not ready on {addr} within {within:?}: {}",
                    self.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `sig` to a child process that still runs.
pub fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// The last lines of a log file, for a failure message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return "(no output)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
