//! `tenx-gateway [--config FILE] serve` (the gateway keeps no database,
//! so it has nothing to migrate)

use std::process::ExitCode;

use tenx_common::cli;
use tenx_common::metrics::Metrics;
use tenx_gateway::{App, GatewaySettings};

const USAGE: &str = "usage: tenx-gateway [--config FILE] serve";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-gateway", USAGE, GatewaySettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => {
                let telemetry = settings.telemetry.clone();
                cli::serve("tenx-gateway", &telemetry, |shutdown| async move {
                    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
                    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
                    running.task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                })
                .await
            }
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
