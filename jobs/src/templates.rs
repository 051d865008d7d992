//! Email templates: built-in HTML and plain-text bodies for each kind, with
//! GoTrue's subjects and variables. Custom templates (GoTrue's
//! `GOTRUE_MAILER_TEMPLATES_*`, a file path or an http(s) URL) are read once
//! when the worker starts; they use the variables of GoTrue's templates
//! (`{{ .ConfirmationURL }}`, `{{ .Token }}`, `{{ .TokenHash }}`,
//! `{{ .SiteURL }}`, `{{ .RedirectTo }}`, `{{ .Email }}`, `{{ .NewEmail }}`,
//! `{{ .SendingTo }}`, `{{ .Data.<key> }}`). Only substitution is supported,
//! not Go's control structures.

use std::collections::HashMap;

use castellan_core::config::MailerConfig;
use serde_json::Value;

use crate::email::{EmailJob, EmailKind};

const KINDS: [EmailKind; 6] = [
    EmailKind::Confirmation,
    EmailKind::Invite,
    EmailKind::MagicLink,
    EmailKind::Recovery,
    EmailKind::EmailChange,
    EmailKind::Reauthentication,
];

fn default_subject(kind: EmailKind) -> &'static str {
    match kind {
        EmailKind::Confirmation => "Confirm your email address",
        EmailKind::Invite => "You've been invited",
        EmailKind::MagicLink => "Your sign-in link",
        EmailKind::Recovery => "Reset your password",
        EmailKind::EmailChange => "Confirm your new email address",
        EmailKind::Reauthentication => "{{ .Token }} is your verification code",
    }
}

fn default_body(kind: EmailKind) -> (&'static str, &'static str) {
    match kind {
        EmailKind::Confirmation => (
            "Confirm your signup",
            "Follow this link to confirm your email address: {{ .ConfirmationURL }}\nOr enter this code: {{ .Token }}",
        ),
        EmailKind::Invite => (
            "You have been invited",
            "You have been invited to create an account on {{ .SiteURL }}. Follow this link to accept: {{ .ConfirmationURL }}\nOr enter this code: {{ .Token }}",
        ),
        EmailKind::MagicLink => (
            "Your sign-in link",
            "Follow this link to sign in: {{ .ConfirmationURL }}\nOr enter this code: {{ .Token }}",
        ),
        EmailKind::Recovery => (
            "Reset your password",
            "Follow this link to reset your password: {{ .ConfirmationURL }}\nOr enter this code: {{ .Token }}",
        ),
        EmailKind::EmailChange => (
            "Confirm the change of your email address",
            "Follow this link to confirm the change from {{ .Email }} to {{ .NewEmail }}: {{ .ConfirmationURL }}\nOr enter this code: {{ .Token }}",
        ),
        EmailKind::Reauthentication => (
            "Confirm it is you",
            "Confirm it is you with this code: {{ .Token }}",
        ),
    }
}

/// One rendered message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The templates in force: built-in ones, with configured subjects and
/// bodies replacing them kind by kind.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    subjects: HashMap<EmailKind, String>,
    html: HashMap<EmailKind, String>,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Replaces `{{ .Var }}` and `{{ .Data.key }}`; unknown variables render empty.
pub fn substitute(template: &str, job: &EmailJob, html: bool) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = rest[start + 2..start + end].trim();
        let value = match name {
            ".ConfirmationURL" => job.confirmation_url.clone(),
            ".Token" => job.token.clone(),
            ".TokenHash" => job.token_hash.clone(),
            ".SiteURL" => job.site_url.clone(),
            ".RedirectTo" => job.redirect_to.clone(),
            ".Email" => job.email.clone(),
            ".NewEmail" => job.new_email.clone(),
            ".SendingTo" => job.to.clone(),
            other => match other.strip_prefix(".Data.") {
                Some(key) => match job.data.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(v) => v.to_string(),
                },
                None => String::new(),
            },
        };
        out.push_str(&if html { escape_html(&value) } else { value });
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

