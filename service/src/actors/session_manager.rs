//! The `SessionManager`: the live-session cache, the in-memory answer to
//! "is this access token's user and session still good?", kept true across
//! processes.
//!
//! The cache is held by shards ([`crate::actors::session_shard`]), actors the
//! manager spawns linked to itself: a user's entries live in the shard its
//! id hashes to, a session's refresh entry in the shard of the session id.
//! Callers reach them only by message, through [`SessionCache`]. The manager
//! follows the changes other processes commit (PostgreSQL `LISTEN`, or the
//! SQLite change log) and tells every shard; when that feed is lost the
//! shards empty and answer "read the store" until it is back. Changes made in
//! this process reach the shards when the store commits them, before the
//! response.
//!
//! A shard that fails takes the manager (and its siblings) with it, and the
//! supervisor starts them all again: the successors start empty and serve
//! only once the feed follows again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use castellan_core::ApiResult;
use castellan_core::store::{ChangeEvent, LiveUser, RefreshContext, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::actors::mailbox::Mail;
use crate::actors::session_shard::{
    FillGuard, Looked, NAME, SessionShard, ShardArgs, ShardMsg, ShardStats, shard_of,
};
pub use crate::actors::session_shard::{RefreshEntry, RefreshLooked};
use crate::actors::supervisor::record_message;

type ShardRef = ActorRef<Mail<ShardMsg>>;

/// How long a caller waits on another's read of the same key before
/// reading for itself.
const WAIT: Duration = Duration::from_secs(2);

/// How callers reach the shards: cheap to clone. Holds no entry: only
/// where the current shards are (none while the manager restarts, and then
/// every read goes to the store).
#[derive(Clone)]
pub struct SessionCache {
    shards: Arc<ArcSwapOption<Vec<ShardRef>>>,
}

/// What the shards hold, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Live-session entries.
    pub entries: u64,
    /// The estimated bytes the shards hold (at least each entry's share).
    pub bytes: u64,
    /// Whether changes from other processes are being followed (the cache serves).
    pub following: bool,
}

async fn ask<T: Send + 'static>(
    shard: &ShardRef,
    msg: impl FnOnce(RpcReplyPort<T>) -> ShardMsg,
) -> Option<T> {
    crate::actors::mailbox::ask(shard, NAME, msg).await
}

impl SessionCache {
    pub fn new() -> Self {
        Self {
            shards: Arc::new(ArcSwapOption::empty()),
        }
    }

    fn shard(&self, id: Uuid) -> Option<ShardRef> {
        let shards = self.shards.load();
        let shards = shards.as_ref()?;
        shards.get(shard_of(id, shards.len())).cloned()
    }

    fn tell(&self, id: Uuid, msg: ShardMsg) {
        if let Some(shard) = self.shard(id) {
            let _ = shard.cast(Mail::new(NAME, msg));
        }
    }

    /// The answer for (user, session): the shard's, or read with `load`
    /// (then given to the shard) on a miss; straight from `load` while the
    /// cache does not serve.
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
        let key = (user, session);
        let shard = self.shard(user);
        let looked = match &shard {
            Some(s) => ask(s, |reply| ShardMsg::Lookup { key, reply }).await,
            None => None,
        };
        let read = || async { load().await.map(|o| o.map(Arc::new)) };
        match looked {
            Some(Looked::Hit(live)) => Ok(live),
            // Not for longer than a read of its own could take.
            Some(Looked::Wait(rx)) => match tokio::time::timeout(WAIT, rx).await {
                Ok(Ok(Some(live))) => Ok(live),
                _ => read().await,
            },
            Some(Looked::Load(stamp)) => {
                let mut guard = FillGuard {
                    shard,
                    key,
                    stamp,
                    live: None,
                };
                let live = read().await?;
                guard.live = Some(live.clone());
                Ok(live)
            }
            Some(Looked::Bypass) | None => read().await,
        }
    }

    /// The session's refresh entry, unless its user changed since it was
    /// kept; else the generation to pass to [`Self::keep_refresh`].
    pub async fn refresh_entry(&self, session: Uuid) -> RefreshLooked {
        let asked = match self.shard(session) {
            Some(s) => ask(&s, |reply| ShardMsg::RefreshLookup { session, reply }).await,
            None => None,
        };
        asked.unwrap_or(RefreshLooked {
            entry: None,
            generation: u64::MAX,
        })
    }

    /// Keeps what a refresh left, read after `since`: not kept if any user
    /// changed meanwhile, as the read may predate it.
    pub fn keep_refresh(&self, since: u64, context: RefreshContext, key: String) {
        let session = context.session.id;
        let msg = ShardMsg::KeepRefresh {
            since,
            context,
            key,
        };
        self.tell(session, msg);
    }

    /// The session moved on from what the entry says (a lost race, a refresh
    /// elsewhere, an end): the next refresh reads the store.
    pub fn forget_refresh(&self, session: Uuid) {
        self.tell(session, ShardMsg::ForgetRefresh(session));
    }

    /// What a rotation served from `entry` left.
    pub fn replace_refresh(&self, entry: Arc<RefreshEntry>, context: RefreshContext) {
        let session = context.session.id;
        self.tell(session, ShardMsg::ReplaceRefresh { entry, context });
    }

    /// Makes everything of these users stale, in every shard (refresh
    /// entries live in their session's shard).
    pub fn invalidate(&self, users: &[Uuid]) {
        let shards = self.shards.load();
        let Some(shards) = shards.as_ref() else {
            return;
        };
        let users: Arc<[Uuid]> = users.into();
        for s in shards.iter() {
            let _ = s.cast(Mail::new(NAME, ShardMsg::Invalidate(users.clone())));
        }
        metrics::counter!("castellan_session_cache_invalidations_total")
            .increment(users.len() as u64);
    }

    /// The shards' sizes, summed; following only if every shard follows.
    pub async fn stats(&self) -> CacheStats {
        let shards = self.shards.load_full();
        let mut total = CacheStats {
            entries: 0,
            bytes: 0,
            following: shards.is_some(),
        };
        for s in shards.iter().flat_map(|v| v.iter()) {
            let one = ask(s, ShardMsg::Stats)
                .await
                .unwrap_or(ShardStats::default());
            total.entries += one.entries;
            total.bytes += one.bytes;
            total.following &= one.following;
        }
        total
    }
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::new()
    }
}

