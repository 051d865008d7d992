//! Configuration read from GoTrue's environment variable names, with GoTrue's
//! defaults, so an existing GoTrue deployment's environment runs castellan
//! unchanged. castellan's own additions use the `CASTELLAN_` prefix.
//!
//! A wrong value is an error that names the variable; start-up stops on it.

use std::collections::HashMap;
use std::time::Duration;

use crate::duration::parse_go_duration;
use crate::hooks::Hook;
use crate::limits::{self, Counts, Limit};

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {msg}")]
pub struct ConfigError {
    pub var: String,
    pub msg: String,
}

/// Where the users live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// Path of the SQLite file.
    Sqlite(String),
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `None` when unset: the embedded SQLite default then generates one.
    pub secret: Option<String>,
    pub exp: u64,
    pub aud: String,
    pub default_group_name: String,
    pub admin_roles: Vec<String>,
    pub admin_group_name: String,
    pub issuer: Option<String>,
    pub key_id: Option<String>,
    /// `GOTRUE_JWT_KEYS`: GoTrue's JSON array of private JWKs, one of them
    /// the signing key (checked when the configuration is read).
    pub keys: Option<String>,
    /// `GOTRUE_JWT_VALID_METHODS`: the algorithms accepted on incoming
    /// tokens; empty means the algorithms of the configured keys.
    pub valid_methods: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PasswordConfig {
    pub min_length: usize,
    /// Each set must contribute at least one character.
    pub required_characters: Vec<String>,
    /// Leaked-password protection (`GOTRUE_PASSWORD_HIBP_*`), when enabled.
    pub hibp: Option<HibpConfig>,
}

/// Have I Been Pwned's range API: only the first five hex characters of a
/// password's SHA-1 leave the server.
#[derive(Debug, Clone)]
pub struct HibpConfig {
    /// An error or timeout refuses the password (500) rather than allow it.
    pub fail_closed: bool,
    pub user_agent: String,
    /// The API's address (`CASTELLAN_PASSWORD_HIBP_URL`, for a mirror or tests).
    pub url: String,
    /// How long a check may take (GoTrue's fixed 5 s).
    pub timeout: Duration,
}

/// Where a hook is: an HTTP(S) endpoint (signed with Standard Webhooks), or
/// a PostgreSQL function called in the database.
#[derive(Debug, Clone, PartialEq)]
pub enum HookTarget {
    Http(String),
    PgFunction { schema: String, function: String },
}

/// One enabled hook (`GOTRUE_HOOK_<NAME>_*`).
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub target: HookTarget,
    /// The keys of its `v1,whsec_…` secrets.
    pub keys: Vec<Vec<u8>>,
}

/// GoTrue's hooks, each configured when enabled.
#[derive(Debug, Clone, Default)]
pub struct Hooks([Option<HookConfig>; 7]);

impl Hooks {
    /// `hook`'s configuration when it is on.
    pub fn get(&self, hook: Hook) -> Option<&HookConfig> {
        self.0[hook as usize].as_ref()
    }

    /// Turns `hook` on (or off, with `None`).
    pub fn set(&mut self, hook: Hook, cfg: Option<HookConfig>) {
        self.0[hook as usize] = cfg;
    }

    /// The hooks that are on.
    pub fn enabled(&self) -> impl Iterator<Item = (Hook, &HookConfig)> + '_ {
        Hook::ALL
            .into_iter()
            .filter_map(|h| self.get(h).map(|c| (h, c)))
    }

    /// Whether any hook is on.
    pub fn any(&self) -> bool {
        self.enabled().next().is_some()
    }

    /// Every enabled hook that is a database function.
    pub fn pg_functions(&self) -> impl Iterator<Item = Hook> + '_ {
        self.enabled()
            .filter(|(_, c)| matches!(c.target, HookTarget::PgFunction { .. }))
            .map(|(h, _)| h)
    }
}

/// Reads every hook's variables, refusing a bad URI or secret even for a
/// hook that is off (as GoTrue does).
fn hooks(v: &Vars) -> Result<Hooks, ConfigError> {
    let mut hooks = Hooks::default();
    for hook in Hook::ALL {
        let name = hook.env();
        let var = |k: &str| format!("GOTRUE_HOOK_{name}_{k}");
        let enabled = v.bool(&[var("ENABLED").as_str()], false)?;
        let uri = v.opt_string(&[var("URI").as_str()]);
        let secrets = v.opt_string(&[var("SECRETS").as_str()]).unwrap_or_default();
        let err = |k: &str, msg: String| ConfigError { var: var(k), msg };
        let Some(uri) = uri else {
            // On without a place to call fails open on a gate: refused.
            if enabled {
                return Err(err("URI", "the hook is enabled but has no URI".into()));
            }
            continue;
        };
        let target = hook_target(&uri).map_err(|m| err("URI", m))?;
        let keys = match target {
            HookTarget::Http(_) => secrets
                .split('|')
                .filter(|s| !s.is_empty())
                .map(crate::crypto::webhook::key)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| err("SECRETS", m))?,
            HookTarget::PgFunction { .. } => Vec::new(),
        };
        if enabled {
            hooks.set(hook, Some(HookConfig { target, keys }));
        }
    }
    Ok(hooks)
}

/// `https://…`, `http://` to this machine, or
/// `pg-functions://<any>/<schema>/<function>`.
fn hook_target(uri: &str) -> Result<HookTarget, String> {
    let u = url::Url::parse(uri).map_err(|e| e.to_string())?;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match u.scheme() {
        "pg-functions" => {
            let parts: Vec<&str> = u.path().trim_start_matches('/').split('/').collect();
            let [schema, function, ..] = parts[..] else {
                return Err("URI path does not contain enough parts".into());
            };
            if !name_ok(schema) {
                return Err(format!("invalid schema name: {schema}"));
            }
            if !name_ok(function) {
                return Err(format!("invalid table name: {function}"));
            }
            Ok(HookTarget::PgFunction {
                schema: schema.into(),
                function: function.into(),
            })
        }
        "http" => match u.host_str() {
            Some("localhost" | "127.0.0.1" | "[::1]" | "host.docker.internal") => {
                Ok(HookTarget::Http(uri.to_string()))
            }
            _ => Err("only localhost, 127.0.0.1, and ::1 are supported with http".into()),
        },
        "https" => Ok(HookTarget::Http(uri.to_string())),
        _ => Err("only postgres hooks and HTTPS functions are supported at the moment".into()),
    }
}

/// Which CAPTCHA service checks the tokens clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaProvider {
    Hcaptcha,
    Turnstile,
}

impl CaptchaProvider {
    pub fn name(self) -> &'static str {
        match self {
            CaptchaProvider::Hcaptcha => "hcaptcha",
            CaptchaProvider::Turnstile => "turnstile",
        }
    }

    /// The provider's documented verify endpoint.
    pub fn verify_url(self) -> &'static str {
        match self {
            CaptchaProvider::Hcaptcha => "https://hcaptcha.com/siteverify",
            CaptchaProvider::Turnstile => {
                "https://challenges.cloudflare.com/turnstile/v0/siteverify"
            }
        }
    }
}

/// CAPTCHA protection (`GOTRUE_SECURITY_CAPTCHA_*`), when enabled.
#[derive(Debug, Clone)]
pub struct CaptchaConfig {
    pub provider: CaptchaProvider,
    pub secret: String,
    pub timeout: Duration,
    /// The verify endpoint (`CASTELLAN_CAPTCHA_VERIFY_URL`, for tests).
    pub verify_url: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// How many hashes may run at once (the bounded blocking pool).
    pub pool_size: usize,
    /// Hashes waiting for a thread; past it a sign-in answers 503 at once.
    pub queue: usize,
    /// The most memory one verification may take (an imported argon2 hash).
    pub max_memory_kib: u32,
}

pub use crate::limits::{Lockout, RateLimit, RateLimits, SendBudget};

/// SMTP delivery (`GOTRUE_SMTP_*`). No host: mail goes to the server log.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: Option<String>,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub admin_email: Option<String>,
    pub sender_name: Option<String>,
    /// castellan's: how long one message may take to send
    /// (`CASTELLAN_SMTP_SEND_TIMEOUT`). lettre bounds only the connect, so
    /// a server that stops answering would hold a worker for good.
    pub send_timeout: Duration,
}

/// The external sign-in providers GoTrue reports in `/settings`, in its
/// order (`x` is configured too, and not reported, as in GoTrue).
pub const OAUTH_PROVIDERS: [&str; 22] = [
    "apple",
    "azure",
    "bitbucket",
    "discord",
    "facebook",
    "snapchat",
    "figma",
    "fly",
    "github",
    "gitlab",
    "google",
    "keycloak",
    "kakao",
    "linkedin",
    "linkedin_oidc",
    "notion",
    "spotify",
    "slack",
    "slack_oidc",
    "workos",
    "twitch",
    "twitter",
];

/// Whether GoTrue knows this OAuth provider (its provider switch): the
/// reported ones, and `x`, `vercel_marketplace` and `zoom`.
pub fn gotrue_provider(name: &str) -> bool {
    OAUTH_PROVIDERS.contains(&name) || matches!(name, "x" | "vercel_marketplace" | "zoom")
}

