//! `tenx-gateway [--config FILE] serve` (the gateway keeps no database,
//! so it has nothing to migrate)

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tenx_common::host::main::<tenx_gateway::App>().await
}
