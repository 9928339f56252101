//! tenx-auth: accounts, passwords, sessions with rotating refresh tokens,
//! JWT access tokens with a JWKS, API keys and avatars, over gRPC
//! (`tenx.auth.v1.AuthService`).
//!
//! - [`service`]: the RPC handlers.
//! - [`store`]: the SQL; [`keys`]: signing keys and JWTs;
//!   [`password`]: argon2id; [`secrets`]: tokens, codes, API keys;
//!   [`totp`]: RFC 6238 codes, `otpauth://` URIs and their QR codes.
//! - [`avatar`]: the thumbnail worker.
//! - [`verifier`]: auth's own sources for the shared authentication layer
//!   (`tenx_common::authn`); [`denylist`]: revoking for every service.
//! - [`app`]: wiring, `migrate`, `rotate_keys`.

#![forbid(unsafe_code)]

pub mod app;
pub mod avatar;
pub mod denylist;
pub mod error;
pub mod keys;
pub mod password;
pub mod personal;
pub mod secrets;
pub mod service;
pub mod settings;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod totp;
pub mod validate;
pub mod verifier;

pub use app::{App, grant_role, rotate_keys};
pub use settings::AuthSettings;
pub use tenx_common::host::Running;
