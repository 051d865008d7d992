//! SMS (and WhatsApp) delivery through the providers GoTrue supports. Each
//! provider is one description (where to post, how to authenticate, which
//! form fields, how to read its answer), and one sender serves them all.
//! A provider that refuses a message (a 4xx, or a failure in its answer) is
//! told apart from one that is down or slow, which the queue retries.

use std::collections::HashMap;
use std::time::Duration;

use castellan_core::config::SmsConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The provider's variables (GoTrue's `GOTRUE_SMS_<PROVIDER>_<NAME>`), by `<NAME>`.
pub type Settings = HashMap<String, String>;

/// How a provider authenticates.
enum Auth {
    None,
    /// HTTP basic auth with two settings.
    Basic(&'static str, &'static str),
    /// A header: its name, and a prefix before a setting.
    Header(&'static str, &'static str, &'static str),
}

/// A form field's value.
enum Field {
    Setting(&'static str),
    Fixed(&'static str),
    /// The number as stored (E.164 digits, no `+`).
    Phone,
    /// The number with `+` (and `whatsapp:` before it on that channel).
    PlusPhone,
    /// The number with `+`, whatever the channel.
    E164,
    /// The code typed by the user (a provider that checks codes itself).
    Code,
    /// The sender setting, `whatsapp:`-prefixed on that channel when it is a number.
    Sender(&'static str),
    Message,
    Channel,
    /// `unicode` when the message is not ASCII (Vonage); the field is left out otherwise.
    UnicodeType,
}

/// Which answer is a failure, besides an HTTP error.
enum Check {
    /// Any 2xx answer is sent.
    Always,
    /// Sent only when the field holds one of these values.
    Is(&'static str, &'static [&'static str]),
    /// Sent unless the field holds one of these values.
    Not(&'static str, &'static [&'static str]),
}

/// One provider's API.
pub struct Description {
    pub name: &'static str,
    base: &'static str,
    /// With `{NAME}` replaced by the setting.
    path: &'static str,
    auth: Auth,
    fields: &'static [(&'static str, Field)],
    pub channels: &'static [&'static str],
    /// JSON pointers into the answer: the message id, and the error text.
    id: &'static str,
    error: &'static str,
    check: Check,
    /// The settings it cannot work without.
    pub required: &'static [&'static str],
    /// For a provider that makes and checks the codes itself (Twilio
    /// Verify): where a typed code is checked, and which answer approves it.
    pub checks: Option<CodeCheck>,
}

/// A provider's API for checking a code it sent.
pub struct CodeCheck {
    path: &'static str,
    fields: &'static [(&'static str, Field)],
    approved: Check,
}

pub const PROVIDERS: &[Description] = &[
    Description {
        name: "twilio",
        base: "https://api.twilio.com",
        path: "/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        auth: Auth::Basic("ACCOUNT_SID", "AUTH_TOKEN"),
        fields: &[
            ("To", Field::PlusPhone),
            ("Channel", Field::Channel),
            ("From", Field::Sender("MESSAGE_SERVICE_SID")),
            ("Body", Field::Message),
        ],
        channels: &["sms", "whatsapp"],
        id: "/sid",
        error: "/message",
        check: Check::Not("/status", &["failed", "undelivered"]),
        required: &["ACCOUNT_SID", "AUTH_TOKEN", "MESSAGE_SERVICE_SID"],
        checks: None,
    },
    // Twilio makes the code and sends it in its own words; the code a
    // user types is checked by Twilio, never against castellan's hash.
    Description {
        name: "twilio_verify",
        base: "https://verify.twilio.com",
        path: "/v2/Services/{MESSAGE_SERVICE_SID}/Verifications",
        auth: Auth::Basic("ACCOUNT_SID", "AUTH_TOKEN"),
        fields: &[("To", Field::E164), ("Channel", Field::Channel)],
        channels: &["sms", "whatsapp"],
        id: "/sid",
        error: "/message",
        check: Check::Always,
        required: &["ACCOUNT_SID", "AUTH_TOKEN", "MESSAGE_SERVICE_SID"],
        checks: Some(CodeCheck {
            path: "/v2/Services/{MESSAGE_SERVICE_SID}/VerificationCheck",
            fields: &[("To", Field::E164), ("Code", Field::Code)],
            approved: Check::Is("/status", &["approved"]),
        }),
    },
    Description {
        name: "messagebird",
        base: "https://rest.messagebird.com",
        path: "/messages",
        auth: Auth::Header("Authorization", "AccessKey ", "ACCESS_KEY"),
        fields: &[
            ("originator", Field::Setting("ORIGINATOR")),
            ("body", Field::Message),
            ("recipients", Field::Phone),
            ("type", Field::Fixed("sms")),
            ("datacoding", Field::Fixed("unicode")),
        ],
        channels: &["sms"],
        id: "/id",
        error: "/errors/0/description",
        check: Check::Always,
        required: &["ACCESS_KEY", "ORIGINATOR"],
        checks: None,
    },
    Description {
        name: "textlocal",
        base: "https://api.textlocal.in",
        path: "/send",
        auth: Auth::None,
        fields: &[
            ("sender", Field::Setting("SENDER")),
            ("apikey", Field::Setting("API_KEY")),
            ("message", Field::Message),
            ("numbers", Field::Phone),
        ],
        channels: &["sms"],
        id: "/messages/0/id",
        error: "/errors/0/message",
        check: Check::Is("/status", &["success"]),
        required: &["API_KEY", "SENDER"],
        checks: None,
    },
    Description {
        name: "vonage",
        base: "https://rest.nexmo.com",
        path: "/sms/json",
        auth: Auth::None,
        fields: &[
            ("from", Field::Setting("FROM")),
            ("to", Field::Phone),
            ("text", Field::Message),
            ("api_key", Field::Setting("API_KEY")),
            ("api_secret", Field::Setting("API_SECRET")),
            ("type", Field::UnicodeType),
        ],
        channels: &["sms"],
        id: "/messages/0/message-id",
        error: "/messages/0/error-text",
        check: Check::Is("/messages/0/status", &["0"]),
        required: &["API_KEY", "API_SECRET", "FROM"],
        checks: None,
    },
];

/// The description of a provider, by GoTrue's name.
pub fn provider(name: &str) -> Option<&'static Description> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider refused it (a 4xx, or a failure in its answer):
    /// sending it again would not help.
    #[error("the SMS provider refused the message: {0}")]
    Refused(String),
    /// The provider is down, slow or answered 5xx: worth retrying.
    #[error("the SMS provider is unavailable: {0}")]
    Unavailable(String),
    /// The send-SMS hook refused it: its error is the answer.
    #[error("the send-SMS hook refused the message: {}", .0.message)]
    Rejected(castellan_core::ApiError),
}

/// One message to send.
pub struct Message<'a> {
    pub phone: &'a str,
    pub body: &'a str,
    pub channel: &'a str,
}

