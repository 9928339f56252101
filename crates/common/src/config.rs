//! Typed settings for a service: embedded defaults → optional file →
//! `TENX_<SERVICE>__…` environment variables, then [`Validate`].
//!
//! A bad or missing key stops startup with one line that names it, both as
//! the dotted key and as the environment variable that sets it. Secrets
//! live in [`Secret`], whose `Debug` never prints the value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why settings could not be loaded. `Display` is the one line an operator
/// reads at startup.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: missing required key `{key}` (set {env})")]
    Missing { key: String, env: String },
    #[error("config: bad value for `{key}` (set {env}): {reason}")]
    Invalid { key: String, env: String, reason: String },
    #[error("config: cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// A value that must never reach a log: `Debug` and `Display` print
/// `[redacted]`. Read it with [`Secret::expose`].
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value itself; call only where it is used, never to log.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// A rule the type system cannot express (a port in range, a URL that
/// parses). `Err` names the dotted key and the reason.
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// One failed [`Validate`] rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }
}

/// Loads the settings of one service.
///
/// ```no_run
/// # use serde::Deserialize;
/// # use tenx_common::config::{Loader, Validate, Invalid};
/// #[derive(Debug, Deserialize)]
/// struct Settings { port: u16 }
/// impl Validate for Settings { fn validate(&self) -> Result<(), Invalid> { Ok(()) } }
/// let settings: Settings = Loader::new("auth", "port = 50051").load().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Loader {
    service: String,
    defaults: String,
    file: Option<PathBuf>,
    env: Option<HashMap<String, String>>,
}

impl Loader {
    /// `service` names the env prefix (`auth` → `TENX_AUTH__…`); `defaults`
    /// is the service's embedded, commented TOML defaults.
    pub fn new(service: &str, defaults: &str) -> Self {
        Self { service: service.to_owned(), defaults: defaults.to_owned(), file: None, env: None }
    }

    /// An optional TOML file layered over the defaults (it must exist).
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.file = Some(path.as_ref().to_owned());
        self
    }

    /// A TOML file over the defaults when one is named (`--config FILE`).
    pub fn file_if(mut self, path: Option<&Path>) -> Self {
        self.file = path.map(Path::to_owned);
        self
    }

    /// An isolated instance on loopback, as tests and benchmarks run one:
    /// free ports and readable logs, then `keys` (`database.primary_url`,
    /// …) over the defaults; the process environment is not read.
    pub fn isolated(mut self, keys: &[(&str, &str)]) -> Self {
        let loopback = [
            ("server.listen", "127.0.0.1:0"),
            ("server.admin_listen", "127.0.0.1:0"),
            ("telemetry.log_format", "pretty"),
        ];
        let vars = loopback.iter().chain(keys).map(|(key, value)| (self.env_name(key), (*value).to_owned()));
        self.env = Some(vars.collect());
        self
    }

    /// [`Loader::isolated`] for a service with a database, Redis and the
    /// broker: its own databases, Redis key prefix and AMQP name prefix.
    pub fn isolated_backend(
        self,
        [primary, replica, redis_prefix, amqp_prefix]: [&str; 4],
        more: &[(&str, &str)],
    ) -> Self {
        let own = [
            ("database.primary_url", primary),
            ("database.replica_url", replica),
            ("redis.key_prefix", redis_prefix),
            ("amqp.prefix", amqp_prefix),
        ];
        let keys: Vec<(&str, &str)> = own.iter().chain(more).copied().collect();
        self.isolated(&keys)
    }

    /// Reads variables from this map instead of the process environment,
    /// so tests never have to change the environment.
    pub fn env_from(mut self, vars: HashMap<String, String>) -> Self {
        self.env = Some(vars);
        self
    }

    fn env_prefix(&self) -> String {
        format!("TENX_{}", self.service.to_uppercase())
    }

    fn env_name(&self, key: &str) -> String {
        format!("{}__{}", self.env_prefix(), key.replace('.', "__").to_uppercase())
    }

    pub fn load<T: DeserializeOwned + Validate>(&self) -> Result<T, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&self.defaults, config::FileFormat::Toml));
        if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(ConfigError::File { path: path.clone(), reason: "no such file".into() });
            }
            builder = builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        let env = config::Environment::with_prefix(&self.env_prefix())
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(self.env.clone());
        let merged = builder.add_source(env).build().map_err(|e| match e {
            config::ConfigError::FileParse { uri, cause } => ConfigError::File {
                path: uri.map(PathBuf::from).unwrap_or_else(|| "<defaults>".into()),
                reason: cause.to_string(),
            },
            other => self.invalid("", other.to_string()),
        })?;

        let settings: T = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            match missing_key(&path, &message) {
                Some(key) => ConfigError::Missing { env: self.env_name(&key), key },
                None => self.invalid(&path, strip_key_suffix(&message)),
            }
        })?;
        settings.validate().map_err(|bad| self.invalid(&bad.key, bad.reason))?;
        Ok(settings)
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid { key: key.to_owned(), env: self.env_name(key), reason: redact_quoted(&reason) }
    }
}

/// The dotted key of a missing field. The `config` crate words it as
/// `missing configuration field "a.b"` (full key); plain serde as
/// ``missing field `b` `` (relative to `path`).
fn missing_key(path: &str, message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("missing configuration field \"") {
        return rest.split('"').next().map(str::to_owned);
    }
    let field = message.strip_prefix("missing field `")?.split('`').next()?;
    Some(join_key(path, field))
}

/// Parser messages quote the offending value (`invalid type: string
/// "postgres://u:pw@…"`); a value set under the wrong key may be a secret.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

fn strip_key_suffix(message: &str) -> String {
    message.split(" for key ").next().unwrap_or(message).to_owned()
}

fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() || path == "." { field.to_owned() } else { format!("{path}.{field}") }
}
