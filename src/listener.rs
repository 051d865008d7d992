//! The accept loop. It is axum's, plus what axum's lacks against slow and
//! stalled clients: a bound on open connections, a deadline for a request's
//! headers, and a shutdown that waits a grace period and no longer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use castellan_core::config::Listen;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long open connections keep serving after the listener closes,
/// before they are told to close.
const SETTLE: Duration = Duration::from_millis(250);

/// Serves `app` until `stop` resolves, then closes what is still open once
/// `limits.shutdown_grace` has passed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Listen,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let (closing, closing_rx) = watch::channel(());
    let mut open = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    metrics::counter!("castellan_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let conn = connection(builder.clone(), app.clone(), io, remote, closing_rx.clone());
        open.spawn(async move {
            let _permit = permit;
            conn.await
        });
        while open.try_join_next().is_some() {}
        metrics::gauge!("castellan_http_connections").set(open.len() as f64);
    }
    // Connections the kernel has already completed would be reset when the
    // listener closes: take them and answer them too.
    while let Ok(Ok((io, remote))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        open.spawn(connection(
            builder.clone(),
            app.clone(),
            io,
            remote,
            closing_rx.clone(),
        ));
    }
    drop(listener);
    // A request already sent on a fresh connection is read before the
    // connection is told to close (closing an unread socket resets it).
    tokio::time::sleep(SETTLE.min(limits.shutdown_grace)).await;
    drop(closing);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while open.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            still_open = open.len(),
            "shutdown grace period over: closing the connections still open"
        );
        open.abort_all();
    }
}

/// One connection, which finishes its request in flight and closes once
/// `closing` is dropped.
async fn connection(
    builder: Builder<TokioExecutor>,
    app: Router,
    io: tokio::net::TcpStream,
    remote: SocketAddr,
    mut closing: watch::Receiver<()>,
) {
    let service = tower::ServiceExt::map_request(app, move |req: axum::http::Request<_>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(remote));
        req
    });
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
