//! `tenx-billing [--config FILE] <serve|migrate>`

use std::process::ExitCode;

use tenx_billing::{App, BillingSettings};
use tenx_common::{cli, host};

const USAGE: &str = "usage: tenx-billing [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-billing", USAGE, BillingSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => host::serve::<App>(settings).await,
            Some("migrate") => tenx_billing::migrate(&settings).await.map_err(|e| host::report(&e)),
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
