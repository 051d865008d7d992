//! The `SessionManager`: owns the live-session cache, the in-memory answer
//! to "is this access token's user and session still good?".
//!
//! Reads never touch the mailbox: handlers read the published
//! [`SessionCache`] directly, and a miss is loaded by the caller (concurrent
//! misses for one key share one load). What the actor owns is keeping the
//! cache true: it follows the changes other processes commit (PostgreSQL
//! `LISTEN`, or the SQLite change log), invalidates what they name, and when
//! that feed is lost it empties the cache and lets reads go to the store
//! until the feed is back. Changes made in this process are invalidated by
//! the store at commit, before the response.
//!
//! Invalidation is lock-free: every user hashes to one of a fixed set of
//! counters (stripes); an entry remembers the counters it was loaded under,
//! and an entry whose counter moved is stale. A load that raced a change can
//! therefore never be served after it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use castellan_core::store::{ChangeEvent, LiveUser, RefreshContext, Store};
use castellan_core::{ApiError, ApiResult};
use moka::future::Cache;
use moka::notification::RemovalCause;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::mailbox::Mail;
use crate::supervisor::record_message;

/// The actor's name in logs and metrics.
const NAME: &str = "session_manager";

const STRIPES: usize = 4096;

type Key = (Uuid, Option<Uuid>);

struct Cached {
    live: Option<Arc<LiveUser>>,
    stamp: (u64, u64),
}

/// A v2 session as its last refresh in this process left it: what the next
/// refresh decides on, and the session's key, opened. Only the normal
/// rotation is served from it, and its write is guarded by the counter, so
/// a refresh made elsewhere sends the next one here back to the store.
pub struct RefreshEntry {
    pub context: RefreshContext,
    pub key: String,
    stamp: (u64, u64),
}

/// The published cache: read by every authenticated request.
pub struct SessionCache {
    entries: Cache<Key, Arc<Cached>>,
    /// v2 sessions by id, for refreshes (sized like `entries`).
    refreshes: Cache<Uuid, Arc<RefreshEntry>>,
    stripes: Box<[AtomicU64]>,
    /// Bumped before any stripe is, so a load that saw no change of it
    /// across its read saw every change committed before it.
    generation: AtomicU64,
    /// Bumped by a flush, so loads in flight across it are stale too.
    epoch: AtomicU64,
    /// False until the change feed follows, and whenever it is lost: reads
    /// then go to the store.
    following: AtomicBool,
    enabled: bool,
}

fn stripe(user: Uuid) -> usize {
    let v = user.as_u128();
    ((v as u64) ^ ((v >> 64) as u64)) as usize % STRIPES
}

/// An entry's weight against the cache's byte budget: what it holds, and at
/// least an equal share of the budget, so that the entry count is bounded too.
fn weigh(bytes: usize, floor: u64) -> u32 {
    (bytes as u64).max(floor).min(u64::from(u32::MAX)) as u32
}

impl SessionCache {
    /// At most `capacity` entries and `bytes` (estimated) in each of the
    /// two maps: one user's many sessions with large metadata cannot grow
    /// memory past the budget, whatever their count.
    pub fn new(capacity: u64, bytes: u64) -> Arc<Self> {
        let floor = bytes / capacity.max(1);
        let entries = Cache::builder()
            .max_capacity(bytes)
            .weigher(move |_k, v: &Arc<Cached>| {
                let held = v.live.as_ref().map_or(0, |l| l.weight());
                weigh(held + std::mem::size_of::<Cached>(), floor)
            })
            .eviction_listener(|_k, _v, cause| {
                if cause == RemovalCause::Size {
                    metrics::counter!("castellan_session_cache_evictions_total").increment(1);
                }
            })
            .build();
        let refreshes = Cache::builder()
            .max_capacity(bytes)
            .weigher(move |_k, v: &Arc<RefreshEntry>| {
                weigh(v.context.weight() + v.key.len(), floor)
            })
            .build();
        Arc::new(Self {
            entries,
            refreshes,
            generation: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            following: AtomicBool::new(false),
            enabled: capacity > 0 && bytes > 0,
        })
    }

