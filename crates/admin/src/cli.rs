//! Parsing the command line.

use std::time::{Duration, SystemTime};

pub const USAGE: &str = "\
usage: tenx-admin status [--service S]
       tenx-admin token
       tenx-admin keys
       tenx-admin user EMAIL|ID
       tenx-admin grant-role EMAIL|ID admin
       tenx-admin revoke-role EMAIL|ID admin
       tenx-admin replay [--service S] --from WHEN [--to WHEN] [--type T]
       tenx-admin dead-letters list [--service S] [--queue Q] [--limit N]
       tenx-admin dead-letters redrive --service S --queue Q (--id ID ... | --type T | --all)
       tenx-admin dead-letters purge --service S --queue Q (--id ID ... | --type T | --all) --yes

status: each service's readiness checks, outbox backlog and the age of its oldest
pending event, queue depths (dead letters flagged), Postgres pools and recent slow calls
(all three unless --service). token: prints an operator's access token, for the console
on the gateway's admin port (http://HOST:9090/console). keys: auth's signing keys (which
signs, which is next and from when, which retired ones are still published) and when
the scheduled rotation makes the next one. user: one account (roles, verified, live
sessions and API keys, last login, login locks). grant-role: admin shows in the
account's next token. revoke-role: also ends all the account's sessions at once.

replay: the events a service published (S: auth, billing or notification; all three
unless --service) that occurred from WHEN (up to --to, default now; of type T only with
--type), published again with their ids, so each consumer applies one it already has
once only (for a consumer restored from a backup). WHEN: RFC 3339
(2026-12-01T09:00:00Z) or a time ago (90s, 15m, 2h, 3d). Events older than the outbox
keeps (outbox.retention_hours) are gone, and it says so.

The dead letters of the queues a service consumes (S: auth, billing or notification;
list: all three unless --service): list shows each dead-letter queue's depth and first
messages (--limit, default 20) without taking them; redrive sends the chosen ones back
to their work queue as first attempts, with the same message id; purge drops them.

Credential (from the environment, never the command line): TENX_ADMIN_SECRET, the secret
of auth's service_clients.operator, exchanged at auth for a service token; or
TENX_ADMIN_TOKEN, the access token of a user with the admin role.

Addresses (each service's own gRPC port; the public edge serves no operator RPC):
  --auth-addr, --billing-addr, --notification-addr HOST:PORT or URL
                          default: make up's 127.0.0.1:50051, :50052, :50053";

/// A mistake on the command line (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for Usage {}

/// Where each service's gRPC listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    pub auth: String,
    pub billing: String,
    pub notification: String,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            auth: "127.0.0.1:50051".into(),
            billing: "127.0.0.1:50052".into(),
            notification: "127.0.0.1:50053".into(),
        }
    }
}

impl Services {
    /// The address of `service`.
    pub fn of(&self, service: Service) -> &str {
        match service {
            Service::Auth => &self.auth,
            Service::Billing => &self.billing,
            Service::Notification => &self.notification,
        }
    }
}

/// The services that consume events, and so have dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Auth,
    Billing,
    Notification,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Auth, Service::Billing, Service::Notification];

    pub fn name(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Billing => "billing",
            Service::Notification => "notification",
        }
    }
}

/// Which dead letters a redrive or a purge takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Ids(Vec<String>),
    Type(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterAction {
    List { services: Vec<Service>, queue: Option<String>, limit: i32 },
    Redrive { service: Service, queue: String, pick: Pick },
    Purge { service: Service, queue: String, pick: Pick },
}

/// A window of published events to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub services: Vec<Service>,
    pub from: SystemTime,
    pub to: SystemTime,
    pub event_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Status {
        services: Vec<Service>,
    },
    Token,
    Keys,
    User(String),
    /// Grant (`true`) or revoke a role of an account (email or id).
    Role {
        who: String,
        role: String,
        grant: bool,
    },
    Replay(Replay),
    DeadLetters(DeadLetterAction),
}

