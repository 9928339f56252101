//! The command line every service binary takes:
//! `tenx-<service> [--config FILE] <command>`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// Exit code for a usage error (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for bad configuration (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// Parsed arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// `--config FILE`: a TOML file layered over the defaults.
    pub config: Option<PathBuf>,
    /// The command (`serve`, `migrate`, …) and its operands, space
    /// separated (`grant-role ada@example.com admin`); `None` means the
    /// default.
    pub command: Option<String>,
}

/// Parses `args` (without the program name). `Err` is the exit code to
/// return: after printing `usage` for `--help` (success) or on a usage
/// error.
pub fn parse(args: impl IntoIterator<Item = String>, usage: &str) -> Result<Args, ExitCode> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(path) => parsed.config = Some(PathBuf::from(path)),
                None => {
                    eprintln!("{usage}");
                    return Err(ExitCode::from(EXIT_USAGE));
                }
            },
            "-h" | "--help" => {
                println!("{usage}");
                return Err(ExitCode::SUCCESS);
            }
            other if parsed.command.is_none() => parsed.command = Some(other.to_owned()),
            // Operands of the command (`grant-role EMAIL ROLE`), kept in
            // the command string; a command that takes none refuses them.
            other if !other.starts_with('-') && !other.contains(' ') => {
                if let Some(command) = parsed.command.as_mut() {
                    command.push(' ');
                    command.push_str(other);
                }
            }
            _ => {
                eprintln!("{usage}");
                return Err(ExitCode::from(EXIT_USAGE));
            }
        }
    }
    Ok(parsed)
}

/// A service binary's `main`: parses the arguments, loads the settings
/// (a bad one exits 78 with one line naming it), then runs the command.
/// `run` gets the command and the settings; an `Err` is printed as
/// `<name>: <error>` and exits 1.
pub async fn run<S, Run, Fut>(
    name: &str,
    usage: &str,
    load: impl FnOnce(Option<&Path>) -> Result<S, ConfigError>,
    run: Run,
) -> ExitCode
where
    Run: FnOnce(Option<String>, S) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let args = match parse(std::env::args().skip(1), usage) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let settings = match load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(args.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The `serve` command: telemetry for `name`, a shutdown on SIGTERM or
/// SIGINT, then `start` (build the app, spawn it, wait for it) until it
/// ends; spans still pending are flushed before returning.
pub async fn serve<Start, Fut>(name: &str, telemetry: &TelemetrySettings, start: Start) -> Result<(), String>
where
    Start: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let guard = crate::telemetry::init(name, telemetry).map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(|e| e.to_string())?;
    let result = start(shutdown).await;
    guard.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn takes_an_optional_config_and_one_command() {
        let parsed = parse(args(&["--config", "a.toml", "migrate"]), "usage").expect("parses");
        assert_eq!(parsed, Args { config: Some("a.toml".into()), command: Some("migrate".into()) });
        assert_eq!(parse(args(&[]), "usage").expect("parses"), Args::default());
        let operands = parse(args(&["grant-role", "ada@example.com", "admin"]), "usage").expect("parses");
        assert_eq!(operands.command.as_deref(), Some("grant-role ada@example.com admin"));
        assert!(parse(args(&["serve", "--verbose"]), "usage").is_err());
        assert!(parse(args(&["grant-role", "two words"]), "usage").is_err(), "no operand hides a space");
        assert!(parse(args(&["--config"]), "usage").is_err());
    }
}