    fn stamp(&self, user: Uuid) -> (u64, u64) {
        (
            self.epoch.load(Ordering::SeqCst),
            self.stripes[stripe(user)].load(Ordering::SeqCst),
        )
    }

    /// The cached answer for (user, session), loading it with `load` on a
    /// miss or when the entry went stale.
    pub async fn get<F, Fut>(
        &self,
        user: Uuid,
        session: Option<Uuid>,
        load: F,
    ) -> ApiResult<Option<Arc<LiveUser>>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ApiResult<Option<LiveUser>>>,
    {
        if !self.enabled || !self.following.load(Ordering::SeqCst) {
            metrics::counter!("castellan_session_cache_bypass_total").increment(1);
            return load().await.map(|o| o.map(Arc::new));
        }
        let key = (user, session);
        for _ in 0..2 {
            let stamp = self.stamp(user);
            let loaded = AtomicBool::new(false);
            let got = self
                .entries
                .try_get_with(key, async {
                    loaded.store(true, Ordering::Relaxed);
                    let live = load().await?;
                    Ok::<_, ApiError>(Arc::new(Cached {
                        live: live.map(Arc::new),
                        stamp,
                    }))
                })
                .await
                .map_err(|e| (*e).clone())?;
            if got.stamp == self.stamp(user) {
                let outcome = if loaded.load(Ordering::Relaxed) {
                    "castellan_session_cache_misses_total"
                } else {
                    "castellan_session_cache_hits_total"
                };
                metrics::counter!(outcome).increment(1);
                return Ok(got.live.clone());
            }
            // Loaded before a change to this user: drop it and load again.
            self.entries.invalidate(&key).await;
        }
        // The user keeps changing under us: answer from the store.
        load().await.map(|o| o.map(Arc::new))
    }

    /// Whether refresh entries may be served (and kept).
    fn serving(&self) -> bool {
        self.enabled && self.following.load(Ordering::SeqCst)
    }

    /// The generation before a load: pass it to [`Self::keep_refresh`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The session's refresh entry, unless the user changed since it was kept.
    pub async fn refresh_entry(&self, session: Uuid) -> Option<Arc<RefreshEntry>> {
        if !self.serving() {
            return None;
        }
        let hit = self
            .refreshes
            .get(&session)
            .await
            .filter(|e| e.stamp == self.stamp(e.context.user.id));
        let outcome = match hit {
            Some(_) => "castellan_refresh_cache_hits_total",
            None => "castellan_refresh_cache_misses_total",
        };
        metrics::counter!(outcome).increment(1);
        hit
    }

    /// Keeps what a refresh left, read after `since` (a [`Self::generation`]):
    /// not kept if any user changed meanwhile, as the read may predate it.
    pub async fn keep_refresh(&self, since: u64, context: RefreshContext, key: String) {
        let stamp = self.stamp(context.user.id);
        if !self.serving() || self.generation() != since {
            return;
        }
        let id = context.session.id;
        let entry = RefreshEntry {
            context,
            key,
            stamp,
        };
        self.refreshes.insert(id, Arc::new(entry)).await;
    }

    /// The session moved on from what the entry says (a lost race, a refresh
    /// elsewhere, an end): the next refresh reads the store.
    pub async fn forget_refresh(&self, session: Uuid) {
        self.refreshes.invalidate(&session).await;
    }

    /// What a rotation served from `entry` left, under the stamp the entry
    /// was loaded with.
    pub async fn replace_refresh(&self, entry: &RefreshEntry, context: RefreshContext) {
        let next = RefreshEntry {
            context,
            key: entry.key.clone(),
            stamp: entry.stamp,
        };
        self.refreshes
            .insert(next.context.session.id, Arc::new(next))
            .await;
    }

    /// Makes every entry of these users stale, at once.
    pub fn invalidate(&self, users: &[Uuid]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for u in users {
            self.stripes[stripe(*u)].fetch_add(1, Ordering::SeqCst);
        }
        metrics::counter!("castellan_session_cache_invalidations_total")
            .increment(users.len() as u64);
    }

