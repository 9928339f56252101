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
