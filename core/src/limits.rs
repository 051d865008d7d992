//! Every rate limit, sending budget, send window and the MFA lockout,
//! declared once under GoTrue's variable names (castellan's own,
//! `CASTELLAN_…`, where GoTrue has none): what it counts, its default, and
//! the name `/admin/rate_limits` changes it by while castellan runs. (The
//! hardening bounds, such as guesses per code and connections per client,
//! are read with the sections they guard.) The configuration reads each limit from its
//! declaration here; routes name their bucket (`api::RATE_LIMITS`); the
//! `RateLimiter` actor holds the buckets, the OTP service the send windows,
//! the store the deployment's budgets and each factor's guard.

use std::time::Duration;

/// What a limit counts, and its default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counts {
    /// A token bucket per client on each route that names it: `events` per
    /// `window`, at most `burst` at once (`events` when `None`).
    PerClient {
        events: u32,
        window: Duration,
        burst: Option<u32>,
    },
    /// One budget of `events` per `window` the whole deployment shares
    /// through the database (written `N` or `N/duration`).
    PerDeployment { events: u32, window: Duration },
    /// The least time between two sends of a kind to one recipient.
    PerRecipient(Duration),
    /// Wrong codes in a row before one factor locks.
    FailuresPerFactor(u32),
    /// How long a locked factor stays locked.
    LockPerFactor(Duration),
}

/// One limit as an operator sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub variable: &'static str,
    pub counts: Counts,
    /// Its name at `/admin/rate_limits`, when it may change while castellan runs.
    pub runtime: Option<&'static str>,
    /// What it guards, for the reader and the README's table.
    pub guards: &'static str,
}

const MINUTE: Duration = Duration::from_secs(60);
const FIVE_MINUTES: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);

pub const TOKEN_REFRESH: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_TOKEN_REFRESH",
    counts: Counts::PerClient {
        events: 150,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: Some("token_refresh"),
    guards: "POST /token",
};
/// GoTrue sizes every sending route's bucket, sign-ups included, by it.
pub const OTP: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_OTP",
    counts: Counts::PerClient {
        events: 30,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: Some("otp"),
    guards: "POST /signup, /otp, /magiclink, /recover, /resend, PUT /user, GET /authorize, GET and POST /callback, GET /user/identities/authorize",
};
pub const ANONYMOUS_USERS: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_ANONYMOUS_USERS",
    counts: Counts::PerClient {
        events: 30,
        window: HOUR,
        burst: None,
    },
    runtime: Some("anonymous_users"),
    guards: "POST /signup without email or phone",
};
pub const VERIFY: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_VERIFY",
    counts: Counts::PerClient {
        events: 30,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: Some("verify"),
    guards: "GET and POST /verify",
};
/// Each of the two routes has a bucket of its own, as in GoTrue.
pub const MFA: Limit = Limit {
    variable: "GOTRUE_MFA_RATE_LIMIT_CHALLENGE_AND_VERIFY",
    counts: Counts::PerClient {
        events: 15,
        window: MINUTE,
        burst: Some(30),
    },
    runtime: None,
    guards: "POST /factors/{id}/challenge, /factors/{id}/verify",
};
pub const EMAIL_SENT: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_EMAIL_SENT",
    counts: Counts::PerDeployment {
        events: 30,
        window: HOUR,
    },
    runtime: Some("email_sent"),
    guards: "every email sent",
};
pub const SMS_SENT: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_SMS_SENT",
    counts: Counts::PerDeployment {
        events: 30,
        window: HOUR,
    },
    runtime: Some("sms_sent"),
    guards: "every SMS sent",
};
pub const EMAIL_WINDOW: Limit = Limit {
    variable: "GOTRUE_SMTP_MAX_FREQUENCY",
    counts: Counts::PerRecipient(MINUTE),
    runtime: None,
    guards: "emails of one kind to one user",
};
pub const SMS_WINDOW: Limit = Limit {
    variable: "GOTRUE_SMS_MAX_FREQUENCY",
    counts: Counts::PerRecipient(MINUTE),
    runtime: None,
    guards: "SMS codes to one user",
};
pub const MFA_PHONE_WINDOW: Limit = Limit {
    variable: "GOTRUE_MFA_PHONE_MAX_FREQUENCY",
    counts: Counts::PerRecipient(MINUTE),
    runtime: None,
    guards: "challenges of one phone factor",
};
pub const MFA_MAX_FAILURES: Limit = Limit {
    variable: "CASTELLAN_MFA_MAX_FAILURES",
    counts: Counts::FailuresPerFactor(5),
    runtime: None,
    guards: "wrong codes in a row before a factor locks",
};
pub const MFA_LOCKOUT: Limit = Limit {
    variable: "CASTELLAN_MFA_LOCKOUT",
    counts: Counts::LockPerFactor(FIVE_MINUTES),
    runtime: None,
    guards: "how long a locked factor stays locked",
};

