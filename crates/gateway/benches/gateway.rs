//! The gateway's cost: an authenticated, cached `GET /v1/me` through the
//! gateway (HTTP/1.1 keep-alive, JWT verified at the edge, rate limit in
//! Redis, then auth's GetUser) against the same `GetUser` called directly
//! on auth over gRPC — same run, same machine, same concurrency — and
//! what every hop adds to each call: verifying the credential with the
//! shared layer (`tenx_common::authn`: signature, claims, the in-memory
//! revocation set), measured alone, in process.
//!
//! `cargo bench -p tenx-gateway`; `TENX_BENCH_SAVE=1` rewrites the baseline.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tenx_gateway::settings::RouteOverride;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_support::bench::{self, Figure, percentile};

const CALLS: usize = 4_000;
const CONCURRENCY: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let platform = support::Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    // Measure the path, not the limiter's refusals.
    settings.routes.insert(
        "me_get".into(),
        RouteOverride { requests: Some(1_000_000), period_seconds: Some(1), timeout_ms: None },
    );
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = support::sign_up(gw.http_addr, &support::unique_email()).await?;

    let direct = AuthServiceClient::connect(format!("http://{}", platform.auth.grpc_addr)).await?;
    let via_gateway = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let url: http::Uri = format!("http://{}/v1/me", gw.http_addr).parse()?;
    let token = Arc::new(token);

    // Warm both paths (connections, auth's L1 cache, the gateway's JWKS).
    run(CONCURRENCY * 10, {
        let (client, url, token) = (via_gateway.clone(), url.clone(), token.clone());
        move || gateway_call(client.clone(), url.clone(), token.clone())
    })
    .await?;
    run(CONCURRENCY * 10, {
        let (client, token) = (direct.clone(), token.clone());
        move || direct_call(client.clone(), token.clone())
    })
    .await?;

    let (mut through, through_elapsed) = run(CALLS, {
        let (client, url, token) = (via_gateway.clone(), url.clone(), token.clone());
        move || gateway_call(client.clone(), url.clone(), token.clone())
    })
    .await?;
    let (mut straight, straight_elapsed) = run(CALLS, {
        let (client, token) = (direct.clone(), token.clone());
        move || direct_call(client.clone(), token.clone())
    })
    .await?;

    // One hop's verification, as every service runs it on every call.
    let mut authn_settings = platform.gateway_settings()?.authn;
    authn_settings.client_secret = tenx_auth::testing::client_secret("gateway").into();
    let auth_channel = tenx_common::grpc::connect(&tenx_common::grpc::ClientSettings::new(&format!(
        "http://{}",
        platform.auth.grpc_addr
    )))?;
    let redis = tenx_common::cache::Redis::connect(&platform.auth_settings.redis)?;
    let verifier = tenx_common::authn::Authenticator::remote(
        "gateway",
        &authn_settings,
        AuthServiceClient::new(auth_channel),
        Some(redis),
    );
    verifier.jwks().fetch().await.map_err(anyhow::Error::msg)?;
    verifier.revocations().synced().await;
    let header = format!("Bearer {token}");
    const VERIFICATIONS: usize = 20_000;
    let started = Instant::now();
    for _ in 0..VERIFICATIONS {
        anyhow::ensure!(verifier.authenticate(Some(&header)).await?.is_some(), "verified");
    }
    let per_hop = Figure::per_op_us(started.elapsed(), VERIFICATIONS);
    // A token a service has not seen yet: the Ed25519 signature and claims.
    let started = Instant::now();
    for _ in 0..VERIFICATIONS / 10 {
        verifier.jwks().verify_signature(&token).await?;
    }
    let first_sight = Figure::per_op_us(started.elapsed(), VERIFICATIONS / 10);

    let mut figures = BTreeMap::new();
    figures.insert("verify a token at one hop, seen before (cache + revocation)", per_hop);
    figures.insert("verify a token at one hop, first sight (Ed25519 + claims)", first_sight);
    let gateway_rate = Figure::per_second(CALLS, through_elapsed);
    let direct_rate = Figure::per_second(CALLS, straight_elapsed);
    let ratio = gateway_rate.value / direct_rate.value;
    figures.insert("GET /v1/me via gateway p50, 16 concurrent", Figure::ms(percentile(&mut through, 50.0)));
    figures.insert("GET /v1/me via gateway p99, 16 concurrent", Figure::ms(percentile(&mut through, 99.0)));
    figures.insert("GET /v1/me via gateway, 16 concurrent", gateway_rate);
    figures.insert("GetUser direct p50, 16 concurrent", Figure::ms(percentile(&mut straight, 50.0)));
    figures.insert("GetUser direct p99, 16 concurrent", Figure::ms(percentile(&mut straight, 99.0)));
    figures.insert("GetUser direct, 16 concurrent", direct_rate);
    figures.insert(
        "gateway throughput / direct throughput",
        Figure { value: ratio, unit: "x", higher_is_better: true },
    );
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))
}

async fn gateway_call(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    url: http::Uri,
    token: Arc<String>,
) -> anyhow::Result<()> {
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())?;
    let response = client.request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status == 200, "GET /v1/me: {status}");
    Ok(())
}

async fn direct_call(
    mut client: AuthServiceClient<tonic::transport::Channel>,
    token: Arc<String>,
) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(pb::GetUserRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    client.get_user(request).await?;
    Ok(())
}

/// Makes `calls` calls, `CONCURRENCY` at a time; each call's latency and
/// the whole run's time.
async fn run<F, Fut>(calls: usize, call: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let call = call.clone();
        let share = calls / CONCURRENCY + usize::from(worker < calls % CONCURRENCY);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let at = Instant::now();
                call().await?;
                latencies.push(at.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}
