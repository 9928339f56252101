//! `tenx-auth [--config FILE] <serve|migrate|rotate-keys|grant-role EMAIL ROLE>`

use std::process::ExitCode;

use tenx_auth::{App, AuthSettings};
use tenx_common::metrics::Metrics;
use tenx_common::{cli, host};

const USAGE: &str = "usage: tenx-auth [--config FILE] <serve|migrate|rotate-keys|grant-role EMAIL ROLE>";

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tenx-auth", USAGE, AuthSettings::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => host::serve::<App>(settings).await,
            Some("migrate") => host::migrate::<App>(&settings).await.map_err(|e| host::report(&e)),
            Some("rotate-keys") => tenx_auth::rotate_keys(&settings, &Metrics::default())
                .await
                .map(|kid| println!("new signing key: {kid}"))
                .map_err(|e| host::report(&e)),
            Some(command) if command.starts_with("grant-role ") => {
                let words: Vec<&str> = command.split(' ').collect();
                let [_, email, role] = words[..] else {
                    return Err(format!("`grant-role` takes EMAIL ROLE\n{USAGE}"));
                };
                tenx_auth::grant_role(&settings, email, role)
                    .await
                    .map(|roles| println!("{email}: roles {roles:?} (in tokens issued from now on)"))
                    .map_err(|e| host::report(&e))
            }
            // Taking a role away must also revoke the sessions carrying it,
            // at every service: that is the running auth's job.
            Some(command) if command.starts_with("revoke-role ") => {
                Err("revoke-role is an RPC now: `tenx-admin revoke-role EMAIL admin` (it also ends the \
                     account's sessions, so no token carrying the role is honoured)"
                    .to_owned())
            }
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    })
    .await
}