/// One external provider's settings (`GOTRUE_EXTERNAL_<P>_*`).
#[derive(Debug, Clone, Default)]
pub struct OAuthProviderConfig {
    pub enabled: bool,
    /// `_CLIENT_ID`: comma-separated; the first is ours, all are accepted
    /// as an id token's audience.
    pub client_ids: Vec<String>,
    pub secret: String,
    /// `_REDIRECT_URI`: where the provider sends the browser back (our `/callback`).
    pub redirect_uri: String,
    /// `_URL`: the provider's own address (GitHub Enterprise, Keycloak, a test stand-in).
    pub url: Option<String>,
    pub email_optional: bool,
    pub skip_nonce_check: bool,
}

/// External sign-in (`GOTRUE_EXTERNAL_*`).
#[derive(Debug, Clone, Default)]
pub struct ExternalConfig {
    /// Every configured provider, enabled or not, by GoTrue's name.
    pub providers: HashMap<String, OAuthProviderConfig>,
    /// `GOTRUE_EXTERNAL_REDIRECT_URL`: where every callback ends, when set.
    pub redirect_url: Option<String>,
    /// `GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`.
    pub manual_linking_enabled: bool,
    /// Web3 sign-in: each chain's longest validity of a signed message
    /// around its `Issued At`, when that chain is enabled.
    pub web3_solana: Option<Duration>,
    pub web3_ethereum: Option<Duration>,
}

impl ExternalConfig {
    /// An enabled provider's settings.
    pub fn enabled(&self, name: &str) -> Option<&OAuthProviderConfig> {
        self.providers.get(name).filter(|p| p.enabled)
    }
}

fn external(v: &Vars, api_external_url: &str) -> Result<ExternalConfig, ConfigError> {
    let mut providers = HashMap::new();
    for name in OAUTH_PROVIDERS.iter().chain(&["x", "zoom"]) {
        let var = |k: &str| format!("GOTRUE_EXTERNAL_{}_{k}", name.to_ascii_uppercase());
        let callback = format!("{}/callback", api_external_url.trim_end_matches('/'));
        let p = OAuthProviderConfig {
            enabled: v.bool(&[var("ENABLED").as_str()], false)?,
            client_ids: v.list(&[var("CLIENT_ID").as_str()], &[]),
            secret: v.string(&[var("SECRET").as_str()], ""),
            redirect_uri: v.string(&[var("REDIRECT_URI").as_str()], &callback),
            url: v.opt_string(&[var("URL").as_str()]),
            email_optional: v.bool(&[var("EMAIL_OPTIONAL").as_str()], false)?,
            skip_nonce_check: v.bool(&[var("SKIP_NONCE_CHECK").as_str()], false)?,
        };
        providers.insert(name.to_string(), p);
    }
    Ok(ExternalConfig {
        providers,
        redirect_url: v.opt_string(&["GOTRUE_EXTERNAL_REDIRECT_URL"]),
        manual_linking_enabled: v.bool(&["GOTRUE_SECURITY_MANUAL_LINKING_ENABLED"], false)?,
        web3_solana: web3_chain(v, "SOLANA")?,
        web3_ethereum: web3_chain(v, "ETHEREUM")?,
    })
}

const WEB3_VALIDITY_CAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// `GOTRUE_EXTERNAL_WEB3_<CHAIN>_ENABLED` and `_MAXIMUM_VALIDITY_DURATION`.
fn web3_chain(v: &Vars, chain: &str) -> Result<Option<Duration>, ConfigError> {
    let var = |k: &str| format!("GOTRUE_EXTERNAL_WEB3_{chain}_{k}");
    let enabled = v.bool(&[var("ENABLED").as_str()], false)?;
    let name = var("MAXIMUM_VALIDITY_DURATION");
    let validity = v.duration(&[name.as_str()], Duration::from_secs(600))?;
    // A used message is kept as long as it could be accepted: bounded.
    if validity > WEB3_VALIDITY_CAP {
        return Err(ConfigError {
            var: name,
            msg: "a signed message may be valid for 7 days at most (GoTrue's default: 10m)".into(),
        });
    }
    Ok(enabled.then_some(validity))
}

/// SMS (and WhatsApp) codes: the provider and what it needs
/// (`GOTRUE_SMS_*`). No provider: messages go to the server log.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// GoTrue's provider name (`twilio`, `messagebird`, …); empty for none.
    pub provider: String,
    /// With no provider, SMS go to the server log (`CASTELLAN_SMS_LOG`, for
    /// development); else a send fails as GoTrue's does.
    pub log: bool,
    /// The provider's `GOTRUE_SMS_<PROVIDER>_<NAME>` variables, by `<NAME>`.
    pub settings: HashMap<String, String>,
    /// Replaces the provider's API address (`CASTELLAN_SMS_API_URL`).
    pub api_url: Option<String>,
    /// With `{{ .Code }}` where the code goes.
    pub template: String,
    pub otp_exp: Duration,
    pub otp_length: usize,
    /// Fixed codes by number (E.164 digits): nothing is sent to these.
    pub test_otps: HashMap<String, String>,
    pub test_otp_valid_until: Option<chrono::DateTime<chrono::Utc>>,
    /// How long a request waits for the provider before leaving the
    /// message to the queue.
    pub send_timeout: Duration,
}

impl SmsConfig {
    /// The fixed code of a test number, while test codes are valid.
    pub fn test_otp(&self, phone: &str, now: chrono::DateTime<chrono::Utc>) -> Option<&str> {
        if self.test_otp_valid_until.is_some_and(|until| now >= until) {
            return None;
        }
        self.test_otps.get(phone).map(String::as_str)
    }
}

/// Every provider setting GoTrue reads, across its providers.
const SMS_SETTINGS: [&str; 10] = [
    "ACCOUNT_SID",
    "AUTH_TOKEN",
    "MESSAGE_SERVICE_SID",
    "CONTENT_SID",
    "ACCESS_KEY",
    "ORIGINATOR",
    "API_KEY",
    "API_SECRET",
    "SENDER",
    "FROM",
];

fn sms(v: &Vars) -> Result<SmsConfig, ConfigError> {
    let provider = v.string(&["GOTRUE_SMS_PROVIDER"], "");
    let mut settings = HashMap::new();
    if !provider.is_empty() {
        let prefix = format!("GOTRUE_SMS_{}_", provider.to_ascii_uppercase());
        for name in SMS_SETTINGS {
            let var = format!("{prefix}{name}");
            if let Some(value) = v.opt_string(&[var.as_str()]) {
                settings.insert(name.to_string(), value);
            }
        }
    }
    let test_otps = v
        .list(&["GOTRUE_SMS_TEST_OTP"], &[])
        .iter()
        .filter_map(|pair| pair.split_once(':'))
        .map(|(phone, code)| {
            (
                crate::validate::normalize_phone(phone),
                code.trim().to_string(),
            )
        })
        .collect();
    let otp_length = v.num(&["GOTRUE_SMS_OTP_LENGTH"], 6usize)?;
    Ok(SmsConfig {
        provider,
        log: v.bool(&["CASTELLAN_SMS_LOG"], false)?,
        settings,
        api_url: v.opt_string(&["CASTELLAN_SMS_API_URL"]),
        template: v.string(&["GOTRUE_SMS_TEMPLATE"], "Your code is {{ .Code }}"),
        otp_exp: Duration::from_secs(match v.num(&["GOTRUE_SMS_OTP_EXP"], 60u64)? {
            0 => 60,
            n => n,
        }),
        // GoTrue's bounds: 6 to 10 digits, 6 otherwise.
        otp_length: if (6..=10).contains(&otp_length) {
            otp_length
        } else {
            6
        },
        test_otps,
        test_otp_valid_until: v.parse(
            &["GOTRUE_SMS_TEST_OTP_VALID_UNTIL"],
            None,
            "a time (RFC 3339, like 2030-01-01T00:00:00Z)",
            |s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| Some(t.with_timezone(&chrono::Utc)))
            },
        )?,
        send_timeout: v.duration(&["CASTELLAN_SMS_SEND_TIMEOUT"], Duration::from_secs(5))?,
    })
}

/// What the emails say and how they are delivered (`GOTRUE_MAILER_*`).
#[derive(Debug, Clone)]
pub struct MailerConfig {
    pub otp_exp: Duration,
    pub otp_length: usize,
    /// Wrong codes typed against one outstanding token before it is void.
    pub otp_max_guesses: i64,
    /// Link paths by kind (`confirmation`, `invite`, `recovery`, `email_change`).
    pub url_paths: HashMap<String, String>,
    /// Subjects by kind (`confirmation`, `invite`, `magic_link`, `recovery`, `email_change`, `reauthentication`).
    pub subjects: HashMap<String, String>,
    /// Custom template sources (a file path or an http(s) URL) by kind.
    pub templates: HashMap<String, String>,
    pub secure_email_change_enabled: bool,
    pub magic_link_enabled: bool,
    /// Delivery attempts before a message is dead, and the backoff between them.
    pub max_attempts: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How often idle workers look for queued jobs.
    pub poll_interval: Duration,
    /// How long delivered and dead jobs stay in the queue's table.
    pub job_retention: Duration,
}