/// `WHEN`: an RFC 3339 time, or a time before `now` (`90s`, `15m`, `2h`, `3d`).
pub fn when(flag: &str, raw: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    let bad =
        || usage(format!("{flag} {raw}: RFC 3339 (2026-12-01T09:00:00Z) or a time ago (90s, 15m, 2h, 3d)"));
    if let Ok(timestamp) = raw.parse::<prost_types::Timestamp>() {
        return SystemTime::try_from(timestamp).map_err(|_| bad());
    }
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (amount, unit) = raw.split_at(split);
    let amount: u64 = amount.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let ago = Duration::from_secs(amount.checked_mul(seconds).ok_or_else(bad)?);
    now.checked_sub(ago).ok_or_else(bad)
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// `args` without the program name.
pub fn parse(args: &[String]) -> anyhow::Result<(Command, Services)> {
    let mut services = Services::default();
    let mut words = Vec::new();
    let (mut service, mut queue, mut limit, mut ids, mut kind, mut all, mut yes) =
        (None, None, None, Vec::new(), None, false, false);
    let (mut from, mut to) = (None, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value =
            |flag: &str| rest.next().cloned().ok_or_else(|| usage(format!("{flag} needs a value")));
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok((Command::Help, services)),
            "--service" => service = Some(value(arg)?),
            "--queue" => queue = Some(value(arg)?),
            "--limit" => limit = Some(value(arg)?),
            "--id" => ids.push(value(arg)?),
            "--type" => kind = Some(value(arg)?),
            "--all" => all = true,
            "--yes" => yes = true,
            "--from" => from = Some(value(arg)?),
            "--to" => to = Some(value(arg)?),
            "--auth-addr" => services.auth = value(arg)?,
            "--billing-addr" => services.billing = value(arg)?,
            "--notification-addr" => services.notification = value(arg)?,
            flag if flag.starts_with('-') => return Err(usage(format!("unknown option {flag}"))),
            word => words.push(word),
        }
    }
    let service = service
        .map(|name| {
            Service::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| usage(format!("--service {name}: one of auth, billing, notification")))
        })
        .transpose()?;
    let pick = || -> anyhow::Result<Pick> {
        match (ids.is_empty(), &kind, all) {
            (false, None, false) => Ok(Pick::Ids(ids.clone())),
            (true, Some(kind), false) => Ok(Pick::Type(kind.clone())),
            (true, None, true) => Ok(Pick::All),
            _ => Err(usage("choose the dead letters with exactly one of --id (repeatable), --type or --all")),
        }
    };
    let one = |verb: &str| -> anyhow::Result<(Service, String)> {
        let service = service.ok_or_else(|| usage(format!("{verb} needs --service")))?;
        let queue =
            queue.clone().ok_or_else(|| usage(format!("{verb} needs --queue (see `dead-letters list`)")))?;
        Ok((service, queue))
    };
    let action = match words.as_slice() {
        [] => return Ok((Command::Help, services)),
        ["status"] => {
            let which = service.map_or_else(|| Service::ALL.to_vec(), |s| vec![s]);
            return Ok((Command::Status { services: which }, services));
        }
        ["token"] => return Ok((Command::Token, services)),
        ["keys"] => return Ok((Command::Keys, services)),
        ["user", who] => return Ok((Command::User((*who).to_owned()), services)),
        ["user"] => return Err(usage("user needs an email or a user id")),
        [verb @ ("grant-role" | "revoke-role"), who, role] => {
            let command = Command::Role {
                who: (*who).to_owned(),
                role: (*role).to_owned(),
                grant: *verb == "grant-role",
            };
            return Ok((command, services));
        }
        [verb @ ("grant-role" | "revoke-role"), ..] => {
            return Err(usage(format!("{verb} needs an email or a user id, then the role (admin)")));
        }
        ["replay"] => {
            let now = SystemTime::now();
            let from = when("--from", &from.ok_or_else(|| usage("replay needs --from"))?, now)?;
            let to = to.map_or(Ok(now), |to| when("--to", &to, now))?;
            if to <= from {
                return Err(usage("--to must be after --from"));
            }
            let which = service.map_or_else(|| Service::ALL.to_vec(), |s| vec![s]);
            let replay = Replay { services: which, from, to, event_type: kind };
            return Ok((Command::Replay(replay), services));
        }
        ["dead-letters", "list"] => {
            let limit = match limit {
                None => 20,
                Some(n) => n
                    .parse()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| usage("--limit: 1 to 500"))?,
            };
            let services = service.map_or_else(|| Service::ALL.to_vec(), |s| vec![s]);
            DeadLetterAction::List { services, queue: queue.clone(), limit }
        }
        ["dead-letters", "redrive"] => {
            let (service, queue) = one("redrive")?;
            DeadLetterAction::Redrive { service, queue, pick: pick()? }
        }
        ["dead-letters", "purge"] => {
            let (service, queue) = one("purge")?;
            let pick = pick()?;
            if !yes {
                return Err(usage("purge drops dead letters for good: add --yes"));
            }
            DeadLetterAction::Purge { service, queue, pick }
        }
        other => return Err(usage(format!("unknown command: {}", other.join(" ")))),
    };
    Ok((Command::DeadLetters(action), services))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::when;

    #[test]
    fn when_is_a_time_or_a_time_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |raw: &str| when("--from", raw, now).map_err(|e| e.to_string());
        assert_eq!(at("2h"), Ok(now - Duration::from_secs(7200)));
        assert_eq!(at("3d"), Ok(now - Duration::from_secs(3 * 86_400)));
        assert_eq!(at("90s"), Ok(now - Duration::from_secs(90)));
        assert_eq!(
            at("2026-12-01T09:00:00Z"),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_115_600))
        );
        for bad in ["", "h", "2", "2w", "-2h", "yesterday", "99999999999999999999d"] {
            let error = at(bad).expect_err(bad);
            assert!(error.contains("--from"), "{bad}: {error}");
        }
    }
}
