//! `tenx-billing [--config FILE] <serve|migrate>`

use std::process::ExitCode;

use tenx_billing::{App, BillingSettings};
use tenx_common::cli;
use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;

const USAGE: &str = "usage: tenx-billing [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1), USAGE) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let settings = match BillingSettings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tenx-billing: {error}");
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    let result = match args.command.as_deref() {
        Some("serve") | None => serve(settings).await,
        Some("migrate") => tenx_billing::migrate(&settings).await.map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenx-billing: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: BillingSettings) -> Result<(), String> {
    let telemetry =
        tenx_common::telemetry::init("tenx-billing", &settings.telemetry).map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new();
    shutdown.on_signals().map_err(|e| e.to_string())?;
    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
    let result = running.task.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    telemetry.shutdown().await;
    result
}
