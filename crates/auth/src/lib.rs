//! tenx-auth: accounts, passwords, sessions with rotating refresh tokens,
//! JWT access tokens with a JWKS, API keys and avatars, over gRPC
//! (`tenx.auth.v1.AuthService`).
//!
//! - [`service`]: the RPC handlers.
//! - [`store`]: the SQL; [`keys`]: signing keys and JWTs;
//!   [`password`]: argon2id; [`secrets`]: tokens, codes, API keys.
//! - [`avatar`]: the thumbnail worker.
//! - [`app`]: wiring, `migrate`, `rotate_keys`.

#![forbid(unsafe_code)]

pub mod app;
pub mod avatar;
pub mod denylist;
pub mod error;
pub mod keys;
pub mod password;
pub mod secrets;
pub mod service;
pub mod settings;
pub mod store;
pub mod validate;

pub use app::{App, Running, migrate, rotate_keys};
pub use settings::AuthSettings;