pub enum SessionMsg {
    /// What the change feed saw.
    Feed(ChangeEvent),
}

impl SessionMsg {
    fn kind(&self) -> &'static str {
        match self {
            SessionMsg::Feed(ChangeEvent::Following) => "feed_following",
            SessionMsg::Feed(ChangeEvent::Changed(_)) => "feed_changed",
            SessionMsg::Feed(ChangeEvent::Lost(_)) => "feed_lost",
        }
    }
}

pub struct SessionManagerArgs {
    pub cache: SessionCache,
    pub store: Store,
    pub poll: Duration,
    pub shards: usize,
    /// Entries and bytes across all shards.
    pub capacity: u64,
    pub bytes: u64,
}

/// The manager's state: its shards and the feed task. Dropped however the
/// actor stops (ractor runs no `post_stop` after a kill): the feed stops
/// and callers stop asking these shards.
pub struct SessionManagerState {
    cache: SessionCache,
    shards: Arc<Vec<ShardRef>>,
    feed: tokio::task::JoinHandle<()>,
}

impl SessionManagerState {
    fn tell_all(&self, msg: impl Fn() -> ShardMsg) {
        for s in self.shards.iter() {
            let _ = s.cast(Mail::new(NAME, msg()));
        }
    }

    fn set_following(&self, on: bool) {
        self.tell_all(|| ShardMsg::Following(on));
        metrics::counter!("castellan_session_cache_flushes_total").increment(1);
        metrics::gauge!("castellan_session_cache_following").set(if on { 1.0 } else { 0.0 });
    }
}

impl Drop for SessionManagerState {
    fn drop(&mut self) {
        self.feed.abort();
        // Unless a successor already put its own there.
        let ours = Some(self.shards.clone());
        self.cache.shards.compare_and_swap(&ours, None);
        self.set_following(false);
    }
}

/// Tells the manager the feed is lost when the task following it ends.
struct FeedEnded(ActorRef<Mail<SessionMsg>>);

impl Drop for FeedEnded {
    fn drop(&mut self) {
        let lost = ChangeEvent::Lost("the change feed stopped".into());
        let _ = self.0.cast(Mail::new(NAME, SessionMsg::Feed(lost)));
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
        let n = args.shards.max(1);
        let mut shards = Vec::with_capacity(n);
        for index in 0..n {
            let share = ShardArgs {
                index,
                capacity: args.capacity.div_ceil(n as u64),
                bytes: args.bytes / n as u64,
            };
            let (s, _) = Actor::spawn_linked(None, SessionShard, share, me.get_cell()).await?;
            shards.push(s);
        }
        // Shards start empty and not following: reads go to the store
        // until the feed follows.
        let shards = Arc::new(shards);
        args.cache.shards.store(Some(shards.clone()));
        let (tx, mut rx) = mpsc::channel(256);
        let (store, poll, me2) = (args.store.clone(), args.poll, me.clone());
        let feed = tokio::spawn(async move {
            // However the feed ends (a panic too), the shards stop serving.
            let _ended = FeedEnded(me2.clone());
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
        Ok(SessionManagerState {
            cache: args.cache,
            shards,
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
                st.set_following(true);
            }
            SessionMsg::Feed(ChangeEvent::Changed(users)) => st.cache.invalidate(&users),
            SessionMsg::Feed(ChangeEvent::Lost(why)) => {
                tracing::warn!(%why, "session cache: change feed lost; serving from the database until it is back");
                metrics::counter!("castellan_session_cache_feed_lost_total").increment(1);
                st.set_following(false);
            }
        }
        record_message(NAME, kind, "ok", start);
        Ok(())
    }

    /// A shard that stops takes the manager with it (one for all): the
    /// supervisor starts a fresh manager with fresh, empty shards.
    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<Mail<SessionMsg>>,
        evt: SupervisionEvent,
        _st: &mut SessionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let why = match evt {
            SupervisionEvent::ActorFailed(_, e) => e.to_string(),
            SupervisionEvent::ActorTerminated(_, _, why) => why.unwrap_or_else(|| "stopped".into()),
            _ => return Ok(()),
        };
        me.stop(Some(format!("a session cache shard stopped: {why}")));
        Ok(())
    }
}
