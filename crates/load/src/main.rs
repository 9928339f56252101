//! `tenx-load`: see the library, and `tenx-load --help`.

use std::process::ExitCode;

use tenx_load::cli::{self, Command, USAGE};
use tenx_load::report::Report;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_none_or(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match cli::parse(args) {
        Ok(command) => command,
        Err(problem) => {
            eprintln!("tenx-load: {problem}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tenx-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Run(options) => {
                let report = tenx_load::run(&options).await?;
                println!("{}", report.table());
                anyhow::Ok(report.errors)
            }
            Command::Compare { a, b } => {
                let first = tenx_load::run(&a).await?;
                println!("{}", first.table());
                let second = tenx_load::run(&b).await?;
                println!("{}", second.table());
                println!("{}", Report::ratios(&first, &second));
                anyhow::Ok(first.errors + second.errors)
            }
            Command::Seed(options) => {
                let seeded = tenx_load::seed::seed(&options).await?;
                println!(
                    "seeded {} users and {} customers in {:.1} s; {} of each now",
                    seeded.users_added,
                    seeded.customers_added,
                    seeded.took.as_secs_f64(),
                    options.users
                );
                anyhow::Ok(0)
            }
        }
    });
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        // Errors were counted and shown; the run itself finished.
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("tenx-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
