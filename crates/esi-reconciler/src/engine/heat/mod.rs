//! The Heat engine: drives OpenStack Heat's orchestration API v1.
//!
//! Every operation is made idempotent here, because a job may be run again
//! after any crash of the worker or of Heat:
//! - create on a name that exists (409 `StackExists`) finds the stack and
//!   adopts it; a FAILED one is recovered with PUT;
//! - update of a missing stack creates it; of a FAILED one is a PUT (PATCH
//!   only works on `*_COMPLETE` stacks, and PUT works on both);
//! - delete of a stack that is gone is success.
//!
//! A stack whose operation is still in progress is not touched by update
//! or delete-less create paths: its result would be reported for a job
//! that did not start it. The job fails with a clear reason and the
//! reconciler retries it with backoff once Heat has finished.
//!
//! The stack is found by name (`GET /stacks/{name}` answers 302 to the
//! name/id URL, which the GET follows) and every change is sent to the
//! name/id URL built here: a redirect would drop the body.
//!
//! HTTP is reqwest's; Keystone (credentials from `clouds.yaml` or `OS_*`,
//! tokens, the catalog) is osauth's.

pub mod wire;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use osauth::client::AuthenticatedClient;
use osauth::{CloudConfig, ErrorKind, NoAuth};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::{Engine, EngineError, StackInfo, StackSpec};
use wire::HeatFault;

/// How the worker proves who it is. Keystone is `osauth`'s: the
/// credentials come from `OS_CLOUD` and a `clouds.yaml`, or from the `OS_*`
/// variables (password or application credential), as the OpenStack tools
/// read them; tokens are cached and renewed by it.
#[derive(Debug, Clone)]
pub enum HeatAuth {
    /// Heat's no-auth pipeline (no Keystone): the project is sent as
    /// `X-Auth-Project`.
    None {
        project: String,
    },
    Keystone(Box<CloudConfig>),
}

impl HeatAuth {
    /// Keystone credentials from the process's environment (and a
    /// `clouds.yaml` when `OS_CLOUD` names one).
    pub fn keystone_from_environment() -> Result<HeatAuth, String> {
        let config = CloudConfig::from_env().map_err(|e| e.to_string())?;
        // osauth checks the rest when it first authenticates; without an
        // auth URL nothing can work, so say so at start.
        let shown = serde_json::to_value(&config).unwrap_or_default();
        if shown
            .pointer("/auth/auth_url")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err("no Keystone auth_url: set OS_AUTH_URL, or OS_CLOUD naming a clouds.yaml entry with one".into());
        }
        Ok(HeatAuth::Keystone(Box::new(config)))
    }
}

#[derive(Debug, Clone)]
pub struct HeatOptions {
    /// The orchestration endpoint (`…/v1/{project}`); with Keystone, taken
    /// from the catalog when absent.
    pub url: Option<String>,
    pub auth: HeatAuth,
    /// Sent with every create and update (PUT replaces the environment).
    pub environment: Map<String, Value>,
    /// Files the environment refers to, by the name it uses.
    pub files: Map<String, Value>,
    /// Bound on one HTTP request.
    pub request_timeout: Duration,
    /// Retries of a request that found Heat (or Keystone) unreachable or
    /// overloaded (connection refused, 502, 503, 504) before the call fails.
    pub retries: usize,
    /// Bound on any answer's body.
    pub max_answer_bytes: usize,
}

impl HeatOptions {
    pub fn new(url: Option<String>, auth: HeatAuth) -> Self {
        Self {
            url,
            auth,
            environment: Map::new(),
            files: Map::new(),
            request_timeout: Duration::from_secs(30),
            retries: 5,
            max_answer_bytes: crate::limits::Limits::current().record_bytes,
        }
    }
}

/// An authenticated client and the endpoint it talks to.
struct Session {
    client: AuthenticatedClient,
    base: Url,
}

pub struct HeatEngine {
    opts: HeatOptions,
    /// Made on first use, so a Keystone that is down when the worker starts
    /// fails jobs (retried with backoff) rather than the worker.
    session: OnceCell<Session>,
}

/// An answer: status and body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<Value, EngineError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            EngineError::Rejected(format!(
                "Heat answered {} with a body that is not JSON: {e}",
                self.status
            ))
        })
    }
    fn fault(&self) -> HeatFault {
        wire::fault(self.status.as_u16(), &self.body)
    }
}

