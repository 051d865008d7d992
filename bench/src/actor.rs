//! The cost of one actor round trip (a `call` with a reply, as a handler
//! asks the `RateLimiter` or the `OtpIssuer`), measured on a ractor actor
//! that answers at once: one caller, then as many callers as cores.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

struct Echo;

impl Actor for Echo {
    type Msg = RpcReplyPort<u64>;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        reply: Self::Msg,
        n: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *n += 1;
        let _ = reply.send(*n);
        Ok(())
    }
}

async fn calls(actor: ActorRef<RpcReplyPort<u64>>, until: Instant) -> u64 {
    let mut n = 0;
    while Instant::now() < until {
        let _ = actor.call(|reply| reply, None).await;
        n += 1;
    }
    n
}

/// Nanoseconds per round trip with one caller, and with `callers` at once.
pub async fn round_trip(callers: usize, for_each: Duration) -> anyhow::Result<(f64, f64)> {
    let (actor, handle) = Actor::spawn(None, Echo, ()).await?;
    let started = Instant::now();
    let one = calls(actor.clone(), started + for_each).await;
    let single = started.elapsed().as_nanos() as f64 / one as f64;
    let started = Instant::now();
    let until = started + for_each;
    let tasks: Vec<_> = (0..callers)
        .map(|_| tokio::spawn(calls(actor.clone(), until)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let many = started.elapsed().as_nanos() as f64 / total as f64;
    actor.stop(None);
    let _ = handle.await;
    Ok((single, many))
}
