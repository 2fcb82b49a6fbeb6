//! Who the worker is to Heat: Keystone v3 credentials read the way the
//! OpenStack tools read them (a `clouds.yaml` entry named by `OS_CLOUD`, or
//! the `OS_*` variables), the token request they make, and the catalog
//! lookup that finds Heat. Pure functions; the HTTP call is in `session`.

use serde_json::{Map, Value, json};

use crate::limits::Limits;

/// Keystone v3 credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Keystone's endpoint, with or without `/v3`.
    pub auth_url: String,
    pub method: Method,
    /// `OS_REGION_NAME`: which region's Heat to use from the catalog.
    pub region: Option<String>,
    /// `OS_INTERFACE`: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// `OS_CACERT`: a CA bundle for Keystone's and Heat's TLS.
    pub cacert: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Method {
    Password {
        user: Named,
        user_domain: Named,
        password: String,
        project: Named,
        project_domain: Named,
    },
    /// Application credentials are scoped already: no project is sent.
    ApplicationCredential {
        /// By id, or by name with the user that owns it.
        credential: Named,
        user: Option<(Named, Named)>,
        secret: String,
    },
}

/// A Keystone object given by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Id(String),
    Name(String),
}

impl Named {
    fn json(&self) -> Value {
        match self {
            Named::Id(id) => json!({"id": id}),
            Named::Name(n) => json!({"name": n}),
        }
    }
}

// Secrets never reach a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = match &self.method {
            Method::Password { user, project, .. } => {
                format!("password for {user:?} in {project:?}")
            }
            Method::ApplicationCredential { credential, .. } => {
                format!("application credential {credential:?}")
            }
        };
        f.debug_struct("Credentials")
            .field("auth_url", &self.auth_url)
            .field("method", &method)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .finish()
    }
}

/// Settings by their `OS_*` name without the prefix, lower-case
/// (`auth_url`, `username`, …): the form both the variables and a
/// `clouds.yaml` entry reduce to.
type Settings = Map<String, Value>;

const VARIABLES: &[&str] = &[
    "auth_url",
    "auth_type",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "tenant_name",
    "tenant_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
    "region_name",
    "interface",
    "cacert",
];

/// Reads credentials from `OS_CLOUD`'s entry in the first `clouds.yaml`
/// found (`OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
/// `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`), or from
/// the `OS_*` variables when `OS_CLOUD` is not set. `env` and `read` are
/// the process's environment and file system (parameters, for tests).
pub fn from_environment(
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    if let Some(cloud) = env("OS_CLOUD").filter(|c| !c.is_empty()) {
        let home = env("HOME").unwrap_or_default();
        let candidates = [
            env("OS_CLIENT_CONFIG_FILE"),
            Some("clouds.yaml".to_string()),
            Some(format!("{home}/.config/openstack/clouds.yaml")),
            Some("/etc/openstack/clouds.yaml".to_string()),
        ];
        let (path, text) = candidates
            .into_iter()
            .flatten()
            .find_map(|p| read(&p).map(|t| (p, t)))
            .ok_or_else(|| {
                format!("OS_CLOUD={cloud}, but no clouds.yaml was found (OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml)")
            })?;
        let settings = cloud_settings(&text, &cloud).map_err(|e| format!("{path}: {e}"))?;
        return credentials(&settings).map_err(|e| format!("{path}, cloud {cloud}: {e}"));
    }
    let mut settings = Settings::new();
    for v in VARIABLES {
        if let Some(value) = env(&format!("OS_{}", v.to_uppercase())).filter(|s| !s.is_empty()) {
            settings.insert((*v).to_string(), Value::String(value));
        }
    }
    credentials(&settings).map_err(|e| format!("OS_* variables: {e}"))
}

/// One cloud's entry of a `clouds.yaml`, flattened: its `auth` mapping and
/// its own keys (`region_name`, `interface`, `cacert`, `auth_type`).
fn cloud_settings(text: &str, cloud: &str) -> Result<Settings, String> {
    let doc = crate::engine::yaml::load(text, &Limits::current()).map_err(|e| e.to_string())?;
    let entry = doc
        .get("clouds")
        .and_then(|c| c.get(cloud))
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no cloud named {cloud} under clouds:"))?;
    let mut s = Settings::new();
    for (k, v) in entry {
        if k == "auth" {
            for (ak, av) in v.as_object().into_iter().flatten() {
                s.insert(ak.clone(), av.clone());
            }
        } else if k == "endpoint_type" {
            s.insert("interface".into(), v.clone());
        } else {
            s.insert(k.clone(), v.clone());
        }
    }
    Ok(s)
}