pub const WEB3: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_WEB3",
    counts: Counts::PerClient {
        events: 30,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: Some("web3"),
    guards: "POST /token?grant_type=web3",
};
/// GoTrue's: the options that start a passkey sign-in.
pub const PASSKEY: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_PASSKEY",
    counts: Counts::PerClient {
        events: 30,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: Some("passkey"),
    guards: "POST /passkeys/authentication/options",
};
/// GoTrue's: dynamic registration of OAuth clients, open to anyone.
pub const OAUTH_CLIENT_REGISTER: Limit = Limit {
    variable: "GOTRUE_RATE_LIMIT_OAUTH_DYNAMIC_CLIENT_REGISTER",
    counts: Counts::PerClient {
        events: 10,
        window: FIVE_MINUTES,
        burst: Some(30),
    },
    runtime: None,
    guards: "POST /oauth/clients/register",
};
/// Every declared limit.
pub const ALL: [&Limit; 15] = [
    &TOKEN_REFRESH,
    &WEB3,
    &PASSKEY,
    &OAUTH_CLIENT_REGISTER,
    &OTP,
    &ANONYMOUS_USERS,
    &VERIFY,
    &MFA,
    &EMAIL_SENT,
    &SMS_SENT,
    &EMAIL_WINDOW,
    &SMS_WINDOW,
    &MFA_PHONE_WINDOW,
    &MFA_MAX_FAILURES,
    &MFA_LOCKOUT,
];

/// One bucket per limited route family, as GoTrue keeps one limiter per
/// route; each is sized by its declared [`Limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    TokenRefresh,
    SignUps,
    AnonymousUsers,
    Verify,
    Otp,
    MagicLink,
    Recover,
    Resend,
    UserUpdate,
    MfaChallenge,
    MfaVerify,
    /// `/authorize`, `/callback` and `/user/identities/authorize`
    /// (castellan's own: each stores a flow state or calls a provider).
    Authorize,
    /// `/token?grant_type=web3`.
    Web3,
    /// `/passkeys/authentication/options`.
    Passkey,
    /// `/oauth/clients/register`.
    OAuthClientRegister,
}

impl Bucket {
    /// In the enum's order: a bucket's index here is its discriminant.
    pub const ALL: [Bucket; 15] = [
        Bucket::TokenRefresh,
        Bucket::SignUps,
        Bucket::AnonymousUsers,
        Bucket::Verify,
        Bucket::Otp,
        Bucket::MagicLink,
        Bucket::Recover,
        Bucket::Resend,
        Bucket::UserUpdate,
        Bucket::MfaChallenge,
        Bucket::MfaVerify,
        Bucket::Authorize,
        Bucket::Web3,
        Bucket::Passkey,
        Bucket::OAuthClientRegister,
    ];

    /// The limit that sizes this bucket.
    pub fn limit(self) -> &'static Limit {
        match self {
            Bucket::TokenRefresh => &TOKEN_REFRESH,
            Bucket::Web3 => &WEB3,
            Bucket::Passkey => &PASSKEY,
            Bucket::OAuthClientRegister => &OAUTH_CLIENT_REGISTER,
            Bucket::AnonymousUsers => &ANONYMOUS_USERS,
            Bucket::Verify => &VERIFY,
            Bucket::MfaChallenge | Bucket::MfaVerify => &MFA,
            Bucket::SignUps
            | Bucket::Otp
            | Bucket::MagicLink
            | Bucket::Recover
            | Bucket::Resend
            | Bucket::UserUpdate
            | Bucket::Authorize => &OTP,
        }
    }

    /// The metric label (a closed set).
    pub fn label(self) -> &'static str {
        match self {
            Bucket::TokenRefresh => "token_refresh",
            Bucket::SignUps => "sign_ups",
            Bucket::AnonymousUsers => "anonymous_users",
            Bucket::Verify => "verify",
            Bucket::Otp => "otp",
            Bucket::MagicLink => "magic_link",
            Bucket::Recover => "recover",
            Bucket::Resend => "resend",
            Bucket::UserUpdate => "user_update",
            Bucket::MfaChallenge => "mfa_challenge",
            Bucket::MfaVerify => "mfa_verify",
            Bucket::Authorize => "authorize",
            Bucket::Web3 => "web3",
            Bucket::Passkey => "passkey",
            Bucket::OAuthClientRegister => "oauth_client_register",
        }
    }

    /// The bucket's rate in these settings.
    pub fn setting(self, s: &RateLimits) -> RateLimit {
        match self {
            // Sized by the OTP limit, but kept apart in the settings.
            Bucket::SignUps => s.sign_ups,
            _ => *s
                .per_client(self.limit())
                .expect("every bucket's limit counts per client"),
        }
    }
}

