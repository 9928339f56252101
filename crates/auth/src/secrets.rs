//! Random secrets (refresh tokens, API keys, one-time codes) and their
//! stored form: only SHA-256 hashes ever reach the database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

pub const API_KEY_PREFIX: &str = "tenx_sk_";
/// Characters shown of an API key so its owner can recognise it.
pub const API_KEY_SHOWN: usize = 12;
/// Code alphabet without look-alikes (0/O, 1/I/L).
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
pub const CODE_LEN: usize = 8;

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn refresh_token() -> String {
    format!("rt_{}", random_token())
}

pub fn api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_token())
}

/// An 8-character code a person can type from an email.
pub fn code() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..CODE_LEN).map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())])).collect()
}

/// A recovery code, `XXXXX-XXXXX` (10 characters of the code alphabet,
/// ≈ 50 bits): typed once, when the phone is lost.
pub fn recovery_code() -> String {
    let mut rng = rand::rngs::OsRng;
    let mut code: String =
        (0..10).map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())])).collect();
    code.insert(5, '-');
    code
}

/// Codes are compared case-insensitively, ignoring spaces and dashes.
pub fn normalize_code(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_whitespace() && *c != '-').flat_map(char::to_uppercase).collect()
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a lowercase hex SHA-256 (64 characters), or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Equal, in time that depends only on the length (both digests here).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
