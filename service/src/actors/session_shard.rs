//! One shard of the live-session cache: an actor that alone holds the
//! entries of the users (and the refresh entries of the sessions) whose key
//! hashes to it. Callers reach it only by message, through
//! [`crate::actors::session_manager::SessionCache`]; the `SessionManager` spawns the
//! shards, tells them what the change feed sees, and stops with them.
//!
//! Nothing here waits on I/O: a miss is answered `Load`, the caller reads
//! the store in its own task and tells the shard what it read (`Fill`);
//! callers missing the same key meanwhile wait for that one read.
//!
//! Staleness: every user hashes to one of a fixed set of counters (stripes),
//! moved by every invalidation naming one of its users; an entry remembers
//! the counters it was loaded under, and a fill loaded under counters that
//! moved since is dropped. So a read that raced a change is never served
//! after it. Every invalidation reaches every shard (a refresh entry lives in
//! its session's shard, not its user's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use castellan_core::handles::count;
use castellan_core::store::{LiveUser, RefreshContext};
use hashlink::LruCache;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::actors::mailbox::Mail;
use crate::actors::supervisor::record_message;

/// The actor's name in logs and metrics (every shard counts as the manager).
pub(crate) const NAME: &str = "session_manager";

const STRIPES: usize = 1024;

/// Where each shard's epoch and generation start: apart from every other
/// shard's in this process, so a stamp or generation one shard handed out
/// never matches a successor's (a caller may hold one across a restart).
static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn fresh_start() -> u64 {
    STARTS.fetch_add(1 << 40, std::sync::atomic::Ordering::Relaxed)
}

pub(crate) type Key = (Uuid, Option<Uuid>);

/// What a user's entry was loaded under: the shard's flush epoch and the
/// user's stripe counter.
type Stamp = (u64, u64);

/// A v2 session as its last refresh in this process left it: what the next
/// refresh decides on, and the session's key, opened. Only the normal
/// rotation is served from it, and its write is guarded by the counter, so
/// a refresh made elsewhere sends the next one here back to the store.
pub struct RefreshEntry {
    pub context: RefreshContext,
    pub key: String,
    stamp: Stamp,
}

/// What a waiter is handed: the read's answer, or `None` (read it yourself).
type Handed = Option<Option<Arc<LiveUser>>>;

/// The answer to a lookup.
pub enum Looked {
    /// The cached answer (`None`: no such live user and session).
    Hit(Option<Arc<LiveUser>>),
    /// Not cached: the caller reads the store and sends `Fill` with this stamp.
    Load(Stamp),
    /// Another caller is reading it: its answer comes here (`None`: read it yourself).
    Wait(oneshot::Receiver<Handed>),
    /// The cache does not serve now (changes are not followed): read the store.
    Bypass,
}

/// The answer to a refresh lookup: the entry, or the generation to pass to
/// `KeepRefresh` after reading the store.
pub struct RefreshLooked {
    pub entry: Option<Arc<RefreshEntry>>,
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Live-session entries (refresh entries are counted in `bytes` only).
    pub entries: u64,
    pub bytes: u64,
    pub following: bool,
}

pub enum ShardMsg {
    Lookup {
        key: Key,
        reply: RpcReplyPort<Looked>,
    },
    /// What the caller answered `Load` read (`None`: the read failed or
    /// was dropped; the waiters read for themselves).
    Fill {
        key: Key,
        stamp: Stamp,
        live: Handed,
    },
    RefreshLookup {
        session: Uuid,
        reply: RpcReplyPort<RefreshLooked>,
    },
    /// What a refresh read from the store, read after `since`.
    KeepRefresh {
        since: u64,
        context: RefreshContext,
        key: String,
    },
    /// What a rotation served from `entry` left.
    ReplaceRefresh {
        entry: Arc<RefreshEntry>,
        context: RefreshContext,
    },
    ForgetRefresh(Uuid),
    /// These users changed: everything of theirs is stale.
    Invalidate(Arc<[Uuid]>),
    /// Whether changes are followed (either way the shard empties).
    Following(bool),
    Stats(RpcReplyPort<ShardStats>),
    /// Publishes the size gauges.
    Tick,
}

