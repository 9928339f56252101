//! Property-based API testing: schemathesis (PyPI, installed into
//! `.tools/venv` by `deploy/local/tools.sh`) generates requests from the
//! served `/openapi.json` and finds no 5xx, no crash, and no response that
//! breaks the document (status codes, content types, headers, bodies).

use std::path::PathBuf;
use std::time::Duration;

use tenx_gateway::settings::RouteOverride;

use crate::support::{Platform, bearer, sign_up, unique_email};

fn schemathesis() -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/schemathesis");
    anyhow::ensure!(
        path.exists(),
        "schemathesis is not installed at {}; `deploy/local/tools.sh venv` (part of `make test`) installs it",
        path.display()
    );
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_that_breaks_the_openapi_document()
-> anyhow::Result<()> {
    let binary = schemathesis()?;
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    // Generated traffic, not a flood to limit: every route gets room.
    for op in tenx_proto::edge::http().map(|(r, _)| r.operation_id) {
        settings.routes.insert(
            op.into(),
            RouteOverride { requests: Some(100_000), period_seconds: Some(1), timeout_ms: None },
        );
    }
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let workdir = std::env::temp_dir().join(format!("tenx-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir)?;

    let run = tokio::process::Command::new(binary)
        .current_dir(&workdir)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .args(["run", &format!("http://{}/openapi.json", gw.http_addr)])
        .args(["--header", &format!("Authorization: {}", bearer(&token))])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--seed", "20261128", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run).await??;
    let _ = std::fs::remove_dir_all(&workdir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let operations = tenx_proto::edge::http().count();
    assert!(
        stdout.contains(&format!("Selected: {operations}/{operations}")),
        "every operation was tested:\n{stdout}"
    );
    Ok(())
}
