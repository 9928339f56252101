//! `tenx-notification [--config FILE] <serve|migrate>`

use std::process::ExitCode;

use tenx_common::{cli, host};
use tenx_notification::{App, NotificationSettings};

const USAGE: &str = "usage: tenx-notification [--config FILE] <serve|migrate>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-notification", USAGE, NotificationSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => host::serve::<App>(settings).await,
            Some("migrate") => tenx_notification::migrate(&settings).await.map_err(|e| host::report(&e)),
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