/// Bounds on what clients may hold open, against slow or stalled clients.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this, or the connection
    /// closes; a new connection must bring its first complete request
    /// within it too (HTTP/1 and HTTP/2 alike).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// Connections one client address may hold open at once; trusted
    /// proxies (`CASTELLAN_TRUSTED_PROXIES`) are exempt.
    pub max_connections_per_client: usize,
    /// How long a shutdown waits for open connections before closing them.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The auth hooks castellan calls.
    pub hooks: Hooks,
    /// CAPTCHA on sign-up and sign-in, when enabled.
    pub captcha: Option<CaptchaConfig>,
    pub database_url: DatabaseUrl,
    pub host: String,
    pub port: u16,
    pub site_url: String,
    pub api_external_url: String,
    pub max_request_duration: Duration,
    /// What the accept loop allows a client: see `Listen`.
    pub listen: Listen,
    /// `host:port` serving `/metrics` alone (loopback by default); `None`
    /// (`CASTELLAN_METRICS_ADDR=api`) serves it on the API port instead.
    pub metrics_addr: Option<String>,
    /// Whether `/health` and `/ready` are in the access log
    /// (`CASTELLAN_LOG_PROBES`); GoTrue leaves them out, and so do we by default.
    pub log_probes: bool,
    /// Whether the admin console is served at `/console`
    /// (`CASTELLAN_CONSOLE_ENABLED`); off, nothing of it is reachable.
    pub console_enabled: bool,
    /// Peers whose `X-Forwarded-For` is believed, and who may hold more
    /// than one client's share of connections (`CASTELLAN_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    pub jwt: JwtConfig,
    pub disable_signup: bool,
    pub mailer_autoconfirm: bool,
    pub sms_autoconfirm: bool,
    pub external_email_enabled: bool,
    pub external_phone_enabled: bool,
    pub anonymous_users_enabled: bool,
    pub sms: SmsConfig,
    pub external: ExternalConfig,
    pub password: PasswordConfig,
    pub argon2: Argon2Config,
    pub refresh_token_rotation_enabled: bool,
    pub refresh_token_reuse_interval: Duration,
    /// `GOTRUE_SECURITY_REFRESH_TOKEN_ALGORITHM_VERSION`: 2 for stateless
    /// HMAC-signed tokens, 1 (or 0) for GoTrue's legacy rows. Unset: 2 on a
    /// database castellan made, 1 on an adopted GoTrue database.
    pub refresh_token_algorithm_version: Option<u8>,
    /// `GOTRUE_SECURITY_DB_ENCRYPTION_*`: the keys that seal secrets at
    /// rest (the v2 refresh tokens' session keys).
    pub db_encryption: crate::crypto::at_rest::DbEncryption,
    pub update_password_require_reauthentication: bool,
    pub sessions_timebox: Option<Duration>,
    /// How long a session below the user's highest possible level lives.
    pub sessions_allow_low_aal: Option<Duration>,
    pub mfa: MfaConfig,
    /// Passkey sign-in, when enabled.
    pub passkeys: Option<PasskeyConfig>,
    /// The relying party of passkeys and WebAuthn factors, when either is on.
    pub webauthn: Option<WebAuthnConfig>,
    /// castellan as an OAuth 2.1 authorization server, when enabled.
    pub oauth_server: Option<OAuthServerConfig>,
    pub sessions_inactivity_timeout: Option<Duration>,
    pub rate_limits: RateLimits,
    pub smtp: SmtpConfig,
    pub mailer: MailerConfig,
    pub uri_allow_list: Vec<String>,
    pub flow_state_expiry: Duration,
    /// The expiry sweep's cron schedule (seconds first).
    pub expiry_schedule: String,
    /// Live sessions the `SessionManager` keeps in memory.
    pub session_cache_size: u64,
    /// The estimated bytes each of the session cache's maps may hold.
    pub session_cache_bytes: u64,
    /// How many actors share the session cache, each owning the users
    /// (and sessions) whose ids hash to it.
    pub session_shards: usize,
    /// Not a setting: the time source every decision reads (see `Clock`).
    pub clock: crate::Clock,
    /// How often a SQLite server looks for changes other processes made
    /// (PostgreSQL pushes them instead).
    pub cache_poll_interval: Duration,
    /// How often a server reads the signing keys kept in the database.
    pub keys_poll_interval: Duration,
    /// How the root supervisor restarts the actors.
    pub supervision: Supervision,
}

/// How the root supervisor answers an actor that stops: it restarts it
/// after `backoff`, doubled for each earlier restart within `window`; a
/// stop past `max_restarts` restarts of one actor within `window` escalates
/// (the process stops, non-zero, for its orchestrator to restart). An actor
/// quiet for `window` starts afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Supervision {
    pub backoff: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

fn supervision(v: &Vars<'_>) -> Result<Supervision, ConfigError> {
    Ok(Supervision {
        backoff: v.duration(
            &["CASTELLAN_ACTOR_RESTART_BACKOFF"],
            Duration::from_millis(10),
        )?,
        max_restarts: v.num(&["CASTELLAN_ACTOR_MAX_RESTARTS"], 5u32)?.max(1),
        window: v.duration_at_least(
            &["CASTELLAN_ACTOR_RESTART_WINDOW"],
            Duration::from_secs(30),
            Duration::from_millis(1),
        )?,
    })
}

/// Reads variables from a map (process environment merged with `.env`), so
/// configuration parsing is a pure function and testable.
/// Every variable read is also noted with its default, so the list of
/// settings (`castellan config example|check`) comes from this same code
/// and cannot drift from it.
/// A whole-number setting's type, and the range it takes in words.
trait Whole: std::str::FromStr + std::fmt::Debug {
    fn range() -> String;
}

macro_rules! whole {
    ($($t:ty),*) => {$(
        impl Whole for $t {
            fn range() -> String {
                format!("from {} to {}", <$t>::MIN, <$t>::MAX)
            }
        }
    )*};
}
whole!(u16, u32, u64, usize, i64);

struct Vars<'a> {
    map: &'a HashMap<String, String>,
    read: std::cell::RefCell<Vec<Setting>>,
}

/// One variable the configuration reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The variable, then the other names it may be given by.
    pub names: Vec<String>,
    /// Its default, as written in the environment (empty: unset).
    pub default: String,
    /// Its value in the environment read, when set.
    pub value: Option<String>,
}

impl Setting {
    /// Holds a secret: shown masked.
    pub fn is_secret(&self) -> bool {
        let n = &self.names[0];
        n.contains("SECRET")
            || n.contains("AUTH_TOKEN")
            || n.contains("TEST_OTP")
            || ["_PASS", "_PASSWORD", "_KEY", "_KEYS"]
                .iter()
                .any(|s| n.ends_with(s))
    }
}

impl<'a> Vars<'a> {
    fn new(map: &'a HashMap<String, String>) -> Self {
        Vars {
            map,
            read: Default::default(),
        }
    }

    fn note(&self, names: &[&str], default: impl std::fmt::Debug) {
        let default = format!("{default:?}");
        let default = default.trim_matches('"').to_string();
        let default = match default.as_str() {
            "None" | "[]" => String::new(),
            _ => default,
        };
        let mut read = self.read.borrow_mut();
        if read.iter().any(|s| s.names[0] == names[0]) {
            return;
        }
        read.push(Setting {
            names: names.iter().map(|n| n.to_string()).collect(),
            default,
            value: self.get(names).map(|(_, v)| v),
        });
    }