/// Why a request did not get an answer worth reading.
enum Failure {
    /// Heat or Keystone unreachable, timed out, or answering 502/503/504:
    /// retried.
    Transient(String),
    /// The token was refused: get a new one, once.
    Unauthorized(String),
    Fatal(EngineError),
}

fn rejected(what: &str, f: HeatFault) -> EngineError {
    EngineError::Rejected(format!("{what}: {f}"))
}

/// osauth's errors: bad credentials and configuration are final; the rest
/// (Keystone unreachable or failing) is worth another try.
fn auth_failure(e: osauth::Error) -> Failure {
    let why = format!("Keystone: {e}");
    match e.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::AccessDenied
        | ErrorKind::InvalidConfig
        | ErrorKind::InvalidInput
        | ErrorKind::EndpointNotFound => Failure::Fatal(EngineError::Rejected(why)),
        _ => Failure::Transient(why),
    }
}

impl HeatEngine {
    /// Checks what can be checked before any request (the URL), so the
    /// worker stops at start on settings that can never work.
    pub fn new(opts: HeatOptions) -> Result<Self, String> {
        match (&opts.url, &opts.auth) {
            (Some(u), _) => {
                parse_base(u)?;
            }
            (None, HeatAuth::None { .. }) => {
                return Err("--heat-url is required with --heat-auth none (there is no Keystone catalog to find Heat in)".into());
            }
            (None, HeatAuth::Keystone(_)) => {}
        }
        Ok(Self {
            opts,
            session: OnceCell::new(),
        })
    }

    async fn session(&self) -> Result<&Session, Failure> {
        self.session
            .get_or_try_init(|| async {
                let s = tokio::time::timeout(self.opts.request_timeout, self.connect())
                    .await
                    .map_err(|_| {
                        Failure::Transient(format!(
                            "Keystone did not answer within {:?}",
                            self.opts.request_timeout
                        ))
                    })??;
                tracing::info!(heat = %s.base, "Heat endpoint");
                Ok(s)
            })
            .await
    }