impl Templates {
    /// Reads the configured subjects and custom templates (files or URLs).
    pub async fn load(cfg: &MailerConfig) -> Result<Templates, String> {
        let mut t = Templates::default();
        for kind in KINDS {
            if let Some(s) = cfg.subjects.get(kind.name()) {
                t.subjects.insert(kind, s.clone());
            }
            if let Some(src) = cfg.templates.get(kind.name()) {
                let body = if src.starts_with("http://") || src.starts_with("https://") {
                    let resp = reqwest::get(src)
                        .await
                        .map_err(|e| format!("fetching the {} template {src}: {e}", kind.name()))?;
                    if !resp.status().is_success() {
                        return Err(format!(
                            "fetching the {} template {src}: HTTP {}",
                            kind.name(),
                            resp.status()
                        ));
                    }
                    resp.text()
                        .await
                        .map_err(|e| format!("reading the {} template {src}: {e}", kind.name()))?
                } else {
                    tokio::fs::read_to_string(src)
                        .await
                        .map_err(|e| format!("reading the {} template {src}: {e}", kind.name()))?
                };
                t.html.insert(kind, body);
            }
        }
        Ok(t)
    }

    pub fn render(&self, job: &EmailJob) -> Rendered {
        let subject_t = self
            .subjects
            .get(&job.kind)
            .map(String::as_str)
            .unwrap_or(default_subject(job.kind));
        let (title, text_t) = default_body(job.kind);
        let text = substitute(text_t, job, false);
        let html = match self.html.get(&job.kind) {
            Some(custom) => substitute(custom, job, true),
            None => {
                let link = if job.confirmation_url.is_empty() {
                    String::new()
                } else {
                    format!(
                        "<p><a href=\"{0}\">{0}</a></p>",
                        escape_html(&job.confirmation_url)
                    )
                };
                format!(
                    "<h2>{}</h2>{link}<p>Your code: <strong>{}</strong></p>",
                    escape_html(title),
                    escape_html(&job.token)
                )
            }
        };
        Rendered {
            subject: substitute(subject_t, job, false),
            html,
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(kind: EmailKind) -> EmailJob {
        EmailJob {
            id: uuid::Uuid::nil(),
            kind,
            to: "a@b.co".into(),
            token: "123456".into(),
            token_hash: "abc".into(),
            confirmation_url: "http://x/verify?token=abc&type=signup".into(),
            site_url: "http://site".into(),
            redirect_to: "http://site/cb".into(),
            email: "a@b.co".into(),
            new_email: String::new(),
            data: json!({"name": "<Al>", "n": 3}),
            message: None,
            queued_at: None,
            hook: None,
            hook_covered: false,
        }
    }

    #[test]
    fn variables_are_substituted_and_escaped_in_html() {
        let j = job(EmailKind::Confirmation);
        assert_eq!(
            substitute(
                "{{ .Token }}/{{.TokenHash}}/{{ .Data.name }}/{{ .Data.n }}/{{ .Nope }}",
                &j,
                false
            ),
            "123456/abc/<Al>/3/"
        );
        assert_eq!(
            substitute("{{ .Data.name }} {{ .ConfirmationURL }}", &j, true),
            "&lt;Al&gt; http://x/verify?token=abc&amp;type=signup"
        );
    }

    #[test]
    fn defaults_carry_link_and_code() {
        let r = Templates::default().render(&job(EmailKind::Confirmation));
        assert_eq!(r.subject, "Confirm your email address");
        assert!(
            r.text.contains("http://x/verify?token=abc&type=signup") && r.text.contains("123456")
        );
        assert!(r.html.contains("123456"));
        let r = Templates::default().render(&job(EmailKind::Reauthentication));
        assert_eq!(r.subject, "123456 is your verification code");
    }
}
