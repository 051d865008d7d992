//! Delivery by a hook: with the send-email or send-SMS hook on, a queued
//! message goes to the hook instead of SMTP or an SMS provider, with the
//! payload built when it was queued.

use castellan_core::ApiError;
use castellan_core::config::HookConfig;
use castellan_core::hooks::{Caller, Hook, is_refusal};
use serde_json::Value;

/// A hook that delivers, and how to call it.
#[derive(Clone)]
pub struct HookDelivery {
    pub hook: Hook,
    pub cfg: HookConfig,
    pub caller: Caller,
}

/// Why a hook did not take a message.
pub enum Undelivered {
    /// The hook refused it in its own words (a 4xx error object): asking
    /// again would be refused again.
    Rejected(ApiError),
    /// The hook is down, slow or failed: worth retrying.
    Down(String),
}

impl HookDelivery {
    /// The delivery hook `hook` when the configuration turns it on.
    pub fn of(config: &castellan_core::Config, hook: Hook, caller: &Caller) -> Option<Self> {
        config.hooks.get(hook).map(|cfg| HookDelivery {
            hook,
            cfg: cfg.clone(),
            caller: caller.clone(),
        })
    }

    /// Hands the hook `payload` (a job's, built when it was queued), as
    /// webhook `id` (the job's: the same on every retry, so a hook can tell
    /// a message it already took).
    pub async fn deliver(&self, payload: &Value, id: &str) -> Result<(), Undelivered> {
        let call = self
            .caller
            .call_as(self.hook, &self.cfg, payload.clone(), id, None);
        match call.await {
            Ok(_) => Ok(()),
            Err(e) if is_refusal(&e) => Err(Undelivered::Rejected(e)),
            Err(e) => Err(Undelivered::Down(format!("{}: {}", e.code, e.message))),
        }
    }
}
