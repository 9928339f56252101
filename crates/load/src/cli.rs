//! The command line:
//!
//! ```text
//! tenx-load run <scenario> [options]
//! tenx-load compare <scenario> [--a TARGET] [--b TARGET] [options]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::Options;
use crate::door::{Services, Target};
use crate::engine::{Mode, Plan};
use crate::operator::SECRET_ENV;
use crate::scenario::NAMES;
use crate::seed::SeedOptions;

pub const USAGE: &str = "\
usage: tenx-load run <scenario> [options]
       tenx-load compare <scenario> [--a TARGET] [--b TARGET] [--a-addr HOST:PORT] [--b-addr HOST:PORT] [options]
       tenx-load seed --users N [--auth-addr HOST:PORT] [--auth-db URL] [--billing-db URL]
                      [--auth-schema auth] [--billing-schema billing] [--allow-host IP]

scenarios: me (cached authenticated reads), login, signup, subscribe (card, subscription,
           invoice paid), notify (operator Send until it is in the inbox), mixed (per 100:
           85 me, 6 login, 5 notify, 2 signup, 2 subscribe)
           notify and mixed send as the operator: TENX_LOAD_OPERATOR_SECRET holds the
           secret of auth's service_clients.operator

options:
  --target gateway|http|direct
                          what to load: the gateway's gRPC door (default), its HTTP API,
                          or each service past the edge (compare: --a direct --b gateway)
  --addr HOST:PORT        the gateway's door (default: make up's, 127.0.0.1:50050 or :8080)
  --auth-addr, --billing-addr, --notification-addr HOST:PORT
                          each service's own gRPC (direct, and the operator's calls;
                          default: make up's 50051, 50052, 50053)
  --in-flight N           closed loop, N calls at all times (default 32)
  --rate N                open loop, N calls a second, latency from when each was due
  --max-in-flight N       open loop: most calls outstanding (default 10000)
  --duration D            e.g. 10s, 2m (default 10s)
  --max-requests N        stop after N requests too (default 10000000)
  --connections N         gRPC: HTTP/2 connections (default 4); HTTP pools its own
  --json FILE             write the results as JSON
  --plots DIR             write latency, spectrum and throughput PNGs
  --users N               users the run signs up first (default 16)
  --seeded N              instead, log in --users of the N users `seed` made, and
                          (login) log in one of the N at random each call
  --allow-host IP         load this non-loopback host too (repeatable)

