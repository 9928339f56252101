//! The idempotency key of a mutation, as every tenx service and the edge
//! name and check it: `idempotency-key` metadata (the HTTP header of the
//! same name), 1–255 printable ASCII characters; a replayed answer comes
//! back with `idempotent-replayed: true`.

/// The request metadata (and HTTP header) carrying the key.
pub const METADATA: &str = "idempotency-key";
/// Response metadata (and HTTP header) on an answer replayed for a key.
pub const REPLAYED: &str = "idempotent-replayed";
/// What a well-formed key is, for error messages.
pub const RULE: &str = "must be 1–255 printable ASCII characters";

/// Whether `key` is a usable idempotency key: 1–255 printable ASCII.
pub fn well_formed(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert!(well_formed("order-42 retry"));
        assert!(well_formed(&"k".repeat(255)));
        assert!(!well_formed(""));
        assert!(!well_formed(&"k".repeat(256)));
        assert!(!well_formed("tab\there"));
        assert!(!well_formed("clé"));
    }
}
