//! `tenx-notification [--config FILE] <serve|migrate>`

use std::path::PathBuf;
use std::process::ExitCode;

use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;
use tenx_notification::{App, NotificationSettings};

const USAGE: &str = "usage: tenx-notification [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut config, mut command) = (None::<PathBuf>, None::<String>);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other if command.is_none() => command = Some(other.to_owned()),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    let settings = match NotificationSettings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tenx-notification: {error}");
            return ExitCode::from(78);
        }
    };
    let result = match command.as_deref() {
        Some("serve") | None => serve(settings).await,
        Some("migrate") => tenx_notification::migrate(&settings).await.map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenx-notification: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: NotificationSettings) -> Result<(), String> {
    let telemetry =
        tenx_common::telemetry::init("tenx-notification", &settings.telemetry).map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(|e| e.to_string())?;
    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
    let result = running.task.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    telemetry.shutdown().await;
    result
}