fn credentials(s: &Settings) -> Result<Credentials, String> {
    // YAML may give numbers (a numeric project id): take any scalar as text.
    let get = |k: &str| -> Option<String> {
        match s.get(k)? {
            Value::String(v) if !v.is_empty() => Some(v.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let named = |id: &str, name: &str| {
        get(id)
            .map(Named::Id)
            .or_else(|| get(name).map(Named::Name))
    };
    let auth_url = get("auth_url").ok_or("auth_url (OS_AUTH_URL) is not set")?;
    let auth_type = get("auth_type").unwrap_or_default();
    let app_cred = auth_type.contains("applicationcredential")
        || (auth_type.is_empty() && get("application_credential_secret").is_some());
    let default_domain =
        || named("domain_id", "domain_name").unwrap_or_else(|| Named::Id("default".into()));
    let method = if app_cred {
        let secret = get("application_credential_secret")
            .ok_or("application_credential_secret is not set")?;
        let credential = named("application_credential_id", "application_credential_name")
            .ok_or("application_credential_id (or _name) is not set")?;
        let user = match &credential {
            Named::Id(_) => None,
            Named::Name(_) => Some((
                named("user_id", "username")
                    .ok_or("an application credential given by name needs username or user_id")?,
                named("user_domain_id", "user_domain_name").unwrap_or_else(default_domain),
            )),
        };
        Method::ApplicationCredential {
            credential,
            user,
            secret,
        }
    } else {
        if !(auth_type.is_empty() || auth_type.contains("password")) {
            return Err(format!(
                "auth_type {auth_type} is not supported (password or v3applicationcredential)"
            ));
        }
        Method::Password {
            user: named("user_id", "username")
                .ok_or("username (OS_USERNAME) or user_id is not set")?,
            user_domain: named("user_domain_id", "user_domain_name").unwrap_or_else(default_domain),
            password: get("password").ok_or("password (OS_PASSWORD) is not set")?,
            project: named("project_id", "project_name")
                .or_else(|| named("tenant_id", "tenant_name"))
                .ok_or("project_name (OS_PROJECT_NAME) or project_id is not set")?,
            project_domain: named("project_domain_id", "project_domain_name")
                .unwrap_or_else(default_domain),
        }
    };
    let interface = get("interface").unwrap_or_else(|| "public".into());
    Ok(Credentials {
        auth_url,
        method,
        region: get("region_name"),
        // The old catalog names (`publicURL`) mean the same interfaces.
        interface: interface.trim_end_matches("URL").to_string(),
        cacert: get("cacert"),
    })
}

/// Keystone's token endpoint for an auth URL given with or without `/v3`.
pub fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// The body of `POST /v3/auth/tokens`.
pub fn token_request(c: &Credentials) -> Value {
    match &c.method {
        Method::Password {
            user,
            user_domain,
            password,
            project,
            project_domain,
        } => {
            let mut u = user.json();
            let mut p = project.json();
            // A domain is needed only for objects given by name.
            if let (Named::Name(_), Some(o)) = (user, u.as_object_mut()) {
                o.insert("domain".into(), user_domain.json());
            }
            if let (Named::Name(_), Some(o)) = (project, p.as_object_mut()) {
                o.insert("domain".into(), project_domain.json());
            }
            if let Some(o) = u.as_object_mut() {
                o.insert("password".into(), Value::String(password.clone()));
            }
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": u}},
                "scope": {"project": p},
            }})
        }
        Method::ApplicationCredential {
            credential,
            user,
            secret,
        } => {
            let mut ac = credential.json();
            if let Some(o) = ac.as_object_mut() {
                o.insert("secret".into(), Value::String(secret.clone()));
                if let Some((u, d)) = user {
                    let mut uj = u.json();
                    if let (Named::Name(_), Some(uo)) = (u, uj.as_object_mut()) {
                        uo.insert("domain".into(), d.json());
                    }
                    o.insert("user".into(), uj);
                }
            }
            json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": ac,
            }}})
        }
    }
}

/// What a token answer tells: when it expires and where Heat is.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// Unix milliseconds; `None` when Keystone gave no parsable time.
    pub expires_at_ms: Option<u64>,
    pub project_id: String,
    /// The orchestration endpoint for the wanted interface and region.
    pub heat_url: Option<String>,
}

