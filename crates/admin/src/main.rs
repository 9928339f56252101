//! `tenx-admin`: see [`tenx_admin::USAGE`].

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let credential = tenx_admin::Credential::from_env();
    let mut out = std::io::stdout().lock();
    match tenx_admin::run(&args, credential, &mut out).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenx-admin: {error:#}");
            std::process::ExitCode::from(if error.is::<tenx_admin::Usage>() { 2 } else { 1 })
        }
    }
}
