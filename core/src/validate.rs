//! Input rules shared by every endpoint: emails, phones, passwords.

use crate::config::PasswordConfig;
use crate::error::ApiError;

/// Lower-cases and checks an email the way GoTrue does (length, then syntax).
pub fn email(raw: &str) -> Result<String, ApiError> {
    let e = raw.trim();
    if e.is_empty() {
        return Err(ApiError::validation("An email address is required"));
    }
    if e.len() > 255 {
        return Err(ApiError::validation("An email address is too long"));
    }
    if let Err(reason) = email_syntax(e) {
        return Err(ApiError::validation(format!(
            "Unable to validate email address: {reason}"
        )));
    }
    Ok(e.to_ascii_lowercase())
}

/// The format rules of checkmail.ValidateFormat: a local part of ASCII
/// atext and dots, an `@`, and a domain of dot-separated ASCII labels.
fn email_syntax(e: &str) -> Result<(), &'static str> {
    let (local, domain) = e.rsplit_once('@').ok_or("invalid format")?;
    // ASCII only, as GoTrue's checkmail pattern: otherwise NFC and NFD
    // spellings, full-width letters or `example。com` would each make an
    // account that looks like another's.
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty()
        || local.len() > 64
        || !local.chars().all(atext)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err("invalid format");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if domain.is_empty() || !domain.split('.').all(label_ok) {
        return Err("invalid format");
    }
    Ok(())
}

/// The most JSON text a user's `user_metadata` or `app_metadata` may take.
/// Both ride in every access token and in every cached session, so they
/// are bounded; this is far above what names, avatars and preferences need.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A metadata object as it will be stored (after any merge), within
/// [`MAX_METADATA_BYTES`] and free of NUL characters (which PostgreSQL's
/// `jsonb` refuses).
pub fn metadata(field: &str, v: &serde_json::Value) -> Result<(), ApiError> {
    let text = serde_json::to_string(v).unwrap_or_default();
    if text.len() > MAX_METADATA_BYTES {
        return Err(ApiError::validation(format!(
            "{field} is too large: at most {MAX_METADATA_BYTES} bytes of JSON"
        )));
    }
    if has_nul(v) {
        return Err(ApiError::validation(format!(
            "{field} cannot contain a NUL character"
        )));
    }
    Ok(())
}

fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
        _ => false,
    }
}

/// Every bounded value of a user row about to be inserted: GoTrue's
/// `varchar(255)` columns and the metadata, so that no input reaches the
/// database only to be refused there (a 500 on PostgreSQL, silently kept on
/// SQLite).
pub fn new_user(u: &crate::store::NewUser<'_>) -> Result<(), ApiError> {
    short_text("aud", u.aud, 255)?;
    short_text("role", u.role, 255)?;
    short_text("email", u.email.unwrap_or_default(), 255)?;
    short_text("phone", u.phone.unwrap_or_default(), 255)?;
    metadata_pair(&u.user_metadata, &u.app_metadata)
}

/// Both metadata objects of a user, as they will be stored.
pub fn metadata_pair(
    user_metadata: &serde_json::Value,
    app_metadata: &serde_json::Value,
) -> Result<(), ApiError> {
    metadata("user_metadata", user_metadata)?;
    metadata("app_metadata", app_metadata)
}

/// A short text value bound for a column of at most `max` characters
/// (GoTrue's `varchar(255)`s): refused before the database would.
pub fn short_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.chars().count() > max {
        return Err(ApiError::validation(format!(
            "{field} is too long: at most {max} characters"
        )));
    }
    if v.contains('\0') {
        return Err(ApiError::validation(format!(
            "{field} cannot contain a NUL character"
        )));
    }
    Ok(())
}

/// Strips `+` and spaces (GoTrue stores phones as digits only).
pub fn normalize_phone(raw: &str) -> String {
    raw.trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// Normalises and checks E.164: a non-zero first digit and 2 to 15 digits in all.
pub fn phone(raw: &str) -> Result<String, ApiError> {
    let p = normalize_phone(raw);
    let ok =
        (2..=15).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()) && !p.starts_with('0');
    if ok {
        Ok(p)
    } else {
        Err(ApiError::validation(
            "Invalid phone number format (E.164 required)",
        ))
    }
}

/// The 72-byte bcrypt limit is a hard error (400); the strength rules give
/// the reasons of a `weak_password` error, empty when the password is strong.
pub fn password_strength(cfg: &PasswordConfig, password: &str) -> Result<Vec<String>, ApiError> {
    if password.len() > 72 {
        return Err(ApiError::validation(
            "Password cannot be longer than 72 characters",
        ));
    }
    let mut reasons = Vec::new();
    if password.chars().count() < cfg.min_length {
        reasons.push("length".to_string());
    }
    if cfg
        .required_characters
        .iter()
        .any(|set| !password.chars().any(|c| set.contains(c)))
    {
        reasons.push("characters".to_string());
    }
    Ok(reasons)
}

