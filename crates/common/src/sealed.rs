//! Small secrets sealed for one other service: AES-256-GCM under a key the
//! two share (`codes.seal_key`), bound to what they belong to (the
//! associated data, e.g. the user's id). How auth hands notification a
//! reset code without the code ever sitting in plaintext in an outbox row,
//! a broker queue or a dead-letter queue.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const NONCE: usize = 12;

/// A sealing key; `Debug` never shows it.
#[derive(Clone)]
pub struct SealKey(Aes256Gcm);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

impl SealKey {
    /// A key from 32 bytes in base64.
    pub fn parse(base64_key: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(base64_key.trim()).map_err(|_| "must be base64".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!("must decode to 32 bytes, got {}", bytes.len()));
        }
        Aes256Gcm::new_from_slice(&bytes).map(SealKey).map_err(|_| "must decode to 32 bytes".to_owned())
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain`, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand_nonce();
        // AES-GCM encryption cannot fail for inputs this small.
        let sealed =
            self.0.encrypt(&Nonce::from(nonce), Payload { msg: plain, aad: context }).unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// The plaintext, if `sealed` was sealed with this key for `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() <= NONCE {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().ok()?;
        self.0.decrypt(&Nonce::from(nonce), Payload { msg: body, aad: context }).ok()
    }
}

/// 96 random bits from the OS: a nonce never repeats in practice.
fn rand_nonce() -> [u8; NONCE] {
    let mut nonce = [0u8; NONCE];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_code_opens_only_with_its_key_and_for_its_owner() {
        let key = SealKey::parse("ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE=").expect("key");
        let other = SealKey::parse("b3RoZXItZGV2ZWxvcG1lbnQta2V5LTMyLWJ5dGVzISE=").expect("key");
        let sealed = key.seal(b"ABCD2345", b"reset:alice");
        assert!(!sealed.windows(8).any(|w| w == b"ABCD2345"), "no plaintext inside");
        assert_eq!(key.open(&sealed, b"reset:alice").as_deref(), Some(&b"ABCD2345"[..]));
        assert_eq!(key.open(&sealed, b"reset:mallory"), None, "bound to its owner");
        assert_eq!(other.open(&sealed, b"reset:alice"), None, "only with its key");
        assert_ne!(key.seal(b"ABCD2345", b"reset:alice"), sealed, "a fresh nonce each time");
        assert!(SealKey::parse("short").is_err());
    }
}
