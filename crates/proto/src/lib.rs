//! tenx's gRPC and protobuf contracts, generated from `proto/` at build time.
//!
//! Each package of `proto/tenx/<area>/v1` is a module here
//! (`tenx_proto::events::v1`, later `auth::v1`, …). [`FILE_DESCRIPTOR_SET`]
//! feeds gRPC server reflection.

#![allow(missing_debug_implementations)] // generated gRPC clients/servers

/// Serialized `FileDescriptorSet` of every tenx proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tenx_descriptor.bin"));

/// The payload of a domain event: its type is declared in the contract
/// (`(tenx.options.v1.event_type)` on the message) and generated here, so
/// the outbox publishes a payload under its own type only
/// (`tenx_common::outbox::NewEvent::of`) and consumers match generated
/// constants (`UserSignedUp::EVENT_TYPE`): a misspelt type does not compile.
pub trait Event: prost::Name {
    /// The envelope's `type` and routing key (`auth.user.signed_up`).
    const TYPE: &'static str;
}

include!(concat!(env!("OUT_DIR"), "/event_types.rs"));

pub mod rules;

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
        /// Step-up: a session must have authenticated at most this long
        /// ago (its token's `auth_time`); 0: no limit.
        pub max_auth_age_seconds: u32,
        /// The organization permission the caller's active role must
        /// hold (`CALLER_SESSION` only); empty: none.
        pub permission: &'static str,
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
                Some(Rule {
                    caller: Caller::User,
                    scope: "billing:write",
                    max_auth_age_seconds: 0,
                    permission: ""
                })
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