impl ShardMsg {
    fn kind(&self) -> &'static str {
        match self {
            ShardMsg::Lookup { .. } => "lookup",
            ShardMsg::Fill { .. } => "fill",
            ShardMsg::RefreshLookup { .. } => "refresh_lookup",
            ShardMsg::KeepRefresh { .. } => "keep_refresh",
            ShardMsg::ReplaceRefresh { .. } => "replace_refresh",
            ShardMsg::ForgetRefresh(_) => "forget_refresh",
            ShardMsg::Invalidate(_) => "invalidate",
            ShardMsg::Following(_) => "following",
            ShardMsg::Stats(_) => "stats",
            ShardMsg::Tick => "tick",
        }
    }
}

/// Which of `n` shards a key belongs to.
pub(crate) fn shard_of(id: Uuid, n: usize) -> usize {
    let v = id.as_u128();
    (((v as u64) ^ ((v >> 64) as u64)) as usize) % n.max(1)
}

fn stripe(user: Uuid) -> usize {
    // Mixed differently from `shard_of`, so one shard's users use every stripe.
    let v = id_bits(user);
    (v.rotate_left(17) as usize) % STRIPES
}

fn id_bits(id: Uuid) -> u64 {
    let v = id.as_u128();
    (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((v >> 64) as u64)
}

struct Live {
    live: Option<Arc<LiveUser>>,
    stamp: Stamp,
}

/// A map bounded by estimated bytes, least recently used out first. Each
/// entry weighs at least `floor`, so the entry count is bounded too.
struct Bounded<K: std::hash::Hash + Eq, V> {
    map: LruCache<K, (V, u64)>,
    bytes: u64,
    budget: u64,
    floor: u64,
}

impl<K: std::hash::Hash + Eq, V> Bounded<K, V> {
    fn new(budget: u64, floor: u64) -> Self {
        Self {
            map: LruCache::new_unbounded(),
            bytes: 0,
            budget,
            floor,
        }
    }

    fn get(&mut self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    fn insert(&mut self, k: K, v: V, bytes: usize) {
        let w = (bytes as u64).max(self.floor);
        if let Some((_, old)) = self.map.insert(k, (v, w)) {
            self.bytes -= old;
        }
        self.bytes += w;
        while self.bytes > self.budget {
            let Some((_, (_, w))) = self.map.remove_lru() else {
                break;
            };
            self.bytes -= w;
            metrics::counter!("castellan_session_cache_evictions_total").increment(1);
        }
    }

    fn remove(&mut self, k: &K) {
        if let Some((_, w)) = self.map.remove(k) {
            self.bytes -= w;
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// A shard's state: nobody else holds any of it.
pub struct Shard {
    index: usize,
    live: Bounded<Key, Live>,
    refreshes: Bounded<Uuid, Arc<RefreshEntry>>,
    /// Reads under way, by key: the stamp handed out and the callers
    /// waiting on it.
    loading: HashMap<Key, (Stamp, Vec<oneshot::Sender<Handed>>)>,
    stripes: Box<[u64]>,
    /// Moved by every invalidation and flush: a refresh entry read before a
    /// move may predate a change to its (then unknown) user.
    generation: u64,
    /// Moved by every flush, so reads in flight across it are stale too.
    epoch: u64,
    following: bool,
    enabled: bool,
}

pub struct ShardArgs {
    pub index: usize,
    /// This shard's share of the entry count and of the byte budget.
    pub capacity: u64,
    pub bytes: u64,
}

impl Shard {
    pub fn new(a: &ShardArgs) -> Self {
        let floor = a.bytes / a.capacity.max(1);
        let start = fresh_start();
        Self {
            index: a.index,
            live: Bounded::new(a.bytes, floor),
            refreshes: Bounded::new(a.bytes, floor),
            loading: HashMap::new(),
            stripes: vec![0; STRIPES].into_boxed_slice(),
            generation: start,
            epoch: start,
            following: false,
            enabled: a.capacity > 0 && a.bytes > 0,
        }
    }

    fn serving(&self) -> bool {
        self.enabled && self.following
    }

    fn stamp(&self, user: Uuid) -> Stamp {
        (self.epoch, self.stripes[stripe(user)])
    }

    fn lookup(&mut self, key: Key) -> (Looked, &'static str) {
        if !self.serving() {
            return (Looked::Bypass, "bypass");
        }
        let stamp = self.stamp(key.0);
        if let Some(e) = self.live.get(&key).filter(|e| e.stamp == stamp) {
            return (Looked::Hit(e.live.clone()), "hit");
        }
        if let Some((_, waiting)) = self.loading.get_mut(&key) {
            let (tx, rx) = oneshot::channel();
            waiting.push(tx);
            return (Looked::Wait(rx), "wait");
        }
        self.loading.insert(key, (stamp, Vec::new()));
        (Looked::Load(stamp), "miss")
    }

    fn fill(&mut self, key: Key, stamp: Stamp, live: Handed) -> &'static str {
        // Only the read this stamp was handed to ends its waiters' wait.
        let waiting = match self.loading.get(&key) {
            Some((handed, _)) if *handed == stamp => self.loading.remove(&key).map(|(_, w)| w),
            _ => None,
        }
        .unwrap_or_default();
        // Read before a change to this user (or a flush): neither kept nor
        // handed to waiters, who may have come after the change.
        let fresh = self.serving() && stamp == self.stamp(key.0);
        let answer = live.filter(|_| fresh);
        for w in waiting {
            let _ = w.send(answer.clone());
        }
        let Some(live) = answer else {
            return "stale";
        };
        let weight = live.as_ref().map_or(0, |l| l.weight()) + std::mem::size_of::<Live>();
        let entry = Live { live, stamp };
        self.live.insert(key, entry, weight);
        "kept"
    }

    fn refresh_lookup(&mut self, session: Uuid) -> (RefreshLooked, &'static str) {
        let generation = self.generation;
        if !self.serving() {
            return (
                RefreshLooked {
                    entry: None,
                    generation,
                },
                "bypass",
            );
        }
        let (epoch, stripes) = (self.epoch, &self.stripes);
        let hit = self
            .refreshes
            .get(&session)
            .filter(|e| e.stamp == (epoch, stripes[stripe(e.context.user.id)]))
            .cloned();
        let outcome = if hit.is_some() { "hit" } else { "miss" };
        (
            RefreshLooked {
                entry: hit,
                generation,
            },
            outcome,
        )
    }

    fn keep_refresh(&mut self, since: u64, context: RefreshContext, key: String) -> &'static str {
        if !self.serving() || self.generation != since {
            return "stale";
        }
        let stamp = self.stamp(context.user.id);
        let weight = context.weight() + key.len();
        let id = context.session.id;
        let entry = RefreshEntry {
            context,
            key,
            stamp,
        };
        self.refreshes.insert(id, Arc::new(entry), weight);
        "kept"
    }

    fn replace_refresh(&mut self, entry: &RefreshEntry, context: RefreshContext) -> &'static str {
        if !self.serving() || entry.stamp != self.stamp(context.user.id) {
            self.refreshes.remove(&context.session.id);
            return "stale";
        }
        let weight = context.weight() + entry.key.len();
        let next = RefreshEntry {
            key: entry.key.clone(),
            stamp: entry.stamp,
            context,
        };
        self.refreshes
            .insert(next.context.session.id, Arc::new(next), weight);
        "kept"
    }

    fn invalidate(&mut self, users: &[Uuid]) {
        self.generation += 1;
        for u in users {
            let s = &mut self.stripes[stripe(*u)];
            *s = s.wrapping_add(1);
        }
    }

    fn set_following(&mut self, on: bool) {
        self.generation += 1;
        self.epoch += 1;
        self.live.clear();
        self.refreshes.clear();
        // Reads under way predate the flush: their waiters read for themselves.
        for (_, (_, waiting)) in self.loading.drain() {
            for w in waiting {
                let _ = w.send(None);
            }
        }
        self.following = on;
    }

    fn stats(&self) -> ShardStats {
        ShardStats {
            entries: self.live.map.len() as u64,
            bytes: self.live.bytes + self.refreshes.bytes,
            following: self.following,
        }
    }

    fn handle(&mut self, msg: ShardMsg) -> &'static str {
        match msg {
            ShardMsg::Lookup { key, reply } => {
                let (looked, outcome) = self.lookup(key);
                let handed = match &looked {
                    Looked::Load(stamp) => Some(*stamp),
                    _ => None,
                };
                // A caller gone before the answer holds no read: free the key.
                if reply.send(looked).is_err()
                    && let Some(stamp) = handed
                {
                    self.fill(key, stamp, None);
                }
                let counter = match outcome {
                    "miss" => "castellan_session_cache_misses_total",
                    "bypass" => "castellan_session_cache_bypass_total",
                    _ => "castellan_session_cache_hits_total",
                };
                count(counter);
                outcome
            }
            ShardMsg::Fill { key, stamp, live } => self.fill(key, stamp, live),
            ShardMsg::RefreshLookup { session, reply } => {
                let (looked, outcome) = self.refresh_lookup(session);
                let _ = reply.send(looked);
                match outcome {
                    "hit" => count("castellan_refresh_cache_hits_total"),
                    "miss" => count("castellan_refresh_cache_misses_total"),
                    _ => {}
                }
                outcome
            }
            ShardMsg::KeepRefresh {
                since,
                context,
                key,
            } => self.keep_refresh(since, context, key),
            ShardMsg::ReplaceRefresh { entry, context } => self.replace_refresh(&entry, context),
            ShardMsg::ForgetRefresh(session) => {
                self.refreshes.remove(&session);
                "ok"
            }
            ShardMsg::Invalidate(users) => {
                self.invalidate(&users);
                "ok"
            }
            ShardMsg::Following(on) => {
                self.set_following(on);
                "ok"
            }
            ShardMsg::Stats(reply) => {
                let _ = reply.send(self.stats());
                "ok"
            }
            ShardMsg::Tick => {
                let s = self.stats();
                let shard = self.index.to_string();
                metrics::gauge!("castellan_session_cache_entries", "shard" => shard.clone())
                    .set(s.entries as f64);
                metrics::gauge!("castellan_session_cache_bytes", "shard" => shard)
                    .set(s.bytes as f64);
                "ok"
            }
        }
    }
}

/// The shard actor.
pub struct SessionShard;

impl Actor for SessionShard {
    type Msg = Mail<ShardMsg>;
    type State = Shard;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Mail<ShardMsg>>,
        args: ShardArgs,
    ) -> Result<Shard, ActorProcessingErr> {
        me.send_interval(Duration::from_secs(5), || Mail::new(NAME, ShardMsg::Tick));
        Ok(Shard::new(&args))
    }

    async fn handle(
        &self,
        _me: ActorRef<Mail<ShardMsg>>,
        msg: Mail<ShardMsg>,
        shard: &mut Shard,
    ) -> Result<(), ActorProcessingErr> {
        let start = Instant::now();
        let msg = msg.open();
        let kind = msg.kind();
        let outcome = shard.handle(msg);
        record_message(NAME, kind, outcome, start);
        Ok(())
    }
}

