//! `tenx-auth [--config FILE] <serve|migrate|rotate-keys|grant-role EMAIL ROLE|revoke-role EMAIL ROLE>`

use std::process::ExitCode;

use tenx_auth::{App, AuthSettings};
use tenx_common::cli;
use tenx_common::metrics::Metrics;

const USAGE: &str = "usage: tenx-auth [--config FILE] <serve|migrate|rotate-keys|grant-role EMAIL ROLE|revoke-role EMAIL ROLE>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-auth", USAGE, AuthSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => {
                let telemetry = settings.telemetry.clone();
                cli::serve("tenx-auth", &telemetry, |shutdown| async move {
                    let app = App::build(settings, Metrics::default()).await.map_err(|e| e.to_string())?;
                    let running = app.spawn(shutdown).await.map_err(|e| e.to_string())?;
                    running.task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
                })
                .await
            }
            Some("migrate") => tenx_auth::migrate(&settings).await.map_err(|e| e.to_string()),
            Some("rotate-keys") => tenx_auth::rotate_keys(&settings, &Metrics::default())
                .await
                .map(|kid| println!("new signing key: {kid}"))
                .map_err(|e| e.to_string()),
            Some(command) if command.starts_with("grant-role ") || command.starts_with("revoke-role ") => {
                let words: Vec<&str> = command.split(' ').collect();
                let [verb, email, role] = words[..] else {
                    return Err(format!("`{}` takes EMAIL ROLE\n{USAGE}", words[0]));
                };
                tenx_auth::set_role(&settings, email, role, verb == "grant-role")
                    .await
                    .map(|roles| println!("{email}: roles {roles:?} (in tokens issued from now on)"))
                    .map_err(|e| e.to_string())
            }
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