/// One per-key token bucket: `per` is the refill window of `events` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub events: u32,
    pub per: Duration,
    pub burst: u32,
}

impl RateLimit {
    /// `events` per the declared window, with a burst that follows them:
    /// the declared burst scaled as `events` is to the declared default, and
    /// never below the declared burst or `events`, whichever is smaller (so
    /// token refresh keeps GoTrue's 30 at its default of 150, allows `events`
    /// at once below 30, and raised to 10^8 no longer refuses the 31st
    /// request in flight).
    pub fn declared(events: u32, limit: &Limit) -> Self {
        match limit.counts {
            Counts::PerClient {
                window,
                burst,
                events: default,
            } => Self {
                events,
                per: window,
                burst: burst.map_or(events, |b| {
                    let scaled = u64::from(events) * u64::from(b) / u64::from(default.max(1));
                    let scaled = u32::try_from(scaled).unwrap_or(u32::MAX);
                    scaled.max(b.min(events)).max(1)
                }),
            },
            _ => panic!("{} is not a per-client limit", limit.variable),
        }
    }
}

/// A global sending budget (`GOTRUE_RATE_LIMIT_EMAIL_SENT`, `_SMS_SENT`): `events` per `per`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SendBudget {
    pub events: u32,
    pub per: Duration,
}

/// As the variable is written (`30/3600s`), so the settings list shows it so.
impl std::fmt::Debug for SendBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:?}", self.events, self.per)
    }
}

/// A factor locks after `failures` wrong codes in a row, for `lasts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub failures: u32,
    pub lasts: Duration,
}

/// The limits in force: read from the environment by their declarations,
/// some changed at run time through `/admin/rate_limits`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub token_refresh: RateLimit,
    pub web3: RateLimit,
    pub passkey: RateLimit,
    pub oauth_client_register: RateLimit,
    /// Sized by the OTP limit, as in GoTrue (it has no variable of its own).
    pub sign_ups: RateLimit,
    pub anonymous_users: RateLimit,
    pub verify: RateLimit,
    pub otp: RateLimit,
    pub mfa: RateLimit,
    pub email_sent: SendBudget,
    pub sms_sent: SendBudget,
    pub email_window: Duration,
    pub sms_window: Duration,
    pub mfa_phone_window: Duration,
    pub mfa_lockout: Lockout,
    /// The header whose first value keys the limits; peer address otherwise.
    pub header: Option<String>,
}

