//! The hot path side by side, in one run: the same authenticated,
//! L1-cached `GetUser` of the caller through every door, beside the two
//! references the fast-path targets are stated against —
//!
//! - **echo**: a bare tonic server (gRPC health `Check`, no middleware, no
//!   work), the most a gRPC call can cost less than;
//! - **auth direct**: GetUser on auth (token verified, L1 cache hit);
//! - **nginx**: nginx's `grpc_pass` in front of auth (a proxy that checks
//!   nothing), the anchor the gateway is compared with;
//! - **hyper proxy**: a bare proxy built from the gateway's own parts
//!   (hyper's HTTP/2 server, `tenx_common::grpc`'s channel to auth) that
//!   checks nothing: what a hop on this stack costs before any policy;
//! - **gateway gRPC** and **gateway HTTP** (`GET /v1/me`): JWT verified,
//!   scope checked, revocation checked, the rate limit on, then auth.
//!
//! Each is measured one call at a time (p50 latency) and with 32 calls in
//! flight (throughput, p99), with the machine's CPU per call (all
//! processes, from `/proc/stat`: Redis and nginx included). The servers run
//! on their own two runtime threads and the client on two more, as
//! separate processes would on these two cores. At the end the issue's
//! targets are printed beside what was measured.
//!
//! The targets take turns: [`ROUNDS`] rounds, each measuring every target
//! for a share of the calls, so a burst of noise on a shared host lands on
//! one round of each rather than on the whole of one target. A figure is
//! the median of its rounds (p99: of every call); a ratio is the median of
//! the rounds' ratios, each between figures measured within the same few
//! seconds.
//!
//! `make bench` (installs nginx) or `cargo bench -p tenx-gateway`;
//! `TENX_BENCH_SAVE=1` rewrites the baseline; `TENX_BENCH_PERF=DIR`
//! profiles each target's busy run (`bench::Profile`); `TENX_BENCH_CALLS=N`
//! makes N busy calls per target in one round ([`Counts`]), few enough to
//! count instructions under `valgrind --tool=callgrind`.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use tenx_gateway::settings::RouteOverride;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_support::bench::{self, Figure, percentile};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Calls made one at a time, for the p50 (over all rounds).
const ONE_BY_ONE: usize = 5_000;
/// Calls made 32 at a time, for throughput (over all rounds).
const BUSY: usize = 30_000;
const IN_FLIGHT: usize = 32;
/// How many turns each target takes (one when profiling: `perf` records
/// each target's busy run in one piece).
const ROUNDS: usize = 5;

/// How many calls each figure takes: the constants above, or with
/// `TENX_BENCH_CALLS=N` N busy calls per target (a twentieth of that one
/// at a time, one round, N verifications). Instruction counts do not move
/// with the host, so a few thousand calls under callgrind compare two
/// builds, or two targets, where timings on a shared host cannot
/// (docs/PERFORMANCE.md, "Instructions per call").
#[derive(Clone, Copy)]
struct Counts {
    one_by_one: usize,
    busy: usize,
    rounds: usize,
    verifications: usize,
}

impl Counts {
    fn from_env() -> anyhow::Result<Self> {
        let Ok(calls) = std::env::var("TENX_BENCH_CALLS") else {
            let rounds = if bench::Profile::enabled() { 1 } else { ROUNDS };
            return Ok(Self { one_by_one: ONE_BY_ONE, busy: BUSY, rounds, verifications: 20_000 });
        };
        let busy: usize = calls.parse().context("TENX_BENCH_CALLS: a number of calls")?;
        anyhow::ensure!(busy >= 20, "TENX_BENCH_CALLS: at least 20 calls");
        anyhow::ensure!(
            std::env::var_os("TENX_BENCH_SAVE").is_none(),
            "a baseline is saved from a full run only, not with TENX_BENCH_CALLS"
        );
        Ok(Self { one_by_one: busy / 20, busy, rounds: 1, verifications: busy })
    }
}

type Call = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

fn main() -> anyhow::Result<()> {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("servers")
        .enable_all()
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let setup = servers.block_on(Setup::start())?;
    let nginx = Nginx::start(setup.platform.auth.grpc_addr)?;
    let result = client.block_on(measure(&setup, nginx.addr));
    drop(nginx);
    servers.block_on(async move { drop(setup) });
    result
}