/// What goes into a provider's form: a message to send, or a code to check.
struct Form<'a> {
    phone: &'a str,
    body: &'a str,
    channel: &'a str,
    code: &'a str,
}

/// A provider configured: its description, settings and where its API is.
pub struct Sender {
    description: &'static Description,
    settings: Settings,
    base: String,
    http: reqwest::Client,
}

impl Sender {
    /// `base` replaces the provider's API address (tests point it at a stand-in).
    pub fn new(
        description: &'static Description,
        settings: Settings,
        base: Option<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let missing: Vec<_> = description
            .required
            .iter()
            .filter(|k| settings.get(**k).is_none_or(|v| v.is_empty()))
            .map(|k| format!("GOTRUE_SMS_{}_{k}", description.name.to_ascii_uppercase()))
            .collect();
        if !missing.is_empty() {
            return Err(format!("{} needs {}", description.name, missing.join(", ")));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            description,
            base: base.unwrap_or_else(|| description.base.to_string()),
            settings,
            http,
        })
    }

    fn setting(&self, name: &str) -> &str {
        self.settings.get(name).map_or("", String::as_str)
    }

    fn url(&self, path: &str) -> String {
        let mut path = path.to_string();
        for (k, v) in &self.settings {
            path = path.replace(&format!("{{{k}}}"), v);
        }
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn form(
        &self,
        fields: &'static [(&'static str, Field)],
        m: &Form<'_>,
    ) -> Vec<(&'static str, String)> {
        let whatsapp = m.channel == "whatsapp";
        let on_channel = |v: String| if whatsapp { format!("whatsapp:{v}") } else { v };
        fields
            .iter()
            .filter_map(|(name, field)| {
                let value = match field {
                    Field::Setting(s) => self.setting(s).to_string(),
                    Field::Fixed(v) => v.to_string(),
                    Field::Phone => m.phone.to_string(),
                    Field::PlusPhone => on_channel(format!("+{}", m.phone)),
                    Field::E164 => format!("+{}", m.phone),
                    Field::Code => m.code.to_string(),
                    Field::Sender(s) => {
                        let sender = self.setting(s);
                        let numeric = sender
                            .trim_start_matches('+')
                            .bytes()
                            .all(|b| b.is_ascii_digit());
                        if numeric && !sender.is_empty() {
                            on_channel(sender.to_string())
                        } else {
                            sender.to_string()
                        }
                    }
                    Field::Message => m.body.to_string(),
                    Field::Channel => m.channel.to_string(),
                    Field::UnicodeType if !m.body.is_ascii() => "unicode".into(),
                    Field::UnicodeType => return None,
                };
                Some((*name, value))
            })
            .collect()
    }

    /// Sends one message; the provider's message id when it gave one.
    pub async fn send(&self, m: &Message<'_>) -> Result<Option<String>, SendError> {
        let d = self.description;
        if !d.channels.contains(&m.channel) {
            return Err(SendError::Refused(format!(
                "channel type {:?} is not supported for {}",
                m.channel, d.name
            )));
        }
        let form = Form {
            phone: m.phone,
            body: m.body,
            channel: m.channel,
            code: "",
        };
        let body = self.post(d.path, d.fields, &form, &d.check).await?;
        Ok(body
            .pointer(d.id)
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Whether the provider checks codes itself (Twilio Verify).
    pub fn checks_codes(&self) -> bool {
        self.description.checks.is_some()
    }

    /// Asks the provider whether `code` is the one it sent to `phone`.
    pub async fn check_code(&self, phone: &str, code: &str) -> Result<bool, SendError> {
        let Some(c) = &self.description.checks else {
            return Ok(false);
        };
        let form = Form {
            phone,
            body: "",
            channel: "sms",
            code,
        };
        match self.post(c.path, c.fields, &form, &c.approved).await {
            Ok(_) => Ok(true),
            Err(SendError::Refused(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Posts a form; the answer when it is a success by `check`.
    async fn post(
        &self,
        path: &str,
        fields: &'static [(&'static str, Field)],
        form: &Form<'_>,
        check: &Check,
    ) -> Result<Value, SendError> {
        let d = self.description;
        let mut req = self
            .http
            .post(self.url(path))
            .form(&self.form(fields, form));
        req = match d.auth {
            Auth::None => req,
            Auth::Basic(user, pass) => req.basic_auth(self.setting(user), Some(self.setting(pass))),
            Auth::Header(name, prefix, s) => {
                req.header(name, format!("{prefix}{}", self.setting(s)))
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_string);
        let error = || text(d.error).unwrap_or_else(|| format!("HTTP {status}"));
        if status.is_server_error() {
            return Err(SendError::Unavailable(error()));
        }
        if !status.is_success() {
            return Err(SendError::Refused(error()));
        }
        let ok = match check {
            Check::Always => true,
            Check::Is(p, ok) => text(p).is_some_and(|v| ok.contains(&v.as_str())),
            Check::Not(p, bad) => text(p).is_none_or(|v| !bad.contains(&v.as_str())),
        };
        if !ok {
            return Err(SendError::Refused(error()));
        }
        Ok(body)
    }
}

/// What a code is for; GoTrue names it in a refusal ("Error sending
/// confirmation OTP to provider: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsKind {
    Confirmation,
    PhoneChange,
    Reauthentication,
    /// A phone factor's challenge.
    Mfa,
}

impl SmsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsKind::Confirmation => "confirmation",
            SmsKind::PhoneChange => "phone_change",
            SmsKind::Reauthentication => "reauthentication",
            SmsKind::Mfa => "mfa",
        }
    }
}