    /// The first of `names` that is set and non-empty.
    fn get<'n>(&self, names: &[&'n str]) -> Option<(&'n str, String)> {
        names.iter().find_map(|n| {
            self.map
                .get(*n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (*n, v))
        })
    }

    fn string(&self, names: &[&str], default: &str) -> String {
        self.note(names, default);
        self.get(names)
            .map(|(_, v)| v)
            .unwrap_or_else(|| default.to_string())
    }

    fn opt_string(&self, names: &[&str]) -> Option<String> {
        self.note(names, "");
        self.get(names).map(|(_, v)| v)
    }

    fn parse<T: std::fmt::Debug>(
        &self,
        names: &[&str],
        default: T,
        what: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        self.note(names, &default);
        match self.get(names) {
            None => Ok(default),
            Some((name, v)) => f(&v).ok_or_else(|| ConfigError {
                var: name.to_string(),
                msg: format!("{v:?} is not {what}"),
            }),
        }
    }

    fn bool(&self, names: &[&str], default: bool) -> Result<bool, ConfigError> {
        // Go's strconv.ParseBool.
        self.parse(names, default, "a boolean", |v| match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        })
    }

    fn num<T: Whole>(&self, names: &[&str], default: T) -> Result<T, ConfigError> {
        let range = T::range();
        let parsed = self.parse(names, default, "a whole number", |v| v.parse().ok());
        // A whole number outside the type's range says so, with the range.
        parsed.map_err(|mut e| {
            if let Some((_, v)) = self.get(names)
                && v.parse::<i128>().is_ok()
            {
                e.msg = format!("{v} is out of range: it must be a whole number {range}");
            }
            e
        })
    }

    fn duration(&self, names: &[&str], default: Duration) -> Result<Duration, ConfigError> {
        self.parse(names, default, "a duration (like 10s, 5m, 24h)", |v| {
            parse_go_duration(v).ok()
        })
    }

    /// A duration, raised to `floor` when set lower.
    fn duration_at_least(
        &self,
        names: &[&str],
        default: Duration,
        floor: Duration,
    ) -> Result<Duration, ConfigError> {
        Ok(self.duration(names, default)?.max(floor))
    }

    fn opt_duration(&self, names: &[&str]) -> Result<Option<Duration>, ConfigError> {
        self.parse(names, None, "a duration (like 10s, 5m, 24h)", |v| {
            parse_go_duration(v).ok().map(Some)
        })
        .map(|d| d.filter(|d| !d.is_zero()))
    }

    fn list(&self, names: &[&str], default: &[&str]) -> Vec<String> {
        self.note(names, default.join(","));
        match self.get(names) {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some((_, v)) => v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// Where `/metrics` is served unless `CASTELLAN_METRICS_ADDR` says otherwise:
/// loopback, so the public API port reveals no counters.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9102";

/// Networks whose peers are proxies: their `X-Forwarded-For` names the client.
#[derive(Debug, Clone)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// No peer is a proxy: every connection is its own client.
    pub fn none() -> Self {
        TrustedProxies(Vec::new())
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// `CASTELLAN_TRUSTED_PROXIES`: CIDRs or single addresses, loopback by
/// default; `none` trusts no peer.
fn trusted_proxies(v: &Vars<'_>) -> Result<TrustedProxies, ConfigError> {
    let names = ["CASTELLAN_TRUSTED_PROXIES"];
    let mut nets = Vec::new();
    for item in v.list(&names, &["127.0.0.0/8", "::1/128"]) {
        if item == "none" {
            continue;
        }
        let net = item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| ConfigError {
                var: names[0].into(),
                msg: format!("{item:?} is not an address or a CIDR (like 10.0.0.0/8)"),
            })?;
        nets.push(net);
    }
    Ok(TrustedProxies(nets))
}

/// `postgres://user:password@host/db` with the password masked; anything
/// else as it is.
pub fn mask_url_password(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else {
        return v.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return v.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
        None => v.to_string(),
    }
}

/// `GOTRUE_PASSWORD_REQUIRED_CHARACTERS`: colon-separated sets, `\:` escapes a colon.
fn parse_required_characters(v: &str) -> Vec<String> {
    let mut sets = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                cur.push(':');
                chars.next();
            }
            ':' => sets.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    sets.push(cur);
    sets.into_iter().filter(|s| !s.is_empty()).collect()
}

fn database_url(v: Option<(&str, String)>) -> Result<DatabaseUrl, ConfigError> {
    let Some((name, url)) = v else {
        return Ok(DatabaseUrl::Sqlite("castellan.db".into()));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseUrl::Postgres(url))
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(ConfigError {
                var: name.into(),
                msg: "sqlite URL has no file path".into(),
            });
        }
        Ok(DatabaseUrl::Sqlite(path.to_string()))
    } else if !url.contains("://") && !url.trim().is_empty() {
        // A bare file path, as the README gives the default (`./castellan.db`).
        Ok(DatabaseUrl::Sqlite(url))
    } else {
        Err(ConfigError {
            var: name.into(),
            msg: "must be postgres://…, postgresql://…, sqlite://PATH or a file path".into(),
        })
    }
}

const MAIL_KINDS: [&str; 6] = [
    "confirmation",
    "invite",
    "magic_link",
    "recovery",
    "email_change",
    "reauthentication",
];

/// GoTrue's database encryption settings. Every key is 256 bits in
/// base64url; the encryption key also decrypts (GoTrue wants it listed in
/// the decryption keys too; castellan adds it).
fn db_encryption(v: &Vars) -> Result<crate::crypto::at_rest::DbEncryption, ConfigError> {
    use crate::crypto::at_rest::{DbEncryption, parse_key};
    const PREFIX: &str = "GOTRUE_SECURITY_DB_ENCRYPTION_";
    let err = |var: &str, msg: String| ConfigError {
        var: format!("{PREFIX}{var}"),
        msg,
    };
    let encrypt = v.bool(&["GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPT"], false)?;
    let key_id = v.opt_string(&["GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY_ID"]);
    let key = v.opt_string(&["GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY"]);
    let mut keys = std::collections::HashMap::new();
    for pair in v.list(&["GOTRUE_SECURITY_DB_ENCRYPTION_DECRYPTION_KEYS"], &[]) {
        let (id, k) = pair.split_once(':').ok_or_else(|| {
            err(
                "DECRYPTION_KEYS",
                "expected id:key pairs, comma-separated".into(),
            )
        })?;
        let k = parse_key(k).map_err(|e| err("DECRYPTION_KEYS", format!("key {id:?}: {e}")))?;
        keys.insert(id.trim().to_string(), k);
    }
    if !encrypt {
        return Ok(DbEncryption::new(None, keys));
    }
    let id = key_id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| err("ENCRYPTION_KEY_ID", "required when ENCRYPT is on".into()))?;
    let key =
        parse_key(key.as_deref().unwrap_or_default()).map_err(|e| err("ENCRYPTION_KEY", e))?;
    if keys.get(&id).is_some_and(|k| k != &key) {
        return Err(err(
            "DECRYPTION_KEYS",
            format!("key {id:?} differs from the encryption key"),
        ));
    }
    keys.insert(id.clone(), key);
    Ok(DbEncryption::new(Some(id), keys))
}

/// `GOTRUE_JWT_KEYS`, refused at start-up when any key is unusable (the
/// message names the key, never its material).
fn jwt_keys(v: &Vars) -> Result<Option<String>, ConfigError> {
    let keys = v
        .opt_string(&["GOTRUE_JWT_KEYS"])
        .filter(|k| !k.trim().is_empty());
    if let Some(k) = &keys {
        crate::crypto::jwk::load_all(k).map_err(|msg| ConfigError {
            var: "GOTRUE_JWT_KEYS".into(),
            msg,
        })?;
    }
    Ok(keys)
}

/// `N` (per the declared window, an hour) or `N/duration`, as GoTrue reads
/// `GOTRUE_RATE_LIMIT_EMAIL_SENT`.
fn send_budget(vars: &Vars, limit: &Limit) -> Result<SendBudget, ConfigError> {
    let Counts::PerDeployment { events, window } = limit.counts else {
        unreachable!("{} is a budget", limit.variable)
    };
    let default = SendBudget {
        events,
        per: window,
    };
    vars.parse(
        &[limit.variable],
        default,
        "a number or N/duration (like 30/1h)",
        |v| {
            let (n, per) = match v.split_once('/') {
                Some((n, d)) => (n, parse_go_duration(d).ok()?),
                None => (v, window),
            };
            let events = n.trim().parse::<f64>().ok().filter(|f| *f >= 0.0)?.round() as u32;
            (!per.is_zero()).then_some(SendBudget { events, per })
        },
    )
}

fn mailer(v: &Vars) -> Result<MailerConfig, ConfigError> {
    let upper = |k: &str| k.to_ascii_uppercase();
    let mut url_paths = HashMap::new();
    for kind in ["confirmation", "invite", "recovery", "email_change"] {
        let var = format!("GOTRUE_MAILER_URLPATHS_{}", upper(kind));
        url_paths.insert(kind.to_string(), v.string(&[var.as_str()], "/verify"));
    }
    let mut subjects = HashMap::new();
    let mut templates = HashMap::new();
    for kind in MAIL_KINDS {
        let var = format!("GOTRUE_MAILER_SUBJECTS_{}", upper(kind));
        if let Some(s) = v.opt_string(&[var.as_str()]) {
            subjects.insert(kind.to_string(), s);
        }
        let var = format!("GOTRUE_MAILER_TEMPLATES_{}", upper(kind));
        if let Some(t) = v.opt_string(&[var.as_str()]) {
            templates.insert(kind.to_string(), t);
        }
    }
    let otp_length = v.num(&["GOTRUE_MAILER_OTP_LENGTH"], 6usize)?;
    Ok(MailerConfig {
        otp_exp: Duration::from_secs(v.num(&["GOTRUE_MAILER_OTP_EXP"], 86400u64)?),
        // GoTrue replaces a length outside 6..=10 by 6 rather than clamping it.
        otp_length: if (6..=10).contains(&otp_length) {
            otp_length
        } else {
            6
        },
        otp_max_guesses: v.num(&["CASTELLAN_OTP_MAX_GUESSES"], 5i64)?.max(1),
        url_paths,
        subjects,
        templates,
        secure_email_change_enabled: v
            .bool(&["GOTRUE_MAILER_SECURE_EMAIL_CHANGE_ENABLED"], true)?,
        magic_link_enabled: v.bool(&["GOTRUE_EXTERNAL_EMAIL_MAGIC_LINK_ENABLED"], true)?,
        max_attempts: v.num(&["CASTELLAN_EMAIL_MAX_ATTEMPTS"], 8usize)?.max(1),
        retry_min: v.duration(&["CASTELLAN_EMAIL_RETRY_MIN"], Duration::from_secs(1))?,
        retry_max: v.duration(&["CASTELLAN_EMAIL_RETRY_MAX"], Duration::from_secs(300))?,
        poll_interval: v.duration(
            &["CASTELLAN_QUEUE_POLL_INTERVAL"],
            Duration::from_millis(500),
        )?,
        job_retention: v.duration(&["CASTELLAN_QUEUE_RETENTION"], Duration::from_secs(86_400))?,
    })
}