    async fn connect(&self) -> Result<Session, Failure> {
        let (client, catalog_url) = match &self.opts.auth {
            HeatAuth::None { .. } => {
                let url = self.opts.url.clone().unwrap_or_default();
                let client = AuthenticatedClient::new(
                    reqwest::Client::new(),
                    NoAuth::new(&url).map_err(auth_failure)?,
                )
                .await
                .map_err(auth_failure)?;
                (client, None)
            }
            HeatAuth::Keystone(config) => {
                let session = config
                    .as_ref()
                    .clone()
                    .create_session()
                    .await
                    .map_err(auth_failure)?;
                let client = session.client().clone();
                let url = match &self.opts.url {
                    Some(_) => None,
                    None => Some(
                        client
                            .get_endpoint("orchestration", session.endpoint_filters())
                            .await
                            .map_err(auth_failure)?,
                    ),
                };
                (client, url)
            }
        };
        let base = match (&self.opts.url, catalog_url) {
            (Some(u), _) => parse_base(u),
            (None, Some(u)) => parse_base(u.as_str()),
            (None, None) => Err("no Heat endpoint: give --heat-url".into()),
        }
        .map_err(|e| Failure::Fatal(EngineError::Rejected(e)))?;
        Ok(Session { client, base })
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.opts.retries)
            .with_jitter()
    }

    /// Reads a body up to the bound: a server is not trusted to send a
    /// sane amount.
    async fn read(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            Failure::Transient(format!(
                "reading Heat's answer: {}",
                crate::store::client::one_line(&e)
            ))
        })? {
            if body.len().saturating_add(chunk.len()) > self.opts.max_answer_bytes {
                return Err(Failure::Fatal(EngineError::Rejected(format!(
                    "Heat's answer is larger than {} bytes",
                    self.opts.max_answer_bytes
                ))));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// One request to Heat, retried while Heat is unreachable, with a new
    /// token once if the token was refused. A lookup by name answers 302
    /// to the name/id URL, which a GET follows.
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&Value>,
    ) -> Result<Answer, EngineError> {
        let mut reauthenticated = false;
        loop {
            let attempt = || async {
                let session = self.session().await?;
                let url = join(&session.base, path);
                // osauth adds the token (renewing it when it expires); the
                // request itself is reqwest's, so its errors keep their cause.
                let http = session.client.inner();
                let mut req = http
                    .request(method.clone(), url.clone())
                    .header("Accept", "application/json")
                    .timeout(self.opts.request_timeout);
                if let HeatAuth::None { project } = &self.opts.auth {
                    req = req
                        .header("X-Auth-Project", project.as_str())
                        .header("X-Auth-User", "esi-reconciler");
                }
                if let Some(b) = body {
                    req = req.json(b);
                }
                let req = tokio::time::timeout(
                    self.opts.request_timeout,
                    session.client.auth_type().authenticate(http, req),
                )
                .await
                .map_err(|_| {
                    Failure::Transient(format!(
                        "Keystone did not renew the token within {:?}",
                        self.opts.request_timeout
                    ))
                })?
                .map_err(auth_failure)?;
                let resp = req.send().await.map_err(|e| {
                    Failure::Transient(format!(
                        "Heat at {url}: {}",
                        crate::store::client::one_line(&e)
                    ))
                })?;
                let status = resp.status();
                let body = self.read(resp).await?;
                if is_transient(status) {
                    return Err(Failure::Transient(format!(
                        "Heat at {url}: {}",
                        wire::fault(status.as_u16(), &body)
                    )));
                }
                if status == StatusCode::UNAUTHORIZED
                    && matches!(self.opts.auth, HeatAuth::Keystone(_))
                {
                    return Err(Failure::Unauthorized(
                        wire::fault(status.as_u16(), &body).to_string(),
                    ));
                }
                Ok(Answer { status, body })
            };
            match attempt
                .retry(self.backoff())
                .when(|f| matches!(f, Failure::Transient(_)))
                .notify(|f, after| {
                    if let Failure::Transient(why) = f {
                        tracing::warn!(error = %why, retry_in = ?after, "Heat request failed; retrying");
                    }
                })
                .await
            {
                Ok(a) => return Ok(a),
                Err(Failure::Unauthorized(why)) if !reauthenticated => {
                    tracing::info!(reason = %why, "Heat refused the token; authenticating again");
                    reauthenticated = true;
                    if let Some(s) = self.session.get() {
                        let mut c = s.client.clone();
                        c.refresh().await.map_err(|e| match auth_failure(e) {
                            Failure::Fatal(e) => e,
                            other => other.into_error(),
                        })?;
                    }
                }
                Err(f) => return Err(f.into_error()),
            }
        }
    }

    /// The stack of this name, if Heat has one (a deleted stack is gone).
    async fn find(&self, name: &str) -> Result<Option<StackInfo>, EngineError> {
        let a = self.call(Method::GET, &["stacks", name], None).await?;
        match a.status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let info = self.stack(&a)?;
                // Soft-deleted: Heat still shows it by id.
                Ok((info.status != "DELETE_COMPLETE").then_some(info))
            }
            _ => Err(rejected(&format!("looking up stack {name}"), a.fault())),
        }
    }

    fn stack(&self, a: &Answer) -> Result<StackInfo, EngineError> {
        wire::stack_info(&a.json()?)
            .map_err(|e| EngineError::Rejected(format!("Heat's stack answer: {e}")))
    }

    /// `POST /stacks`; on 409 the stack of that name is adopted.
    async fn create(&self, spec: &StackSpec) -> Result<StackInfo, EngineError> {
        let body = wire::create_body(spec, &self.opts.environment, &self.opts.files);
        let a = self.call(Method::POST, &["stacks"], Some(&body)).await?;
        match a.status {
            StatusCode::CREATED | StatusCode::OK | StatusCode::ACCEPTED => {
                let id = wire::created_id(&a.json()?).map_err(EngineError::Rejected)?;
                Ok(in_progress(&spec.name, id, "CREATE"))
            }
            StatusCode::CONFLICT => match self.find(&spec.name).await? {
                // Gone again between the two calls: the next try creates it.
                None => Err(EngineError::Unavailable(format!(
                    "stack {} existed and then vanished while being created",
                    spec.name
                ))),
                Some(existing) => self.adopt(spec, existing).await,
            },
            _ => Err(rejected(
                &format!("creating stack {}", spec.name),
                a.fault(),
            )),
        }
    }

    /// What to do with a stack that exists when a job wants it in shape.
    async fn adopt(&self, spec: &StackSpec, existing: StackInfo) -> Result<StackInfo, EngineError> {
        let action = existing.status.split('_').next().unwrap_or_default();
        if action == "DELETE" {
            return Err(EngineError::Rejected(format!(
                "stack {} is {}; it can be made again once the delete is over",
                spec.name, existing.status
            )));
        }
        if !existing.is_terminal() {
            tracing::info!(stack = %spec.name, status = %existing.status, "adopting a stack in progress");
            return Ok(existing);
        }
        if existing.is_failed() {
            tracing::info!(stack = %spec.name, status = %existing.status, "recovering a failed stack with PUT");
            return self.put(spec, &existing.id).await;
        }
        Ok(existing)
    }

    /// `PUT /stacks/{name}/{id}`: the whole template and environment.
    async fn put(&self, spec: &StackSpec, id: &str) -> Result<StackInfo, EngineError> {
        let body = wire::update_body(spec, &self.opts.environment, &self.opts.files);
        let a = self
            .call(Method::PUT, &["stacks", &spec.name, id], Some(&body))
            .await?;
        if a.status.is_success() {
            Ok(in_progress(&spec.name, id.to_string(), "UPDATE"))
        } else {
            Err(rejected(
                &format!("updating stack {}", spec.name),
                a.fault(),
            ))
        }
    }
}