/// The message GoTrue gives for the reasons found.
pub fn weak_password_message(cfg: &PasswordConfig, reasons: &[String]) -> String {
    let mut parts = Vec::new();
    if reasons.iter().any(|r| r == "length") {
        parts.push(format!(
            "Password should be at least {} characters.",
            cfg.min_length
        ));
    }
    if reasons.iter().any(|r| r == "characters") {
        parts.push(format!(
            "Password should contain at least one character of each: {}.",
            cfg.required_characters
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if reasons.iter().any(|r| r == "pwned") {
        parts.push(
            "Password is known to be weak and easy to guess, please choose a different one."
                .to_string(),
        );
    }
    parts.join(" ")
}

/// Checks a new password, failing with 422 `weak_password` when it breaks a rule.
pub fn require_strong_password(cfg: &PasswordConfig, password: &str) -> Result<(), ApiError> {
    let reasons = password_strength(cfg, password)?;
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(ApiError::weak_password(
            weak_password_message(cfg, &reasons),
            reasons,
        ))
    }
}

/// PKCE parameters: both or neither; the challenge 43 to 128 characters of
/// `[A-Za-z0-9._~-]`; the method `s256` or `plain` (any case, kept lower-cased).
pub fn pkce(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<Option<crate::models::Pkce>, ApiError> {
    let challenge = challenge.filter(|s| !s.is_empty());
    let method = method.filter(|s| !s.is_empty());
    match (challenge, method) {
        (None, None) => Ok(None),
        (Some(c), Some(m)) => {
            let m = m.to_ascii_lowercase();
            if m != "s256" && m != "plain" {
                return Err(ApiError::validation(format!(
                    "code challenge method not supported: {m}"
                )));
            }
            let ok = (43..=128).contains(&c.len())
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._~-".contains(ch));
            if !ok {
                return Err(ApiError::validation(
                    "code challenge has to be between 43 and 128 characters of [A-Za-z0-9._~-]",
                ));
            }
            Ok(Some(crate::models::Pkce {
                challenge: c.to_string(),
                method: m,
            }))
        }
        _ => Err(ApiError::validation(
            "PKCE flow requires code_challenge_method and code_challenge",
        )),
    }
}

/// A random password that meets the rules (for accounts created without one).
pub fn random_password(cfg: &PasswordConfig) -> String {
    let mut p = crate::crypto::random_base32(33);
    for set in &cfg.required_characters {
        if let Some(c) = set.chars().next() {
            p.push(c);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email(" Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in ["", "no-at", "a@", "@b.c", "a..b@c.d", "a@-b.c", "a b@c.d"] {
            let e = email(bad).unwrap_err();
            assert_eq!(e.code, "validation_failed", "{bad:?}");
        }
        // Look-alikes of ascii@example.com: NFD and NFC spellings, full-width
        // letters, an ideographic full stop. GoTrue refuses them; so do we.
        for look_alike in [
            "jose\u{301}@example.com",
            "jos\u{e9}@example.com",
            "\u{ff41}lice@example.com",
            "alice@example\u{3002}com",
            "alice@ex\u{e4}mple.com",
        ] {
            let e = email(look_alike).unwrap_err();
            assert_eq!(e.code, "validation_failed", "{look_alike:?}");
        }
        assert!(
            email(&format!("{}@x.io", "a".repeat(251)))
                .unwrap_err()
                .message
                .contains("too long")
        );
    }

    #[test]
    fn bounded_values() {
        assert!(short_text("aud", &"a".repeat(255), 255).is_ok());
        let e = short_text("aud", &"a".repeat(256), 255).unwrap_err();
        assert_eq!((e.status, e.code), (400, "validation_failed"));
        // Characters, as PostgreSQL counts them, not bytes.
        assert!(short_text("role", &"\u{e9}".repeat(255), 255).is_ok());
        assert!(short_text("role", "a\0b", 255).is_err());
        let big = serde_json::json!({"k": "x".repeat(MAX_METADATA_BYTES)});
        assert_eq!(
            metadata("user_metadata", &big).unwrap_err().code,
            "validation_failed"
        );
        let fits = serde_json::json!({"k": "x".repeat(MAX_METADATA_BYTES - 16)});
        assert!(metadata("user_metadata", &fits).is_ok());
        assert!(metadata("user_metadata", &serde_json::json!({"a": ["\u{0}"]})).is_err());
        assert!(metadata("user_metadata", &serde_json::json!({"a\u{0}": 1})).is_err());
    }

    #[test]
    fn phones() {
        assert_eq!(phone("+1 555 0100").unwrap(), "15550100");
        assert!(phone("0123").is_err());
        assert!(phone("+1").is_err());
        assert!(phone("1234567890123456").is_err());
        assert!(phone("12ab").is_err());
    }

    #[test]
    fn passwords() {
        let cfg = PasswordConfig {
            min_length: 8,
            required_characters: vec!["0123456789".into(), "ABC".into()],
            hibp: None,
        };
        assert_eq!(
            password_strength(&cfg, "short").unwrap(),
            vec!["length", "characters"]
        );
        assert!(password_strength(&cfg, "longenough1A").unwrap().is_empty());
        assert_eq!(
            password_strength(&cfg, &"a".repeat(73)).unwrap_err().code,
            "validation_failed"
        );
        let e = require_strong_password(&cfg, "abc").unwrap_err();
        assert_eq!((e.status, e.code), (422, "weak_password"));
        assert_eq!(e.weak_password.unwrap(), vec!["length", "characters"]);
    }

    #[test]
    fn pkce_parameters() {
        let c = "a".repeat(43);
        assert_eq!(pkce(None, None).unwrap(), None);
        assert_eq!(
            pkce(Some(&c), Some("S256")).unwrap().unwrap().method,
            "s256"
        );
        assert!(pkce(Some(&c), None).is_err());
        assert!(pkce(Some("short"), Some("plain")).is_err());
        assert!(pkce(Some(&c), Some("md5")).is_err());
        assert!(pkce(Some(&"a+b".repeat(20)), Some("plain")).is_err());
    }
}
