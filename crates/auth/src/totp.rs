//! TOTP (RFC 6238, over RFC 4226's HOTP) as every authenticator app reads
//! it from an `otpauth://` URI: HMAC-SHA-1, 6 digits, 30-second steps.
//! Pure functions; what is stored and when a code counts is `mfa`'s.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;

/// Digits of a code.
pub const DIGITS: usize = 6;
/// Seconds per time step.
pub const STEP_SECONDS: u64 = 30;
/// 160 bits: RFC 4226's recommended secret length for HMAC-SHA-1.
pub const SECRET_BYTES: usize = 20;
/// Pixels per QR module, and the quiet zone around the code in modules.
const QR_SCALE: u32 = 6;
const QR_QUIET: u32 = 4;

/// A new random secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The secret as authenticator apps take it: base32, no padding.
pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// A secret from its base32 (as [`base32`] wrote it, or typed by hand:
/// case and spaces do not matter); `None` if it is not base32.
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_uppercase).collect();
    data_encoding::BASE32_NOPAD.decode(cleaned.trim_end_matches('=').as_bytes()).ok()
}

/// The time step `time` falls in.
pub fn step_at(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / STEP_SECONDS
}

/// The code of `step` (RFC 4226 §5.3: dynamic truncation), `digits` long.
pub fn code_with_digits(secret: &[u8], step: u64, digits: u32) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 10u32.pow(digits)
}

/// The six-digit code of `step`, zero-padded as apps show it.
pub fn code(secret: &[u8], step: u64) -> String {
    format!("{:0width$}", code_with_digits(secret, step, DIGITS as u32), width = DIGITS)
}

/// The step within `skew` steps of `now` whose code is `given`, the
/// latest if several are (every candidate is computed: the time taken
/// does not tell which one matched).
pub fn matching_step(secret: &[u8], given: &str, now: u64, skew: u64) -> Option<u64> {
    if given.len() != DIGITS || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for step in now.saturating_sub(skew)..=now.saturating_add(skew) {
        if crate::secrets::constant_time_eq(code(secret, step).as_bytes(), given.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// `otpauth://totp/<issuer>:<account>?secret=…&issuer=…` (Google
/// Authenticator's key URI format), labels percent-encoded.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let (issuer, account) = (percent_encode(issuer), percent_encode(account));
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        base32(secret)
    )
}

/// RFC 3986: everything but the unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A QR code of `text`, black on white with its quiet zone, as a PNG.
pub fn qr_png(text: &str) -> Result<Vec<u8>, String> {
    let qr = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    let modules = u32::try_from(qr.width()).map_err(|e| e.to_string())?;
    let colors = qr.to_colors();
    let side = (modules + 2 * QR_QUIET) * QR_SCALE;
    let image = image::GrayImage::from_fn(side, side, |x, y| {
        let (mx, my) = (x / QR_SCALE, y / QR_SCALE);
        let inside =
            (QR_QUIET..QR_QUIET + modules).contains(&mx) && (QR_QUIET..QR_QUIET + modules).contains(&my);
        let dark =
            inside && colors[((my - QR_QUIET) * modules + (mx - QR_QUIET)) as usize] == qrcode::Color::Dark;
        image::Luma([if dark { 0 } else { 255 }])
    });
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| format!("PNG: {e}"))?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 (8 digits; the seed is the ASCII
    /// "12345678901234567890").
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (time, expected) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code_with_digits(seed, time / STEP_SECONDS, 8), expected, "T = {time}");
        }
        assert_eq!(code(seed, 59 / STEP_SECONDS), "287082", "six digits are the last six");
    }

    #[test]
    fn a_code_matches_only_within_the_skew_and_names_its_step() {
        let secret = new_secret();
        let now = 1_000_000;
        assert_eq!(matching_step(&secret, &code(&secret, now), now, 1), Some(now));
        assert_eq!(matching_step(&secret, &code(&secret, now - 1), now, 1), Some(now - 1));
        assert_eq!(matching_step(&secret, &code(&secret, now + 1), now, 1), Some(now + 1));
        // Two steps away: refused unless the skew allows it (and not a
        // coincidence of codes, which 1 in 10^6 pairs are).
        let far = code(&secret, now - 2);
        if (now - 1..=now + 1).all(|s| code(&secret, s) != far) {
            assert_eq!(matching_step(&secret, &far, now, 1), None);
            assert_eq!(matching_step(&secret, &far, now, 2), Some(now - 2));
        }
        for malformed in ["", "12345", "1234567", "12a456", " 123456"] {
            assert_eq!(matching_step(&secret, malformed, now, 1), None, "{malformed:?}");
        }
    }

    #[test]
    fn the_uri_names_issuer_account_and_secret_as_apps_read_them() {
        let uri = otpauth_uri("tenx", "ann+mfa@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/tenx:ann%2Bmfa%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=tenx&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn the_qr_code_reads_back_as_the_uri() {
        let uri = otpauth_uri("tenx", "ann@example.com", &new_secret());
        let png = qr_png(&uri).expect("drawn");
        let image =
            image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("a PNG").to_luma8();
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
            image.get_pixel(x as u32, y as u32)[0]
        });
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code");
        let (_, content) = grids[0].decode().expect("readable");
        assert_eq!(content, uri);
    }
}
