//! `tenx-gateway [--config FILE] serve` (the gateway keeps no database,
//! so it has nothing to migrate)

use std::process::ExitCode;

use tenx_common::{cli, host};
use tenx_gateway::{App, GatewaySettings};

const USAGE: &str = "usage: tenx-gateway [--config FILE] serve";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-gateway", USAGE, GatewaySettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => host::serve::<App>(settings).await,
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
