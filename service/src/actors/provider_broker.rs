//! The `ProviderBroker` actor: it alone holds the keys fetched from OIDC
//! issuers (discovery and JWKS), knows which fetches are under way (tokens
//! arriving together wait for one fetch), and keeps a circuit breaker per
//! provider: after `TRIPS` calls in a row find a provider unavailable,
//! sign-ins with it fail at once for `COOL_OFF`, then one call tries it
//! again. Every fetch and call runs in a caller's task
//! ([`crate::providers::ProviderBroker`]), never here: callers ask (`Want`,
//! `Gate`) and report how it ended (`Keys`, `Called`), even when dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use castellan_core::clock::Clock;
use castellan_core::crypto::jwk::Key;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::mailbox::Mail;

/// How long an issuer's keys are used before they are fetched again.
pub(crate) const KEYS_TTL: Duration = Duration::from_secs(3600);

/// The least time between two fetches of one issuer's keys, however many
/// tokens name a key it does not have (a forger's, say).
const KEYS_FLOOR: Duration = Duration::from_secs(30);

/// Issuers whose keys are kept.
const MAX_ISSUERS: usize = 64;

/// Calls in a row that find a provider unavailable before its breaker opens.
const TRIPS: u32 = 5;

/// How long an open breaker refuses calls before one may try again.
const COOL_OFF: chrono::Duration = chrono::Duration::seconds(30);

/// One provider's circuit breaker: closed (calls go), open until a time
/// (calls fail at once), then half open (one call, the probe, tries the
/// provider; only its outcome closes or opens the breaker again).
#[derive(Default, Debug)]
struct Breaker {
    failures: u32,
    open_until: Option<DateTime<Utc>>,
    /// When the probe under way was let through.
    probe_since: Option<DateTime<Utc>>,
}

/// What the breaker says to a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// The call that tries a provider after its cool-off.
    Probe,
    /// Refused: the provider was unavailable; try again after this long.
    Open(chrono::Duration),
}

impl Breaker {
    fn gate(&mut self, now: DateTime<Utc>) -> Gate {
        let Some(until) = self.open_until else {
            return Gate::Go;
        };
        if now < until {
            return Gate::Open(until - now);
        }
        match self.probe_since {
            // One probe at a time; one never heard of again frees the way
            // after a cool-off.
            Some(t) if now < t + COOL_OFF => Gate::Open(t + COOL_OFF - now),
            _ => {
                self.probe_since = Some(now);
                Gate::Probe
            }
        }
    }

    /// How a call ended: `Some(true)` the provider answered (a refusal too),
    /// `Some(false)` it was unavailable, `None` the call was abandoned.
    /// While the breaker is open only the probe's outcome counts (calls let
    /// through before it opened end late).
    fn outcome(&mut self, probe: bool, answered: Option<bool>, now: DateTime<Utc>) {
        if self.open_until.is_some() && !probe {
            return;
        }
        match answered {
            Some(true) => *self = Breaker::default(),
            Some(false) => {
                self.failures += 1;
                if probe || self.failures >= TRIPS {
                    self.open_until = Some(now + COOL_OFF);
                    self.probe_since = None;
                }
            }
            None => self.probe_since = None,
        }
    }

