//! `tenx-dev`: every tenx service in one process, for local development.
//!
//! `tenx-dev` (what `make up` runs) starts each service built so far;
//! `tenx-dev migrate` applies each service's migrations. Services join the
//! list below as they land.

use std::process::ExitCode;

/// The services this build knows how to run, in start order.
const SERVICES: &[&str] = &[];

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        None | Some("run") => run(),
        Some("migrate") => migrate(),
        Some(other) => {
            eprintln!("tenx-dev: unknown command `{other}` (use `run` or `migrate`)");
            ExitCode::from(64)
        }
    }
}

fn run() -> ExitCode {
    if SERVICES.is_empty() {
        println!(
            "tenx-dev: no services are built yet. Dependencies are up: Postgres 127.0.0.1:5432 \
             (replica :5433), Redis :6379, RabbitMQ :5672, SMTP sink :2525."
        );
    }
    ExitCode::SUCCESS
}

fn migrate() -> ExitCode {
    if SERVICES.is_empty() {
        println!("tenx-dev: no services, so no migrations to apply.");
    }
    ExitCode::SUCCESS
}
