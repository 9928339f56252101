//! `tenx-billing [--config FILE] <serve|migrate>`

use std::process::ExitCode;

use tenx_billing::{App, BillingSettings};
use tenx_common::cli;
use tenx_common::metrics::Metrics;

const USAGE: &str = "usage: tenx-billing [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-billing", USAGE, BillingSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => {
                let telemetry = settings.telemetry.clone();
                cli::serve("tenx-billing", &telemetry, |shutdown| async move {
                    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
                    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
                    running.task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                })
                .await
            }
            Some("migrate") => tenx_billing::migrate(&settings).await.map_err(|e| e.to_string()),
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