    fn open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// One issuer's verification keys, when they were fetched, and when a
/// fetch was last tried (a failed one too, so an issuer that is down is
/// not asked again for every token).
pub struct IssuerKeys {
    pub keys: Vec<Key>,
    pub fetched: Instant,
    pub tried: Instant,
}

/// What the actor answers a caller that wants an issuer's keys.
pub enum Wanted {
    /// Kept keys that serve the token.
    Have(Arc<IssuerKeys>),
    /// Nobody is fetching them: the caller fetches (in its own task) and
    /// reports with `Keys`; the kept ones, old, if any.
    Fetch(Option<Arc<IssuerKeys>>),
    /// Another caller is fetching them: the result comes here.
    Wait(tokio::sync::oneshot::Receiver<Option<Arc<IssuerKeys>>>),
}

pub enum BrokerMsg {
    /// The keys of `issuer` that may have signed a token with `kid`.
    Want {
        issuer: String,
        kid: Option<String>,
        reply: RpcReplyPort<Wanted>,
    },
    /// What a caller's fetch brought (`None`: it ended without keys, and
    /// the issuer's kept keys, if any, stay as they were).
    Keys {
        issuer: String,
        keys: Option<Arc<IssuerKeys>>,
    },
    /// May a sign-in call this provider now?
    Gate {
        provider: &'static str,
        now: DateTime<Utc>,
        reply: RpcReplyPort<Gate>,
    },
    /// How a call the breaker let through ended (see `Breaker::outcome`).
    Called {
        provider: &'static str,
        probe: bool,
        answered: Option<bool>,
        now: DateTime<Utc>,
    },
}

/// The actor's state: the issuers' keys, the fetches under way with the
/// callers waiting on each, and each provider's breaker.
#[derive(Default)]
pub struct KeyRing {
    by_issuer: HashMap<String, Arc<IssuerKeys>>,
    fetching: HashMap<String, Vec<tokio::sync::oneshot::Sender<Option<Arc<IssuerKeys>>>>>,
    breakers: HashMap<&'static str, Breaker>,
}

impl KeyRing {
    fn want(&mut self, issuer: String, kid: Option<&str>) -> (Wanted, &'static str) {
        let kept = self.by_issuer.get(&issuer).cloned();
        if let Some(k) = kept.as_ref().filter(|k| usable(k, kid)) {
            return (Wanted::Have(k.clone()), "have");
        }
        if let Some(waiting) = self.fetching.get_mut(&issuer) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiting.push(tx);
            return (Wanted::Wait(rx), "wait");
        }
        if self.fetching.len() < MAX_ISSUERS {
            self.fetching.insert(issuer, Vec::new());
        }
        (Wanted::Fetch(kept), "fetch")
    }

    fn keys(&mut self, issuer: String, keys: Option<Arc<IssuerKeys>>) {
        let waiting = self.fetching.remove(&issuer).unwrap_or_default();
        if let Some(keys) = &keys {
            if self.by_issuer.len() >= MAX_ISSUERS && !self.by_issuer.contains_key(&issuer) {
                // The longest unrefreshed goes first.
                if let Some(oldest) = self
                    .by_issuer
                    .iter()
                    .min_by_key(|(_, k)| k.fetched)
                    .map(|(i, _)| i.clone())
                {
                    self.by_issuer.remove(&oldest);
                }
            }
            self.by_issuer.insert(issuer.clone(), keys.clone());
        }
        let answer = keys.or_else(|| self.by_issuer.get(&issuer).cloned());
        for w in waiting {
            let _ = w.send(answer.clone());
        }
    }
}

/// The `ProviderBroker` actor: it alone holds the OIDC issuers' keys and
/// knows which fetches are under way, so tokens arriving together wait for
/// one fetch. The fetch itself runs in a caller's task, never here.
pub struct ProviderBrokerActor;

impl Actor for ProviderBrokerActor {
    type Msg = Mail<BrokerMsg>;
    type State = KeyRing;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<Mail<BrokerMsg>>,
        _: (),
    ) -> Result<KeyRing, ActorProcessingErr> {
        Ok(KeyRing::default())
    }

    async fn handle(
        &self,
        _me: ActorRef<Mail<BrokerMsg>>,
        msg: Mail<BrokerMsg>,
        ring: &mut KeyRing,
    ) -> Result<(), ActorProcessingErr> {
        let start = Instant::now();
        let (kind, outcome) = match msg.open() {
            BrokerMsg::Want { issuer, kid, reply } => {
                let (wanted, outcome) = ring.want(issuer, kid.as_deref());
                let _ = reply.send(wanted);
                ("want", outcome)
            }
            BrokerMsg::Keys { issuer, keys } => {
                let outcome = if keys.is_some() { "fetched" } else { "failed" };
                ring.keys(issuer, keys);
                metrics::gauge!("castellan_oidc_issuers").set(ring.by_issuer.len() as f64);
                ("keys", outcome)
            }
            BrokerMsg::Gate {
                provider,
                now,
                reply,
            } => {
                let breaker = ring.breakers.entry(provider).or_default();
                let gate = breaker.gate(now);
                let outcome = match gate {
                    Gate::Go => "go",
                    Gate::Probe => "probe",
                    Gate::Open(_) => "open",
                };
                // A probe whose caller is gone is no probe.
                if reply.send(gate).is_err() && outcome == "probe" {
                    breaker.outcome(true, None, now);
                }
                ("gate", outcome)
            }
            BrokerMsg::Called {
                provider,
                probe,
                answered,
                now,
            } => {
                let breaker = ring.breakers.entry(provider).or_default();
                breaker.outcome(probe, answered, now);
                let open = if breaker.open() { 1.0 } else { 0.0 };
                metrics::gauge!("castellan_oauth_provider_circuit_open", "provider" => provider)
                    .set(open);
                let outcome = match answered {
                    Some(true) => "answered",
                    Some(false) => "unavailable",
                    None => "abandoned",
                };
                ("called", outcome)
            }
        };
        crate::actors::supervisor::record_message("provider_broker", kind, outcome, start);
        Ok(())
    }
}

