//! tenx's gRPC and protobuf contracts, generated from `proto/` at build time.
//!
//! Each package of `proto/tenx/<area>/v1` is a module here
//! (`tenx_proto::events::v1`, later `auth::v1`, …). [`FILE_DESCRIPTOR_SET`]
//! feeds gRPC server reflection.

#![allow(missing_debug_implementations)] // generated gRPC clients/servers

/// Serialized `FileDescriptorSet` of every tenx proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tenx_descriptor.bin"));

/// Domain event envelope shared by every service (`tenx.events.v1`).
pub mod events {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.events.v1.rs"));
    }
}

/// Accounts, sessions, API keys (`tenx.auth.v1`).
pub mod auth {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.auth.v1.rs"));
    }
}

/// Email and in-app notifications (`tenx.notification.v1`).
pub mod notification {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.notification.v1.rs"));
    }
}

/// Plans, subscriptions, invoices, payments and the ledger (`tenx.billing.v1`).
pub mod billing {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.billing.v1.rs"));
    }
}

/// What operators steer in every service (`tenx.ops.v1`): dead letters,
/// status, event replay.
pub mod ops {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.ops.v1.rs"));
    }
}

/// Custom options of tenx's contracts (`tenx.options.v1`).
pub mod options {
    #[allow(clippy::all, clippy::pedantic)] // generated code
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tenx.options.v1.rs"));
    }
}

/// Who may call each RPC, from the `(tenx.options.v1.access)` option every
/// RPC in `proto/` declares (the build fails without one). The one table
/// the services' shared authentication layer and the gateway enforce.
pub mod access {
    /// The kinds of caller an RPC admits (`tenx.options.v1.Caller`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Caller {
        /// No credential needed.
        Anyone,
        /// A user's session, or an API key holding the rule's scope.
        User,
        /// A user's session only, never an API key.
        Session,
        /// An admin user or a service.
        Operator,
        /// A service only.
        Service,
    }

    /// One RPC's rule.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rule {
        pub caller: Caller,
        /// The scope an API key needs (`CALLER_USER` only; else empty).
        pub scope: &'static str,
    }

    include!(concat!(env!("OUT_DIR"), "/access_table.rs"));

    /// The rule of the RPC at `path` (`/tenx.auth.v1.AuthService/GetUser`),
    /// or `None` for a path that is no tenx RPC.
    pub fn rule(path: &str) -> Option<Rule> {
        METHODS.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| METHODS[i].1)
    }

    /// Every scope some RPC requires, sorted and deduplicated.
    pub fn scopes() -> Vec<&'static str> {
        let mut scopes: Vec<&str> = METHODS.iter().map(|(_, r)| r.scope).filter(|s| !s.is_empty()).collect();
        scopes.sort_unstable();
        scopes.dedup();
        scopes
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_rpc_has_a_rule_and_lookups_find_them() {
            assert!(METHODS.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
            assert_eq!(rule("/tenx.auth.v1.AuthService/Login").map(|r| r.caller), Some(Caller::Anyone));
            assert_eq!(
                rule("/tenx.billing.v1.BillingService/PayInvoice"),
                Some(Rule { caller: Caller::User, scope: "billing:write" })
            );
            assert_eq!(
                rule("/tenx.notification.v1.NotificationService/Send").map(|r| r.caller),
                Some(Caller::Operator)
            );
            assert_eq!(
                rule("/tenx.auth.v1.AuthService/CreateApiKey").map(|r| r.caller),
                Some(Caller::Session)
            );
            assert_eq!(rule("/grpc.health.v1.Health/Check"), None);
            assert_eq!(rule("/tenx.auth.v1.AuthService/NoSuchRpc"), None);
            assert!(scopes().contains(&"notifications:read"));
        }
    }
}