seed: adds users seed-<i>@seed.tenx.test (password: tenx-load's) and their billing
customers with COPY until there are N, resumably; the databases default to make up's
(postgres://postgres@127.0.0.1:5432/tenx, schemas auth and billing)";

/// What to do.
#[derive(Debug, Clone)]
pub enum Command {
    Run(Box<Options>),
    /// The same scenario and plan against `a`, then `b`.
    Compare {
        a: Box<Options>,
        b: Box<Options>,
    },
    Seed(SeedOptions),
}

/// `seed`'s flags.
fn parse_seed(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let dev_db = "postgres://postgres@127.0.0.1:5432/tenx";
    let mut o = SeedOptions {
        users: 0,
        auth_addr: Services::default().auth,
        auth_db: dev_db.into(),
        auth_schema: "auth".into(),
        billing_db: dev_db.into(),
        billing_schema: "billing".into(),
        allow_hosts: Vec::new(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {what}");
        match flag.as_str() {
            "--users" => {
                o.users = value.parse().ok().filter(|n| *n > 0).ok_or(bad("a positive whole number"))?
            }
            "--auth-addr" => o.auth_addr = value.parse().map_err(|_| bad("HOST:PORT"))?,
            "--auth-db" => o.auth_db = value,
            "--auth-schema" => o.auth_schema = value,
            "--billing-db" => o.billing_db = value,
            "--billing-schema" => o.billing_schema = value,
            "--allow-host" => o.allow_hosts.push(value.parse().map_err(|_| bad("an IP address"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.users == 0 {
        return Err("seed needs --users N".into());
    }
    Ok(Command::Seed(o))
}

fn duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Parses the arguments (without the program name); `Err` says what is
/// wrong, for the usage message.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let verb = args.next().ok_or("a command is needed")?;
    if verb == "seed" {
        return parse_seed(args);
    }
    let scenario = args.next().ok_or("a scenario is needed")?;
    if !NAMES.contains(&scenario.as_str()) {
        return Err(format!("no scenario {scenario:?}"));
    }
    let (mut target, mut a, mut b) = (Target::Gateway, Target::Direct, Target::Gateway);
    let mut services = Services::default();
    let (mut addr, mut a_addr, mut b_addr) = (None, None, None);
    let (mut in_flight, mut rate, mut max_in_flight) = (32usize, None::<f64>, 10_000usize);
    let (mut run_for, mut max_requests, mut connections) = (Duration::from_secs(10), 10_000_000u64, 4usize);
    let (mut json, mut plots, mut allow_hosts) = (None, None, Vec::new());
    let (mut users, mut seeded) = (16u64, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let bad = |what: &str| format!("{flag}: {what}");
        let target_named = |v: String| Target::parse(&v).ok_or(bad("gateway, http or direct"));
        let address = |v: String| v.parse::<SocketAddr>().map_err(|_| bad("HOST:PORT, e.g. 127.0.0.1:50050"));
        let count =
            |v: String| v.parse::<u64>().ok().filter(|n| *n > 0).ok_or(bad("a positive whole number"));
        match flag.as_str() {
            "--target" => target = target_named(value()?)?,
            "--a" => a = target_named(value()?)?,
            "--b" => b = target_named(value()?)?,
            "--addr" => addr = Some(address(value()?)?),
            "--a-addr" => a_addr = Some(address(value()?)?),
            "--b-addr" => b_addr = Some(address(value()?)?),
            "--auth-addr" => services.auth = address(value()?)?,
            "--billing-addr" => services.billing = address(value()?)?,
            "--notification-addr" => services.notification = address(value()?)?,
            "--in-flight" => in_flight = count(value()?)? as usize,
            "--rate" => {
                rate = Some(value()?.parse::<f64>().ok().filter(|r| *r > 0.0).ok_or(bad("calls a second"))?)
            }
            "--max-in-flight" => max_in_flight = count(value()?)? as usize,
            "--duration" => run_for = duration(&value()?).ok_or(bad("e.g. 500ms, 10s, 2m"))?,
            "--max-requests" => max_requests = count(value()?)?,
            "--connections" => connections = count(value()?)? as usize,
            "--users" => users = count(value()?)?,
            "--seeded" => seeded = Some(count(value()?)?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--plots" => plots = Some(PathBuf::from(value()?)),
            "--allow-host" => allow_hosts.push(value()?.parse::<IpAddr>().map_err(|_| bad("an IP address"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let mode = match rate {
        Some(rate) => Mode::Open { rate, max_in_flight },
        None => Mode::Closed { in_flight },
    };
    let plan = Plan { mode, duration: run_for, max_requests };
    let options = |target: Target, addr: Option<SocketAddr>| Options {
        scenario: scenario.clone(),
        target,
        addr: addr.unwrap_or(target.default_addr()),
        services,
        operator_secret: std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
        users,
        seeded,
        plan,
        connections,
        json: json.clone(),
        plots: plots.clone(),
        allow_hosts: allow_hosts.clone(),
    };
    match verb.as_str() {
        "run" => Ok(Command::Run(Box::new(options(target, addr)))),
        "compare" => {
            if a == b && a_addr == b_addr {
                return Err("compare needs two different targets".into());
            }
            // Each side's JSON beside the other's: FILE becomes FILE.a / FILE.b.
            let side = |o: Options, tag: &str| Options {
                json: o.json.map(|p| PathBuf::from(format!("{}.{tag}", p.display()))),
                ..o
            };
            Ok(Command::Compare {
                a: Box::new(side(options(a, a_addr), "a")),
                b: Box::new(side(options(b, b_addr), "b")),
            })
        }
        other => Err(format!("no command {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_run_takes_its_plan_from_the_flags_and_refuses_what_it_cannot_bound() {
        let Ok(Command::Run(o)) = parse(args(
            "run me --rate 500 --duration 2s --max-requests 900 --target direct --billing-addr 127.0.0.1:1",
        )) else {
            panic!("a valid run");
        };
        assert_eq!(o.plan.mode, Mode::Open { rate: 500.0, max_in_flight: 10_000 });
        assert_eq!((o.plan.duration, o.plan.max_requests), (Duration::from_secs(2), 900));
        assert_eq!(o.target, Target::Direct);
        assert_eq!(o.services.billing, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(o.services.auth, Services::default().auth);
        for bad in [
            "run me --duration forever",
            "run me --rate -3",
            "run me --in-flight 0",
            "run nope",
            "run me --x 1",
            "run me --target auth",
            "run me --billing-addr nowhere",
            "run me --users 0",
            "seed",
            "seed --users ten",
        ] {
            assert!(parse(args(bad)).is_err(), "{bad}");
        }
        assert!(
            matches!(parse(args("compare me --a direct --b direct")), Err(e) if e.contains("two different"))
        );
    }
}
