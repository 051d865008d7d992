//! What `castellan config example` says about the variables the
//! configuration reads: the group each belongs to, a sentence per group,
//! and a note on the variables whose name does not say enough. The list
//! of variables itself is the one the configuration is read with.

/// A group of variables, matched by name (the first group that matches).
pub struct Group {
    pub title: &'static str,
    pub about: &'static str,
    matches: fn(&str) -> bool,
}

fn any(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

pub const GROUPS: &[Group] = &[
    Group {
        title: "Server",
        about: "Where the API listens and the addresses it writes into links. Put it behind TLS; the metrics address must never be public.",
        matches: |n| {
            matches!(
                n,
                "GOTRUE_API_HOST"
                    | "PORT"
                    | "API_EXTERNAL_URL"
                    | "GOTRUE_SITE_URL"
                    | "GOTRUE_URI_ALLOW_LIST"
                    | "GOTRUE_API_MAX_REQUEST_DURATION"
                    | "CASTELLAN_METRICS_ADDR"
                    | "CASTELLAN_TRUSTED_PROXIES"
                    | "CASTELLAN_LOG_PROBES"
                    | "CASTELLAN_CONSOLE_ENABLED"
            ) || any(
                n,
                &[
                    "CASTELLAN_MAX_CONNECTIONS",
                    "CASTELLAN_HEADER_READ",
                    "CASTELLAN_IDLE",
                    "CASTELLAN_SHUTDOWN",
                ],
            )
        },
    },
    Group {
        title: "Database",
        about: "A PostgreSQL URL, or a SQLite file (the default, made on first start). Encryption keys protect factor secrets at rest.",
        matches: |n| n == "DATABASE_URL" || any(n, &["GOTRUE_SECURITY_DB_ENCRYPTION"]),
    },
    Group {
        title: "Tokens and sessions",
        about: "How access tokens are signed and how long sessions live. Set GOTRUE_JWT_SECRET to 32 or more random bytes (openssl rand -hex 32); unset with SQLite, one is generated beside the database.",
        matches: |n| {
            any(
                n,
                &[
                    "GOTRUE_JWT_",
                    "GOTRUE_SESSIONS_",
                    "GOTRUE_SECURITY_REFRESH_TOKEN",
                ],
            )
        },
    },
    Group {
        title: "Sign-up and passwords",
        about: "Who may sign up and how, what a password must be (and whether it may be one leaked before: Have I Been Pwned, by k-anonymity), CAPTCHA on sign-up and sign-in. Password hashing (argon2id) is sized to the machine: more memory is slower to guess and to serve.",
        matches: |n| {
            matches!(
                n,
                "GOTRUE_DISABLE_SIGNUP"
                    | "GOTRUE_MAILER_AUTOCONFIRM"
                    | "GOTRUE_SMS_AUTOCONFIRM"
                    | "GOTRUE_EXTERNAL_EMAIL_ENABLED"
                    | "GOTRUE_EXTERNAL_PHONE_ENABLED"
                    | "GOTRUE_EXTERNAL_ANONYMOUS_USERS_ENABLED"
                    | "GOTRUE_SECURITY_UPDATE_PASSWORD_REQUIRE_REAUTHENTICATION"
            ) || any(
                n,
                &[
                    "GOTRUE_PASSWORD_",
                    "CASTELLAN_PASSWORD_",
                    "CASTELLAN_ARGON2_",
                    "CASTELLAN_HASH_",
                    "GOTRUE_SECURITY_CAPTCHA_",
                    "CASTELLAN_CAPTCHA_",
                ],
            )
        },
    },
    Group {
        title: "Email",
        about: "The SMTP relay mail is sent through (TLS on 465 and 587), the links' paths, subjects and templates, and the durable queue that delivers it.",
        matches: |n| {
            any(
                n,
                &[
                    "GOTRUE_SMTP_HOST",
                    "GOTRUE_SMTP_PORT",
                    "GOTRUE_SMTP_USER",
                    "GOTRUE_SMTP_PASS",
                    "GOTRUE_SMTP_ADMIN",
                    "GOTRUE_SMTP_SENDER",
                    "GOTRUE_MAILER_",
                    "GOTRUE_EXTERNAL_EMAIL_",
                    "CASTELLAN_EMAIL_",
                    "CASTELLAN_QUEUE_",
                    "CASTELLAN_OTP_",
                ],
            )
        },
    },
    Group {
        title: "SMS",
        about: "The SMS provider and its credentials (GOTRUE_SMS_<PROVIDER>_<NAME>, listed below), the message, and test numbers. Without a provider sends fail, or go to the log with CASTELLAN_SMS_LOG=true (development only).",
        matches: |n| any(n, &["GOTRUE_SMS_", "CASTELLAN_SMS_"]) && n != "GOTRUE_SMS_MAX_FREQUENCY",
    },
    Group {
        title: "OAuth providers",
        about: "Sign-in with other services: each needs _ENABLED, _CLIENT_ID and _SECRET; _REDIRECT_URI defaults to API_EXTERNAL_URL/callback; _URL only for a self-hosted one (Keycloak, GitLab, WorkOS).",
        matches: |n| any(n, &["GOTRUE_EXTERNAL_"]) || n == "GOTRUE_SECURITY_MANUAL_LINKING_ENABLED",
    },
    Group {
        title: "Hooks",
        about: "Auth hooks: https:// endpoints signed with Standard Webhooks (secrets v1,whsec_<base64>, several separated by |; http:// only to this machine) or pg-functions://postgres/<schema>/<function> on PostgreSQL. castellan calls all seven of GoTrue's hooks; the send-email and send-SMS hooks take the place of SMTP and the SMS provider, through the durable queue.",
        matches: |n| any(n, &["GOTRUE_HOOK_"]),
    },
    Group {
        title: "Second factors",
        about: "TOTP and phone factors: whether users may enroll and verify them, and how many.",
        matches: |n| {
            any(n, &["GOTRUE_MFA_"])
                && n != "GOTRUE_MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY"
                && n != "GOTRUE_MFA_PHONE_MAX_FREQUENCY"
        },
    },
    Group {
        title: "Rate limits",
        about: "Per client (by address, or by GOTRUE_RATE_LIMIT_HEADER behind a proxy), per deployment (email and SMS budgets) and per recipient. `castellan limits set` changes them while castellan runs.",
        matches: |n| {
            any(n, &["GOTRUE_RATE_LIMIT_", "CASTELLAN_MFA_"])
                || matches!(
                    n,
                    "GOTRUE_MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY"
                        | "GOTRUE_SMTP_MAX_FREQUENCY"
                        | "GOTRUE_SMS_MAX_FREQUENCY"
                        | "GOTRUE_MFA_PHONE_MAX_FREQUENCY"
                )
        },
    },
    Group {
        title: "Operations",
        about: "The log, the expiry sweep, the session cache and the actors' supervision. The defaults suit most deployments.",
        matches: |_| true,
    },
];

/// The group `name` is shown in.
pub fn group_of(name: &str) -> usize {
    GROUPS
        .iter()
        .position(|g| (g.matches)(name))
        .unwrap_or(GROUPS.len() - 1)
}

/// A note on what a variable's name does not say.
pub fn note(name: &str) -> Option<&'static str> {
    Some(match name {
        "GOTRUE_API_HOST" => "An address or a host name; 0.0.0.0 listens on every interface.",
        "API_EXTERNAL_URL" => {
            "This server's public address: links in emails and OAuth callbacks point here."
        }
        "GOTRUE_SITE_URL" => "Your application: where links land by default.",
        "GOTRUE_URI_ALLOW_LIST" => {
            "Other redirect targets allowed (comma-separated; * and ** globs)."
        }
        "CASTELLAN_METRICS_ADDR" => {
            "Prometheus /metrics (loopback by default; \"api\" serves it on the API's port). Never expose it."
        }
        "CASTELLAN_TRUSTED_PROXIES" => {
            "Networks whose X-Forwarded-For names the client (your load balancer's)."
        }
        "DATABASE_URL" => "postgres://USER:PASSWORD@HOST:PORT/DB, sqlite://PATH or a file path.",
        "GOTRUE_JWT_SECRET" => {
            "HS256 secret: 32 or more random bytes. Every process sharing a database needs the same one."
        }
        "GOTRUE_JWT_KEYS" => {
            "A JSON array of private JWKs (castellan keys generate) to sign with asymmetric keys instead."
        }
        "GOTRUE_JWT_EXP" => "Access token lifetime in seconds.",
        "GOTRUE_MAILER_AUTOCONFIRM" => {
            "true: sign-ups need no confirmation email (development, or trusted sign-ups)."
        }
        "GOTRUE_SMS_PROVIDER" => {
            "twilio, twilio_verify, messagebird, textlocal or vonage; its credentials are listed below."
        }
        "GOTRUE_SMTP_HOST" => "Unset: emails wait in the queue until a relay is configured.",
        "GOTRUE_RATE_LIMIT_HEADER" => {
            "A header your proxy sets to the client's address (e.g. X-Forwarded-For); unset, the peer address."
        }
        "CASTELLAN_EXPIRY_SCHEDULE" => {
            "Cron (with seconds) of the sweep that deletes expired codes, sessions and jobs."
        }
        "CASTELLAN_SESSION_SHARDS" => "Session cache actors (default: one per core).",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_fall_in_the_group_their_name_says() {
        let title = |n| GROUPS[group_of(n)].title;
        assert_eq!(title("PORT"), "Server");
        assert_eq!(title("DATABASE_URL"), "Database");
        assert_eq!(title("GOTRUE_JWT_EXP"), "Tokens and sessions");
        assert_eq!(title("GOTRUE_SMTP_PASS"), "Email");
        assert_eq!(title("GOTRUE_SMTP_MAX_FREQUENCY"), "Rate limits");
        assert_eq!(title("GOTRUE_SMS_TWILIO_AUTH_TOKEN"), "SMS");
        assert_eq!(title("GOTRUE_EXTERNAL_GITHUB_SECRET"), "OAuth providers");
        assert_eq!(title("GOTRUE_MFA_TOTP_ENROLL_ENABLED"), "Second factors");
        assert_eq!(title("CASTELLAN_LOG"), "Operations");
        assert_eq!(
            title("GOTRUE_SECURITY_CAPTCHA_SECRET"),
            "Sign-up and passwords"
        );
        assert_eq!(
            title("GOTRUE_PASSWORD_HIBP_ENABLED"),
            "Sign-up and passwords"
        );
    }
}
