//! Integration tests of tenx-billing through its gRPC client, against real
//! Postgres (primary + replica), Redis and RabbitMQ.

mod binary;
mod catalog;
mod customers;
mod dunning;
mod ledger;
mod lifecycle;
mod outbox;
mod payments;
mod reconcile;
mod refunds;
mod replica;
mod rules;
mod stripe;
mod support;
mod trials;
mod usage;
mod validation;
