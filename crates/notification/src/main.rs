//! `tenx-notification [--config FILE] <serve|migrate>`

use std::process::ExitCode;

use tenx_common::cli;
use tenx_common::metrics::Metrics;
use tenx_notification::{App, NotificationSettings};

const USAGE: &str = "usage: tenx-notification [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-notification", USAGE, NotificationSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => {
                let telemetry = settings.telemetry.clone();
                cli::serve("tenx-notification", &telemetry, |shutdown| async move {
                    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
                    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
                    running.task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                })
                .await
            }
            Some("migrate") => tenx_notification::migrate(&settings).await.map_err(|e| e.to_string()),
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
