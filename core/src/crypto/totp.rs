//! TOTP factors as GoTrue uses them (RFC 6238: SHA-1, 6 digits, 30 s
//! steps, one step either side), computed by totp-rs; the `otpauth://`
//! URI in GoTrue's form, and its QR code as SVG markup.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Seconds per code.
pub const STEP: u64 = 30;

/// A new secret: 20 random bytes in base32 without padding (32 characters).
pub fn new_secret() -> String {
    Secret::from(rand::random::<[u8; 20]>()).to_base32()
}

fn totp(secret: &str) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP)
        .with_secret(Secret::try_from_base32(secret).ok()?)
        .build()
        .ok()
}

/// The time step `code` belongs to (the current one or one either side),
/// compared in constant time; `None` for a wrong code or an unusable secret.
pub fn matching_step(secret: &str, code: &str, unix: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret)?.check(code, unix)
}

/// The code for `unix` (tests and tools compute what an authenticator shows).
pub fn code_at(secret: &str, unix: u64) -> Option<String> {
    Some(totp(secret)?.generate(unix).to_string())
}

/// Percent-encodes all but RFC 3986's unreserved characters and `keep`.
fn escape(s: &str, keep: &[u8]) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b if keep.contains(&b) => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// GoTrue's URI: `otpauth://totp/<issuer>:<account>?algorithm=SHA1&digits=6&issuer=<issuer>&period=30&secret=<secret>`.
pub fn uri(issuer: &str, account: &str, secret: &str) -> String {
    let label = format!("{}:{}", escape(issuer, b":@+"), escape(account, b":@+"));
    format!(
        "otpauth://totp/{label}?algorithm=SHA1&digits=6&issuer={}&period={STEP}&secret={secret}",
        escape(issuer, b":@")
    )
}

/// The URI as a QR code (high error correction, as GoTrue draws it), in
/// SVG markup without a `data:` prefix (auth-js adds one).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(uri.as_bytes(), EcLevel::H).ok()?;
    Some(
        code.render::<svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, truncated to six digits.
    #[test]
    fn rfc_6238_vectors() {
        // The RFC's key "12345678901234567890" in base32.
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        for (t, code) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(code_at(&secret, t).as_deref(), Some(code), "t = {t}");
            assert_eq!(matching_step(&secret, code, t), Some(t / STEP));
        }
    }

    #[test]
    fn one_step_either_side_and_no_further() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let now = 1_800_000_000;
        let step = now / STEP;
        for (offset, wanted) in [
            (-2i64, None),
            (-1, Some(step - 1)),
            (0, Some(step)),
            (1, Some(step + 1)),
            (2, None),
        ] {
            let at = (now as i64 + offset * STEP as i64) as u64;
            let code = code_at(&secret, at).unwrap();
            assert_eq!(
                matching_step(&secret, &code, now),
                wanted,
                "offset {offset}"
            );
        }
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert_eq!(matching_step(&secret, "12345a", now), None);
        assert_eq!(matching_step("not base32!", "123456", now), None);
    }

    #[test]
    fn the_uri_and_qr_code_carry_the_secret() {
        let u = uri("localhost:3000", "alice+x@example.com", "ABC");
        assert_eq!(
            u,
            "otpauth://totp/localhost:3000:alice+x@example.com?algorithm=SHA1&digits=6&issuer=localhost:3000&period=30&secret=ABC"
        );
        assert!(uri("My App", "a b@x", "S").starts_with("otpauth://totp/My%20App:a%20b@x?"));
        let svg = qr_svg(&u).unwrap();
        assert!(svg.contains("<svg") && svg.ends_with("</svg>"), "{svg:.80}");
    }
}
