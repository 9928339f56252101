//! Settings loading: layering, the one-line error, secrets kept out of Debug.

use std::collections::HashMap;

use serde::Deserialize;
use tenx_common::config::{ConfigError, Invalid, Loader, Secret, Validate};
use tenx_common::db::DbSettings;

#[derive(Debug, Deserialize)]
struct Settings {
    name: String,
    port: u16,
    database: DbSettings,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), Invalid> {
        if self.port == 0 {
            return Err(Invalid::new("port", "must not be 0"));
        }
        self.database.validate()
    }
}

const DEFAULTS: &str = r#"
name = "demo"
port = 50051
[database]
schema = "demo"
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_missing_required_key_is_named_with_its_env_variable() {
    let err = Loader::new("demo", DEFAULTS).env_from(env(&[])).load::<Settings>().expect_err("must fail");
    assert!(matches!(&err, ConfigError::Missing { key, .. } if key == "database.primary_url"), "{err:?}");
    assert_eq!(
        err.to_string(),
        "config: missing required key `database.primary_url` (set TENX_DEMO__DATABASE__PRIMARY_URL)"
    );
}

#[test]
fn env_overrides_file_which_overrides_defaults() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tenx-config-{}", uuid_like()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("demo.toml");
    std::fs::write(&file, "name = \"from-file\"\nport = 6000\n")?;
    let settings: Settings = Loader::new("demo", DEFAULTS)
        .file(&file)
        .env_from(env(&[
            ("TENX_DEMO__PORT", "7000"),
            ("TENX_DEMO__DATABASE__PRIMARY_URL", "postgres://app:hunter2@db:5432/app"),
        ]))
        .load()?;
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(settings.name, "from-file");
    assert_eq!(settings.port, 7000);
    assert_eq!(settings.database.schema, "demo");
    assert_eq!(settings.database.max_connections, 16, "unset keys keep their defaults");
    Ok(())
}

#[test]
fn a_bad_value_names_the_key() {
    let err = Loader::new("demo", DEFAULTS)
        .env_from(env(&[
            ("TENX_DEMO__PORT", "seventy"),
            ("TENX_DEMO__DATABASE__PRIMARY_URL", "postgres://db/app"),
        ]))
        .load::<Settings>()
        .expect_err("must fail");
    let line = err.to_string();
    assert!(line.contains("`port`") && line.contains("TENX_DEMO__PORT"), "{line}");
}

#[test]
fn validate_rules_stop_loading_with_the_key_named() {
    let err = Loader::new("demo", DEFAULTS)
        .env_from(env(&[
            ("TENX_DEMO__DATABASE__PRIMARY_URL", "postgres://db/app"),
            ("TENX_DEMO__DATABASE__SCHEMA", "Robert'); DROP"),
        ]))
        .load::<Settings>()
        .expect_err("must fail");
    assert!(err.to_string().contains("database.schema"), "{err}");
}

#[test]
fn secrets_never_reach_debug_output() -> anyhow::Result<()> {
    let settings: Settings = Loader::new("demo", DEFAULTS)
        .env_from(env(&[("TENX_DEMO__DATABASE__PRIMARY_URL", "postgres://app:hunter2@db:5432/app")]))
        .load()?;
    let printed = format!("{settings:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("[redacted]"));
    assert_eq!(format!("{}", Secret::new("x")), "[redacted]");
    Ok(())
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

#[test]
fn a_secret_set_under_the_wrong_key_is_not_echoed_in_the_error() {
    let err = Loader::new("demo", DEFAULTS)
        .env_from(env(&[("TENX_DEMO__DATABASE", "postgres://app:hunter2@db:5432/app")]))
        .load::<Settings>()
        .expect_err("must fail");
    let line = err.to_string();
    assert!(!line.contains("hunter2"), "{line}");
    assert!(line.contains("database"), "{line}");
}