/// Tells the actor how a fetch it handed out ended, even when the caller's
/// request is dropped mid-fetch (else its waiters would wait in vain).
pub(crate) struct Report {
    pub(crate) actor: Option<ActorRef<Mail<BrokerMsg>>>,
    pub(crate) issuer: String,
    pub(crate) keys: Option<Arc<IssuerKeys>>,
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(actor) = self.actor.take() {
            let msg = BrokerMsg::Keys {
                issuer: std::mem::take(&mut self.issuer),
                keys: self.keys.take(),
            };
            let _ = actor.cast(Mail::new("provider_broker", msg));
        }
    }
}

/// Tells the breaker how a call it let through ended, even when the
/// caller's request is dropped mid-call (else a probe would never end).
pub(crate) struct CallReport {
    pub(crate) actor: Option<ActorRef<Mail<BrokerMsg>>>,
    pub(crate) provider: &'static str,
    pub(crate) probe: bool,
    pub(crate) answered: Option<bool>,
    pub(crate) clock: Clock,
}

impl Drop for CallReport {
    fn drop(&mut self) {
        if let Some(actor) = self.actor.take() {
            let msg = BrokerMsg::Called {
                provider: self.provider,
                probe: self.probe,
                answered: self.answered,
                now: self.clock.now(),
            };
            let _ = actor.cast(Mail::new("provider_broker", msg));
        }
    }
}

/// Whether kept keys serve a token naming `kid`: fresh and knowing it,
/// or fetched too recently to ask the issuer again.
pub(crate) fn usable(c: &IssuerKeys, kid: Option<&str>) -> bool {
    let knows = kid.is_none_or(|k| c.keys.iter().any(|key| key.kid == k));
    (knows && c.fetched.elapsed() < KEYS_TTL) || c.tried.elapsed() < KEYS_FLOOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_only_its_probe_decides() {
        let t0 = Utc::now();
        let mut b = Breaker::default();
        for _ in 0..TRIPS - 1 {
            assert_eq!(b.gate(t0), Gate::Go);
            b.outcome(false, Some(false), t0);
        }
        // An answer (a refusal too) forgives the failures so far.
        b.outcome(false, Some(true), t0);
        for _ in 0..TRIPS {
            b.outcome(false, Some(false), t0);
        }
        assert_eq!(b.gate(t0), Gate::Open(COOL_OFF));
        // A call let through before it opened, ending late, changes nothing.
        b.outcome(false, Some(true), t0);
        assert!(b.open());
        let later = t0 + COOL_OFF;
        assert_eq!(b.gate(later), Gate::Probe);
        assert!(
            matches!(b.gate(later), Gate::Open(_)),
            "one probe at a time"
        );
        b.outcome(false, None, later);
        assert!(
            matches!(b.gate(later), Gate::Open(_)),
            "only the probe frees the way"
        );
        // A failed probe opens it again at once.
        b.outcome(true, Some(false), later);
        assert_eq!(b.gate(later), Gate::Open(COOL_OFF));
        let later = later + COOL_OFF;
        assert_eq!(b.gate(later), Gate::Probe);
        // An abandoned probe lets another try; a probe never heard of frees
        // the way after a cool-off.
        b.outcome(true, None, later);
        assert_eq!(b.gate(later), Gate::Probe);
        assert_eq!(b.gate(later + COOL_OFF), Gate::Probe);
        b.outcome(true, Some(true), later);
        assert_eq!(b.gate(later), Gate::Go);
        assert!(!b.open());
    }
}