/// Multi-factor authentication (`GOTRUE_MFA_*`; the phone window and the
/// lockout are declared with the other limits, in `limits`).
#[derive(Debug, Clone)]
pub struct MfaConfig {
    pub totp_enroll_enabled: bool,
    pub totp_verify_enabled: bool,
    pub max_enrolled_factors: usize,
    pub max_verified_factors: usize,
    /// How long a challenge may be verified (GoTrue: at least 300 s).
    pub challenge_expiry: Duration,
    /// How long an unverified, never challenged factor lives (at least 300 s).
    pub factor_expiry: Duration,
    /// Phone factors (`GOTRUE_MFA_PHONE_*`): off unless enabled, as in GoTrue.
    pub phone_enroll_enabled: bool,
    pub phone_verify_enabled: bool,
    pub phone_otp_length: usize,
    pub phone_template: String,
    /// WebAuthn factors (`GOTRUE_MFA_WEB_AUTHN_*`): off unless enabled, as in GoTrue.
    pub webauthn_enroll_enabled: bool,
    pub webauthn_verify_enabled: bool,
}

/// The password hashing pool and argon2id's parameters.
fn argon2(v: &Vars) -> Result<Argon2Config, ConfigError> {
    let mut argon2 = Argon2Config {
        memory_kib: v.num(&["CASTELLAN_ARGON2_MEMORY_KIB"], 19456)?,
        iterations: v.num(&["CASTELLAN_ARGON2_ITERATIONS"], 2)?,
        parallelism: v.num(&["CASTELLAN_ARGON2_PARALLELISM"], 1)?,
        pool_size: v.num(&["CASTELLAN_HASH_POOL_SIZE"], cores())?,
        queue: 0,
        max_memory_kib: v.num(&["CASTELLAN_HASH_MAX_MEMORY_KIB"], 65_536)?,
    };
    // A couple of seconds of work at the default parameters: a request
    // queued behind more would mostly wait out its deadline.
    argon2.max_memory_kib = argon2.max_memory_kib.max(argon2.memory_kib);
    argon2.queue = v
        .num(&["CASTELLAN_HASH_QUEUE"], 64 * argon2.pool_size)?
        .max(1);
    if argon2.pool_size == 0 {
        return Err(ConfigError {
            var: "CASTELLAN_HASH_POOL_SIZE".into(),
            msg: "must be at least 1".into(),
        });
    }
    if argon2::Params::new(
        argon2.memory_kib,
        argon2.iterations,
        argon2.parallelism,
        None,
    )
    .is_err()
    {
        return Err(ConfigError {
            var: "CASTELLAN_ARGON2_MEMORY_KIB".into(),
            msg: "argon2 parameters out of range (memory >= 8 x parallelism KiB, iterations >= 1)"
                .into(),
        });
    }
    Ok(argon2)
}

/// The listener's bounds on connections.
fn listen(v: &Vars) -> Result<Listen, ConfigError> {
    Ok(Listen {
        max_connections: v.num(&["CASTELLAN_MAX_CONNECTIONS"], 1024usize)?.max(1),
        header_read_timeout: v.duration_at_least(
            &["CASTELLAN_HEADER_READ_TIMEOUT"],
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?,
        idle_timeout: v.duration_at_least(
            &["CASTELLAN_IDLE_TIMEOUT"],
            Duration::from_secs(60),
            Duration::from_millis(100),
        )?,
        max_connections_per_client: v
            .num(&["CASTELLAN_MAX_CONNECTIONS_PER_CLIENT"], 128usize)?
            .max(1),
        shutdown_grace: v.duration(&["CASTELLAN_SHUTDOWN_GRACE"], Duration::from_secs(10))?,
    })
}

/// The JWT settings.
fn jwt(v: &Vars) -> Result<JwtConfig, ConfigError> {
    Ok(JwtConfig {
        secret: v.opt_string(&["GOTRUE_JWT_SECRET"]),
        exp: v.num(&["GOTRUE_JWT_EXP"], 3600u64)?,
        aud: v.string(&["GOTRUE_JWT_AUD"], "authenticated"),
        default_group_name: v.string(&["GOTRUE_JWT_DEFAULT_GROUP_NAME"], "authenticated"),
        admin_roles: v.list(
            &["GOTRUE_JWT_ADMIN_ROLES"],
            &["service_role", "supabase_admin"],
        ),
        admin_group_name: v.string(&["GOTRUE_JWT_ADMIN_GROUP_NAME"], "admin"),
        issuer: v.opt_string(&["GOTRUE_JWT_ISSUER"]),
        key_id: v.opt_string(&["GOTRUE_JWT_KEY_ID"]),
        keys: jwt_keys(v)?,
        valid_methods: v.list(
            &["GOTRUE_JWT_VALID_METHODS", "GOTRUE_JWT_VALIDMETHODS"],
            &[],
        ),
    })
}

/// Every limit, each read by its declaration in [`limits`] (`otp` read
/// first: it also sizes the sign-up bucket).
fn rate_limits(v: &Vars, otp: RateLimit) -> Result<RateLimits, ConfigError> {
    Ok(RateLimits {
        email_sent: send_budget(v, &limits::EMAIL_SENT)?,
        sms_sent: send_budget(v, &limits::SMS_SENT)?,
        token_refresh: rate(v, &limits::TOKEN_REFRESH)?,
        web3: rate(v, &limits::WEB3)?,
        passkey: rate(v, &limits::PASSKEY)?,
        oauth_client_register: rate(v, &limits::OAUTH_CLIENT_REGISTER)?,
        sign_ups: otp,
        anonymous_users: rate(v, &limits::ANONYMOUS_USERS)?,
        verify: rate(v, &limits::VERIFY)?,
        mfa: rate(v, &limits::MFA)?,
        otp,
        email_window: send_window(v, &limits::EMAIL_WINDOW)?,
        sms_window: send_window(v, &limits::SMS_WINDOW)?,
        mfa_phone_window: send_window(v, &limits::MFA_PHONE_WINDOW)?,
        mfa_lockout: lockout(v)?,
        header: v.opt_string(&["GOTRUE_RATE_LIMIT_HEADER"]),
    })
}

/// A send window; zero means GoTrue's default, as in GoTrue.
fn send_window(v: &Vars, limit: &Limit) -> Result<Duration, ConfigError> {
    let Counts::PerRecipient(default) = limit.counts else {
        unreachable!("{} is a send window", limit.variable)
    };
    Ok(match v.duration(&[limit.variable], default)? {
        d if d.is_zero() => default,
        d => d,
    })
}

/// The factor lockout: at least one wrong code before it locks.
fn lockout(v: &Vars) -> Result<Lockout, ConfigError> {
    let (Counts::FailuresPerFactor(failures), Counts::LockPerFactor(lasts)) =
        (limits::MFA_MAX_FAILURES.counts, limits::MFA_LOCKOUT.counts)
    else {
        unreachable!("the lockout's declarations")
    };
    Ok(Lockout {
        // Zero or less means one, as before the declaration.
        failures: v
            .num(&[limits::MFA_MAX_FAILURES.variable], i64::from(failures))?
            .clamp(1, i64::from(u32::MAX)) as u32,
        lasts: v.duration(&[limits::MFA_LOCKOUT.variable], lasts)?,
    })
}

/// The SMTP server (its per-user window is declared in `limits`).
fn smtp(v: &Vars) -> Result<SmtpConfig, ConfigError> {
    Ok(SmtpConfig {
        host: v.opt_string(&["GOTRUE_SMTP_HOST"]),
        port: v.num(&["GOTRUE_SMTP_PORT"], 587u16)?,
        user: v.opt_string(&["GOTRUE_SMTP_USER"]),
        pass: v.opt_string(&["GOTRUE_SMTP_PASS"]),
        admin_email: v.opt_string(&["GOTRUE_SMTP_ADMIN_EMAIL"]),
        sender_name: v.opt_string(&["GOTRUE_SMTP_SENDER_NAME"]),
        send_timeout: v.duration(&["CASTELLAN_SMTP_SEND_TIMEOUT"], Duration::from_secs(60))?,
    })
}

/// GoTrue's refresh token format: 1 (random strings) or 2 (signed,
/// stateless); `None` keeps each session's own.
fn refresh_algorithm(v: &Vars) -> Result<Option<u8>, ConfigError> {
    v.parse(
        &["GOTRUE_SECURITY_REFRESH_TOKEN_ALGORITHM_VERSION"],
        None,
        "0, 1 or 2",
        |s| match s.trim() {
            "0" | "1" => Some(Some(1)),
            "2" => Some(Some(2)),
            _ => None,
        },
    )
}

/// The database to use (the embedded SQLite file by default).
fn database(v: &Vars) -> Result<DatabaseUrl, ConfigError> {
    let names = ["DATABASE_URL", "GOTRUE_DB_DATABASE_URL"];
    v.note(&names, "castellan.db");
    database_url(v.get(&names))
}

/// The password rules (GoTrue's minimum is never below 6).
fn password(v: &Vars) -> Result<PasswordConfig, ConfigError> {
    Ok(PasswordConfig {
        min_length: v.num(&["GOTRUE_PASSWORD_MIN_LENGTH"], 6usize)?.max(6),
        required_characters: v
            .opt_string(&["GOTRUE_PASSWORD_REQUIRED_CHARACTERS"])
            .map(|s| parse_required_characters(&s))
            .unwrap_or_default(),
        hibp: hibp(v)?,
    })
}

fn hibp(v: &Vars) -> Result<Option<HibpConfig>, ConfigError> {
    let enabled = v.bool(&["GOTRUE_PASSWORD_HIBP_ENABLED"], false)?;
    let hibp = HibpConfig {
        fail_closed: v.bool(&["GOTRUE_PASSWORD_HIBP_FAIL_CLOSED"], false)?,
        user_agent: v.string(
            &["GOTRUE_PASSWORD_HIBP_USER_AGENT"],
            "https://github.com/supabase/gotrue",
        ),
        url: v.string(
            &["CASTELLAN_PASSWORD_HIBP_URL"],
            "https://api.pwnedpasswords.com",
        ),
        timeout: v.duration(&["CASTELLAN_PASSWORD_HIBP_TIMEOUT"], Duration::from_secs(5))?,
    };
    Ok(enabled.then_some(hibp))
}

/// GoTrue refuses to start with an unknown provider or without a secret.
fn captcha(v: &Vars) -> Result<Option<CaptchaConfig>, ConfigError> {
    let enabled = v.bool(&["GOTRUE_SECURITY_CAPTCHA_ENABLED"], false)?;
    let name = v.string(&["GOTRUE_SECURITY_CAPTCHA_PROVIDER"], "hcaptcha");
    let secret = v.string(&["GOTRUE_SECURITY_CAPTCHA_SECRET"], "");
    // Zero is GoTrue's default too.
    let timeout = Some(v.duration(
        &["GOTRUE_SECURITY_CAPTCHA_TIMEOUT"],
        Duration::from_secs(10),
    )?)
    .filter(|t| !t.is_zero())
    .unwrap_or(Duration::from_secs(10));
    let verify_url = v.opt_string(&["CASTELLAN_CAPTCHA_VERIFY_URL"]);
    if !enabled {
        return Ok(None);
    }
    let provider = match name.as_str() {
        "hcaptcha" => CaptchaProvider::Hcaptcha,
        "turnstile" => CaptchaProvider::Turnstile,
        other => {
            return Err(ConfigError {
                var: "GOTRUE_SECURITY_CAPTCHA_PROVIDER".into(),
                msg: format!("unsupported captcha provider {other:?}: hcaptcha or turnstile"),
            });
        }
    };
    if secret.is_empty() {
        return Err(ConfigError {
            var: "GOTRUE_SECURITY_CAPTCHA_SECRET".into(),
            msg: "captcha provider secret is empty".into(),
        });
    }
    Ok(Some(CaptchaConfig {
        provider,
        secret,
        timeout,
        verify_url: verify_url.unwrap_or_else(|| provider.verify_url().to_string()),
    }))
}

/// The cores this process may use (2 when that cannot be told).
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn mfa(v: &Vars) -> Result<MfaConfig, ConfigError> {
    const FLOOR: Duration = Duration::from_secs(300);
    // GoTrue reads the challenge expiry as (float) seconds.
    let seconds = v.parse(
        &["GOTRUE_MFA_CHALLENGE_EXPIRY_DURATION"],
        300.0,
        "a number of seconds",
        |s| s.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0),
    )?;
    Ok(MfaConfig {
        totp_enroll_enabled: v.bool(&["GOTRUE_MFA_TOTP_ENROLL_ENABLED"], true)?,
        totp_verify_enabled: v.bool(&["GOTRUE_MFA_TOTP_VERIFY_ENABLED"], true)?,
        max_enrolled_factors: v.num(&["GOTRUE_MFA_MAX_ENROLLED_FACTORS"], 10usize)?,
        max_verified_factors: v.num(&["GOTRUE_MFA_MAX_VERIFIED_FACTORS"], 10usize)?,
        challenge_expiry: Duration::from_secs_f64(seconds.min(1e9)).max(FLOOR),
        factor_expiry: v
            .duration(&["GOTRUE_MFA_FACTOR_EXPIRY_DURATION"], FLOOR)?
            .max(FLOOR),
        phone_enroll_enabled: v.bool(&["GOTRUE_MFA_PHONE_ENROLL_ENABLED"], false)?,
        phone_verify_enabled: v.bool(&["GOTRUE_MFA_PHONE_VERIFY_ENABLED"], false)?,
        phone_otp_length: match v.num(&["GOTRUE_MFA_PHONE_OTP_LENGTH"], 6usize)? {
            n @ 6..=10 => n,
            _ => 6,
        },
        phone_template: v.string(&["GOTRUE_MFA_PHONE_TEMPLATE"], "Your code is {{ .Code }}"),
        webauthn_enroll_enabled: v.bool(&["GOTRUE_MFA_WEB_AUTHN_ENROLL_ENABLED"], false)?,
        webauthn_verify_enabled: v.bool(&["GOTRUE_MFA_WEB_AUTHN_VERIFY_ENABLED"], false)?,
    })
}

