//! Mailbox metrics. ractor does not tell a mailbox's length, so every
//! message travels in a `Mail` envelope: posting it adds one to its actor's
//! depth gauge and stamps the time; opening it records the wait; dropping
//! it (opened, or lost with a stopped actor) takes the one away again.

use std::time::Instant;

use castellan_core::handles::Handles;
use metrics::{Gauge, Histogram};

static MAILBOXES: Handles<&'static str, (Gauge, Histogram)> = Handles::new();

pub struct Mail<M> {
    msg: Option<M>,
    depth: Gauge,
    wait: Histogram,
    posted: Instant,
}

impl<M> Mail<M> {
    pub fn new(actor: &'static str, msg: M) -> Self {
        let (depth, wait) = MAILBOXES.get(&actor, || {
            let depth = metrics::gauge!("castellan_actor_mailbox_depth", "actor" => actor);
            let wait =
                metrics::histogram!("castellan_actor_mailbox_wait_seconds", "actor" => actor);
            (actor, (depth, wait))
        });
        depth.increment(1.0);
        Self {
            msg: Some(msg),
            depth,
            wait,
            posted: Instant::now(),
        }
    }

    /// The message, once its actor takes it; records how long it waited.
    pub fn open(mut self) -> M {
        self.wait.record(self.posted.elapsed().as_secs_f64());
        self.msg.take().expect("a letter is opened once")
    }
}

impl<M> Drop for Mail<M> {
    fn drop(&mut self) {
        self.depth.decrement(1.0);
    }
}

/// Asks `actor` (named `name` in metrics) and waits for its answer; `None`
/// when it stopped before answering (callers then do without it).
pub async fn ask<M, T>(
    actor: &ractor::ActorRef<Mail<M>>,
    name: &'static str,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Option<T>
where
    M: Send + 'static,
    T: Send + 'static,
{
    match actor.call(|reply| Mail::new(name, msg(reply)), None).await {
        Ok(ractor::rpc::CallResult::Success(t)) => Some(t),
        _ => None,
    }
}
