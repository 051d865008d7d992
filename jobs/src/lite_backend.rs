//! The queues' backend on SQLite: apalis-sqlite's own statements, each run
//! in a transaction of castellan's store, so in the writer's turn.
//!
//! apalis-sqlite's storage writes through the pool and waits for SQLite's
//! write lock in the busy handler, which sleeps and retries. castellan's
//! writers hand the lock to each other in FIFO order (`Store::begin`), so
//! under a steady load of writes the lock is never free when the handler
//! looks: fetches, heartbeats and acknowledgements failed with "database is
//! locked" and mail queued during a benchmark was not delivered at all.
//! Here they queue for their turn with every other writer instead.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use apalis::prelude::{Backend, Task, WorkerContext};
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{BackendConfig, WireFormatBackend, WorkerFilter};
use apalis_sqlite::queries;
use apalis_sqlite::{Config, Error, JsonCodec};
use castellan_core::store::{Conn, Store, Tx};
use serde_json::Value;
use ulid::Ulid;

/// apalis-sqlite's persistence with every transaction taken from `store`.
#[derive(Debug, Clone)]
pub struct InTurn {
    store: Store,
    config: Config,
}

/// A transaction in the writer's turn and its SQLite connection.
async fn turn(store: &Store) -> Result<Tx, Error> {
    let tx = store.begin().await?;
    match tx.conn {
        Conn::Lite(..) => Ok(tx),
        Conn::Pg(_) => Err(Error::Database(sqlx::Error::Configuration(
            "the SQLite queue backend was given a PostgreSQL store".into(),
        ))),
    }
}

/// The SQLite connection of a transaction made by [`turn`].
fn lite(tx: &mut Tx) -> &mut sqlx::SqliteConnection {
    match &mut tx.conn {
        Conn::Lite(t, _) => t,
        Conn::Pg(_) => unreachable!("turn() gives SQLite transactions only"),
    }
}

impl Persistence for InTurn {
    type Compact = Vec<u8>;
    type Error = Error;
    type Response = Value;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let dead_for = self.config.heartbeat_interval.as_secs() as i64;
        let mut tx = turn(&self.store).await?;
        let mine = WorkerFilter::Only(worker.name().to_owned());
        queries::reenqueue_orphaned(lite(&mut tx), dead_for, self.config.queue.as_ref(), &mine)
            .await?;
        queries::register_worker(lite(&mut tx), &self.config, worker, "SqliteStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let dead_for = self.config.orphaned_duration().as_secs() as i64;
        let mut tx = turn(&self.store).await?;
        queries::keep_alive(lite(&mut tx), &self.config, worker).await?;
        let others = WorkerFilter::AllExcept(worker.name().to_owned());
        queries::reenqueue_orphaned(lite(&mut tx), dead_for, self.config.queue.as_ref(), &others)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<Task<Vec<u8>>>, Error> {
        let mut tx = turn(&self.store).await?;
        let tasks = queries::fetch_next(lite(&mut tx), &self.config, worker).await?;
        tx.commit().await?;
        Ok(tasks)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        let mut locks = Vec::new();
        let mut acks = Vec::new();
        for event in &events {
            match event {
                TaskEvent::Lock { task_id, .. } => locks.push(task_id.to_string()),
                TaskEvent::Complete(payload) => acks.push(payload),
                _ => {}
            }
        }
        if locks.is_empty() && acks.is_empty() {
            return Ok(());
        }
        let mut tx = turn(&self.store).await?;
        if !locks.is_empty() {
            queries::lock_tasks(lite(&mut tx), &locks, worker.name()).await?;
        }
        if !acks.is_empty() {
            queries::ack_tasks(lite(&mut tx), &acks, worker.name()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.task_id().as_ref().map(|id| id.to_string()))
            .collect();
        let mut tx = turn(&self.store).await?;
        let queue = self.config.queue.as_ref();
        let n = queries::reenqueue_abandoned(lite(&mut tx), queue, worker.name(), &ids).await?;
        if n as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: n as usize,
            });
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), Error> {
        let mut tx = turn(&self.store).await?;
        queries::push_tasks(lite(&mut tx), self.config.queue.as_ref(), &tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// One queue on SQLite, as apalis-sqlite's `SqliteStorage` but in turn.
#[derive(Debug)]
pub struct LiteQueue<Args> {
    persistence: Persisted<InTurn>,
    args: PhantomData<Args>,
    codec: JsonCodec<Vec<u8>>,
}

impl<Args> Clone for LiteQueue<Args> {
    fn clone(&self) -> Self {
        LiteQueue {
            persistence: self.persistence.clone(),
            args: PhantomData,
            codec: self.codec.clone(),
        }
    }
}

impl<Args> LiteQueue<Args> {
    pub fn new(store: Store, config: Config) -> Self {
        LiteQueue {
            persistence: Persisted::new(InTurn { store, config }),
            args: PhantomData,
            codec: JsonCodec::default(),
        }
    }
}

impl<Args> Backend for LiteQueue<Args> {
    type Task = Task<Vec<u8>>;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        let beat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, beat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Vec<u8>>, Error>>> {
        self.persistence.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.persistence.poll_close(cx, worker)
    }
}

impl<Args> BackendConfig for LiteQueue<Args> {
    type Args = Args;
    type Id = Ulid;
    type Kind = Durable;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let config = self.persistence.config.clone();
        self.persistence
            .layer(JsonCodec::default(), config.batch_size)
            .persist_results(config.persist_results)
            .lock_tasks(config.lock_tasks)
    }
}

impl<Args> WireFormatBackend for LiteQueue<Args> {
    type Codec = JsonCodec<Vec<u8>>;
    type Compact = Vec<u8>;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}