/// The WebAuthn relying party (`GOTRUE_WEBAUTHN_*`) passkeys and WebAuthn
/// second factors are made for.
#[derive(Debug, Clone)]
pub struct WebAuthnConfig {
    /// The domain credentials are scoped to (`example.com`).
    pub rp_id: String,
    pub rp_display_name: String,
    /// The origins a ceremony may come from (`https://app.example.com`).
    pub rp_origins: Vec<url::Url>,
    /// How long a ceremony's challenge may be answered.
    pub challenge_expiry: Duration,
}

/// castellan as an OAuth 2.1 authorization server (`GOTRUE_OAUTH_SERVER_*`):
/// third-party apps registered as clients.
#[derive(Debug, Clone)]
pub struct OAuthServerConfig {
    /// `POST /oauth/clients/register` (RFC 7591), open to anyone.
    pub allow_dynamic_registration: bool,
    /// The site's consent page, relative to the site URL.
    pub authorization_path: String,
    /// How long an authorization waits for consent.
    pub authorization_ttl: Duration,
    pub default_scope: String,
    /// castellan's: how many dynamically registered clients may exist at
    /// once (`CASTELLAN_OAUTH_SERVER_MAX_DYNAMIC_CLIENTS`), so open
    /// registration from many addresses cannot grow the table without end.
    pub max_dynamic_clients: i64,
}

/// GoTrue's defaults (no consent page: its path must be configured).
impl Default for OAuthServerConfig {
    fn default() -> Self {
        OAuthServerConfig {
            allow_dynamic_registration: false,
            authorization_path: String::new(),
            authorization_ttl: Duration::from_secs(600),
            default_scope: "email".into(),
            max_dynamic_clients: 10_000,
        }
    }
}

/// Off unless `GOTRUE_OAUTH_SERVER_ENABLED`, as in GoTrue.
fn oauth_server(v: &Vars) -> Result<Option<OAuthServerConfig>, ConfigError> {
    let enabled = v.bool(&["GOTRUE_OAUTH_SERVER_ENABLED"], false)?;
    let d = OAuthServerConfig::default();
    let cfg = OAuthServerConfig {
        allow_dynamic_registration: v.bool(
            &["GOTRUE_OAUTH_SERVER_ALLOW_DYNAMIC_REGISTRATION"],
            d.allow_dynamic_registration,
        )?,
        authorization_path: v.string(
            &["GOTRUE_OAUTH_SERVER_AUTHORIZATION_PATH"],
            &d.authorization_path,
        ),
        authorization_ttl: v.duration(
            &["GOTRUE_OAUTH_SERVER_AUTHORIZATION_TTL"],
            d.authorization_ttl,
        )?,
        default_scope: v.string(&["GOTRUE_OAUTH_SERVER_DEFAULT_SCOPE"], &d.default_scope),
        max_dynamic_clients: v.num(
            &["CASTELLAN_OAUTH_SERVER_MAX_DYNAMIC_CLIENTS"],
            d.max_dynamic_clients,
        )?,
    };
    Ok(enabled.then_some(cfg))
}

/// Passkey sign-in (`GOTRUE_PASSKEY_*`).
#[derive(Debug, Clone)]
pub struct PasskeyConfig {
    pub max_per_user: usize,
}

/// Off unless `GOTRUE_PASSKEY_ENABLED`, as in GoTrue.
fn passkeys(v: &Vars) -> Result<Option<PasskeyConfig>, ConfigError> {
    let enabled = v.bool(&["GOTRUE_PASSKEY_ENABLED"], false)?;
    let max_per_user = v.num(&["GOTRUE_PASSKEY_MAX_PASSKEYS_PER_USER"], 10usize)?;
    Ok(enabled.then_some(PasskeyConfig { max_per_user }))
}

