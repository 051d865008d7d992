//! `castellan config example`: every variable the configuration reads, in
//! groups, with its default and a word on what it is for. The list is the
//! one the configuration is read with, so it never drifts from it.

use std::fmt::Write as _;

use castellan_core::config::Setting;
use castellan_core::config_doc::{GROUPS, group_of, note};

/// The suffixes of one OAuth provider's variables.
const PROVIDER_VARS: [&str; 7] = [
    "ENABLED",
    "CLIENT_ID",
    "SECRET",
    "REDIRECT_URI",
    "URL",
    "EMAIL_OPTIONAL",
    "SKIP_NONCE_CHECK",
];

/// The GoTrue provider a `GOTRUE_EXTERNAL_<P>_<SUFFIX>` variable configures.
fn oauth_provider(name: &str) -> Option<String> {
    let rest = name.strip_prefix("GOTRUE_EXTERNAL_")?;
    PROVIDER_VARS.iter().find_map(|s| {
        let p = rest
            .strip_suffix(s)?
            .strip_suffix('_')?
            .to_ascii_lowercase();
        castellan_core::config::gotrue_provider(&p).then_some(p)
    })
}

/// Whether castellan signs in with the provider `name` configures (GoTrue
/// knows some castellan does not: their variables are not offered).
fn served(name: &str) -> bool {
    oauth_provider(name).is_none_or(|p| castellan_core::oauth::provider(&p).is_some())
}

pub fn example(settings: &[Setting]) -> String {
    let mut out = String::from(
        "# castellan: every variable it reads, with its default (`castellan config example`).\n\
         # Uncomment and change what you need; `castellan config check` checks the result.\n",
    );
    let mut shown: Vec<&Setting> = settings.iter().filter(|s| served(&s.names[0])).collect();
    shown.sort_by_key(|s| group_of(&s.names[0]));
    let mut group = usize::MAX;
    for s in shown {
        let g = group_of(&s.names[0]);
        if g != group {
            group = g;
            section(&mut out, g);
        }
        if let Some(n) = note(&s.names[0]) {
            let _ = writeln!(out, "# {n}");
        }
        if s.names.len() > 1 {
            let _ = writeln!(out, "# (also read as {})", s.names[1..].join(", "));
        }
        let _ = writeln!(out, "# {}={}", s.names[0], s.default);
    }
    out
}

/// A group's heading, and what the configuration reads outside `Setting`s.
fn section(out: &mut String, g: usize) {
    let _ = writeln!(out, "\n# ## {}\n# {}", GROUPS[g].title, GROUPS[g].about);
    match GROUPS[g].title {
        "SMS" => {
            for p in castellan_jobs::sms::PROVIDERS {
                let vars: Vec<String> = p
                    .required
                    .iter()
                    .map(|k| format!("GOTRUE_SMS_{}_{k}=", p.name.to_ascii_uppercase()))
                    .collect();
                let _ = writeln!(out, "# {}: {}", p.name, vars.join(" "));
            }
        }
        "OAuth providers" => {
            let missing: Vec<&str> = castellan_core::config::OAUTH_PROVIDERS
                .iter()
                .copied()
                .filter(|p| castellan_core::oauth::provider(p).is_none())
                .collect();
            let _ = writeln!(
                out,
                "# GoTrue providers castellan does not sign in with (not listed): {}",
                missing.join(", ")
            );
        }
        "Operations" => {
            out.push_str(
                "# The log filter (tracing's syntax: a level, or target=level pairs).\n\
                 # (also read as GOTRUE_LOG_LEVEL)\n# CASTELLAN_LOG=info\n",
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_variables_name_their_provider() {
        assert_eq!(
            oauth_provider("GOTRUE_EXTERNAL_LINKEDIN_OIDC_CLIENT_ID").as_deref(),
            Some("linkedin_oidc")
        );
        assert_eq!(
            oauth_provider("GOTRUE_EXTERNAL_GITHUB_URL").as_deref(),
            Some("github")
        );
        assert_eq!(oauth_provider("GOTRUE_EXTERNAL_EMAIL_ENABLED"), None);
        assert_eq!(oauth_provider("GOTRUE_EXTERNAL_REDIRECT_URL"), None);
        assert!(served("GOTRUE_EXTERNAL_GITHUB_SECRET"));
        assert!(!served("GOTRUE_EXTERNAL_FLY_SECRET"));
        assert!(served("GOTRUE_EXTERNAL_REDIRECT_URL"));
        assert!(served("GOTRUE_EXTERNAL_EMAIL_ENABLED"));
    }
}
