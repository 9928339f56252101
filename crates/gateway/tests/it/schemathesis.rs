//! Property-based API testing: schemathesis (PyPI, installed into
//! `.tools/venv` by `deploy/local/tools.sh`) generates requests from the
//! served `/openapi.json` and finds no 5xx, no crash, and no response that
//! breaks the document (status codes, content types, headers, bodies).

use std::path::PathBuf;
use std::time::Duration;

use tenx_gateway::settings::RouteOverride;

use crate::support::unique_email;
use crate::support::{Platform, bearer, send, sign_up};

fn schemathesis() -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/schemathesis");
    anyhow::ensure!(
        path.exists(),
        "schemathesis is not installed at {}; `deploy/local/tools.sh venv` (part of `make test`) installs it",
        path.display()
    );
    Ok(path)
}

/// Operations that end the credential the run calls with: fuzzed with a
/// credential of their own, after everything else, so the rest of the run
/// is not left with a revoked session answering 401 to every call
/// (switching organization, or deleting it, ends the token that acted in it).
const ENDS_THE_SESSION: &[&str] = &["sessions_revoke", "orgs_switch", "org_delete"];

/// A token of a new account acting in an organization it owns, so the
/// organization's operations open to it too.
async fn owner_token(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let (token, _, _) = sign_up(addr, &unique_email()).await?;
    let auth = [("authorization", bearer(&token))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let created = send(addr, "POST", "/v1/orgs", &auth, Some(r#"{"name":"Fuzz"}"#)).await?;
    let org = created.json["organization"]["organization_id"].as_str().unwrap_or_default().to_owned();
    let body = serde_json::json!({ "organization_id": org }).to_string();
    let switched = send(addr, "POST", "/v1/orgs/switch", &auth, Some(&body)).await?;
    anyhow::ensure!(switched.status == 200, "switch: {}", switched.text);
    Ok(switched.json["access_token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_with_every_check_finds_the_api_and_its_document_in_agreement() -> anyhow::Result<()> {
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
    // schemathesis also leaves credentials out on purpose (every check on):
    // those are failed authentications, which must not throttle the run.
    settings.limits.failed_auth_requests = 1_000_000;
    let gw = platform.gateway_with(settings).await?;

    let mut tested = 0;
    // Everything else first, then each operation that ends its credential
    // with a credential of its own.
    let mut runs = vec![("--exclude-operation-id", ENDS_THE_SESSION)];
    runs.extend(ENDS_THE_SESSION.iter().map(|op| ("--include-operation-id", std::slice::from_ref(op))));
    for (filter, ops) in runs {
        let token = owner_token(gw.http_addr).await?;
        let selection: Vec<String> =
            ops.iter().flat_map(|op| [filter.to_owned(), (*op).to_owned()]).collect();
        tested += run(&binary, gw.http_addr, &token, &selection).await?;
    }
    let operations = tenx_proto::edge::http().count();
    assert_eq!(tested, operations, "every operation was tested");
    Ok(())
}

/// One schemathesis run over the served document, with every check
/// (positive and negative conformance, status codes, content types,
/// headers, response schemas, auth); returns how many operations it tested.
async fn run(
    binary: &PathBuf,
    addr: std::net::SocketAddr,
    token: &str,
    selection: &[String],
) -> anyhow::Result<usize> {
    let workdir = std::env::temp_dir().join(format!("tenx-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir)?;
    let run = tokio::process::Command::new(binary)
        .current_dir(&workdir)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args(["--header", &format!("Authorization: {}", bearer(token))])
        .args(["--checks", "all"])
        .args(selection)
        .args(["--max-examples", "25", "--seed", "20261128", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run).await??;
    let _ = std::fs::remove_dir_all(&workdir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Its report (shown with `--no-capture`): coverage and warnings.
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Operations that answered nothing but 401/403: only a provider's
    // webhook may (its credential is a signature over the body, which no
    // generated request has), never one the run's credential should open.
    let locked_out: Vec<&str> = stdout
        .split("Authentication failed")
        .nth(1)
        .and_then(|rest| rest.split('💡').next())
        .map(|list| list.lines().filter_map(|l| l.trim().strip_prefix("- ")).collect())
        .unwrap_or_default();
    assert!(
        locked_out.iter().all(|op| op.contains("/webhooks/")),
        "the run's credential did not open {locked_out:?}, leaving them untested:\n{stdout}"
    );
    let tested = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no `Tested:` line in the report:\n{stdout}"))?;
    Ok(tested)
}
