//! Following operator settings kept in the database (signing keys, rate
//! limits): a check now, then one every interval on a task of its own,
//! until the server stops. Each check compares with what it last applied.

use std::future::Future;
use std::time::Duration;

/// Runs `check` once now, then every `every` until `stop` resolves.
pub async fn every<C, F>(
    every: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
    mut check: C,
) where
    C: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    check().await;
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            check().await;
        }
    });
}