/// The relying party, read when passkeys or WebAuthn factors are on; then
/// it must be whole (GoTrue only warns, then fails every ceremony with a 500).
fn webauthn(v: &Vars, needed: bool) -> Result<Option<WebAuthnConfig>, ConfigError> {
    let rp_id = v.string(&["GOTRUE_WEBAUTHN_RP_ID"], "");
    let rp_display_name = v.string(&["GOTRUE_WEBAUTHN_RP_DISPLAY_NAME"], "");
    let origins = v.list(&["GOTRUE_WEBAUTHN_RP_ORIGINS"], &[]);
    let challenge_expiry = v.duration(
        &["GOTRUE_WEBAUTHN_CHALLENGE_EXPIRY_DURATION"],
        Duration::from_secs(300),
    )?;
    if !needed {
        return Ok(None);
    }
    let refuse = |var: &str, msg: String| ConfigError {
        var: var.into(),
        msg,
    };
    let required = "is required when passkeys or WebAuthn factors are enabled";
    for (var, value) in [
        ("GOTRUE_WEBAUTHN_RP_ID", rp_id.is_empty()),
        (
            "GOTRUE_WEBAUTHN_RP_DISPLAY_NAME",
            rp_display_name.is_empty(),
        ),
        ("GOTRUE_WEBAUTHN_RP_ORIGINS", origins.is_empty()),
    ] {
        if value {
            return Err(refuse(var, required.into()));
        }
    }
    let rp_origins = origins
        .iter()
        .map(|o| {
            url::Url::parse(o)
                .ok()
                .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
                .ok_or_else(|| {
                    refuse(
                        "GOTRUE_WEBAUTHN_RP_ORIGINS",
                        format!("{o:?} is not an http(s) origin"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(WebAuthnConfig {
        rp_id,
        rp_display_name,
        rp_origins,
        // A day at most: the options' timeout is milliseconds in 32 bits.
        challenge_expiry: challenge_expiry
            .clamp(Duration::from_secs(1), Duration::from_secs(86_400)),
    }))
}

fn rate(vars: &Vars, limit: &Limit) -> Result<RateLimit, ConfigError> {
    let Counts::PerClient { events, .. } = limit.counts else {
        unreachable!("{} is per client", limit.variable)
    };
    // GoTrue accepts floats here ("150.0"); a fraction of an event is meaningless, so round.
    let events = vars.parse(&[limit.variable], events as f64, "a number", |v| {
        v.parse::<f64>().ok().filter(|f| *f >= 0.0)
    })?;
    Ok(RateLimit::declared(events.round() as u32, limit))
}

impl Config {
    /// Reads the process environment, after loading `.env` when present
    /// (process variables win, as with GoTrue's env files).
    pub fn from_process_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    pub fn from_vars(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::read(&Vars::new(map))
    }

    /// Every variable the configuration reads, with its default and its
    /// value in `map`; and the configuration, or why `map` is refused.
    pub fn settings(map: &HashMap<String, String>) -> (Vec<Setting>, Result<Self, ConfigError>) {
        let v = Vars::new(map);
        let cfg = Self::read(&v);
        (v.read.into_inner(), cfg)
    }

    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let argon2 = argon2(v)?;
        let otp = rate(v, &limits::OTP)?;
        let api_external_url = v.string(
            &["API_EXTERNAL_URL", "GOTRUE_API_EXTERNAL_URL"],
            "http://localhost:8081",
        );
        let mfa = mfa(v)?;
        let passkeys = passkeys(v)?;
        let needed =
            passkeys.is_some() || mfa.webauthn_enroll_enabled || mfa.webauthn_verify_enabled;
        let webauthn = webauthn(v, needed)?;
        let cfg = Config {
            database_url: database(v)?,
            host: v.string(&["GOTRUE_API_HOST"], "0.0.0.0"),
            port: v.num(&["PORT", "GOTRUE_API_PORT"], 8081u16)?,
            site_url: v.string(&["GOTRUE_SITE_URL"], "http://localhost:3000"),
            api_external_url: api_external_url.clone(),
            max_request_duration: v.duration(
                &["GOTRUE_API_MAX_REQUEST_DURATION"],
                Duration::from_secs(10),
            )?,
            metrics_addr: Some(v.string(&["CASTELLAN_METRICS_ADDR"], DEFAULT_METRICS_ADDR))
                .filter(|a| a != "api"),
            log_probes: v.bool(&["CASTELLAN_LOG_PROBES"], false)?,
            console_enabled: v.bool(&["CASTELLAN_CONSOLE_ENABLED"], false)?,
            trusted_proxies: trusted_proxies(v)?,
            listen: listen(v)?,
            jwt: jwt(v)?,
            disable_signup: v.bool(&["GOTRUE_DISABLE_SIGNUP"], false)?,
            mailer_autoconfirm: v.bool(&["GOTRUE_MAILER_AUTOCONFIRM"], false)?,
            sms_autoconfirm: v.bool(&["GOTRUE_SMS_AUTOCONFIRM"], false)?,
            external_email_enabled: v.bool(&["GOTRUE_EXTERNAL_EMAIL_ENABLED"], true)?,
            external_phone_enabled: v.bool(&["GOTRUE_EXTERNAL_PHONE_ENABLED"], false)?,
            anonymous_users_enabled: v.bool(&["GOTRUE_EXTERNAL_ANONYMOUS_USERS_ENABLED"], false)?,
            sms: sms(v)?,
            external: external(v, &api_external_url)?,
            password: password(v)?,
            captcha: captcha(v)?,
            hooks: hooks(v)?,
            argon2,
            refresh_token_rotation_enabled: v
                .bool(&["GOTRUE_SECURITY_REFRESH_TOKEN_ROTATION_ENABLED"], true)?,
            update_password_require_reauthentication: v.bool(
                &["GOTRUE_SECURITY_UPDATE_PASSWORD_REQUIRE_REAUTHENTICATION"],
                false,
            )?,
            refresh_token_reuse_interval: Duration::from_secs(
                v.num(&["GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL"], 0u64)?,
            ),
            db_encryption: db_encryption(v)?,
            refresh_token_algorithm_version: refresh_algorithm(v)?,
            sessions_timebox: v.opt_duration(&["GOTRUE_SESSIONS_TIMEBOX"])?,
            sessions_allow_low_aal: v.opt_duration(&["GOTRUE_SESSIONS_ALLOW_LOW_AAL"])?,
            mfa,
            passkeys,
            webauthn,
            oauth_server: oauth_server(v)?,
            sessions_inactivity_timeout: v.opt_duration(&["GOTRUE_SESSIONS_INACTIVITY_TIMEOUT"])?,
            rate_limits: rate_limits(v, otp)?,
            smtp: smtp(v)?,
            mailer: mailer(v)?,
            uri_allow_list: v.list(&["GOTRUE_URI_ALLOW_LIST"], &[]),
            flow_state_expiry: v.duration_at_least(
                &["GOTRUE_EXTERNAL_FLOW_STATE_EXPIRY_DURATION"],
                Duration::from_secs(300),
                Duration::from_secs(300),
            )?,
            expiry_schedule: v.string(&["CASTELLAN_EXPIRY_SCHEDULE"], "0 * * * * *"),
            clock: crate::Clock::default(),
            session_cache_size: v.num(&["CASTELLAN_SESSION_CACHE_SIZE"], 10_000u64)?,
            session_cache_bytes: v.num(&["CASTELLAN_SESSION_CACHE_BYTES"], 64u64 << 20)?,
            session_shards: v.num(&["CASTELLAN_SESSION_SHARDS"], cores())?.clamp(1, 64),
            cache_poll_interval: v.duration_at_least(
                &["CASTELLAN_CACHE_POLL_INTERVAL"],
                Duration::from_millis(50),
                Duration::from_millis(5),
            )?,
            supervision: supervision(v)?,
            keys_poll_interval: v.duration_at_least(
                &["CASTELLAN_KEYS_POLL_INTERVAL"],
                Duration::from_secs(10),
                Duration::from_millis(10),
            )?,
        };
        Ok(cfg)
    }

    /// Settings for tests and tools: the defaults, with a fixed secret.
    pub fn for_tests(database_url: DatabaseUrl) -> Self {
        let mut cfg = Self::from_vars(&HashMap::new()).expect("defaults are valid");
        cfg.database_url = database_url;
        cfg.jwt.secret = Some("test-secret-with-at-least-32-characters".into());
        // Tests read their server's counters on its own port.
        cfg.metrics_addr = None;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&map)
    }

    #[test]
    fn passkeys_and_webauthn_factors_need_a_whole_relying_party() {
        assert!(cfg(&[]).unwrap().webauthn.is_none());
        let rp = [
            ("GOTRUE_WEBAUTHN_RP_ID", "example.com"),
            ("GOTRUE_WEBAUTHN_RP_DISPLAY_NAME", "Example"),
            (
                "GOTRUE_WEBAUTHN_RP_ORIGINS",
                "https://app.example.com, https://example.com",
            ),
        ];
        for on in [
            "GOTRUE_PASSKEY_ENABLED",
            "GOTRUE_MFA_WEB_AUTHN_VERIFY_ENABLED",
        ] {
            let e = cfg(&[(on, "true")]).err().unwrap();
            assert_eq!(e.var, "GOTRUE_WEBAUTHN_RP_ID", "{on}");
            let e = cfg(&[(on, "true"), rp[0], rp[1]]).err().unwrap();
            assert_eq!(e.var, "GOTRUE_WEBAUTHN_RP_ORIGINS", "{on}");
            let bad = ("GOTRUE_WEBAUTHN_RP_ORIGINS", "app.example.com");
            let e = cfg(&[(on, "true"), rp[0], rp[1], bad]).err().unwrap();
            assert_eq!(e.var, "GOTRUE_WEBAUTHN_RP_ORIGINS", "{on}");
            let c = cfg(&[(on, "true"), rp[0], rp[1], rp[2]]).unwrap();
            let w = c.webauthn.unwrap();
            assert_eq!(w.rp_origins.len(), 2);
            assert_eq!(w.challenge_expiry, Duration::from_secs(300));
        }
        let c = cfg(&[("GOTRUE_PASSKEY_ENABLED", "true"), rp[0], rp[1], rp[2]]).unwrap();
        assert_eq!(c.passkeys.unwrap().max_per_user, 10);
    }

    #[test]
    fn the_cli_spelling_of_valid_methods_is_read_too() {
        let c = cfg(&[("GOTRUE_JWT_VALIDMETHODS", "HS256,RS256")]).unwrap();
        assert_eq!(c.jwt.valid_methods, ["HS256", "RS256"]);
        let c = cfg(&[
            ("GOTRUE_JWT_VALID_METHODS", "ES256"),
            ("GOTRUE_JWT_VALIDMETHODS", "HS256"),
        ])
        .unwrap();
        assert_eq!(c.jwt.valid_methods, ["ES256"]);
    }

    #[test]
    fn database_encryption_keys() {
        use base64::Engine;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let on = cfg(&[
            ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPT", "true"),
            ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY_ID", "k1"),
            ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY", &key),
        ])
        .unwrap();
        let sealed = on.db_encryption.seal("row", "v");
        assert!(sealed.contains("\"k1\""), "{sealed}");
        assert_eq!(on.db_encryption.open("row", &sealed).unwrap(), "v");
        for (pairs, var) in [
            (
                vec![("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPT", "true")],
                "GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY_ID",
            ),
            (
                vec![
                    ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPT", "true"),
                    ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY_ID", "k1"),
                    ("GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY", "too-short"),
                ],
                "GOTRUE_SECURITY_DB_ENCRYPTION_ENCRYPTION_KEY",
            ),
            (
                vec![("GOTRUE_SECURITY_DB_ENCRYPTION_DECRYPTION_KEYS", "nocolon")],
                "GOTRUE_SECURITY_DB_ENCRYPTION_DECRYPTION_KEYS",
            ),
        ] {
            assert_eq!(cfg(&pairs).unwrap_err().var, var);
        }
    }

    #[test]
    fn the_settings_list_reads_back_as_the_defaults() {
        let (defaults, cfg) = Config::settings(&HashMap::new());
        assert!(cfg.is_ok());
        assert!(
            defaults.len() > 60,
            "every variable is listed: {}",
            defaults.len()
        );
        for name in [
            "DATABASE_URL",
            "GOTRUE_JWT_SECRET",
            "CASTELLAN_METRICS_ADDR",
            "GOTRUE_RATE_LIMIT_VERIFY",
        ] {
            assert!(defaults.iter().any(|s| s.names[0] == name), "{name}");
        }
        // `config example` written out and read back changes nothing.
        let written: HashMap<String, String> = defaults
            .iter()
            .filter(|s| !s.default.is_empty())
            .map(|s| (s.names[0].clone(), s.default.clone()))
            .collect();
        let (again, cfg) = Config::settings(&written);
        let cfg = cfg.unwrap();
        assert_eq!(
            format!("{:?}", cfg.rate_limits),
            format!("{:?}", cfg_defaults().rate_limits)
        );
        for s in &again {
            assert_eq!(
                s.value.as_deref().unwrap_or_default(),
                s.default,
                "{}",
                s.names[0]
            );
        }
        let secret = again
            .iter()
            .find(|s| s.names[0] == "GOTRUE_JWT_SECRET")
            .unwrap();
        assert!(secret.is_secret());
        assert_eq!(
            mask_url_password("postgres://u:pw@h:5432/db"),
            "postgres://u:********@h:5432/db"
        );
    }

    fn cfg_defaults() -> Config {
        cfg(&[]).unwrap()
    }

    #[test]
    fn defaults_match_gotrue() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.database_url, DatabaseUrl::Sqlite("castellan.db".into()));
        assert_eq!(c.jwt.exp, 3600);
        assert_eq!(c.jwt.admin_roles, vec!["service_role", "supabase_admin"]);
        assert!(c.external_email_enabled && !c.external_phone_enabled);
        assert!(c.refresh_token_rotation_enabled);
        assert_eq!(c.refresh_token_reuse_interval, Duration::ZERO);
        assert_eq!(c.rate_limits.token_refresh.events, 150);
        assert_eq!(c.password.min_length, 6);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[("GOTRUE_JWT_EXP", "soon")]).unwrap_err();
        assert_eq!(e.var, "GOTRUE_JWT_EXP");
        for (uri, says) in [
            ("http://hooks.example.com/x", "only localhost"),
            ("ftp://localhost/x", "only postgres hooks"),
            ("pg-functions://postgres/public", "enough parts"),
            ("pg-functions://postgres/public/1bad", "invalid table name"),
        ] {
            // Checked even for a hook that is off, as GoTrue does.
            let e = cfg(&[("GOTRUE_HOOK_SEND_EMAIL_URI", uri)]).unwrap_err();
            assert_eq!(e.var, "GOTRUE_HOOK_SEND_EMAIL_URI");
            assert!(e.msg.contains(says), "{uri}: {}", e.msg);
        }
        let e = cfg(&[("GOTRUE_HOOK_PASSWORD_VERIFICATION_ATTEMPT_ENABLED", "true")]).unwrap_err();
        assert_eq!(e.var, "GOTRUE_HOOK_PASSWORD_VERIFICATION_ATTEMPT_URI");
        let c = cfg(&[
            ("GOTRUE_HOOK_SEND_EMAIL_ENABLED", "true"),
            ("GOTRUE_HOOK_SEND_EMAIL_URI", "https://h.example.com"),
        ])
        .unwrap();
        assert_eq!(
            c.hooks.enabled().map(|(h, _)| h).collect::<Vec<_>>(),
            [Hook::SendEmail]
        );
        let e = cfg(&[
            (
                "GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_URI",
                "https://h.example.com",
            ),
            ("GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_SECRETS", "whsec_abc"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_SECRETS");
        let c = cfg(&[
            ("GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_ENABLED", "true"),
            (
                "GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_URI",
                "pg-functions://postgres/public/claims",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.hooks.get(Hook::CustomAccessToken).unwrap().target,
            HookTarget::PgFunction {
                schema: "public".into(),
                function: "claims".into()
            }
        );
        let e = cfg(&[(
            "GOTRUE_EXTERNAL_WEB3_SOLANA_MAXIMUM_VALIDITY_DURATION",
            "200h",
        )])
        .unwrap_err();
        assert_eq!(
            e.var,
            "GOTRUE_EXTERNAL_WEB3_SOLANA_MAXIMUM_VALIDITY_DURATION"
        );
        // A number out of range says the range, not "not a whole number".
        let e = cfg(&[("PORT", "70000")]).unwrap_err();
        assert_eq!(
            (e.var.as_str(), e.msg.as_str()),
            (
                "PORT",
                "70000 is out of range: it must be a whole number from 0 to 65535"
            )
        );
        let e = cfg(&[("GOTRUE_JWT_EXP", "-5")]).unwrap_err();
        assert_eq!(
            e.msg,
            "-5 is out of range: it must be a whole number from 0 to 18446744073709551615"
        );
        let e = cfg(&[("GOTRUE_MAILER_AUTOCONFIRM", "yes")]).unwrap_err();
        assert_eq!(e.var, "GOTRUE_MAILER_AUTOCONFIRM");
        let e = cfg(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(e.to_string().contains("DATABASE_URL"));
    }

    #[test]
    fn parses_urls_lists_and_character_sets() {
        let c = cfg(&[
            ("DATABASE_URL", "sqlite:///tmp/x.db"),
            ("GOTRUE_JWT_ADMIN_ROLES", "a, b"),
            ("GOTRUE_PASSWORD_REQUIRED_CHARACTERS", "abc:ABC:\\:!"),
            ("GOTRUE_PASSWORD_MIN_LENGTH", "3"),
        ])
        .unwrap();
        assert_eq!(c.database_url, DatabaseUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(c.jwt.admin_roles, vec!["a", "b"]);
        assert_eq!(c.password.required_characters, vec!["abc", "ABC", ":!"]);
        assert_eq!(c.password.min_length, 6, "GoTrue never goes below 6");
        let c = cfg(&[("DATABASE_URL", "postgres://u@h/db")]).unwrap();
        assert_eq!(
            c.database_url,
            DatabaseUrl::Postgres("postgres://u@h/db".into())
        );
        // A bare path, as the README writes the default.
        for path in ["./other.db", "/var/lib/castellan/auth.db", "auth.db"] {
            let c = cfg(&[("DATABASE_URL", path)]).unwrap();
            assert_eq!(c.database_url, DatabaseUrl::Sqlite(path.into()));
        }
    }
}
