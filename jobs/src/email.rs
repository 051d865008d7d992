//! The email job and its delivery.

use std::time::Duration;

use castellan_core::config::SmtpConfig;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What an email is for; picks its template, subject and link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    Confirmation,
    Invite,
    MagicLink,
    Recovery,
    EmailChange,
    Reauthentication,
}

impl EmailKind {
    pub fn name(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::Invite => "invite",
            EmailKind::MagicLink => "magic_link",
            EmailKind::Recovery => "recovery",
            EmailKind::EmailChange => "email_change",
            EmailKind::Reauthentication => "reauthentication",
        }
    }
}

/// Everything a worker needs to send one email. The message is rendered
/// where it is queued, with that process's templates, so whichever worker
/// takes the job sends the same message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailJob {
    /// Unique per email (for logs and tracing).
    pub id: Uuid,
    pub kind: EmailKind,
    pub to: String,
    /// The one-time code.
    pub token: String,
    /// The hash the link carries (with `pkce_` for PKCE flows).
    pub token_hash: String,
    /// The link to click (empty for reauthentication).
    pub confirmation_url: String,
    pub site_url: String,
    pub redirect_to: String,
    /// The user's email (differs from `to` for the new address of an email change).
    pub email: String,
    pub new_email: String,
    /// The user's metadata.
    pub data: Value,
    /// The rendered message (absent in jobs queued by older versions, which
    /// the worker renders itself).
    #[serde(default)]
    pub message: Option<crate::templates::Rendered>,
    /// When it was queued, for the delivery latency (absent in older jobs).
    #[serde(default)]
    pub queued_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What the send-email hook is given (the user and GoTrue's email
    /// data), when it was on as the job was queued.
    #[serde(default)]
    pub hook: Option<Value>,
    /// Given to the send-email hook with another letter's call (an email
    /// change's second address): a worker without the hook sends it.
    #[serde(default)]
    pub hook_covered: bool,
}

impl EmailKind {
    /// GoTrue's `email_action_type` for the send-email hook.
    pub fn action_type(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "signup",
            EmailKind::Invite => "invite",
            EmailKind::MagicLink => "magiclink",
            EmailKind::Recovery => "recovery",
            EmailKind::EmailChange => "email_change",
            EmailKind::Reauthentication => "reauthentication",
        }
    }
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        send_timeout: Duration,
    },
    /// No SMTP host: the message (with its link and code) goes to the log,
    /// so a newcomer can follow a magic link without a mail server.
    Log,
    /// The send-email hook delivers instead; the mailer beside it sends
    /// what was queued while the hook was off.
    Hook(Box<(crate::hooked::HookDelivery, Mailer)>),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("message: {0}")]
    Message(#[from] lettre::error::Error),
    /// The send-email hook refused it in its own words: not retried.
    #[error("the send-email hook refused the message: {}", .0.message)]
    Rejected(castellan_core::ApiError),
    #[error("the send-email hook failed: {0}")]
    HookDown(String),
    /// The SMTP server stopped answering mid-message (retried).
    #[error("smtp: no answer within {0:?}")]
    TimedOut(Duration),
}

impl SendError {
    /// Whether sending again could succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, SendError::Rejected(_))
    }
}

impl Mailer {
    pub fn from_config(cfg: &SmtpConfig) -> Result<Mailer, String> {
        let Some(host) = cfg.host.clone() else {
            return Ok(Mailer::Log);
        };
        let from_addr = cfg
            .admin_email
            .clone()
            .unwrap_or_else(|| format!("noreply@{host}"));
        let from: Mailbox = match &cfg.sender_name {
            Some(name) => format!("{name} <{from_addr}>").parse(),
            None => from_addr.parse(),
        }
        .map_err(|e| format!("GOTRUE_SMTP_ADMIN_EMAIL: {e}"))?;
        // The port says how to talk: 465 is implicit TLS, 587 STARTTLS, anything
        // else (a local relay, a test sink) plain.
        let builder = match cfg.port {
            465 => AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|e| e.to_string())?,
            587 => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| e.to_string())?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        };
        let mut builder = builder
            .port(cfg.port)
            .timeout(Some(Duration::from_secs(10)));
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.pass) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Mailer::Smtp {
            transport: builder.build(),
            from,
            send_timeout: cfg.send_timeout,
        })
    }

    /// The send-email hook in place of SMTP, when it is on.
    pub fn with_hook(self, hook: Option<crate::hooked::HookDelivery>) -> Mailer {
        match hook {
            Some(h) => Mailer::Hook(Box::new((h, self))),
            None => self,
        }
    }

    /// Delivers a queued job: by the hook, or its rendered message.
    pub async fn deliver(
        &self,
        job: &EmailJob,
        m: crate::templates::Rendered,
    ) -> Result<(), SendError> {
        let Mailer::Hook(hook) = self else {
            // Without the hook every letter is sent, covered ones too.
            return self.send(&job.to, &m.subject, m.html, m.text).await;
        };
        let (hook, fallback) = &**hook;
        match (&job.hook, job.hook_covered) {
            (Some(payload), _) => {
                let id = job.id.to_string();
                hook.deliver(payload, &id).await.map_err(|e| match e {
                    crate::hooked::Undelivered::Rejected(e) => SendError::Rejected(e),
                    crate::hooked::Undelivered::Down(e) => SendError::HookDown(e),
                })
            }
            (None, true) => Ok(()),
            (None, false) => fallback.send(&job.to, &m.subject, m.html, m.text).await,
        }
    }

    pub async fn send(
        &self,
        to: &str,
        subject: &str,
        html: String,
        text: String,
    ) -> Result<(), SendError> {
        match self {
            Mailer::Log => {
                tracing::info!(target: "castellan::mail", %to, %subject, body = %text, "email (no SMTP host configured: delivered to the log)");
                Ok(())
            }
            Mailer::Hook(_) => Err(SendError::HookDown(
                "the send-email hook takes queued jobs only".into(),
            )),
            Mailer::Smtp {
                transport,
                from,
                send_timeout,
            } => {
                let to: Mailbox = to.parse().map_err(|_| SendError::Address(to.to_string()))?;
                let msg = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(subject)
                    .multipart(MultiPart::alternative_plain_html(text, html))?;
                tokio::time::timeout(*send_timeout, transport.send(msg))
                    .await
                    .map_err(|_| SendError::TimedOut(*send_timeout))??;
                Ok(())
            }
        }
    }
}