/// Reads `{"token": {"expires_at", "project", "catalog"}}`.
pub fn token_info(
    body: &Value,
    interface: &str,
    region: Option<&str>,
) -> Result<TokenInfo, String> {
    let token = body.get("token").ok_or("the answer has no token")?;
    let expires_at_ms = token
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .and_then(|t| u64::try_from(t.as_millisecond()).ok());
    let project_id = token
        .get("project")
        .and_then(|p| p.get("id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let heat_url = token
        .get("catalog")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("orchestration"))
        .flat_map(|s| {
            s.get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|e| {
            let field = |k: &str| e.get(k).and_then(Value::as_str);
            field("interface") == Some(interface)
                && region
                    .is_none_or(|r| field("region_id") == Some(r) || field("region") == Some(r))
        })
        .and_then(|e| e.get("url"))
        .and_then(Value::as_str)
        .map(|u| u.trim_end_matches('/').to_string());
    Ok(TokenInfo {
        expires_at_ms,
        project_id,
        heat_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }
    fn no_files(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn password_from_variables() {
        let env = env_of(&[
            ("OS_AUTH_URL", "https://keystone:5000"),
            ("OS_USERNAME", "esi"),
            ("OS_PASSWORD", "s3cret"),
            ("OS_PROJECT_NAME", "ops"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "r1"),
            ("OS_INTERFACE", "internalURL"),
        ]);
        let c = from_environment(&env, &no_files).unwrap();
        assert_eq!(c.interface, "internal");
        assert_eq!(c.region.as_deref(), Some("r1"));
        assert_eq!(
            token_request(&c),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "esi", "domain": {"name": "Default"}, "password": "s3cret"}}},
                "scope": {"project": {"name": "ops", "domain": {"id": "default"}}}}})
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets stay out of logs"
        );
        assert_eq!(
            tokens_url(&c.auth_url),
            "https://keystone:5000/v3/auth/tokens"
        );
        assert_eq!(tokens_url("http://k/v3/"), "http://k/v3/auth/tokens");
    }

    #[test]
    fn application_credentials_by_id_and_by_name() {
        let env = env_of(&[
            ("OS_AUTH_URL", "http://k/v3"),
            ("OS_AUTH_TYPE", "v3applicationcredential"),
            ("OS_APPLICATION_CREDENTIAL_ID", "ac1"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "shh"),
        ]);
        let c = from_environment(&env, &no_files).unwrap();
        assert_eq!(
            token_request(&c),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac1", "secret": "shh"}}}})
        );
        let env = env_of(&[
            ("OS_AUTH_URL", "http://k/v3"),
            ("OS_APPLICATION_CREDENTIAL_NAME", "worker"),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "shh"),
            ("OS_USERNAME", "esi"),
        ]);
        let c = from_environment(&env, &no_files).unwrap();
        assert_eq!(
            token_request(&c)["auth"]["identity"]["application_credential"],
            json!({"name": "worker", "secret": "shh", "user": {"name": "esi", "domain": {"id": "default"}}})
        );
    }

    #[test]
    fn clouds_yaml_entry() {
        let yaml = "clouds:\n  prod:\n    auth:\n      auth_url: http://k:5000/v3\n      username: esi\n      password: pw\n      project_id: 1234\n      user_domain_id: default\n    region_name: RegionOne\n    interface: internal\n";
        let env = env_of(&[
            ("OS_CLOUD", "prod"),
            ("HOME", "/home/x"),
            ("OS_USERNAME", "ignored"),
        ]);
        let read =
            |p: &str| (p == "/home/x/.config/openstack/clouds.yaml").then(|| yaml.to_string());
        let c = from_environment(&env, &read).unwrap();
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, "internal");
        assert_eq!(
            token_request(&c)["auth"]["scope"],
            json!({"project": {"id": "1234"}}),
            "a project given by id needs no domain"
        );
        let e = from_environment(
            &env_of(&[("OS_CLOUD", "other"), ("HOME", "/home/x")]),
            &read,
        )
        .unwrap_err();
        assert!(e.contains("no cloud named other"), "{e}");
        let e = from_environment(&env_of(&[("OS_CLOUD", "prod")]), &no_files).unwrap_err();
        assert!(e.contains("no clouds.yaml"), "{e}");
    }

    #[test]
    fn missing_settings_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "OS_AUTH_URL"),
            (&[("OS_AUTH_URL", "u")], "OS_USERNAME"),
            (&[("OS_AUTH_URL", "u"), ("OS_USERNAME", "a")], "OS_PASSWORD"),
            (
                &[
                    ("OS_AUTH_URL", "u"),
                    ("OS_USERNAME", "a"),
                    ("OS_PASSWORD", "p"),
                ],
                "OS_PROJECT_NAME",
            ),
            (
                &[("OS_AUTH_URL", "u"), ("OS_AUTH_TYPE", "token")],
                "not supported",
            ),
            (
                &[
                    ("OS_AUTH_URL", "u"),
                    ("OS_AUTH_TYPE", "v3applicationcredential"),
                    ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
                ],
                "application_credential_id",
            ),
        ];
        for (pairs, want) in cases {
            let e = from_environment(&env_of(pairs), &no_files).unwrap_err();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn catalog_lookup_by_interface_and_region() {
        let body = json!({"token": {"expires_at": "2026-11-29T23:00:00.000000Z", "project": {"id": "p1"},
            "catalog": [
                {"type": "identity", "endpoints": [{"interface": "public", "url": "http://k"}]},
                {"type": "orchestration", "endpoints": [
                    {"interface": "public", "region_id": "r1", "url": "http://heat-r1:8004/v1/p1/"},
                    {"interface": "internal", "region_id": "r2", "url": "http://heat-r2:8004/v1/p1"},
                    {"interface": "public", "region_id": "r2", "region": "r2", "url": "http://pub-r2/v1/p1"}]}]}});
        let t = token_info(&body, "public", Some("r2")).unwrap();
        assert_eq!(t.heat_url.as_deref(), Some("http://pub-r2/v1/p1"));
        assert_eq!(t.project_id, "p1");
        assert!(t.expires_at_ms.is_some());
        assert_eq!(
            token_info(&body, "public", None)
                .unwrap()
                .heat_url
                .as_deref(),
            Some("http://heat-r1:8004/v1/p1")
        );
        assert_eq!(token_info(&body, "admin", None).unwrap().heat_url, None);
        assert!(token_info(&json!({}), "public", None).is_err());
    }
}
