//! Keys joined on the stack: a lookup on every call (a cache's write
//! position, a revocation) then allocates nothing.

use std::borrow::Cow;

/// `parts` written one after the other into `buffer`; `None` when they do
/// not fit (the caller then joins them on the heap).
pub fn joined<'b>(buffer: &'b mut [u8], parts: &[&str]) -> Option<&'b str> {
    let mut len = 0;
    for part in parts {
        let end = len + part.len();
        buffer.get_mut(len..end)?.copy_from_slice(part.as_bytes());
        len = end;
    }
    // Whole strings one after another are UTF-8.
    std::str::from_utf8(&buffer[..len]).ok()
}

/// `parts` joined in `buffer` when they fit, else on the heap: the key
/// whatever its length, allocated only when it is too long for the stack.
pub fn joined_or_owned<'b>(buffer: &'b mut [u8], parts: &[&str]) -> Cow<'b, str> {
    match joined(buffer, parts) {
        Some(key) => Cow::Borrowed(key),
        None => Cow::Owned(parts.concat()),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{joined, joined_or_owned};

    #[test]
    fn parts_are_joined_in_order_and_a_key_too_long_for_the_buffer_is_refused() {
        let mut buffer = [0u8; 16];
        assert_eq!(joined(&mut buffer, &["session", ":", "é1"]), Some("session:é1"));
        assert_eq!(joined(&mut buffer, &["0123456789", "0123456"]), None);
        assert_eq!(joined(&mut buffer, &["0123456789", "012345"]), Some("0123456789012345"));
        assert_eq!(joined(&mut buffer, &[]), Some(""));
    }

    #[test]
    fn a_key_too_long_for_the_buffer_is_joined_on_the_heap_instead() {
        let mut buffer = [0u8; 16];
        assert!(matches!(joined_or_owned(&mut buffer, &["session", ":", "é1"]), Cow::Borrowed("session:é1")));
        let long = joined_or_owned(&mut buffer, &["0123456789", "0123456"]);
        assert!(matches!(long, Cow::Owned(_)));
        assert_eq!(long, "01234567890123456");
    }
}