/// The RPCs the edge gateway serves, from the `(tenx.options.v1.route)`
/// and `(google.api.http)` options beside each RPC in `proto/` (the build
/// checks them): one table for the gateway's gRPC allow-list, its HTTP
/// router, its per-route policy and its OpenAPI document.
pub mod edge {
    /// One public RPC.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PublicRpc {
        /// The gRPC path, `/tenx.billing.v1.BillingService/GetPlan`.
        pub path: &'static str,
        /// The service that serves it (`auth`, `billing`, …).
        pub service: &'static str,
        /// The operation id: metrics, config (`routes.<id>`), OpenAPI.
        pub operation_id: &'static str,
        /// No credential needed (its access rule is CALLER_ANYONE): rate
        /// limited per client address instead of per user.
        pub anonymous: bool,
        /// Safe to send again when the upstream was unavailable.
        pub idempotent: bool,
        /// Its deadline is the payment one (`limits.payment_timeout_ms`).
        pub waits_on_provider: bool,
        /// The gateway vouches for the client's address.
        pub vouches_for_client: bool,
        /// Refused without an `Idempotency-Key`.
        pub idempotency_key: bool,
        /// Its HTTP binding; `None`: gRPC only.
        pub http: Option<Http>,
    }

    /// An HTTP binding (`google.api.http`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Http {
        /// `GET`, `POST`, `PATCH`, `PUT` or `DELETE`.
        pub method: &'static str,
        /// The path in axum's syntax: `/v1/billing/plans/{plan_id}`.
        pub path: &'static str,
        /// Which request field the body fills: `*` (every field the path
        /// does not), one field (a bytes field takes the raw body), or
        /// empty (no body; fields come from the path and query).
        pub body: &'static str,
        /// Fields the path fixes: a `{provider=stripe}` template segment
        /// is `stripe` in `path` and sets `provider`.
        pub fixed: &'static [(&'static str, &'static str)],
        /// Request headers read into fields: (header, field).
        pub headers: &'static [(&'static str, &'static str)],
        /// A success is `201 Created`.
        pub creates: bool,
        /// The largest body the route takes; 0: the gateway's own limit.
        pub max_body_bytes: u32,
        /// A bytes field of the answer that is the whole HTTP body (an
        /// image), sent as `media_type` with an `ETag`; empty: JSON.
        pub response_body: &'static str,
        /// The `Content-Type` of a `response_body`.
        pub media_type: &'static str,
        /// The answer's `Cache-Control`; empty: none.
        pub cache_control: &'static str,
    }

    include!(concat!(env!("OUT_DIR"), "/edge_table.rs"));

    /// The public RPC at a gRPC path.
    pub fn by_path(path: &str) -> Option<&'static PublicRpc> {
        PUBLIC.binary_search_by(|r| r.path.cmp(path)).ok().map(|i| &PUBLIC[i])
    }

    /// The public RPC of an operation id.
    pub fn by_operation(operation_id: &str) -> Option<&'static PublicRpc> {
        PUBLIC.iter().find(|r| r.operation_id == operation_id)
    }

    /// The public RPCs with an HTTP binding, with it.
    pub fn http() -> impl Iterator<Item = (&'static PublicRpc, &'static Http)> {
        PUBLIC.iter().filter_map(|r| r.http.as_ref().map(|h| (r, h)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn public_rpcs_carry_their_binding_and_policy_from_the_protos() {
            assert!(PUBLIC.windows(2).all(|w| w[0].path < w[1].path), "sorted, no duplicates");
            let plan = by_path("/tenx.billing.v1.BillingService/GetPlan").expect("public");
            assert_eq!(
                (plan.service, plan.operation_id, plan.anonymous),
                ("billing", "billing_plans_get", true)
            );
            assert_eq!(
                plan.http,
                Some(Http {
                    method: "GET",
                    path: "/v1/billing/plans/{plan_id}",
                    body: "",
                    fixed: &[],
                    headers: &[],
                    creates: false,
                    max_body_bytes: 0,
                    response_body: "",
                    media_type: "",
                    cache_control: "",
                })
            );
            let pay = by_operation("billing_invoices_pay").expect("public");
            assert!(pay.waits_on_provider && pay.idempotency_key && !pay.anonymous);
            let webhook = by_operation("billing_stripe_webhook").and_then(|r| r.http).expect("bound");
            assert_eq!((webhook.path, webhook.body), ("/v1/billing/webhooks/stripe", "payload"));
            assert_eq!(webhook.fixed, &[("provider", "stripe")]);
            assert_eq!(webhook.headers, &[("stripe-signature", "signature")]);
            assert!(by_operation("auth_signup").and_then(|r| r.http).is_some_and(|h| h.creates));
            let avatar = by_operation("avatar_upload").and_then(|r| r.http).expect("bound");
            assert_eq!((avatar.body, avatar.max_body_bytes), ("data", 5_308_416));
            let thumbnail =
                by_operation("avatars_get").filter(|r| r.anonymous).and_then(|r| r.http).expect("bound");
            assert_eq!(
                (thumbnail.path, thumbnail.response_body, thumbnail.media_type),
                ("/v1/avatars/{avatar_id}", "data", "image/png")
            );
            assert!(thumbnail.cache_control.contains("immutable"));
            assert!(by_operation("auth_login").is_some_and(|r| r.vouches_for_client && r.anonymous));
            // Operator and service RPCs are never public.
            assert_eq!(by_path("/tenx.notification.v1.NotificationService/Send"), None);
            assert_eq!(by_path("/tenx.auth.v1.AuthService/AuthenticateApiKey"), None);
        }
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    fn type_of<M: Event>(_: &M) -> (&'static str, String) {
        (M::TYPE, M::full_name())
    }

    #[test]
    fn every_event_type_names_its_payload_message_once_within_its_service() {
        assert!(EVENT_TYPES.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
        for (event_type, message) in EVENT_TYPES {
            let area = event_type.split('.').next().unwrap_or_default();
            assert!(message.starts_with(&format!("tenx.{area}.v1.")), "{event_type} is {message}'s");
        }
        // The constant, the trait and the table agree, per message.
        for (constant, (trait_type, message)) in [
            (auth::v1::UserSignedUp::EVENT_TYPE, type_of(&auth::v1::UserSignedUp::default())),
            (billing::v1::InvoicePaid::EVENT_TYPE, type_of(&billing::v1::InvoicePaid::default())),
            (notification::v1::WebhookDue::EVENT_TYPE, type_of(&notification::v1::WebhookDue::default())),
        ] {
            assert_eq!(constant, trait_type);
            assert!(EVENT_TYPES.contains(&(constant, message.as_str())), "{constant} {message}");
        }
        assert!(EVENT_TYPES.len() >= 16, "every event of auth, billing and notification");
    }
}
