//! Integration tests of tenx-notification against real RabbitMQ, Postgres,
//! Redis and the SMTP sink `make deps` starts (aiosmtpd keeping a Maildir).

mod billing;
mod binary;
mod chaos;
mod dead_letters;
mod delivery;
mod email_log;
mod retention;
mod rpc;
mod support;
mod webhooks;