/// What an accepted operation looks like until the first poll.
fn in_progress(name: &str, id: String, action: &str) -> StackInfo {
    StackInfo {
        id,
        name: name.to_string(),
        status: format!("{action}_IN_PROGRESS"),
        reason: format!("Stack {action} started"),
        outputs: vec![],
    }
}

impl Engine for HeatEngine {
    async fn create_stack(&self, spec: &StackSpec) -> Result<StackInfo, EngineError> {
        self.create(spec).await
    }

    async fn update_stack(&self, spec: &StackSpec) -> Result<StackInfo, EngineError> {
        match self.find(&spec.name).await? {
            None => self.create(spec).await,
            Some(s) if !s.is_terminal() => Err(EngineError::Rejected(format!(
                "stack {} is {} from an earlier operation; it is updated once that ends",
                spec.name, s.status
            ))),
            Some(s) if s.status.starts_with("DELETE") => self.adopt(spec, s).await,
            Some(s) => self.put(spec, &s.id).await,
        }
    }

    async fn delete_stack(&self, name: &str) -> Result<StackInfo, EngineError> {
        let Some(s) = self.find(name).await? else {
            return Ok(StackInfo::gone(name));
        };
        if s.status == "DELETE_IN_PROGRESS" {
            return Ok(s);
        }
        // During another operation, Heat's legacy engine cancels it and
        // deletes: what ESI's delete asks for.
        let a = self
            .call(Method::DELETE, &["stacks", name, &s.id], None)
            .await?;
        match a.status {
            StatusCode::NOT_FOUND => Ok(StackInfo::gone(name)),
            st if st.is_success() => Ok(in_progress(name, s.id, "DELETE")),
            _ => Err(rejected(&format!("deleting stack {name}"), a.fault())),
        }
    }

    async fn get_stack(&self, name: &str) -> Result<Option<StackInfo>, EngineError> {
        self.find(name).await
    }
}

fn is_transient(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

impl Failure {
    fn into_error(self) -> EngineError {
        match self {
            Failure::Transient(why) => EngineError::Unavailable(why),
            Failure::Unauthorized(why) => {
                EngineError::Rejected(format!("Heat refused the token: {why}"))
            }
            Failure::Fatal(e) => e,
        }
    }
}

/// The orchestration endpoint as a base to join paths to.
fn parse_base(url: &str) -> Result<Url, String> {
    let u = Url::parse(url).map_err(|e| format!("Heat URL {url:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.cannot_be_a_base() {
        return Err(format!("Heat URL {url:?} is not an http(s) endpoint"));
    }
    Ok(u)
}

/// `base/seg/seg…`, each segment escaped: stack names come from etcd.
fn join(base: &Url, path: &[&str]) -> Url {
    let mut u = base.clone();
    if let Ok(mut segs) = u.path_segments_mut() {
        segs.pop_if_empty();
        for p in path {
            segs.push(p);
        }
    }
    u
}
