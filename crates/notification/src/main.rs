//! `tenx-notification [--config FILE] <serve|migrate>`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tenx_common::host::main::<tenx_notification::App>().await
}