/// Tells the shard what a read it handed out found, even when the caller's
/// request is dropped mid-read (else its waiters would wait in vain).
pub(crate) struct FillGuard {
    pub shard: Option<ActorRef<Mail<ShardMsg>>>,
    pub key: Key,
    pub stamp: Stamp,
    pub live: Handed,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Some(shard) = self.shard.take() {
            let msg = ShardMsg::Fill {
                key: self.key,
                stamp: self.stamp,
                live: self.live.take(),
            };
            let _ = shard.cast(Mail::new(NAME, msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(capacity: u64, bytes: u64) -> Shard {
        let mut s = Shard::new(&ShardArgs {
            index: 0,
            capacity,
            bytes,
        });
        s.set_following(true);
        s
    }

    fn stamp_of(l: Looked) -> Stamp {
        match l {
            Looked::Load(s) => s,
            _ => panic!("expected a miss"),
        }
    }

    #[test]
    fn a_miss_is_loaded_once_and_then_served() {
        let mut s = shard(100, 1 << 20);
        let key = (Uuid::new_v4(), None);
        let stamp = stamp_of(s.lookup(key).0);
        let mut waiter = match s.lookup(key).0 {
            Looked::Wait(rx) => rx,
            _ => panic!("a second miss waits for the first read"),
        };
        assert_eq!(s.fill(key, stamp, Some(None)), "kept");
        assert!(matches!(waiter.try_recv(), Ok(Some(None))));
        assert!(matches!(s.lookup(key).0, Looked::Hit(None)));
    }

    #[test]
    fn a_read_that_raced_a_change_is_neither_kept_nor_handed_on() {
        let mut s = shard(100, 1 << 20);
        let key = (Uuid::new_v4(), None);
        let stamp = stamp_of(s.lookup(key).0);
        let mut waiter = match s.lookup(key).0 {
            Looked::Wait(rx) => rx,
            _ => panic!("waits"),
        };
        s.invalidate(&[key.0]);
        assert_eq!(s.fill(key, stamp, Some(None)), "stale");
        assert!(matches!(waiter.try_recv(), Ok(None)));
        assert!(matches!(s.lookup(key).0, Looked::Load(_)));
    }

    #[test]
    fn a_change_makes_a_kept_entry_stale_and_a_failed_read_frees_the_key() {
        let mut s = shard(100, 1 << 20);
        let key = (Uuid::new_v4(), Some(Uuid::new_v4()));
        let stamp = stamp_of(s.lookup(key).0);
        s.fill(key, stamp, Some(None));
        s.invalidate(&[key.0]);
        let stamp = stamp_of(s.lookup(key).0);
        // The read failed: nothing kept, the next caller reads again.
        assert_eq!(s.fill(key, stamp, None), "stale");
        assert!(matches!(s.lookup(key).0, Looked::Load(_)));
    }

    #[test]
    fn a_flush_releases_the_waiters_and_an_old_fill_ends_no_newer_wait() {
        let mut s = shard(100, 1 << 20);
        let key = (Uuid::new_v4(), None);
        let old = stamp_of(s.lookup(key).0);
        let mut waiter = match s.lookup(key).0 {
            Looked::Wait(rx) => rx,
            _ => panic!("waits"),
        };
        s.set_following(true);
        assert!(matches!(waiter.try_recv(), Ok(None)), "told to read itself");
        let new = stamp_of(s.lookup(key).0);
        let mut second = match s.lookup(key).0 {
            Looked::Wait(rx) => rx,
            _ => panic!("waits"),
        };
        assert_eq!(s.fill(key, old, Some(None)), "stale");
        assert!(
            second.try_recv().is_err(),
            "still waiting on the newer read"
        );
        assert_eq!(s.fill(key, new, Some(None)), "kept");
        assert!(matches!(second.try_recv(), Ok(Some(None))));
    }

    #[test]
    fn successors_never_reuse_a_stamp_or_generation() {
        let mut a = shard(100, 1 << 20);
        let b = shard(100, 1 << 20);
        let user = Uuid::new_v4();
        assert_ne!(a.stamp(user), b.stamp(user));
        a.invalidate(&[user]);
        assert_ne!(a.generation, b.generation);
    }

    #[test]
    fn not_following_bypasses_and_a_flush_voids_reads_in_flight() {
        let mut s = shard(100, 1 << 20);
        let key = (Uuid::new_v4(), None);
        let stamp = stamp_of(s.lookup(key).0);
        s.set_following(false);
        assert!(matches!(s.lookup(key).0, Looked::Bypass));
        s.set_following(true);
        assert_eq!(s.fill(key, stamp, Some(None)), "stale");
    }

    #[test]
    fn the_byte_budget_evicts_the_least_recently_used() {
        // 10 entries' worth of floor.
        let mut s = shard(10, 10_000);
        let keys: Vec<Key> = (0..20).map(|_| (Uuid::new_v4(), None)).collect();
        for k in &keys {
            let stamp = stamp_of(s.lookup(*k).0);
            s.fill(*k, stamp, Some(None));
        }
        let stats = s.stats();
        assert!(stats.bytes <= 10_000, "{stats:?}");
        assert_eq!(stats.entries, 10);
        assert!(matches!(s.lookup(keys[19]).0, Looked::Hit(_)));
        assert!(matches!(s.lookup(keys[0]).0, Looked::Load(_)));
    }

    #[test]
    fn shards_and_stripes_spread_keys() {
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[shard_of(Uuid::new_v4(), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }
}
