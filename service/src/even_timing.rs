//! Answers that must not tell, by their timing, which way they went: a
//! `/recover` for a registered address queues an email, one for an unknown
//! address does nothing, and without care the second answers measurably
//! sooner. Every answer waits until the slower branch's usual duration has
//! passed, learned from the answers themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether the address in question belongs to someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Known,
    Unknown,
}

/// The moving average of each branch's duration; every answer is held to
/// a margin above the larger one.
#[derive(Debug, Default)]
pub struct EvenTiming {
    known_ns: AtomicU64,
    unknown_ns: AtomicU64,
}

/// The most any answer is held: a database that has become slow is not
/// made slower still.
const MAX_HOLD: Duration = Duration::from_secs(2);

impl EvenTiming {
    /// Records how long a `branch` answer took since `start`, then waits
    /// until the answer time of the slower branch (plus a margin) is over.
    pub async fn settle(&self, start: Instant, branch: Branch) {
        let took = start.elapsed();
        let slot = match branch {
            Branch::Known => &self.known_ns,
            Branch::Unknown => &self.unknown_ns,
        };
        let sample = took.min(MAX_HOLD).as_nanos() as u64;
        // An exponential average over about the last eight answers; the
        // race of two updates loses one sample, which does not matter here.
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        slot.store(new, Ordering::Relaxed);
        let slower = self
            .known_ns
            .load(Ordering::Relaxed)
            .max(self.unknown_ns.load(Ordering::Relaxed));
        let target = Duration::from_nanos(slower + slower / 2).min(MAX_HOLD);
        if took < target {
            tokio::time::sleep_until((start + target).into()).await;
        }
    }
}