impl RateLimits {
    /// The limits an operator may change while castellan runs.
    pub fn names() -> impl Iterator<Item = &'static str> {
        ALL.iter().filter_map(|l| l.runtime)
    }

    fn per_client(&self, limit: &Limit) -> Option<&RateLimit> {
        Some(match limit.variable {
            v if v == TOKEN_REFRESH.variable => &self.token_refresh,
            v if v == WEB3.variable => &self.web3,
            v if v == PASSKEY.variable => &self.passkey,
            v if v == OAUTH_CLIENT_REGISTER.variable => &self.oauth_client_register,
            v if v == OTP.variable => &self.otp,
            v if v == ANONYMOUS_USERS.variable => &self.anonymous_users,
            v if v == VERIFY.variable => &self.verify,
            v if v == MFA.variable => &self.mfa,
            _ => return None,
        })
    }

    fn by_name(name: &str) -> Option<&'static Limit> {
        ALL.into_iter().find(|l| l.runtime == Some(name))
    }

    /// The number a runtime limit allows per its window.
    pub fn events(&self, name: &str) -> Option<u32> {
        let limit = Self::by_name(name)?;
        Some(match limit.counts {
            Counts::PerDeployment { .. } => self.budget(limit)?.events,
            _ => self.per_client(limit)?.events,
        })
    }

    fn budget(&self, limit: &Limit) -> Option<SendBudget> {
        match limit.variable {
            v if v == EMAIL_SENT.variable => Some(self.email_sent),
            v if v == SMS_SENT.variable => Some(self.sms_sent),
            _ => None,
        }
    }

    /// These limits with `name` allowing `events` per its window, its burst
    /// following as at start-up; `None` for an unknown name.
    pub fn with(&self, name: &str, events: u32) -> Option<Self> {
        let limit = Self::by_name(name)?;
        let mut out = self.clone();
        let set = |l: &mut RateLimit| *l = RateLimit::declared(events, limit);
        match limit.variable {
            v if v == TOKEN_REFRESH.variable => set(&mut out.token_refresh),
            v if v == WEB3.variable => set(&mut out.web3),
            v if v == PASSKEY.variable => set(&mut out.passkey),
            v if v == VERIFY.variable => set(&mut out.verify),
            // GoTrue's OTP limit also sizes the sign-up buckets.
            v if v == OTP.variable => {
                set(&mut out.otp);
                set(&mut out.sign_ups);
            }
            v if v == ANONYMOUS_USERS.variable => set(&mut out.anonymous_users),
            // Its window stays the environment's (`N/duration`).
            v if v == EMAIL_SENT.variable => out.email_sent.events = events,
            v if v == SMS_SENT.variable => out.sms_sent.events = events,
            _ => return None,
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buckets_index_is_its_discriminant() {
        for (i, b) in Bucket::ALL.iter().enumerate() {
            assert_eq!(*b as usize, i, "{b:?}");
        }
    }

    #[test]
    fn every_bucket_is_sized_by_a_per_client_limit() {
        for b in Bucket::ALL {
            assert!(
                matches!(b.limit().counts, Counts::PerClient { .. }),
                "{b:?}"
            );
        }
    }

    #[test]
    fn runtime_names_are_unique_and_each_changes_its_limit() {
        let names: Vec<_> = RateLimits::names().collect();
        assert_eq!(
            names,
            [
                "token_refresh",
                "web3",
                "passkey",
                "otp",
                "anonymous_users",
                "verify",
                "email_sent",
                "sms_sent"
            ]
        );
        let base = crate::Config::from_vars(&Default::default())
            .expect("defaults")
            .rate_limits;
        for name in names {
            let changed = base.with(name, 7).expect(name);
            assert_eq!(changed.events(name), Some(7), "{name}");
            assert_ne!(changed, base, "{name}");
        }
        assert!(base.with("mfa", 7).is_none());
    }

    #[test]
    fn a_burst_follows_its_limit() {
        let at = |events, limit| RateLimit::declared(events, limit).burst;
        // The defaults keep GoTrue's bursts.
        assert_eq!(at(150, &TOKEN_REFRESH), 30);
        assert_eq!(at(30, &OTP), 30);
        assert_eq!(at(15, &MFA), 30);
        assert_eq!(at(30, &ANONYMOUS_USERS), 30);
        // Raised or lowered, in proportion; never below one.
        assert_eq!(at(100_000_000, &TOKEN_REFRESH), 20_000_000);
        assert_eq!(at(3, &TOKEN_REFRESH), 3);
        assert_eq!(at(3, &MFA), 6);
        assert_eq!(at(0, &OTP), 1);
        assert_eq!(at(u32::MAX, &MFA), u32::MAX);
        // Changed while running, the same way.
        let base = crate::Config::from_vars(&Default::default())
            .expect("defaults")
            .rate_limits;
        let raised = base.with("token_refresh", 1500).expect("known");
        assert_eq!(raised.token_refresh.burst, 300);
        assert_eq!(raised.with("token_refresh", 150), Some(base));
    }

    #[test]
    fn each_bucket_reads_its_own_setting() {
        let mut s = crate::Config::from_vars(&Default::default())
            .expect("defaults")
            .rate_limits;
        s.sign_ups.events = 1;
        s.otp.events = 2;
        s.mfa.events = 3;
        assert_eq!(Bucket::SignUps.setting(&s).events, 1);
        assert_eq!(Bucket::Recover.setting(&s).events, 2);
        assert_eq!(Bucket::MfaVerify.setting(&s).events, 3);
    }

    #[test]
    fn the_readme_documents_every_limit() {
        let readme = include_str!("../../README.md");
        for l in ALL {
            assert!(readme.contains(l.variable), "README lacks {}", l.variable);
        }
    }

    #[test]
    fn gotrue_variables_are_gotrues() {
        let known = include_str!("gotrue-variables.txt");
        for l in ALL {
            assert!(
                l.variable.starts_with("CASTELLAN_")
                    || known.lines().any(|v| v.trim() == l.variable),
                "{} is not one of GoTrue's variables",
                l.variable
            );
        }
    }
}
