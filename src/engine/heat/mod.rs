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
//! name/id URL) and every change is sent to the name/id URL we build
//! ourselves: a redirect drops the body, and Heat's own links carry the
//! host it was asked by, which behind a proxy is not ours.

pub mod auth;
pub mod wire;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::{Engine, EngineError, StackInfo, StackSpec};
use auth::Credentials;
use wire::HeatFault;

/// How the worker proves who it is.
#[derive(Debug, Clone)]
pub enum HeatAuth {
    /// Heat's no-auth pipeline (no Keystone): the project is sent as
    /// `X-Auth-Project`, the user as `X-Auth-User`.
    None {
        project: String,
    },
    Keystone(Box<Credentials>),
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
    /// Retries of a request that found Heat unreachable or overloaded
    /// (connection refused, 502, 503, 504) before the call fails.
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

/// A Keystone token and the endpoint it found.
struct Session {
    token: Option<String>,
    expires_at_ms: Option<u64>,
    base: Url,
}

pub struct HeatEngine {
    http: reqwest::Client,
    opts: HeatOptions,
    session: Mutex<Option<Session>>,
}

/// An answer: status and body (JSON when it parses).
struct Answer {
    status: StatusCode,
    /// `Location`, for the 302 of a lookup by name.
    location: Option<String>,
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
    /// Heat unreachable, timed out, or answering 502/503/504: retried.
    Transient(String),
    /// The token was refused: get a new one, once.
    Unauthorized(String),
    Fatal(EngineError),
}

fn rejected(what: &str, f: HeatFault) -> EngineError {
    EngineError::Rejected(format!("{what}: {f}"))
}

impl HeatEngine {
    /// Builds the client. Fails on options that can never work (a bad URL,
    /// an unreadable CA file), so the worker stops at start instead of
    /// failing every job.
    pub fn new(opts: HeatOptions) -> Result<Self, String> {
        // reqwest is built without a bundled crypto provider: use ring, as
        // the rest of the product does. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(opts.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("esi-reconciler/", env!("CARGO_PKG_VERSION")));
        if let HeatAuth::Keystone(c) = &opts.auth
            && let Some(ca) = &c.cacert
        {
            let pem = std::fs::read(ca).map_err(|e| format!("cannot read OS_CACERT {ca}: {e}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("OS_CACERT {ca} is not a PEM bundle: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(u) = &opts.url {
            parse_base(u)?;
        } else if matches!(opts.auth, HeatAuth::None { .. }) {
            return Err("--heat-url is required with --heat-auth none (there is no Keystone catalog to find Heat in)".into());
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            opts,
            session: Mutex::new(None),
        })
    }

    /// The endpoint and the token to use, authenticating when there is no
    /// token or it is about to expire.
    async fn session(&self) -> Result<(Url, Option<String>), EngineError> {
        let mut s = self.session.lock().await;
        let fresh = s.as_ref().is_some_and(|s| {
            s.expires_at_ms
                .is_none_or(|t| t > crate::clock::now_ms().saturating_add(60_000))
        });
        if !fresh {
            *s = Some(self.authenticate().await?);
        }
        let s = s
            .as_ref()
            .ok_or_else(|| EngineError::Unavailable("no Heat session".into()))?;
        Ok((s.base.clone(), s.token.clone()))
    }

    async fn authenticate(&self) -> Result<Session, EngineError> {
        let c = match &self.opts.auth {
            HeatAuth::None { .. } => {
                let base = parse_base(self.opts.url.as_deref().unwrap_or_default())
                    .map_err(EngineError::Rejected)?;
                return Ok(Session {
                    token: None,
                    expires_at_ms: None,
                    base,
                });
            }
            HeatAuth::Keystone(c) => c,
        };
        let url = auth::tokens_url(&c.auth_url);
        let attempt = || async {
            let resp = self
                .http
                .post(&url)
                .header("Accept", "application/json")
                .json(&auth::token_request(c))
                .send()
                .await
                .map_err(|e| {
                    Failure::Transient(format!(
                        "Keystone at {url}: {}",
                        crate::store::client::one_line(&e)
                    ))
                })?;
            let status = resp.status();
            let token = resp
                .headers()
                .get("X-Subject-Token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = self.read(resp).await.map_err(Failure::Fatal)?;
            if is_transient(status) {
                return Err(Failure::Transient(format!(
                    "Keystone at {url}: HTTP {status}"
                )));
            }
            if !status.is_success() {
                return Err(Failure::Fatal(EngineError::Rejected(format!(
                    "Keystone refused the credentials: {}",
                    wire::fault(status.as_u16(), &body)
                ))));
            }
            Ok((token, body))
        };
        let (token, body) = attempt
            .retry(self.backoff())
            .when(|f| matches!(f, Failure::Transient(_)))
            .await
            .map_err(Failure::into_error)?;
        let token = token.ok_or_else(|| {
            EngineError::Rejected("Keystone answered without X-Subject-Token".into())
        })?;
        let body: Value = serde_json::from_slice(&body).map_err(|e| {
            EngineError::Rejected(format!("Keystone's token answer is not JSON: {e}"))
        })?;
        let info = auth::token_info(&body, &c.interface, c.region.as_deref())
            .map_err(EngineError::Rejected)?;
        let url = match (&self.opts.url, &info.heat_url) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => {
                return Err(EngineError::Rejected(format!(
                    "Keystone's catalog has no orchestration endpoint for interface {}{}; give --heat-url",
                    c.interface,
                    c.region
                        .as_deref()
                        .map(|r| format!(" in region {r}"))
                        .unwrap_or_default()
                )));
            }
        };
        tracing::info!(heat = %url, project = %info.project_id, "authenticated with Keystone");
        Ok(Session {
            token: Some(token),
            expires_at_ms: info.expires_at_ms,
            base: parse_base(&url).map_err(EngineError::Rejected)?,
        })
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
    async fn read(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, EngineError> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            EngineError::Unavailable(format!(
                "reading Heat's answer: {}",
                crate::store::client::one_line(&e)
            ))
        })? {
            if body.len().saturating_add(chunk.len()) > self.opts.max_answer_bytes {
                return Err(EngineError::Rejected(format!(
                    "Heat's answer is larger than {} bytes",
                    self.opts.max_answer_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// One request to Heat, retried while Heat is unreachable, with a new
    /// token once if the token was refused.
    async fn call(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&Value>,
    ) -> Result<Answer, EngineError> {
        let mut reauthenticated = false;
        loop {
            let attempt = || async {
                let (base, token) = self.session().await.map_err(Failure::Fatal)?;
                let url = join(&base, path);
                let mut req = self
                    .http
                    .request(method.clone(), url.clone())
                    .header("Accept", "application/json");
                req = match (&token, &self.opts.auth) {
                    (Some(t), _) => req.header("X-Auth-Token", t),
                    (None, HeatAuth::None { project }) => req
                        .header("X-Auth-Project", project)
                        .header("X-Auth-User", "esi-reconciler"),
                    (None, HeatAuth::Keystone(_)) => req,
                };
                if let Some(b) = body {
                    req = req.json(b);
                }
                let resp = req.send().await.map_err(|e| {
                    Failure::Transient(format!(
                        "Heat at {url}: {}",
                        crate::store::client::one_line(&e)
                    ))
                })?;
                let status = resp.status();
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = self.read(resp).await.map_err(Failure::Fatal)?;
                if is_transient(status) {
                    return Err(Failure::Transient(format!(
                        "Heat at {url}: {}",
                        wire::fault(status.as_u16(), &body)
                    )));
                }
                if status == StatusCode::UNAUTHORIZED && token.is_some() {
                    return Err(Failure::Unauthorized(
                        wire::fault(status.as_u16(), &body).to_string(),
                    ));
                }
                Ok(Answer {
                    status,
                    location,
                    body,
                })
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
                    *self.session.lock().await = None;
                }
                Err(f) => return Err(f.into_error()),
            }
        }
    }

    /// The stack of this name, if Heat has one (a deleted stack is gone).
    async fn find(&self, name: &str) -> Result<Option<StackInfo>, EngineError> {
        let a = self.call(Method::GET, &["stacks", name], None).await?;
        let what = || format!("looking up stack {name}");
        match a.status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => self.stack(&a).map(Some),
            s if s.is_redirection() => {
                // `/stacks/{name}` → `/stacks/{name}/{id}`: take the id, and
                // ask at our own URL for it.
                let id = a
                    .location
                    .as_deref()
                    .and_then(|l| l.trim_end_matches('/').rsplit('/').next())
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| rejected(&what(), a.fault()))?;
                let b = self.call(Method::GET, &["stacks", name, &id], None).await?;
                match b.status {
                    StatusCode::NOT_FOUND => Ok(None),
                    StatusCode::OK => {
                        let info = self.stack(&b)?;
                        // Soft-deleted: Heat still shows it by id.
                        Ok((info.status != "DELETE_COMPLETE").then_some(info))
                    }
                    _ => Err(rejected(&what(), b.fault())),
                }
            }
            _ => Err(rejected(&what(), a.fault())),
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

fn gone(name: &str) -> StackInfo {
    StackInfo {
        id: String::new(),
        name: name.to_string(),
        status: "DELETE_COMPLETE".into(),
        reason: "Stack does not exist".into(),
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
            return Ok(gone(name));
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
            StatusCode::NOT_FOUND => Ok(gone(name)),
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
