//! Gateway integration tests: real auth, notification and billing services on
//! loopback (real Postgres, Redis, RabbitMQ), the gateway in front, and
//! real HTTP and gRPC clients.

mod attacks;
mod auth_offload;
mod balance;
mod billing;
mod billing_matrix;
mod console;
mod drain;
mod e2e;
mod edge;
mod grpc_door;
mod limits;
mod mfa;
mod openapi;
mod orgs;
mod routes;
mod schemathesis;
mod support;
