//! `tenx-billing [--config FILE] <serve|migrate>`

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tenx_common::host::main::<tenx_billing::App>().await
}