    /// Empties the cache.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.refreshes.invalidate_all();
        metrics::counter!("castellan_session_cache_flushes_total").increment(1);
    }

    /// Whether the cache may serve: only while changes are followed.
    pub fn set_following(&self, on: bool) {
        self.flush();
        self.following.store(on, Ordering::SeqCst);
        metrics::gauge!("castellan_session_cache_following").set(if on { 1.0 } else { 0.0 });
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size() + self.refreshes.weighted_size(),
            following: self.following.load(Ordering::SeqCst),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: u64,
    /// The estimated bytes both maps hold (at least each entry's share).
    pub bytes: u64,
    /// Whether changes from other processes are being followed (the cache serves).
    pub following: bool,
}

pub enum SessionMsg {
    /// What the change feed saw.
    Feed(ChangeEvent),
    /// Publishes the size gauge.
    Tick,
}

impl SessionMsg {
    fn kind(&self) -> &'static str {
        match self {
            SessionMsg::Feed(ChangeEvent::Following) => "feed_following",
            SessionMsg::Feed(ChangeEvent::Changed(_)) => "feed_changed",
            SessionMsg::Feed(ChangeEvent::Lost(_)) => "feed_lost",
            SessionMsg::Tick => "tick",
        }
    }
}

pub struct SessionManagerArgs {
    pub cache: Arc<SessionCache>,
    pub store: Store,
    pub poll: Duration,
}

/// The actor's state: the cache it keeps true, and the feed task (stopped
/// when the actor stops, whatever the reason).
pub struct SessionManagerState {
    cache: Arc<SessionCache>,
    feed: tokio::task::JoinHandle<()>,
}

impl Drop for SessionManagerState {
    /// However the actor stops (killed, failed, stopped; ractor runs no
    /// `post_stop` after a kill), nobody follows changes any more: the cache
    /// stands aside until a successor follows again.
    fn drop(&mut self) {
        self.feed.abort();
        self.cache.set_following(false);
    }
}

pub struct SessionManager;

impl Actor for SessionManager {
    type Msg = Mail<SessionMsg>;
    type State = SessionManagerState;
    type Arguments = SessionManagerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Mail<SessionMsg>>,
        args: SessionManagerArgs,
    ) -> Result<SessionManagerState, ActorProcessingErr> {
        // Whatever an earlier incarnation cached may have missed changes.
        args.cache.set_following(false);
        let (tx, mut rx) = mpsc::channel(256);
        let store = args.store.clone();
        let poll = args.poll;
        let me2 = me.clone();
        let feed = tokio::spawn(async move {
            let follow = store.follow_changes(poll, tx);
            let forward = async move {
                while let Some(ev) = rx.recv().await {
                    if me2.cast(Mail::new(NAME, SessionMsg::Feed(ev))).is_err() {
                        return;
                    }
                }
            };
            tokio::join!(follow, forward);
        });
        me.send_interval(Duration::from_secs(5), || Mail::new(NAME, SessionMsg::Tick));
        Ok(SessionManagerState {
            cache: args.cache,
            feed,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<Mail<SessionMsg>>,
        msg: Mail<SessionMsg>,
        st: &mut SessionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let start = Instant::now();
        let msg = msg.open();
        let kind = msg.kind();
        match msg {
            SessionMsg::Feed(ChangeEvent::Following) => {
                tracing::info!("session cache: following changes from other processes");
                st.cache.set_following(true);
            }
            SessionMsg::Feed(ChangeEvent::Changed(users)) => st.cache.invalidate(&users),
            SessionMsg::Feed(ChangeEvent::Lost(why)) => {
                tracing::warn!(%why, "session cache: change feed lost; serving from the database until it is back");
                metrics::counter!("castellan_session_cache_feed_lost_total").increment(1);
                st.cache.set_following(false);
            }
            SessionMsg::Tick => {
                let stats = st.cache.stats();
                metrics::gauge!("castellan_session_cache_entries").set(stats.entries as f64);
                metrics::gauge!("castellan_session_cache_bytes").set(stats.bytes as f64);
            }
        }
        record_message(NAME, kind, "ok", start);
        Ok(())
    }
}
