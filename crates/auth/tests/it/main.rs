//! Integration tests of tenx-auth: the real service on port 0, called
//! through its generated gRPC client, against real Postgres (primary +
//! replica), Redis and RabbitMQ.

mod accounts;
mod api_keys;
mod avatars;
mod bad_input;
mod binary;
mod codes;
mod events;
mod key_schedule;
mod mfa;
mod org_keys;
mod org_matrix;
mod orgs;
mod personal;
mod roles;
mod sessions;
mod support;