/// The platform, a gateway in front of it, an echo server, and a user.
struct Setup {
    platform: support::Platform,
    gateway: tenx_gateway::Running,
    echo: SocketAddr,
    /// The bare hyper proxy in front of auth.
    bare: SocketAddr,
    token: String,
}

impl Setup {
    async fn start() -> anyhow::Result<Self> {
        let platform = support::Platform::start().await?;
        let mut settings = platform.gateway_settings()?;
        // The limit stays on (every call is counted), high enough that the
        // benchmark measures the path, not the limiter's refusals.
        settings.routes.insert(
            "me_get".into(),
            RouteOverride { requests: Some(1_000_000), period_seconds: Some(1), timeout_ms: None },
        );
        let gateway = platform.gateway_with(settings).await?;
        let (token, _, _) = support::sign_up(gateway.http_addr, &support::unique_email()).await?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let echo = listener.local_addr()?;
        let (_, health) = tonic_health::server::health_reporter();
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        ));
        let bare = bare_proxy(platform.auth.grpc_addr).await?;
        Ok(Self { platform, gateway, echo, bare, token })
    }
}

/// A proxy of the gateway's own parts and nothing else: hyper's HTTP/2
/// server in, the gateway's upstream channel out, every call
/// forwarded as it is, nothing checked. The gateway's hop less this one's
/// is what its policy (and its layers) cost; this one's is the stack's.
async fn bare_proxy(upstream: SocketAddr) -> anyhow::Result<SocketAddr> {
    use tower::ServiceExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let channel =
        tenx_common::grpc::connect(&tenx_common::grpc::ClientSettings::new(&format!("http://{upstream}")))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let channel = channel.clone();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                channel.clone().oneshot(req.map(tonic::body::Body::new))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

/// nginx with `grpc_pass` to auth, in a directory of its own; stopped on
/// drop.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tenx-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let d = dir.display();
        let conf = format!(
            "worker_processes auto;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream auth {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
               server {{ listen {addr} http2; location / {{ grpc_pass grpc://auth; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("nginx: {e} (`make bench` installs it: deploy/local/tools.sh bench)")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not listen on {addr}; see {d}/error.log");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr, child, dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master stops its workers on the way out.
        let _ = std::process::Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One target measured both ways, round by round.
#[derive(Default)]
struct Measured {
    /// Each round's p50 one call at a time.
    p50_one: Vec<Duration>,
    /// Each round's calls/s and machine CPU µs per call, 32 in flight.
    rate: Vec<f64>,
    cpu_us: Vec<f64>,
    /// Every busy call's latency.
    busy: Vec<Duration>,
}

/// The median of `values` (`None` when there are none).
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

async fn measure(setup: &Setup, nginx: SocketAddr) -> anyhow::Result<()> {
    let counts = Counts::from_env()?;
    let token = setup.token.as_str();
    let grpc = |addr: SocketAddr| async move {
        anyhow::Ok(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?)
    };
    let echo = HealthClient::new(grpc(setup.echo).await?);
    let direct = AuthServiceClient::new(grpc(setup.platform.auth.grpc_addr).await?);
    let proxied = AuthServiceClient::new(grpc(nginx).await?);
    let bare = AuthServiceClient::new(grpc(setup.bare).await?);
    let door = AuthServiceClient::new(grpc(setup.gateway.grpc_addr).await?);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(IN_FLIGHT)
        .build_http::<Empty<Bytes>>();
    let me: http::Uri = format!("http://{}/v1/me", setup.gateway.http_addr).parse()?;

    let targets: Vec<(&str, Call)> = vec![
        ("echo", {
            let client = echo.clone();
            Arc::new(move || {
                let mut client = client.clone();
                Box::pin(async move {
                    client.check(HealthCheckRequest::default()).await?;
                    Ok(())
                })
            })
        }),
        ("auth direct", get_user(direct, token)?),
        ("nginx grpc_pass", get_user(proxied, token)?),
        ("hyper proxy", get_user(bare, token)?),
        ("gateway gRPC", get_user(door, token)?),
        ("gateway HTTP", {
            let (client, header) = (http.clone(), http::HeaderValue::from_str(&format!("Bearer {token}"))?);
            Arc::new(move || {
                let (client, url, header) = (client.clone(), me.clone(), header.clone());
                Box::pin(async move {
                    let request =
                        http::Request::get(url).header("authorization", header).body(Empty::<Bytes>::new())?;
                    let response = client.request(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    anyhow::ensure!(status == 200, "GET /v1/me: {status}");
                    Ok(())
                })
            })
        }),
    ];

    // `TENX_BENCH_ONLY=gateway` measures only the targets whose name has
    // that in it (to profile one path), `="proxy|gRPC"` those with either;
    // the targets table then is skipped.
    let only = std::env::var("TENX_BENCH_ONLY").unwrap_or_default();
    let targets: Vec<(&str, Call)> =
        targets.into_iter().filter(|(name, _)| only.split('|').any(|o| name.contains(o))).collect();
    let mut measured: BTreeMap<&str, Measured> = BTreeMap::new();
    for (name, call) in &targets {
        // Warm: connections, auth's L1 cache, the verified-token caches,
        // the rate-limit lease.
        run(IN_FLIGHT * 20, IN_FLIGHT, call.clone()).await.with_context(|| format!("calling {name}"))?;
    }
    let Counts { one_by_one, busy: busy_calls, rounds, verifications } = counts;
    for _ in 0..rounds {
        for (name, call) in &targets {
            let context = || format!("calling {name}");
            let (mut one, _, _) = run(one_by_one / rounds, 1, call.clone()).await.with_context(context)?;
            let profile = bench::Profile::start(name)?;
            let (busy, elapsed, cpu_us) =
                run(busy_calls / rounds, IN_FLIGHT, call.clone()).await.with_context(context)?;
            drop(profile);
            let m = measured.entry(*name).or_default();
            m.p50_one.push(percentile(&mut one, 50.0));
            m.rate.push((busy_calls / rounds) as f64 / elapsed.as_secs_f64());
            m.cpu_us.push(cpu_us);
            m.busy.extend(busy);
        }
    }

    let mut figures = BTreeMap::new();
    let names: Vec<String> = targets.iter().map(|(n, _)| (*n).to_owned()).collect();
    let keys: Vec<[String; 4]> = names
        .iter()
        .map(|n| {
            [
                format!("{n}: p50, 1 in flight"),
                format!("{n}: calls/s, 32 in flight"),
                format!("{n}: p99, 32 in flight"),
                format!("{n}: CPU per call, 32 in flight"),
            ]
        })
        .collect();
    for (name, keys) in names.iter().zip(&keys) {
        let m = measured.get_mut(name.as_str()).context("measured every target")?;
        let p50_one = median(m.p50_one.iter().map(Duration::as_secs_f64)).unwrap_or(0.0);
        let rate = median(m.rate.iter().copied()).unwrap_or(0.0);
        let cpu_us = median(m.cpu_us.iter().copied()).unwrap_or(0.0);
        figures.insert(keys[0].as_str(), us(Duration::from_secs_f64(p50_one)));
        figures.insert(keys[1].as_str(), Figure { value: rate, unit: "/s", higher_is_better: true });
        figures.insert(keys[2].as_str(), us(percentile(&mut m.busy, 99.0)));
        figures.insert(keys[3].as_str(), Figure { value: cpu_us, unit: "µs CPU", higher_is_better: false });
    }
    let verification = verification(setup, verifications).await?;
    for (name, figure) in &verification {
        figures.insert(name, figure.clone());
    }
    bench::report(&figures, concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.json"))?;
    if only.is_empty() {
        targets_met(&measured);
    }
    Ok(())
}

/// What a figure of the targets table must be.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    /// A reference, shown beside the targets.
    Anchor,
}

/// The targets (#17), each beside what this run measured: the
/// median over the rounds of the round's ratio (or difference).
fn targets_met(m: &BTreeMap<&str, Measured>) {
    let (echo, direct, nginx) = (&m["echo"], &m["auth direct"], &m["nginx grpc_pass"]);
    let by_round = |f: &dyn Fn(usize) -> f64| median((0..direct.rate.len()).map(f)).unwrap_or(f64::NAN);
    let rate_ratio = |t: &Measured, of: &Measured| by_round(&|r| t.rate[r] / of.rate[r]);
    let added =
        |t: &Measured| by_round(&|r| (t.p50_one[r].as_secs_f64() - direct.p50_one[r].as_secs_f64()) * 1e6);
    let mut rows = vec![
        (
            "auth direct ÷ echo, calls/s at 32 in flight".to_owned(),
            rate_ratio(direct, echo),
            Goal::AtLeast(0.8),
        ),
        (
            "auth direct ÷ echo, p50 at 1 in flight".to_owned(),
            by_round(&|r| direct.p50_one[r].as_secs_f64() / echo.p50_one[r].as_secs_f64()),
            Goal::AtMost(1.25),
        ),
        ("nginx ÷ auth direct, calls/s (the anchor)".to_owned(), rate_ratio(nginx, direct), Goal::Anchor),
        ("nginx added p50, µs (the anchor)".to_owned(), added(nginx), Goal::Anchor),
        (
            "hyper proxy ÷ auth direct, calls/s (the stack)".to_owned(),
            rate_ratio(&m["hyper proxy"], direct),
            Goal::Anchor,
        ),
        ("hyper proxy added p50, µs (the stack)".to_owned(), added(&m["hyper proxy"]), Goal::Anchor),
    ];
    for door in ["gateway gRPC", "gateway HTTP"] {
        let t = &m[door];
        rows.push((format!("{door} ÷ auth direct, calls/s"), rate_ratio(t, direct), Goal::AtLeast(0.6)));
        rows.push((format!("{door} added p50, µs"), added(t), Goal::AtMost(120.0)));
    }
    println!("\n{:<48} {:>10} {:>10}  met", "target (#17)", "measured", "goal");
    for (name, value, goal) in rows {
        let (goal, verdict) = match goal {
            Goal::AtLeast(min) => (format!("≥ {min}"), if value >= min { "yes" } else { "NO" }),
            Goal::AtMost(max) => (format!("≤ {max}"), if value <= max { "yes" } else { "NO" }),
            Goal::Anchor => ("-".to_owned(), ""),
        };
        println!("{name:<48} {value:>10.2} {goal:>10}  {verdict}");
    }
}

fn us(d: Duration) -> Figure {
    Figure { value: d.as_secs_f64() * 1e6, unit: "µs", higher_is_better: false }
}

/// GetUser of the caller. The client builds its `authorization` value
/// once and sends a copy with each call, as a client holding a token does.
fn get_user(client: AuthServiceClient<Channel>, token: &str) -> anyhow::Result<Call> {
    let header: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    Ok(Arc::new(move || {
        let (mut client, header) = (client.clone(), header.clone());
        Box::pin(async move {
            let mut request = tonic::Request::new(pb::GetUserRequest::default());
            request.metadata_mut().insert("authorization", header);
            client.get_user(request).await?;
            Ok(())
        })
    }))
}

/// What every hop pays to verify a credential with the shared layer,
/// measured alone: a token seen before (cache and revocation set), and one
/// seen for the first time (Ed25519 and claims).
async fn verification(setup: &Setup, verifications: usize) -> anyhow::Result<Vec<(&'static str, Figure)>> {
    let platform = &setup.platform;
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
    let header = format!("Bearer {}", setup.token);
    let started = Instant::now();
    for _ in 0..verifications {
        anyhow::ensure!(verifier.authenticate(Some(&header)).await?.is_some(), "verified");
    }
    let per_hop = Figure::per_op_us(started.elapsed(), verifications);
    let started = Instant::now();
    for _ in 0..verifications / 10 {
        verifier.jwks().verify_signature(&setup.token).await?;
    }
    let first_sight = Figure::per_op_us(started.elapsed(), verifications / 10);
    Ok(vec![
        ("verify a token at one hop, seen before (cache + revocation)", per_hop),
        ("verify a token at one hop, first sight (Ed25519 + claims)", first_sight),
    ])
}

/// Makes `calls` calls, `in_flight` at a time: each call's latency, the
/// whole run's time, and the machine's CPU per call in µs.
async fn run(calls: usize, in_flight: usize, call: Call) -> anyhow::Result<(Vec<Duration>, Duration, f64)> {
    let cpu = bench::busy_cpu_us();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let call = call.clone();
        let share = calls / in_flight + usize::from(worker < calls % in_flight);
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
    let elapsed = started.elapsed();
    let cpu_us = bench::busy_cpu_us().saturating_sub(cpu) as f64 / calls as f64;
    Ok((all, elapsed, cpu_us))
}
