//! Read-your-writes across calls: the write positions auth and billing
//! answer with, as the client sends them back (`x-tenx-wal-position`) and
//! as this gateway remembers each user's last write for a few seconds.

use std::time::Duration;

use moka::future::Cache;

/// A service whose writes the gateway tracks for read-your-writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteScope {
    Auth,
    Billing,
}

impl WriteScope {
    /// The scope of a service's writes, for the services that return
    /// write positions (auth, billing).
    pub fn of(service: &str) -> Option<Self> {
        match service {
            "auth" => Some(WriteScope::Auth),
            "billing" => Some(WriteScope::Billing),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            WriteScope::Auth => "auth",
            WriteScope::Billing => "billing",
        }
    }

    /// The `x-tenx-wal-position` value of a position of this service:
    /// auth's as is (as it always was), billing's as `billing:<position>`.
    pub fn tag(self, position: &str) -> String {
        match self {
            WriteScope::Auth => position.to_owned(),
            WriteScope::Billing => format!("billing:{position}"),
        }
    }

    /// This service's position in a header value, or `None` if the value
    /// is another service's.
    pub fn own_position(self, value: &str) -> Option<&str> {
        match (self, value.strip_prefix("billing:")) {
            (WriteScope::Auth, None) => Some(value),
            (WriteScope::Billing, Some(position)) => Some(position),
            _ => None,
        }
    }
}

/// Each user's last write position per service through this instance
/// (for 10 s), so their next read sees it even when the client does not
/// send it back.
#[derive(Debug, Clone)]
pub struct Writes {
    last: Cache<String, String>,
}

impl Default for Writes {
    fn default() -> Self {
        Self { last: Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(10)).build() }
    }
}

impl Writes {
    /// The position a read of `scope` must see: the one the client sent
    /// back for that service, else `user`'s last write to it through this
    /// gateway. Positions are per service: each may have a database
    /// cluster of its own, whose positions mean nothing to another's.
    pub fn read_position(&self, sent: Option<&str>, user: Option<&str>, scope: WriteScope) -> Option<String> {
        if let Some(sent) = sent.and_then(|p| scope.own_position(p)) {
            return Some(sent.to_owned());
        }
        // moka's future cache `get` is async only in name for a present key.
        // Most reads find nothing: the key is joined on the stack.
        let (scope, user) = (scope.name(), user?);
        let mut buffer = [0u8; 64];
        let key = tenx_common::joined::joined_or_owned(&mut buffer, &[scope, ":", user]);
        futures_util::FutureExt::now_or_never(self.last.get(&*key)).flatten()
    }

    /// Remembers `user`'s write to `scope` and returns the header value the
    /// client should send back to read it.
    pub async fn remember(&self, user: Option<&str>, scope: WriteScope, position: &str) -> String {
        if let Some(user) = user {
            self.last.insert(key(scope, user), position.to_owned()).await;
        }
        scope.tag(position)
    }
}

/// One user's last write to one service.
fn key(scope: WriteScope, user: &str) -> String {
    format!("{}:{user}", scope.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_sees_the_position_sent_back_else_the_users_last_write_to_that_service() {
        let writes = Writes::default();
        assert_eq!(writes.remember(Some("u1"), WriteScope::Billing, "0/10").await, "billing:0/10");
        assert_eq!(writes.read_position(None, Some("u1"), WriteScope::Billing).as_deref(), Some("0/10"));
        assert_eq!(writes.read_position(None, Some("u1"), WriteScope::Auth), None, "another service's");
        assert_eq!(writes.read_position(None, Some("u2"), WriteScope::Billing), None, "another user's");
        let sent = Some("billing:0/20");
        assert_eq!(writes.read_position(sent, Some("u1"), WriteScope::Billing).as_deref(), Some("0/20"));
        assert_eq!(writes.read_position(sent, None, WriteScope::Auth), None, "billing's, not auth's");
        // A user id longer than the key's buffer on the stack is found too.
        let long = "u".repeat(100);
        writes.remember(Some(&long), WriteScope::Auth, "0/30").await;
        assert_eq!(writes.read_position(None, Some(&long), WriteScope::Auth).as_deref(), Some("0/30"));
    }
}