/// One SMS to deliver, rendered when it was queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsJob {
    pub id: Uuid,
    pub kind: SmsKind,
    /// E.164 digits, no `+`.
    pub to: String,
    pub body: String,
    /// `sms` or `whatsapp`.
    pub channel: String,
    pub queued_at: chrono::DateTime<chrono::Utc>,
    /// What the send-SMS hook is given (the user and the code), when it
    /// was on as the job was queued.
    #[serde(default)]
    pub hook: Option<Value>,
}

impl SmsJob {
    pub fn message(&self) -> Message<'_> {
        Message {
            phone: &self.to,
            body: &self.body,
            channel: &self.channel,
        }
    }
}

/// The message a code goes out in: the template with `{{ .Code }}` filled.
pub fn render(template: &str, code: &str) -> String {
    let mut out = String::with_capacity(template.len() + code.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        if rest[start + 2..start + len].trim() == ".Code" {
            out.push_str(code);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Where SMS go: a provider, the server log (`CASTELLAN_SMS_LOG`, with no
/// provider), or nowhere: no provider, an unknown one, or one without its
/// credentials. Then castellan starts as GoTrue does, says why once, and
/// fails each send ("Unable to get SMS provider").
pub enum Gateway {
    Provider(Sender),
    /// The send-SMS hook delivers instead of a provider.
    Hook(Box<crate::hooked::HookDelivery>),
    Log,
    Missing(String),
}

/// What to tell an operator whose configuration sends no SMS though phone
/// sign-ins or phone factors are on (at start, and by `config check`).
pub fn warning(config: &castellan_core::Config, gateway: &Gateway) -> Option<String> {
    let phones = config.external_phone_enabled || config.mfa.phone_enroll_enabled;
    if config
        .hooks
        .get(castellan_core::hooks::Hook::SendSms)
        .is_some()
    {
        return None;
    }
    let why = gateway.missing().filter(|_| phones)?;
    Some(format!(
        "{why}: SMS sends will fail with \"Unable to get SMS provider\", as GoTrue's do"
    ))
}

impl Gateway {
    pub fn from_config(cfg: &SmsConfig) -> Gateway {
        if cfg.provider.is_empty() {
            return match cfg.log {
                true => Gateway::Log,
                false => Gateway::Missing(
                    "GOTRUE_SMS_PROVIDER is not set (CASTELLAN_SMS_LOG=true sends SMS to the server log)".into(),
                ),
            };
        }
        let Some(description) = provider(&cfg.provider) else {
            return Gateway::Missing(format!(
                "GOTRUE_SMS_PROVIDER: {:?} is not one of {}",
                cfg.provider,
                PROVIDERS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let sender = Sender::new(
            description,
            cfg.settings.clone(),
            cfg.api_url.clone(),
            cfg.send_timeout,
        );
        sender.map_or_else(Gateway::Missing, Gateway::Provider)
    }

    /// The send-SMS hook in place of any provider, when it is on.
    pub fn with_hook(self, hook: Option<crate::hooked::HookDelivery>) -> Gateway {
        hook.map_or(self, |h| Gateway::Hook(Box::new(h)))
    }

    /// Why no SMS can be sent, when none can.
    pub fn missing(&self) -> Option<&str> {
        match self {
            Gateway::Missing(why) => Some(why),
            _ => None,
        }
    }

    /// Whether the provider checks the codes (so castellan's hash is not the judge).
    pub fn checks_codes(&self) -> bool {
        matches!(self, Gateway::Provider(s) if s.checks_codes())
    }

    /// Asks the provider whether `code` is right (Twilio Verify).
    pub async fn check_code(&self, phone: &str, code: &str) -> Result<bool, SendError> {
        match self {
            Gateway::Provider(s) => s.check_code(phone, code).await,
            Gateway::Log | Gateway::Missing(_) | Gateway::Hook(_) => Ok(false),
        }
    }

    /// The provider's name, for metrics (`log` without one).
    pub fn name(&self) -> &'static str {
        match self {
            Gateway::Provider(s) => s.description.name,
            Gateway::Log => "log",
            Gateway::Missing(_) => "none",
            Gateway::Hook(_) => "hook",
        }
    }

    /// Delivers a queued message: by the hook, or as [`Gateway::send`].
    pub async fn deliver(&self, job: &SmsJob) -> Result<Option<String>, SendError> {
        let Gateway::Hook(hook) = self else {
            return self.send(&job.message()).await;
        };
        let Some(payload) = &job.hook else {
            return Err(SendError::Refused(
                "queued while the send-SMS hook was off; no provider to send it".into(),
            ));
        };
        let r = match hook.deliver(payload, &job.id.to_string()).await {
            Ok(()) => Ok(None),
            Err(crate::hooked::Undelivered::Rejected(e)) => Err(SendError::Rejected(e)),
            Err(crate::hooked::Undelivered::Down(e)) => Err(SendError::Unavailable(e)),
        };
        self.count(&r);
        r
    }

    pub async fn send(&self, m: &Message<'_>) -> Result<Option<String>, SendError> {
        let r = match self {
            Gateway::Provider(s) => s.send(m).await,
            Gateway::Hook(_) => Err(SendError::Refused(
                "the send-SMS hook takes queued messages only".into(),
            )),
            Gateway::Log => {
                tracing::info!(target: "castellan::sms", to = %m.phone, channel = %m.channel, body = %m.body, "SMS (CASTELLAN_SMS_LOG: delivered to the log)");
                Ok(None)
            }
            Gateway::Missing(why) => Err(SendError::Refused(why.clone())),
        };
        self.count(&r);
        r
    }

    fn count(&self, r: &Result<Option<String>, SendError>) {
        let outcome = match r {
            Ok(_) => "sent",
            Err(SendError::Refused(_) | SendError::Rejected(_)) => "refused",
            Err(SendError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("castellan_sms_total", "provider" => self.name(), "outcome" => outcome)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn the_code_fills_its_place_and_nothing_else() {
        assert_eq!(
            render("Your code is {{ .Code }}", "123456"),
            "Your code is 123456"
        );
        assert_eq!(render("{{.Code}}-{{ .Other }}-x", "9"), "9--x");
        assert_eq!(render("no close {{ .Code", "1"), "no close {{ .Code");
    }
}
